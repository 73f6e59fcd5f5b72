"""Data sources: each gives the model's input features, its tasks and `tf.data` input functions.

`synthetic` is the MMoE paper's generator; `census` the UCI Census-Income (KDD) files; every registered file
format (`csv`, `tfrecord`, `parquet`: `pipeline.data.formats`) any table described by a schema file
(`pipeline.data.schema`). Batches are `(inputs, labels, weights)`: the model's preprocessed inputs
(`pipeline.features.Preprocessor`), each task's label, and each task's example weights.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf
from absl import logging

from pipeline.config import (
    DataConfig,
    ExperimentConfig,
    FeatureConfig,
    TabularDataConfig,
    TaskConfig,
    TrainConfig,
)
from pipeline.data import formats, in_memory, synthetic, tabular
from pipeline.data.schema import Schema, load_schema, schema_from_dict, schema_to_dict
from pipeline.data.tabular import TabularData
from pipeline.errors import UnknownNameError
from pipeline.features import Preprocessor

# (input context, batches already trained) -> batches of (inputs, labels, weights).
InputFn = Callable[[tf.distribute.InputContext, int], tf.data.Dataset]

SOURCES = ("synthetic", "census", *formats.names())


def _check_source(config: DataConfig) -> None:
    if config.source not in SOURCES:
        raise UnknownNameError(f"Unknown data source {config.source!r}. Valid sources: {', '.join(SOURCES)}.")


_TABLES: dict[str, TabularData] = {}


def table(config: DataConfig) -> TabularData:
    """The table behind a census or file source; one per config and process, so it is read once."""
    key = json.dumps(dataclasses.asdict(config.tabular), sort_keys=True)
    if key not in _TABLES:
        _TABLES[key] = TabularData(config.tabular)
    return _TABLES[key]


def table_config(
    file_format: str,
    schema: str | os.PathLike | Schema,
    train_files: Sequence[str],
    eval_files: Sequence[str] = (),
    test_files: Sequence[str] = (),
    split: str = "",
    skip_bad_rows: bool = False,
    reject_non_finite: bool = False,
) -> TabularDataConfig:
    """The config of a table in `csv`, `tfrecord` or `parquet` files: file patterns expanded to absolute
    paths, and the schema (a JSON file or a `Schema`) given its column order (a CSV header's, by default).
    `split` carves eval and test rows out of `train_files` (see `TabularDataConfig`)."""
    loaded = schema if isinstance(schema, Schema) else load_schema(schema)
    train = tabular.expand_patterns("train_files", train_files)
    return TabularDataConfig(
        format=file_format,
        train_files=train,
        eval_files=tabular.expand_patterns("eval_files", eval_files),
        test_files=tabular.expand_patterns("test_files", test_files),
        schema=schema_to_dict(tabular.resolve_columns(loaded, train, file_format)),
        split=split,
        skip_bad_rows=skip_bad_rows,
        reject_non_finite=reject_non_finite,
    )


def features(config: DataConfig, train: TrainConfig | None = None) -> tuple[FeatureConfig, ...]:
    """The raw input features the model takes; for tables, with statistics from the training split.

    For a table this is the statistics pass (`pipeline.data.statistics`), with its checks.
    """
    _check_source(config)
    if config.source == "synthetic":
        return synthetic.features(config.synthetic)
    data = table(config)
    max_mb = (train or TrainConfig()).in_memory_max_mb
    return data.feature_configs(in_memory=data.fits_in_memory("train", max_mb))


def rows(config: DataConfig, split: str = "train") -> int:
    """How many examples `split` holds (for a table not yet read, a pass over its files)."""
    _check_source(config)
    if config.source == "synthetic":
        return config.synthetic.num_examples if split == "train" else config.synthetic.eval_examples
    return table(config).rows(split)


def steps_for_epochs(config: DataConfig, num_epochs: float, batch_size: int) -> int:
    """The training steps that make `num_epochs` passes over the training split in batches of `batch_size`
    (the last one rounded up)."""
    return max(1, math.ceil(num_epochs * rows(config, "train") / batch_size))


def tasks(config: DataConfig) -> tuple[TaskConfig, ...]:
    """The tasks a table's schema defines (synthetic data has no schema: see `label_columns`)."""
    return tuple(task.task_config() for task in schema_from_dict(config.tabular.schema).tasks)


def label_columns(config: DataConfig) -> tuple[str, ...]:
    """Every label the source provides."""
    _check_source(config)
    if config.source == "synthetic":
        return synthetic.LABELS
    return tuple(task.name for task in tasks(config))


def default_task_labels(config: DataConfig) -> tuple[str, ...]:
    """The labels trained when none are named (synthetic: the paper's two tasks; tables: the schema's)."""
    _check_source(config)
    return synthetic.DEFAULT_TASKS if config.source == "synthetic" else label_columns(config)


def examples(config: DataConfig, split: str, count: int) -> tuple[dict, dict]:
    """The first `count` examples of `split` as numpy raw `(features, labels)`; a missing label is NaN."""
    _check_source(config)
    if config.source == "synthetic":
        features_, labels = synthetic.generate(config.synthetic, split)
        return {k: v[:count] for k, v in features_.items()}, {k: v[:count] for k, v in labels.items()}
    data = table(config)
    columns = {name: tf.constant(values) for name, values in data.first_rows(split, count).items()}
    features_, labels, weights = data.features_labels_weights(columns)
    labels = {k: np.where(weights[k].numpy() > 0, v.numpy(), np.nan) for k, v in labels.items()}
    return {k: _numpy(v) for k, v in features_.items()}, labels


def _numpy(tensor: tf.Tensor) -> np.ndarray:
    value = tensor.numpy()
    return value.astype(object) if value.dtype.kind == "S" else value


def input_fn(config: ExperimentConfig, split: str) -> InputFn:
    """An Estimator-style input function for `strategy.distribute_datasets_from_function`.

    It yields `(inputs, labels, weights)` in batches of the per-replica share of `train.batch_size`, where
    `inputs` are the model's features already preprocessed. A table is held in memory when its files fit
    `train.in_memory_max_mb`, and streamed otherwise.
    """
    data_config, train = config.data, config.train
    _check_source(data_config)
    if data_config.source == "synthetic" and split == "train":
        synthetic.check_funnel(data_config.synthetic, config.model.tasks)
    preprocess = Preprocessor(config.model.features, name="preprocessing")
    streamed = data_config.source != "synthetic" and not table(data_config).fits_in_memory(
        split, train.in_memory_max_mb
    )
    if streamed:
        logging.info(
            "The %s split is larger than --in_memory_max_mb=%d: streaming it.", split, train.in_memory_max_mb
        )

    def make(input_context: tf.distribute.InputContext, start_step: int = 0) -> tf.data.Dataset:
        batch_size = input_context.get_per_replica_batch_size(train.batch_size)
        if data_config.source == "synthetic":
            labels_used = [task.label for task in config.model.tasks]
            encoded = synthetic.in_memory(data_config.synthetic, split, preprocess, labels_used)
            return in_memory.batches(
                encoded, batch_size, train.seed, split == "train", input_context, start_step
            )
        data = table(data_config)
        if streamed:
            return data.streaming_dataset(
                split, preprocess, batch_size, train.seed, train.shuffle_buffer, input_context, start_step
            )
        return data.in_memory_dataset(split, preprocess, batch_size, train.seed, input_context, start_step)

    return make
