"""Census-Income (KDD) as the MMoE paper uses it, on the UCI test file in ../shared/data."""

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from pipeline.config import DataConfig
from pipeline.data import census, table
from pipeline.errors import ConfigError

DATA_DIR = Path(__file__).resolve().parents[4] / "shared" / "data" / "census-income"
pytestmark = pytest.mark.skipif(not (DATA_DIR / census.TEST_FILE).exists(), reason="needs ../shared/data")


@pytest.fixture(scope="module")
def group1():
    return table(DataConfig(source="census", tabular=census.data_config(DATA_DIR, group=1)))


def _count(data, split):
    return len(data.read(split)["age"])


def test_the_documented_split_of_the_test_file(group1):
    sizes = {split: _count(group1, split) for split in ("train", "eval", "test")}
    assert sizes == {"train": 79_810, "eval": 9_976, "test": 9_976}
    assert sum(sizes.values()) == 99_762


def test_group_one_labels_and_inputs(group1):
    schema = group1.schema
    assert [t.name for t in schema.tasks] == ["income", "marital"]
    inputs = {f.name for f in schema.features}
    assert {"income_50k", "marital_stat", "instance_weight"}.isdisjoint(inputs) and len(inputs) == 39
    columns = {name: tf.constant(values) for name, values in group1.read("eval").items()}
    _, labels, weights = group1.features_labels_weights(columns)
    assert all(float(tf.reduce_min(w)) == 1.0 for w in weights.values())  # no label is missing
    rate = {name: float(np.mean(value)) for name, value in labels.items()}
    assert 0.04 < rate["income"] < 0.09 and 0.40 < rate["marital"] < 0.47  # 6.2% and 43.3% overall


def test_group_two_asks_for_a_college_degree():
    schema = census.schema(2)
    assert [t.name for t in schema.tasks] == ["education", "marital"]
    assert "education" not in {f.name for f in schema.features}
    assert "income_50k" in {f.name for f in schema.features}
    with pytest.raises(ConfigError, match="Received: census_group=3"):
        census.schema(3)


def test_a_directory_without_the_files(tmp_path):
    with pytest.raises(ConfigError, match="has no census-income.test.gz"):
        census.data_config(tmp_path, group=1)


def test_with_the_uci_training_file_the_test_file_is_halved(tmp_path):
    for name in (census.TRAIN_FILE, census.TEST_FILE):
        (tmp_path / name).write_bytes(b"")
    config = census.data_config(tmp_path, group=1)
    assert config.train_files == (str(tmp_path / census.TRAIN_FILE),)
    assert config.eval_files == (str(tmp_path / census.TEST_FILE),)
    assert config.split == "halves"
    assert config.files("test") == config.eval_files and config.carved("eval") and config.carved("test")


def test_instance_weights_weight_every_task(group1):
    weighted = table(
        DataConfig(source="census", tabular=census.data_config(DATA_DIR, group=1, instance_weights=True))
    )
    assert weighted.schema.weight_column == "instance_weight" and not weighted.schema.drop
    columns = {name: tf.constant(values) for name, values in weighted.read("eval").items()}
    _, _, weights = weighted.features_labels_weights(columns)
    np.testing.assert_array_equal(weights["income"], columns["instance_weight"])
    np.testing.assert_array_equal(weights["marital"], columns["instance_weight"])
    assert float(tf.reduce_max(weights["income"])) > 1000  # a sampling weight, not a 0/1 mask
