"""Census and CSV data through the CLI, and a census export queried with raw values over both protocols."""

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from pipeline.data import census
from serving.client import connect
from serving.config import single_model
from serving.server import ModelServer, ServerOptions
from tests.cli.commands import assert_one_line_error, mtl

DATA_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "census-income"
pytestmark = pytest.mark.skipif(not (DATA_DIR / census.TEST_FILE).exists(), reason="needs ../shared/data")


def _raw_rows(count: int) -> list[dict]:
    """The first test-file rows, as they appear in the file: strings stripped, numbers as numbers."""
    rows = []
    with gzip.open(DATA_DIR / census.TEST_FILE, "rt") as f:
        for line in f:
            fields = [field.strip() for field in line.rstrip("\n").split(",")]
            row = dict(zip(census.COLUMNS, fields, strict=True))
            rows.append({name: float(row[name]) if name in census.NUMERIC else row[name] for name in row})
            if len(rows) == count:
                return rows
    return rows


@pytest.fixture(scope="module")
def census_run(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("census") / "mmoe"
    result = mtl(
        "train",
        "--data=census",
        f"--data_dir={DATA_DIR}",
        "--model=mmoe",
        f"--model_dir={model_dir}",
        "--max_steps=150",
        "--batch_size=512",
        "--log_every_steps=50",
    )
    assert result.returncode == 0, result.stderr
    assert "Computed vocabularies and statistics from 79810 training rows" in result.stderr
    return model_dir


def test_evaluate_writes_per_task_auc_on_the_held_out_split(census_run):
    result = mtl("evaluate", f"--model_dir={census_run}")
    assert result.returncode == 0, result.stderr
    results = json.loads((census_run / "eval_results.json").read_text())
    assert results["examples"] == 9_976
    assert results["tasks"]["income"]["auc"] > 0.85 and results["tasks"]["marital"]["auc"] > 0.9
    assert "income       loss" in result.stdout


def test_the_export_answers_raw_census_rows_over_rest_and_grpc(census_run, tmp_path):
    assert mtl("export", f"--model_dir={census_run}", f"--export_base={tmp_path}").returncode == 0
    (version,) = list(tmp_path.iterdir())
    rows = _raw_rows(5)
    features = {
        name: [row[name] for row in rows]
        for name in rows[0]
        if name not in ("income_50k", "marital_stat", "instance_weight")
    }
    signature = tf.saved_model.load(str(version)).signatures["serving_default"]
    expected = signature(**{k: tf.constant(v, tf.float32 if k in census.NUMERIC else tf.string)
                            for k, v in features.items()})  # fmt: skip
    options = ServerOptions(grpc_port=0, rest_port=0, poll_seconds=0)
    with ModelServer(single_model("census", tmp_path), options) as server:
        for address in (f"http://127.0.0.1:{server.rest_port}", f"grpc://127.0.0.1:{server.grpc_port}"):
            with connect(address, "census") as client:
                predictions = client.predict(features)
            assert sorted(predictions) == ["income", "marital"]
            for task in predictions:
                np.testing.assert_allclose(predictions[task], expected[task].numpy(), rtol=1e-6)
                assert ((predictions[task] > 0) & (predictions[task] < 1)).all()


SCHEMA = {
    "columns": ["age", "job", "income"],
    "csv": {"header": False},
    "features": [{"name": "age", "type": "numeric"}, {"name": "job", "type": "categorical"}],
    "tasks": [{"name": "rich", "column": "income", "positive_values": [">50K"]}],
}


def test_csv_data_errors_come_before_training(tmp_path):
    (tmp_path / "train.csv").write_text("30,cook,>50K\n40,cook\n")
    schema = tmp_path / "schema.json"
    extra = {"name": "zip", "type": "hashed", "hash_buckets": 4}
    schema.write_text(json.dumps({**SCHEMA, "features": [*SCHEMA["features"], extra]}))
    flags = ["--data=csv", f"--schema={schema}", f"--train_files={tmp_path}/train.csv",
             f"--eval_files={tmp_path}/train.csv", f"--model_dir={tmp_path / 'run'}"]  # fmt: skip
    assert_one_line_error(
        mtl("train", *flags),
        "train",
        "schema.features names 'zip', not among the data's columns (age, job, income).",
    )
    schema.write_text(json.dumps(SCHEMA))
    assert_one_line_error(
        mtl("train", *flags),
        "train",
        f"{tmp_path}/train.csv:2: expected 3 fields, found 2. "
        "Fix the row, or pass --skip_bad_rows to skip such rows.",
    )
    assert not (tmp_path / "run").exists()
    missing = mtl("train", "--data=csv", f"--schema={schema}", f"--train_files={tmp_path}/nope*.csv",
                  f"--eval_files={tmp_path}/train.csv", f"--model_dir={tmp_path / 'run'}")  # fmt: skip
    assert_one_line_error(missing, "train", f"--train_files={tmp_path}/nope*.csv matches no file.")


def test_mtl_data_inspects_and_converts_to_tfrecord(tmp_path):
    (tmp_path / "train.csv").write_text("30,cook,>50K\n40,pilot,<=50K\n50,cook,>50K\n")
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(SCHEMA))
    files = [f"--train_files={tmp_path}/train.csv", f"--eval_files={tmp_path}/train.csv"]
    result = mtl(
        "data", "--data=csv", f"--schema={schema}", *files, f"--output={tmp_path / 'records'}", "--shards=2"
    )
    assert result.returncode == 0, result.stderr
    assert "train: 3 rows from 1 file(s), 0 bad rows skipped" in result.stdout
    assert "job                  string  0 missing    2 distinct, most frequent: cook, pilot" in result.stdout
    assert "task rich" in result.stdout and "3 labelled (100.0%), positive rate 0.6667" in result.stdout
    assert sorted(p.name for p in (tmp_path / "records").iterdir()) == [
        "eval-00000-of-00002.tfrecord.gz", "eval-00001-of-00002.tfrecord.gz",
        "train-00000-of-00002.tfrecord.gz", "train-00001-of-00002.tfrecord.gz",
    ]  # fmt: skip
