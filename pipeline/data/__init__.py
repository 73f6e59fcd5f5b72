"""Data sources: each gives the model's input features, its label columns and `tf.data` input functions."""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

from pipeline.config import DataConfig, FeatureConfig, TrainConfig
from pipeline.data import synthetic
from pipeline.errors import UnknownNameError

InputFn = Callable[[tf.distribute.InputContext], tf.data.Dataset]

SOURCES = ("synthetic",)


def _check_source(config: DataConfig) -> None:
    if config.source not in SOURCES:
        raise UnknownNameError(f"Unknown data source {config.source!r}. Valid sources: {', '.join(SOURCES)}.")


def features(config: DataConfig) -> tuple[FeatureConfig, ...]:
    """The raw input features the source provides (and the exported model takes)."""
    _check_source(config)
    return synthetic.features(config.synthetic)


def label_columns(config: DataConfig) -> tuple[str, ...]:
    """Every label column the source provides."""
    _check_source(config)
    return synthetic.LABELS


def default_task_labels(config: DataConfig) -> tuple[str, ...]:
    """The labels trained when the user names none (for synthetic data, the paper's two tasks)."""
    _check_source(config)
    return synthetic.DEFAULT_TASKS


def examples(config: DataConfig, split: str, count: int) -> tuple[dict, dict]:
    """The first `count` examples of `split` as numpy `(features, labels)`."""
    _check_source(config)
    features, labels = synthetic.generate(config.synthetic, split)
    return {k: v[:count] for k, v in features.items()}, {k: v[:count] for k, v in labels.items()}


def input_fn(config: DataConfig, split: str, train: TrainConfig) -> InputFn:
    """An Estimator-style input function for `strategy.distribute_datasets_from_function`.

    It yields `(features, labels)` dicts in batches of the per-replica share of `train.batch_size`.
    """
    _check_source(config)

    def make(input_context: tf.distribute.InputContext) -> tf.data.Dataset:
        return synthetic.make_dataset(
            config.synthetic,
            split,
            batch_size=input_context.get_per_replica_batch_size(train.batch_size),
            shuffle_seed=train.seed,
            shuffle_buffer=train.shuffle_buffer,
            input_context=input_context,
        )

    return make
