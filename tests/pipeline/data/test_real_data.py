"""Real tables end to end: missing labels, weights, imputation, data checks, formats, streaming and splits.

Every test writes a tiny table, builds the experiment the CLI would build from it and checks a behaviour with
values computed independently (by hand in numpy, or by another path through the pipeline).
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow as tf

from pipeline import data
from pipeline.config import (
    DataConfig,
    ExperimentConfig,
    ModelConfig,
    TabularDataConfig,
    TrainConfig,
)
from pipeline.data.schema import schema_from_dict, schema_to_dict
from pipeline.data.tabular import DataError, TabularData, resolve_columns
from pipeline.estimator import Estimator
from pipeline.features import Preprocessor, ids_key
from pipeline.models import model_fn

CONTEXT = tf.distribute.InputContext()


# -- helpers -------------------------------------------------------------------------------------------------


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    return str(value)


def write_csv(path, columns: dict[str, list]) -> str:
    """Writes `columns` as a CSV file with a header; None and NaN become blank cells."""
    names = list(columns)
    rows = zip(*(columns[name] for name in names), strict=True)
    lines = [",".join(names), *(",".join(_cell(v) for v in row) for row in rows)]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def tabular(schema: dict, train, eval_=(), test=(), split: str = "", fmt: str = "csv") -> TabularDataConfig:
    """The table config the CLI builds: absolute files and the schema with its columns resolved."""
    train, eval_, test = (tuple(map(str, files)) for files in (train, eval_, test))
    resolved = resolve_columns(schema_from_dict(schema), train, fmt)
    return TabularDataConfig(
        format=fmt,
        train_files=train,
        eval_files=eval_,
        test_files=test,
        schema=schema_to_dict(resolved),
        split=split,
    )


def experiment(table: TabularDataConfig, **train_overrides) -> ExperimentConfig:
    """A small shared-bottom model on `table`, with statistics from its training split."""
    settings = dict(
        batch_size=16, learning_rate=1e-2, log_every_steps=50, save_checkpoints_steps=1000, seed=7
    )
    train = TrainConfig(**{**settings, **train_overrides})
    data_config = DataConfig(source=table.format, tabular=table)
    model = ModelConfig(
        architecture="shared_bottom",
        features=data.features(data_config, train),
        tasks=data.tasks(data_config),
        bottom_units=(8,),
        tower_units=(4,),
    )
    return ExperimentConfig(model=model, data=data_config, train=train).validate()


def batches(dataset: tf.data.Dataset, count: int | None = None) -> list:
    """The first `count` batches (all when None) as numpy nests."""
    if count is not None:
        dataset = dataset.take(count)
    return [tf.nest.map_structure(lambda t: t.numpy(), batch) for batch in dataset]


def assert_same_batches(left: list, right: list) -> None:
    assert len(left) == len(right)
    for a, b in zip(left, right, strict=True):
        tf.nest.assert_same_structure(a, b)
        for x, y in zip(tf.nest.flatten(a), tf.nest.flatten(b), strict=True):
            np.testing.assert_array_equal(x, y)


def predictions_of(estimator: Estimator, features: dict) -> dict[str, np.ndarray]:
    return {name: value.numpy() for name, value in estimator.model(features, training=False).items()}


def raw_features(config: ExperimentConfig, split: str) -> dict[str, np.ndarray]:
    """The split's raw feature columns as the serving signature takes them."""
    columns = data.table(config.data).read(split)
    return {feature.name: columns[feature.name] for feature in config.model.features}


# -- 1. missing labels are masked ----------------------------------------------------------------------------

MASKING_SCHEMA = {
    "features": [{"name": "x", "type": "numeric"}],
    "tasks": [
        {"name": "level", "column": "level", "type": "regression"},
        {"name": "sign", "column": "sign", "positive_values": ["pos"]},
    ],
}


def _masking_table(path, rows: int, seed: int) -> str:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=rows).round(3)
    level = (10 + 0.1 * rng.normal(size=rows)).round(3).astype(object)
    level[::2] = None  # every other label is missing
    return write_csv(path, {"x": x, "level": list(level), "sign": ["pos" if v > 0 else "neg" for v in x]})


