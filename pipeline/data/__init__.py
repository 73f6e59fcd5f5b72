"""Data sources: each gives the model's input features, its tasks and `tf.data` input functions.

`synthetic` is the MMoE paper's generator; `census` the UCI Census-Income (KDD) files; `csv` and
`tfrecord` any table described by a schema file (`pipeline.data.schema`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from pipeline.config import DataConfig, FeatureConfig, TaskConfig, TrainConfig
from pipeline.data import synthetic
from pipeline.data.schema import schema_from_dict
from pipeline.data.tabular import TabularData
from pipeline.errors import UnknownNameError

InputFn = Callable[[tf.distribute.InputContext], tf.data.Dataset]

SOURCES = ("synthetic", "census", "csv", "tfrecord")


def _check_source(config: DataConfig) -> None:
    if config.source not in SOURCES:
        raise UnknownNameError(f"Unknown data source {config.source!r}. Valid sources: {', '.join(SOURCES)}.")


_TABLES: dict[str, TabularData] = {}


def table(config: DataConfig) -> TabularData:
    """The table behind a census, csv or tfrecord source; one per config, so its files are checked once."""
    key = json.dumps(dataclasses.asdict(config.tabular), sort_keys=True)
    if key not in _TABLES:
        _TABLES[key] = TabularData(config.tabular)
    return _TABLES[key]


def features(config: DataConfig) -> tuple[FeatureConfig, ...]:
    """The raw input features the model takes; for tables, with statistics from the training split."""
    _check_source(config)
    if config.source == "synthetic":
        return synthetic.features(config.synthetic)
    return table(config).feature_configs()


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
    """The first `count` examples of `split` as numpy `(features, labels)`."""
    _check_source(config)
    if config.source == "synthetic":
        features_, labels = synthetic.generate(config.synthetic, split)
        return {k: v[:count] for k, v in features_.items()}, {k: v[:count] for k, v in labels.items()}
    data = table(config)
    batch = next(iter(data.columns(split, count)))
    features_, labels = data.features_and_labels(batch)
    return {k: _numpy(v) for k, v in features_.items()}, {k: _numpy(v) for k, v in labels.items()}


def _numpy(tensor: tf.Tensor) -> np.ndarray:
    value = tensor.numpy()
    return value.astype(object) if value.dtype.kind == "S" else value


def input_fn(config: DataConfig, split: str, train: TrainConfig) -> InputFn:
    """An Estimator-style input function for `strategy.distribute_datasets_from_function`.

    It yields `(features, labels)` dicts in batches of the per-replica share of `train.batch_size`.
    """
    _check_source(config)

    def make(input_context: tf.distribute.InputContext) -> tf.data.Dataset:
        batch_size = input_context.get_per_replica_batch_size(train.batch_size)
        if config.source == "synthetic":
            return synthetic.make_dataset(
                config.synthetic,
                "eval" if split == "test" else split,
                batch_size=batch_size,
                shuffle_seed=train.seed,
                input_context=input_context,
            )
        return table(config).make_dataset(
            split, batch_size, train.seed, train.shuffle_buffer, input_context=input_context
        )

    return make
