import dataclasses
import gzip

import numpy as np
import pytest
import tensorflow as tf

from pipeline.config import ModelConfig, TabularDataConfig
from pipeline.data.schema import schema_from_dict, schema_to_dict
from pipeline.data.tabular import DataError, TabularData
from pipeline.models import model_fn

SCHEMA = {
    "columns": ["age", "job", "city", "income"],
    "csv": {"header": True, "na_values": ["?", ""]},
    "features": [
        {"name": "age", "type": "numeric"},
        {"name": "job", "type": "categorical", "embedding_dim": 3},
        {"name": "city", "type": "hashed", "hash_buckets": 8, "embedding_dim": 2},
    ],
    "tasks": [{"name": "rich", "column": "income", "positive_values": [">50K"]}],
}
TRAIN = ["age,job,city,income", "30, cook, Paris, >50K", "40, cook, Rome, <=50K", "50, pilot, ?, >50K",
         "?, cook, Oslo, <=50K"]  # fmt: skip
EVAL = ["age,job,city,income", "35, dancer, Paris, <=50K", "45, pilot, Lima, >50K"]


def _table(tmp_path, train=TRAIN, eval_=EVAL, skip=False, fmt="csv", train_files=None, eval_files=None):
    if train_files is None:
        (tmp_path / "train.csv.gz").write_bytes(gzip.compress(("\n".join(train) + "\n").encode()))
        (tmp_path / "eval.csv").write_text("\n".join(eval_) + "\n")
        train_files, eval_files = (str(tmp_path / "train.csv.gz"),), (str(tmp_path / "eval.csv"),)
    config = TabularDataConfig(
        format=fmt, train_files=train_files, eval_files=eval_files, schema=SCHEMA, skip_bad_rows=skip
    )
    return TabularData(config)


def _examples(table, split):
    columns = {name: tf.constant(values) for name, values in table.read(split).items()}
    return table.features_labels_weights(columns)


def _streamed(table, split, batches=None):
    """Raw typed columns of `split` streamed in batches of 2, as the streaming pipeline decodes them."""
    dataset = table.streaming_dataset(split, lambda features: features, 2, 0, 10, None, 0)
    return list(dataset if batches is None else dataset.take(batches))


def test_rows_become_raw_features_and_derived_labels(tmp_path):
    features, labels, weights = _examples(_table(tmp_path), "eval")
    assert features["job"].numpy().tolist() == [b"dancer", b"pilot"]  # stripped
    np.testing.assert_array_equal(features["age"], [35.0, 45.0])
    np.testing.assert_array_equal(labels["rich"], [0.0, 1.0])
    np.testing.assert_array_equal(weights["rich"], [1.0, 1.0])


def test_streaming_decodes_the_rows_read_into_memory(tmp_path):
    table = _table(tmp_path)
    ((features, labels, weights),) = _streamed(table, "eval")
    expected = _examples(table, "eval")
    for got, want in zip((features, labels, weights), expected, strict=True):
        for name in want:
            np.testing.assert_array_equal(got[name].numpy(), want[name].numpy())


def test_csv_and_tfrecord_give_identical_rows(tmp_path):
    csv_table = _table(tmp_path)
    shards = csv_table.write_tfrecords("train", tmp_path / "records", shards=1)
    record_table = _table(
        tmp_path, fmt="tfrecord", train_files=tuple(map(str, shards)), eval_files=tuple(map(str, shards))
    )
    for expected, got in zip(_examples(csv_table, "train"), _examples(record_table, "train"), strict=True):
        for name in expected:
            np.testing.assert_array_equal(expected[name].numpy(), got[name].numpy())


def test_vocabularies_and_statistics_come_from_training_data_only(tmp_path):
    age, job, city = _table(tmp_path).feature_configs()
    ages = np.array([30, 40, 50])  # "?" is missing: left out of the statistics
    assert age.mean == pytest.approx(ages.mean()) and age.variance == pytest.approx(ages.var())
    assert job.vocabulary == ("cook", "pilot")  # by frequency; "dancer" is only in eval
    assert (city.kind, city.hash_buckets, city.vocabulary) == ("hashed", 8, ())