def test_missing_labels_are_left_out_of_the_loss_and_the_metrics(tmp_path):
    train = _masking_table(tmp_path / "train.csv", 200, seed=0)
    eval_ = _masking_table(tmp_path / "eval.csv", 40, seed=1)
    config = experiment(tabular(MASKING_SCHEMA, [train], [eval_]), batch_size=32, learning_rate=0.05)
    estimator = Estimator(config, tmp_path / "model")
    estimator.train(data.input_fn(config, "train"), max_steps=300)
    predicted = predictions_of(estimator, raw_features(config, "eval"))["level"]
    # Blank labels read as 0 would pull the predictions to about 5.
    assert abs(predicted.mean() - 10.0) < 1.0, predicted.mean()

    results = estimator.evaluate(data.input_fn(config, "eval"), "eval", (eval_,))
    assert results["examples"] == 40
    assert results["tasks"]["level"]["examples"] == 20  # only the labelled rows
    assert results["tasks"]["sign"]["examples"] == 40
    assert results["tasks"]["level"]["rmse"] < 1.0  # blank labels scored as 0 would give an rmse above 7


# -- 2. example weights --------------------------------------------------------------------------------------

WEIGHTS_SCHEMA = {
    "features": [{"name": "x", "type": "numeric"}, {"name": "k", "type": "categorical"}],
    "weight_column": "w",
    "tasks": [
        {"name": "amount", "column": "amount", "type": "regression"},
        {"name": "click", "column": "click", "positive_values": ["yes"], "weight_column": "w_click"},
        {"name": "buy", "column": "buy", "positive_values": ["yes"]},
    ],
}


def _weights_table(path, rows: int, seed: int) -> str:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=rows).round(3)
    amount = (3 * x + rng.normal(size=rows)).round(3).astype(object)
    amount[::5] = None
    return write_csv(
        path,
        {
            "x": x,
            "k": rng.choice(["a", "b", "c"], size=rows),
            "amount": list(amount),
            "click": np.where(rng.random(rows) < 0.4, "yes", "no"),
            "buy": np.where(x + rng.normal(size=rows) > 0, "yes", "no"),
            "w": rng.uniform(0.1, 5, size=rows).round(2),
            "w_click": rng.choice([0.0, 1.0, 4.0], size=rows),
        },
    )


def _weighted_mean(values: np.ndarray, weights: np.ndarray) -> float:
    return float(np.sum(weights * values) / np.sum(weights))


