"""Per-task heads: output activation, loss and metrics of one task, and the weighted total loss.

A head knows nothing about the architecture; it turns a task's logits and labels into predictions, a loss and
metric updates. `total_loss` is the only place the task losses are combined.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import keras
import tensorflow as tf

from pipeline.config import TaskConfig

_REGRESSION_LOSSES = {
    "mse": keras.losses.mean_squared_error,
    "huber": keras.losses.huber,  # delta 1.0
}


def _make_metric(name: str) -> keras.metrics.Metric:
    if name == "auc":
        return keras.metrics.AUC(num_thresholds=1000, name="auc")
    if name == "log_loss":
        return keras.metrics.BinaryCrossentropy(name="log_loss")
    if name == "rmse":
        return keras.metrics.RootMeanSquaredError(name="rmse")
    if name == "mae":
        return keras.metrics.MeanAbsoluteError(name="mae")
    raise ValueError(f"Unknown metric {name!r}")


class Head:
    """Activation, loss and metrics of one task.

    Args:
        task: the task's config (label column, type, loss, weight, output activation, metrics).
    """

    def __init__(self, task: TaskConfig) -> None:
        self.task = task
        self.name = task.name
        self.label = task.label
        self.weight = float(task.weight)
        self._activation = keras.activations.get(task.output_activation)

    def predictions(self, logits: tf.Tensor) -> tf.Tensor:
        """What the model outputs for this task: `[batch]`."""
        return self._activation(logits)

    def per_example_loss(self, labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
        """Unweighted loss of every example, `[batch]`; log-loss is computed from logits for stability."""
        labels = tf.cast(labels, logits.dtype)
        if self.task.loss == "log_loss":
            return tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits)
        # Keras' losses average over the last axis, so give every example an axis of its own.
        loss_fn = _REGRESSION_LOSSES[self.task.loss]
        return loss_fn(labels[:, None], self.predictions(logits)[:, None])

    def create_metrics(self) -> dict[str, keras.metrics.Metric]:
        """Fresh metric objects for one evaluation: the task's metrics plus its mean loss."""
        metrics = {"loss": keras.metrics.Mean(name="loss")}
        metrics.update({name: _make_metric(name) for name in self.task.metrics})
        return metrics

    def update_metrics(
        self,
        metrics: Mapping[str, keras.metrics.Metric],
        labels: tf.Tensor,
        logits: tf.Tensor,
    ) -> None:
        """Adds one batch of this task's own labels and logits to `metrics`."""
        labels = tf.cast(labels, logits.dtype)
        predictions = self.predictions(logits)
        for name, metric in metrics.items():
            if name == "loss":
                metric.update_state(self.per_example_loss(labels, logits))
            else:
                metric.update_state(labels, predictions)


def build_heads(tasks: Sequence[TaskConfig]) -> list[Head]:
    return [Head(task) for task in tasks]


def total_loss(
    heads: Sequence[Head],
    labels: Mapping[str, tf.Tensor],
    logits: Mapping[str, tf.Tensor],
    global_batch_size: int | tf.Tensor,
) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
    """The weighted sum of the task losses, and each task's unweighted loss.

    Losses are summed over the replica's examples and divided by the global batch size, so summing over
    replicas gives the mean over the global batch (the `tf.distribute` convention).
    """
    per_task: dict[str, Any] = {}
    total = tf.constant(0.0)
    for head in heads:
        per_example = head.per_example_loss(labels[head.label], logits[head.name])
        task_loss = tf.reduce_sum(per_example) / tf.cast(global_batch_size, per_example.dtype)
        per_task[head.name] = task_loss
        total += head.weight * task_loss
    return total, per_task