def test_unseen_categories_go_to_the_oov_bucket(tmp_path):
    features = _table(tmp_path).feature_configs()
    model = model_fn(
        ModelConfig(
            architecture="shared_bottom",
            features=features,
            tasks=tuple(t.task_config() for t in schema_from_dict(SCHEMA).tasks),
            bottom_units=(4,),
        )
    )
    lookup = model.preprocessor.lookup_layers()[0]
    np.testing.assert_array_equal(lookup(tf.constant(["cook", "pilot", "dancer", "astronaut"])), [1, 2, 0, 0])
    rows = {"age": np.float32([35, 35]), "job": np.array(["dancer", "astronaut"], object),
            "city": np.array(["Paris", "Paris"], object)}  # fmt: skip
    predictions = model(rows)["rich"].numpy()
    assert predictions[0] == predictions[1]  # both unseen jobs share the OOV embedding


def test_a_bad_row_stops_with_its_file_and_line(tmp_path):
    with pytest.raises(DataError) as error:
        _table(tmp_path, train=[*TRAIN, "60, cook, Rome"]).feature_configs()
    assert str(error.value) == (
        f"{tmp_path / 'train.csv.gz'}:6: expected 4 fields, found 3. "
        "Fix the row, or pass --skip_bad_rows to skip such rows."
    )
    with pytest.raises(DataError, match=r"eval.csv:3: column 'age' holds 'old', not a number"):
        _table(tmp_path, eval_=[*EVAL[:2], "old, pilot, Lima, >50K"]).read("eval")


def test_skipping_bad_rows_counts_and_drops_them(tmp_path):
    table = _table(tmp_path, train=[*TRAIN[:2], "60, cook", *TRAIN[2:], "x, pilot, Rome, >50K"], skip=True)
    assert table.bad_rows("train") == {str(tmp_path / "train.csv.gz"): [3, 7]}
    np.testing.assert_array_equal(table.read("train")["age"], [30, 40, 50, np.nan])
    streamed = np.concatenate([features["age"].numpy() for features, _, _ in _streamed(table, "train", 2)])
    assert sorted(streamed[~np.isnan(streamed)]) == [30, 40, 50]  # shuffled; the bad rows are left out


def test_a_header_that_differs_from_the_schema(tmp_path):
    with pytest.raises(DataError, match=r"eval.csv:1: header \['age', 'job', 'town', 'income'\] differs"):
        _table(tmp_path, eval_=["age,job,town,income", *EVAL[1:]]).read("eval")


def test_schema_round_trips_through_the_config(tmp_path):
    schema = schema_from_dict(SCHEMA)
    assert schema_from_dict(schema_to_dict(schema)) == schema
    assert dataclasses.replace(
        _table(tmp_path).config, schema=schema_to_dict(schema)
    ).schema == schema_to_dict(schema)


def test_a_min_count_that_empties_a_vocabulary_is_an_error(tmp_path):
    schema = {**SCHEMA, "features": [*SCHEMA["features"][:1], {**SCHEMA["features"][1], "min_count": 9}]}
    schema["features"].append(SCHEMA["features"][2])
    (tmp_path / "train.csv").write_text("\n".join(TRAIN) + "\n")
    table = TabularData(
        TabularDataConfig(train_files=(str(tmp_path / "train.csv"),), split="80/10/10", schema=schema)
    )
    message = r"schema.features\[1\] \('job'\): no value is seen min_count=9 times"
    with pytest.raises(DataError, match=message):
        table.feature_configs()


def test_resuming_with_two_replicas_per_pipeline_skips_two_batches_a_step():
    from pipeline.data import in_memory

    rows = tf.range(40)
    whole = [b.numpy().tolist() for b in in_memory.batches(rows, 4, 0, train=True).take(6)]
    context = tf.distribute.InputContext(num_input_pipelines=1, num_replicas_in_sync=2)
    resumed = in_memory.batches(rows, 4, 0, True, context, start_step=2).take(2)
    resumed = [b.numpy().tolist() for b in resumed]
    assert resumed == whole[4:6]
