"""The kinds of task a model learns, and the losses and metrics each can use, by the names users write.

A task type, loss or metric name is valid exactly when it is a key here: the configs validate against these
tables, and the heads compute with the functions they hold, so no list of names can drift from the code.

Losses take a task's labels `[batch]` and logits (`[batch]`, or `[batch, num_classes]` for multi-class
tasks) and return every example's loss `[batch]`; they see the output activation for losses defined on the
model's outputs (mean squared error of a ReLU output, say) rather than on its logits.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import keras
import tensorflow as tf

Loss = Callable[[tf.Tensor, tf.Tensor, Callable[[Any], Any]], tf.Tensor]


def _log_loss(labels: tf.Tensor, logits: tf.Tensor, activation: Callable[[Any], Any]) -> tf.Tensor:
    """Binary cross-entropy from logits (stable where the sigmoid saturates)."""
    return tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits)


def _mse(labels: tf.Tensor, logits: tf.Tensor, activation: Callable[[Any], Any]) -> tf.Tensor:
    return tf.square(activation(logits) - labels)


def _huber(labels: tf.Tensor, logits: tf.Tensor, activation: Callable[[Any], Any]) -> tf.Tensor:
    """Huber loss with delta 1: `e²/2` within 1 of the label, `|e| - 1/2` beyond."""
    return keras.losses.huber(labels[:, None], activation(logits)[:, None])


def _poisson(labels: tf.Tensor, logits: tf.Tensor, activation: Callable[[Any], Any]) -> tf.Tensor:
    """The Poisson negative log-likelihood `exp(z) - y z + log(y!)` of `z`, the log of the expected count
    (the log link): never negative, as a loss weighted by a learned uncertainty must be."""
    return tf.exp(logits) - labels * logits + tf.math.lgamma(labels + 1.0)


def _sparse_cross_entropy(
    labels: tf.Tensor, logits: tf.Tensor, activation: Callable[[Any], Any]
) -> tf.Tensor:
    """Categorical cross-entropy of class ids against the classes' logits (the softmax inside)."""
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.cast(labels, tf.int32), logits=logits)


@keras.saving.register_keras_serializable(package="mtl")
class PoissonDeviance(keras.metrics.Mean):
    """Mean Poisson deviance `2 (y log(y / mu) - (y - mu))` of counts `y` around expected counts `mu`: 0 for a
    perfect fit, and for counts what the squared error is for Gaussian targets."""

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
        y_true = tf.cast(y_true, y_pred.dtype)
        y_log_ratio = tf.math.xlogy(y_true, y_true) - tf.math.xlogy(y_true, y_pred)  # 0 where y is 0
        super().update_state(2.0 * (y_log_ratio - (y_true - y_pred)), sample_weight=sample_weight)


@dataclasses.dataclass(frozen=True)
class TaskType:
    """What a kind of task learns with and reports.

    Attributes:
        losses: loss name -> per-example loss; the first is the default.
        metrics: metric name -> a fresh metric, given the task's `top_k`.
        default_metrics: what evaluation reports when the task names none.
        activation: the default output activation, from logits to what the model serves.
        activations: the output activations the losses allow.
        per_class: whether the task has a logit (and serves a probability) per class, rather than one.
        rising_metrics: the metrics that are better higher (the rest, like every loss, are better lower).
    """

    losses: Mapping[str, Loss]
    metrics: Mapping[str, Callable[[int], keras.metrics.Metric]]
    default_metrics: tuple[str, ...]
    activation: str
    activations: tuple[str, ...]
    per_class: bool = False
    rising_metrics: tuple[str, ...] = ()

    @property
    def default_loss(self) -> str:
        return next(iter(self.losses))


TASK_TYPES: dict[str, TaskType] = {
    "binary": TaskType(
        losses={"log_loss": _log_loss},
        metrics={
            "auc": lambda k: keras.metrics.AUC(num_thresholds=1000, name="auc"),
            "log_loss": lambda k: keras.metrics.BinaryCrossentropy(name="log_loss"),
        },
        default_metrics=("auc", "log_loss"),
        activation="sigmoid",
        activations=("sigmoid",),
        rising_metrics=("auc",),
    ),
    "regression": TaskType(
        losses={"mse": _mse, "huber": _huber},
        metrics={
            "rmse": lambda k: keras.metrics.RootMeanSquaredError(name="rmse"),
            "mae": lambda k: keras.metrics.MeanAbsoluteError(name="mae"),
        },
        default_metrics=("rmse", "mae"),
        activation="linear",
        activations=("linear", "relu", "softplus", "exponential", "sigmoid"),
    ),
    "count": TaskType(
        losses={"poisson": _poisson},
        metrics={
            "poisson_deviance": lambda k: PoissonDeviance(name="poisson_deviance"),
            "mae": lambda k: keras.metrics.MeanAbsoluteError(name="mae"),
        },
        default_metrics=("poisson_deviance", "mae"),
        activation="exponential",
        activations=("exponential",),
    ),
    "multiclass": TaskType(
        losses={"cross_entropy": _sparse_cross_entropy},
        metrics={
            "accuracy": lambda k: keras.metrics.SparseCategoricalAccuracy(name="accuracy"),
            "top_k_accuracy": lambda k: keras.metrics.SparseTopKCategoricalAccuracy(k, name="top_k_accuracy"),
            "cross_entropy": lambda k: keras.metrics.SparseCategoricalCrossentropy(name="cross_entropy"),
        },
        default_metrics=("accuracy", "top_k_accuracy"),
        activation="softmax",
        activations=("softmax",),
        per_class=True,
        rising_metrics=("accuracy", "top_k_accuracy"),
    ),
}


def higher_is_better(metric: str) -> bool:
    """Whether a higher value of the metric named `metric` (of any task type) is the better one."""
    return any(metric in task_type.rising_metrics for task_type in TASK_TYPES.values())