def _log_loss(labels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    p = np.clip(probabilities.astype(np.float64), 1e-7, 1 - 1e-7)
    return -(labels * np.log(p) + (1 - labels) * np.log(1 - p))


def test_weights_scale_the_loss_and_metrics_and_a_task_may_override_them(tmp_path):
    train = _weights_table(tmp_path / "train.csv", 120, seed=0)
    eval_ = _weights_table(tmp_path / "eval.csv", 50, seed=1)
    config = experiment(tabular(WEIGHTS_SCHEMA, [train], [eval_]))

    # The batches carry each task's weights: the schema's column, or the task's own; 0 where unlabelled.
    columns = data.table(config.data).read("eval")
    labelled = ~np.isnan(columns["amount"])
    ((_, labels, weights),) = batches(data.input_fn(config, "eval")(CONTEXT, 0).unbatch().batch(1000))
    np.testing.assert_array_equal(weights["amount"], np.where(labelled, columns["w"], 0))
    np.testing.assert_array_equal(weights["click"], columns["w_click"])
    np.testing.assert_array_equal(weights["buy"], columns["w"])

    estimator = Estimator(config, tmp_path / "model")
    estimator.train(data.input_fn(config, "train"), max_steps=5)
    results = estimator.evaluate(data.input_fn(config, "eval"), "eval", (eval_,))
    predicted = predictions_of(estimator, raw_features(config, "eval"))
    tasks = results["tasks"]

    amount, w = columns["amount"][labelled].astype(np.float64), columns["w"][labelled].astype(np.float64)
    squared = (amount - predicted["amount"][labelled]) ** 2
    assert tasks["amount"]["loss"] == pytest.approx(_weighted_mean(squared, w), rel=1e-4)
    assert tasks["amount"]["rmse"] == pytest.approx(np.sqrt(_weighted_mean(squared, w)), rel=1e-4)
    assert tasks["amount"]["mae"] == pytest.approx(_weighted_mean(np.sqrt(squared), w), rel=1e-4)
    assert abs(tasks["amount"]["rmse"] - np.sqrt(squared.mean())) > 1e-3  # unweighted differs
    assert tasks["amount"]["examples"] == labelled.sum()

    for task, weight_column in (("click", "w_click"), ("buy", "w")):
        truth = (columns[task] == "yes").astype(np.float64)
        losses = _log_loss(truth, predicted[task])
        task_weights = columns[weight_column].astype(np.float64)
        assert tasks[task]["log_loss"] == pytest.approx(_weighted_mean(losses, task_weights), rel=1e-4)
        assert tasks[task]["loss"] == pytest.approx(_weighted_mean(losses, task_weights), rel=1e-4)
        assert abs(tasks[task]["log_loss"] - losses.mean()) > 1e-4  # unweighted differs
        other = columns["w" if weight_column == "w_click" else "w_click"].astype(np.float64)
        # ...and so does the mean weighted by the other task's column.
        assert abs(tasks[task]["log_loss"] - _weighted_mean(losses, other)) > 1e-4
    # `examples` counts the rows that weigh in: labelled and of weight > 0.
    assert tasks["click"]["examples"] == (columns["w_click"] > 0).sum() < 50
    assert tasks["buy"]["examples"] == 50
    assert results["loss"] == pytest.approx(sum(tasks[t]["loss"] for t in tasks), rel=1e-6)


# -- 3. imputation is the same in training and serving -------------------------------------------------------

IMPUTE_SCHEMA = {
    "features": [
        {"name": "x", "type": "numeric", "missing_indicator": True},
        {"name": "z", "type": "numeric"},
    ],
    "tasks": [{"name": "id", "column": "id", "type": "regression"}],
}


def test_missing_numbers_get_the_training_mean_in_training_and_in_the_export(tmp_path):
    rows = 24
    rng = np.random.default_rng(0)
    x = rng.normal(5, 2, size=rows).round(3).astype(object)
    z = rng.normal(-1, 3, size=rows).round(3).astype(object)
    x[[1, 6, 7, 15]] = None
    z[[1, 2, 20]] = None
    path = write_csv(tmp_path / "train.csv", {"x": list(x), "z": list(z), "id": np.arange(rows)})
    config = experiment(tabular(IMPUTE_SCHEMA, [path], [path]), batch_size=rows)

    x_feature, z_feature = config.model.features
    present_x = np.array([v for v in x if v is not None], np.float32).astype(np.float64)
    present_z = np.array([v for v in z if v is not None], np.float32).astype(np.float64)
    assert x_feature.mean == pytest.approx(present_x.mean(), rel=1e-6)
    assert x_feature.variance == pytest.approx(present_x.var(), rel=1e-5)
    assert z_feature.mean == pytest.approx(present_z.mean(), rel=1e-6)
    assert x_feature.missing_indicator and not z_feature.missing_indicator

    # One training batch holds every row (in shuffled order); the `id` label says which row is which.
    ((inputs, labels, _),) = batches(data.input_fn(config, "train")(CONTEXT, 0), 1)
    order = labels["id"].astype(int)
    assert sorted(order) == list(range(rows))
    numeric = inputs["numeric"]  # x, z normalised, then x's missing indicator
    assert numeric.shape == (rows, 3)
    blank_x = np.array([v is None for v in x])[order]
    blank_z = np.array([v is None for v in z])[order]
    np.testing.assert_array_equal(numeric[:, 2], blank_x.astype(np.float32))
    np.testing.assert_allclose(numeric[blank_x, 0], 0.0, atol=1e-6)  # the mean, normalised
    np.testing.assert_allclose(numeric[blank_z, 1], 0.0, atol=1e-6)
    assert np.abs(numeric[~blank_x, 0]).min() > 1e-3  # present values are not the mean

    estimator = Estimator(config, tmp_path / "model")
    estimator.train(data.input_fn(config, "train"), max_steps=3)
    logits = estimator.model.task_logits(inputs, training=False)["id"]
    trained_on = estimator.model.heads[0].predictions(logits).numpy()

    version = estimator.export(tmp_path / "export")
    serve = tf.saved_model.load(str(version)).signatures["serving_default"]
    raw = {
        "x": tf.constant(np.array([np.nan if v is None else v for v in x], np.float32)[order]),
        "z": tf.constant(np.array([np.nan if v is None else v for v in z], np.float32)[order]),
    }
    served = serve(**raw)["id"].numpy()
    np.testing.assert_allclose(served, trained_on, atol=1e-5)
    # Serving NaN for z is serving the training mean; serving 0 is not.
    filled = {**raw, "z": tf.where(tf.math.is_nan(raw["z"]), np.float32(z_feature.mean), raw["z"])}
    np.testing.assert_allclose(serve(**filled)["id"].numpy(), served, atol=1e-5)
    zeros = serve(**{**raw, "z": tf.where(tf.math.is_nan(raw["z"]), 0.0, raw["z"])})["id"].numpy()
    assert np.abs(zeros[blank_z] - served[blank_z]).max() > 1e-4


def test_an_export_with_categorical_and_hashed_features_serves_what_training_computes(tmp_path):
    rows = 16
    columns = {
        "x": np.linspace(-1, 1, rows).round(3),
        "k": ["a", "b", "c", "a"] * 4,
        "h": [f"city{i % 5}" for i in range(rows)],
        "id": np.arange(rows),
    }
    path = write_csv(tmp_path / "train.csv", columns)
    schema = {
        "features": [
            {"name": "x", "type": "numeric"},
            {"name": "k", "type": "categorical"},
            {"name": "h", "type": "hashed", "hash_buckets": 8},
        ],
        "tasks": [{"name": "id", "column": "id", "type": "regression"}],
    }
    config = experiment(tabular(schema, [path], [path]), batch_size=rows)
    ((inputs, labels, _),) = batches(data.input_fn(config, "train")(CONTEXT, 0), 1)
    order = labels["id"].astype(int)
    estimator = Estimator(config, tmp_path / "model")
    estimator.train(data.input_fn(config, "train"), max_steps=3)
    trained_on = estimator.model.task_logits(inputs, training=False)["id"].numpy()

    version = estimator.export(tmp_path / "export")
    serve = tf.saved_model.load(str(version)).signatures["serving_default"]
    served = serve(
        x=tf.constant(columns["x"][order], tf.float32),
        k=tf.constant(np.array(columns["k"])[order]),
        h=tf.constant(np.array(columns["h"])[order]),
    )["id"].numpy()
    np.testing.assert_allclose(served, trained_on, atol=1e-5)


# -- 4. checks that stop a silent mistake --------------------------------------------------------------------

CHECK_SCHEMA = {
    "features": [{"name": "x", "type": "numeric"}, {"name": "k", "type": "categorical"}],
    "weight_column": "w",
    "tasks": [
        {"name": "spend", "column": "spend", "type": "regression"},
        {"name": "churn", "column": "churn", "positive_values": ["yes"]},
    ],
}
CHECK_COLUMNS = {
    "x": [1, 2, 3, 4, 5, 6],
    "k": ["a", "b", "a", "c", "a", "b"],
    "spend": [1.5, 2.5, "", 3.0, 4.0, 0.5],
    "churn": ["yes", "no", "no", "yes", "no", "no"],
    "w": [1, 1, 2, 1, 0.5, 1],
}


def _check(tmp_path, schema=CHECK_SCHEMA, **changes):
    path = write_csv(tmp_path / "train.csv", {**CHECK_COLUMNS, **changes})
    return TabularData(tabular(schema, [path], [path])).feature_configs(), path


def test_the_unchanged_table_passes_every_check(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        features, _ = _check(tmp_path)
    assert [f.name for f in features] == ["x", "k"]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and "Categorical" in r.getMessage()]


def test_positive_values_matching_no_row_are_named_with_the_frequent_values(tmp_path):
    tasks = [CHECK_SCHEMA["tasks"][0], {**CHECK_SCHEMA["tasks"][1], "positive_values": ["Yes"]}]
    with pytest.raises(DataError) as error:
        _check(tmp_path, schema={**CHECK_SCHEMA, "tasks": tasks})
    message = str(error.value)
    assert message.startswith(
        "schema.tasks[1].positive_values ['Yes'] match no training row of column 'churn'"
    )
    assert "'no' (4), 'yes' (2)" in message


def test_a_task_without_any_labelled_row_stops(tmp_path):
    for index, task in enumerate(("spend", "churn")):
        expected = rf"schema\.tasks\[{index}\] \('{task}'\): column '{task}' has no labelled training row"
        with pytest.raises(DataError, match=expected):
            _check(tmp_path, **{task: [""] * 6})


def test_a_label_that_is_not_a_number_is_a_bad_row_with_its_line_and_column(tmp_path):
    with pytest.raises(DataError) as error:
        _check(tmp_path, spend=[1.5, 2.5, "", "lots", 4.0, 0.5])
    path = tmp_path / "train.csv"
    assert str(error.value).startswith(f"{path}:5: column 'spend' holds 'lots', not a number.")


def test_a_categorical_feature_with_one_value_is_warned_about(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        _check(tmp_path, k=["a"] * 6)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "Categorical feature 'k' holds one value ('a') in every training row: it cannot help." in warnings


def test_a_negative_or_missing_weight_stops_naming_the_weight_column(tmp_path):
    with pytest.raises(DataError, match=r"Weight column 'w' has 0 missing and 1 negative values"):
        _check(tmp_path, w=[1, 1, -2, 1, 0.5, 1])
    with pytest.raises(DataError, match=r"Weight column 'w' has 1 missing and 0 negative values"):
        _check(tmp_path, w=[1, 1, "", 1, 0.5, 1])


# -- 5. vocabulary size --------------------------------------------------------------------------------------


def test_min_count_and_max_tokens_bound_the_vocabulary_and_the_rest_is_out_of_vocabulary(tmp_path):
    values = ["a"] * 5 + ["b"] * 3 + ["c"] * 2 + ["d"]
    schema = {
        "features": [
            {"name": "rare", "type": "categorical", "min_count": 2},
            {"name": "capped", "type": "categorical", "max_tokens": 2},
        ],
        "tasks": [{"name": "y", "column": "y", "type": "regression"}],
    }
    path = write_csv(tmp_path / "train.csv", {"rare": values, "capped": values, "y": range(len(values))})
    config = experiment(tabular(schema, [path], [path]))
    rare, capped = config.model.features
    assert rare.vocabulary == ("a", "b", "c")  # "d" is seen once
    assert capped.vocabulary == ("a", "b")  # the two most frequent

    ids = Preprocessor(config.model.features)(
        {"rare": tf.constant(["a", "c", "d", "unseen"]), "capped": tf.constant(["a", "b", "c", "unseen"])}
    )[ids_key(4)].numpy()
    rare_ids, capped_ids = ids[:, 0], ids[:, 1]
    # "d" (seen once) shares the OOV id with an unseen value; so does "c", beyond max_tokens.
    assert rare_ids[2] == rare_ids[3] and len(set(rare_ids)) == 3
    assert capped_ids[2] == capped_ids[3] and len(set(capped_ids)) == 3
    assert set(rare_ids).isdisjoint(capped_ids)  # each feature owns its rows of the shared table
    # The embedding table holds each vocabulary and one OOV row per feature.
    (embedding,) = model_fn(config.model).encoder.embeddings
    assert embedding.embeddings.shape[0] == (3 + 1) + (2 + 1)


# -- 6. Parquet and CSV --------------------------------------------------------------------------------------

FORMATS_SCHEMA = {
    "features": [
        {"name": "x", "type": "numeric", "missing_indicator": True},
        {"name": "k", "type": "categorical"},
        {"name": "h", "type": "hashed", "hash_buckets": 8, "embedding_dim": 2},
    ],
    "tasks": [
        {"name": "y", "column": "y", "type": "regression"},
        {"name": "c", "column": "c", "positive_values": ["yes"]},
    ],
}


def _same_table_as_csv_and_parquet(tmp_path, name: str, rows: int, seed: int) -> tuple[str, str]:
    rng = np.random.default_rng(seed)
    x = [None if i % 7 == 3 else float(v) for i, v in enumerate(rng.normal(size=rows).round(3))]
    k = [None if i % 9 == 4 else v for i, v in enumerate(rng.choice(["red", "green", "blue"], size=rows))]
    y = [None if i % 4 == 1 else float(v) for i, v in enumerate(rng.normal(size=rows).round(3))]
    columns = {
        "x": x,
        "k": k,
        "h": [f"city{v}" for v in rng.integers(0, 20, size=rows)],
        "y": y,
        "c": list(rng.choice(["yes", "no"], size=rows)),
    }
    csv_path = write_csv(tmp_path / f"{name}.csv", columns)
    parquet_path = tmp_path / f"{name}.parquet"
    table = pa.table(
        {
            "x": pa.array(x, pa.float64()),
            "k": pa.array(k, pa.string()),
            "h": pa.array(columns["h"], pa.string()),
            "y": pa.array(y, pa.float32()),
            "c": pa.array(columns["c"], pa.string()),
        }
    )
    pq.write_table(table, parquet_path, row_group_size=16)  # several row groups
    return csv_path, str(parquet_path)


def test_parquet_and_csv_give_the_same_rows_and_batches(tmp_path):
    train_csv, train_parquet = _same_table_as_csv_and_parquet(tmp_path, "train", 60, seed=0)
    eval_csv, eval_parquet = _same_table_as_csv_and_parquet(tmp_path, "eval", 37, seed=1)
    csv_config = experiment(tabular(FORMATS_SCHEMA, [train_csv], [eval_csv]))
    parquet_config = experiment(tabular(FORMATS_SCHEMA, [train_parquet], [eval_parquet], fmt="parquet"))
    assert csv_config.model == parquet_config.model  # the same statistics and vocabularies

    for split in ("train", "eval"):
        csv_columns = data.table(csv_config.data).read(split)
        parquet_columns = data.table(parquet_config.data).read(split)
        assert sorted(csv_columns) == sorted(parquet_columns)
        for name in csv_columns:
            assert csv_columns[name].dtype == parquet_columns[name].dtype, name
            np.testing.assert_array_equal(csv_columns[name], parquet_columns[name], err_msg=name)
    assert (data.table(csv_config.data).read("train")["k"] == "").sum() == 7  # null and blank: missing

    for split, count in (("train", 5), ("eval", None)):
        assert_same_batches(
            batches(data.input_fn(csv_config, split)(CONTEXT, 0), count),
            batches(data.input_fn(parquet_config, split)(CONTEXT, 0), count),
        )
    streamed = [
        experiment(tabular(FORMATS_SCHEMA, [train], [eval_], fmt=fmt), in_memory_max_mb=0)
        for train, eval_, fmt in ((train_csv, eval_csv, "csv"), (train_parquet, eval_parquet, "parquet"))
    ]
    csv_streamed = batches(data.input_fn(streamed[0], "eval")(CONTEXT, 0))
    assert_same_batches(csv_streamed, batches(data.input_fn(streamed[1], "eval")(CONTEXT, 0)))
    # Streaming decodes the rows exactly as the in-memory table does.
    assert_same_batches(csv_streamed, batches(data.input_fn(csv_config, "eval")(CONTEXT, 0)))
    assert sum(len(b[1]["y"]) for b in csv_streamed) == 37


# -- 7. in memory or streamed --------------------------------------------------------------------------------


def test_in_memory_and_streaming_give_the_same_metrics_and_both_train(tmp_path):
    train_csv, _ = _same_table_as_csv_and_parquet(tmp_path, "train", 96, seed=2)
    eval_csv, _ = _same_table_as_csv_and_parquet(tmp_path, "eval", 45, seed=3)
    table = tabular(FORMATS_SCHEMA, [train_csv], [eval_csv])
    in_memory = experiment(table, log_every_steps=20, learning_rate=2e-2)
    streamed = experiment(
        table, log_every_steps=20, learning_rate=2e-2, in_memory_max_mb=0, shuffle_buffer=32
    )
    assert data.table(in_memory.data).fits_in_memory("train", in_memory.train.in_memory_max_mb)
    assert not data.table(streamed.data).fits_in_memory("train", streamed.train.in_memory_max_mb)

    for config, name in ((in_memory, "memory"), (streamed, "streamed")):
        estimator = Estimator(config, tmp_path / name)
        first = estimator.train(data.input_fn(config, "train"), max_steps=20)["loss"]
        last = estimator.train(data.input_fn(config, "train"), max_steps=200)["loss"]
        assert last < 0.8 * first, (name, first, last)

    # The same checkpoint evaluated from memory and streamed.
    results = [
        Estimator(config, tmp_path / "memory").evaluate(data.input_fn(config, "eval"), "eval")
        for config in (in_memory, streamed)
    ]
    assert results[0]["examples"] == results[1]["examples"] == 45
    for task in ("y", "c"):
        for metric, value in results[0]["tasks"][task].items():
            streamed_value = results[1]["tasks"][task][metric]
            assert streamed_value == pytest.approx(value, rel=1e-5, abs=1e-6), (task, metric)


# -- 8. resuming ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("in_memory_max_mb", [2048, 0], ids=["in_memory", "streamed"])
def test_a_resumed_input_starts_at_the_batch_an_uninterrupted_one_would_reach(tmp_path, in_memory_max_mb):
    train_csv, _ = _same_table_as_csv_and_parquet(tmp_path, "train", 50, seed=4)
    config = experiment(
        tabular(FORMATS_SCHEMA, [train_csv], [train_csv]), batch_size=8, in_memory_max_mb=in_memory_max_mb
    )
    make = data.input_fn(config, "train")
    uninterrupted = batches(make(CONTEXT, 0), 16)  # 6 batches per epoch: past two epoch boundaries
    for start in (1, 5, 6, 13):
        assert_same_batches(batches(make(CONTEXT, start), 3), uninterrupted[start : start + 3])
    assert not np.array_equal(uninterrupted[0][1]["y"], uninterrupted[6][1]["y"])  # a new order each epoch


def test_resuming_from_memory_makes_no_batch_before_the_start(tmp_path):
    train_csv, _ = _same_table_as_csv_and_parquet(tmp_path, "train", 50, seed=4)
    config = experiment(tabular(FORMATS_SCHEMA, [train_csv], [train_csv]), batch_size=8)
    make = data.input_fn(config, "train")
    batches(make(CONTEXT, 0), 1)  # the table is read and preprocessed once
    started = time.perf_counter()
    (late,) = batches(make(CONTEXT, 10**9), 1)  # reading through 10^9 batches would take hours
    assert time.perf_counter() - started < 5
    assert len(late[1]["y"]) == 8


# -- 9. carving splits out of one file -----------------------------------------------------------------------


def test_a_percentage_split_deals_rows_8_1_1_into_disjoint_splits(tmp_path):
    schema = {
        "features": [{"name": "x", "type": "numeric"}],
        "tasks": [{"name": "row", "column": "row", "type": "regression"}],
    }
    path = write_csv(tmp_path / "all.csv", {"x": np.linspace(0, 1, 100).round(4), "row": range(100)})
    config = experiment(tabular(schema, [path], split="80/10/10"), batch_size=10)
    table = data.table(config.data)
    rows = {split: table.read(split)["row"].astype(int) for split in ("train", "eval", "test")}
    assert {split: len(ids) for split, ids in rows.items()} == {"train": 80, "eval": 10, "test": 10}
    assert sorted(np.concatenate(list(rows.values()))) == list(range(100))  # disjoint and complete
    assert list(rows["eval"]) == list(range(8, 100, 10)) and list(rows["test"]) == list(range(9, 100, 10))
    for split in ("eval", "test"):
        for max_mb in (2048, 0):
            config = experiment(table.config, batch_size=4, in_memory_max_mb=max_mb)
            fed = batches(data.input_fn(config, split)(CONTEXT, 0))
            np.testing.assert_array_equal(
                np.concatenate([labels["row"] for _, labels, _ in fed]), rows[split]
            )
