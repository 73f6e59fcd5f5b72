"""Per-task heads: output activation, loss and metrics of one task, and the weighted total loss.

A head knows nothing about the architecture; it turns a task's logits and labels into predictions, a loss and
metric updates. `total_loss` is the only place the task losses are combined.

Every example carries a weight per task: its sample weight, and 0 where the task's label is missing, so an
unlabelled row adds nothing to that task's loss or metrics while it still trains the other tasks. A task's
loss is the weighted mean over the rows labelled for it in the global batch (all replicas), so a task
labelled on a tenth of the rows is not learned ten times more slowly, and the training loss reads like the
evaluation one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import keras
import tensorflow as tf

from pipeline.config import TaskConfig
from pipeline.layers.uncertainty_weights import UncertaintyWeights

EXAMPLES = "examples"  # the metric counting a task's labelled examples
_REGRESSION_LOSSES = {
    "mse": keras.losses.mean_squared_error,
    "huber": keras.losses.huber,  # delta 1.0
}


@keras.saving.register_keras_serializable(package="mtl")
class PoissonDeviance(keras.metrics.Mean):
    """Mean Poisson deviance `2 (y log(y / mu) - (y - mu))` of counts `y` around expected counts `mu`: 0 for a
    perfect fit, and for counts what the squared error is for Gaussian targets."""

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
        y_true = tf.cast(y_true, y_pred.dtype)
        y_log_ratio = tf.math.xlogy(y_true, y_true) - tf.math.xlogy(y_true, y_pred)  # 0 where y is 0
        super().update_state(2.0 * (y_log_ratio - (y_true - y_pred)), sample_weight=sample_weight)


def _make_metric(name: str) -> keras.metrics.Metric:
    if name == "poisson_deviance":
        return PoissonDeviance(name="poisson_deviance")
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
        """Unweighted loss of every example, `[batch]`. Log-loss and the Poisson loss (the negative
        log-likelihood `exp(z) - y z + log(y!)` of `z`, the log of the expected count: never negative, as a
        loss weighted by a learned uncertainty must be) are computed from logits for stability."""
        labels = tf.cast(labels, logits.dtype)
        if self.task.loss == "log_loss":
            return tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits)
        if self.task.loss == "poisson":  # the log link: the logit is log(expected count)
            return tf.exp(logits) - labels * logits + tf.math.lgamma(labels + 1.0)
        # Keras' losses average over the last axis, so give every example an axis of its own.
        loss_fn = _REGRESSION_LOSSES[self.task.loss]
        return loss_fn(labels[:, None], self.predictions(logits)[:, None])

    def create_metrics(self) -> dict[str, keras.metrics.Metric]:
        """Fresh metrics for one evaluation: the task's metrics, its mean loss, its count of weighted rows."""
        metrics = {"loss": keras.metrics.Mean(name="loss")}
        metrics.update({name: _make_metric(name) for name in self.task.metrics})
        metrics[EXAMPLES] = keras.metrics.Sum(name=EXAMPLES)
        return metrics

    def update_metrics(
        self,
        metrics: Mapping[str, keras.metrics.Metric],
        labels: tf.Tensor,
        logits: tf.Tensor,
        weights: tf.Tensor,
    ) -> None:
        """Adds one batch of this task's labels and logits to `metrics`, each example weighted."""
        labels = tf.cast(labels, logits.dtype)
        weights = tf.cast(weights, logits.dtype)
        predictions = self.predictions(logits)
        for name, metric in metrics.items():
            if name == "loss":
                metric.update_state(self.per_example_loss(labels, logits), sample_weight=weights)
            elif name == EXAMPLES:
                metric.update_state(tf.cast(weights > 0, logits.dtype))
            else:
                # Keras' metric functions average over the last axis: give every example an axis of its own.
                metric.update_state(labels[:, None], predictions[:, None], sample_weight=weights)


def build_heads(tasks: Sequence[TaskConfig]) -> list[Head]:
    return [Head(task) for task in tasks]


def total_loss(
    heads: Sequence[Head],
    labels: Mapping[str, tf.Tensor],
    weights: Mapping[str, tf.Tensor],
    logits: Mapping[str, tf.Tensor],
    uncertainty: UncertaintyWeights | None = None,
) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
    """The task-weighted sum of the task losses, and each task's loss (before its task weight). With
    `uncertainty`, each task loss is weighted by its learned weight too (see `UncertaintyWeights`).

    Called once per replica: each task's weighted loss sum over the replica's examples is divided by the
    task's weight sum over the global batch (an all-reduce across replicas), so summing the replicas' results
    gives the weighted mean over the global batch's labelled rows (the `tf.distribute` convention). A task
    with no labelled row in the batch adds 0.
    """
    context = tf.distribute.get_replica_context()
    replicas = context.num_replicas_in_sync if context is not None else 1
    per_task: dict[str, Any] = {}
    labelled: dict[str, Any] = {}
    total = tf.constant(0.0)
    for head in heads:
        per_example = head.per_example_loss(labels[head.label], logits[head.name])
        task_weights = tf.cast(weights[head.label], per_example.dtype)
        weight_sum = tf.reduce_sum(task_weights)
        if context is not None and context.num_replicas_in_sync > 1:
            weight_sum = context.all_reduce(tf.distribute.ReduceOp.SUM, weight_sum)
        task_loss = tf.math.divide_no_nan(tf.reduce_sum(task_weights * per_example), weight_sum)
        per_task[head.name] = task_loss
        if uncertainty is not None:
            labelled[head.name] = tf.cast(weight_sum > 0, per_example.dtype)
        total += head.weight * task_loss
    if uncertainty is not None:
        total = uncertainty(
            per_task,
            task_weights={head.name: head.weight for head in heads},
            replicas=replicas,
            present=labelled,
        )
    return total, per_task
