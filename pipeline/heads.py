"""Per-task heads (output activation, loss and metrics of one task) and `TaskLoss`, the one place where the
task losses are combined, for training and evaluation alike.

A head knows nothing about the architecture; it turns a task's logits and labels into predictions, a loss and
metric updates.

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

from pipeline.checks import check_choice
from pipeline.config import LOSS_WEIGHTINGS, TaskConfig, conditional_task
from pipeline.layers.uncertainty_weights import UncertaintyWeights
from pipeline.task_types import TASK_TYPES

EXAMPLES = "examples"  # the metric counting a task's labelled examples


class Head:
    """Activation, loss and metrics of one task (see `pipeline.task_types` for what each type offers).

    Args:
        task: the task's config (label column, type, loss, weight, output activation, metrics).
    """

    def __init__(self, task: TaskConfig) -> None:
        self.task = task
        self.name = task.name
        self.label = task.label
        self.weight = float(task.weight)
        self._type = TASK_TYPES[task.type]
        self._activation = keras.activations.get(task.output_activation)
        self._loss = self._type.losses[task.loss]

    def predictions(self, logits: tf.Tensor) -> tf.Tensor:
        """What the model outputs for this task: `[batch]`, or `[batch, num_classes]` for multi-class."""
        return self._activation(logits)

    def per_example_loss(self, labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
        """Unweighted loss of every example, `[batch]`; computed from logits where the loss allows, for
        stability."""
        return self._loss(tf.cast(labels, tf.float32), logits, self._activation)

    def create_metrics(self) -> dict[str, keras.metrics.Metric]:
        """Fresh metrics for one evaluation: the task's metrics, its mean loss, its count of weighted rows."""
        metrics = {"loss": keras.metrics.Mean(name="loss")}
        metrics.update({name: self._type.metrics[name](self.task.top_k) for name in self.task.metrics})
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
        weights = tf.cast(weights, logits.dtype)
        metric_labels, predictions = tf.cast(labels, tf.float32), self.predictions(logits)
        if not self._type.per_class:
            # Keras' metric functions average over the last axis: give every example an axis of its own.
            metric_labels, predictions = metric_labels[:, None], predictions[:, None]
        for name, metric in metrics.items():
            if name == "loss":
                metric.update_state(self.per_example_loss(labels, logits), sample_weight=weights)
            elif name == EXAMPLES:
                metric.update_state(tf.cast(weights > 0, logits.dtype))
            else:
                metric.update_state(metric_labels, predictions, sample_weight=weights)


def funnel_logit(earlier_logit: tf.Tensor, conditional_logit: tf.Tensor) -> tf.Tensor:
    """The logit of `sigmoid(earlier_logit) * sigmoid(conditional_logit)`: the probability of an event and of
    the one before it (ESMM's pCTCVR = pCTR x pCVR), as a logit, so the task's loss, metrics and output are a
    binary task's. Computed in log space, exactly for any logits: `log p` is a sum of log-sigmoids, and as
    `1 - p = sigmoid(-a) + sigmoid(a) sigmoid(-b)`, `log(1 - p)` is a log-sum-exp of log-sigmoids."""
    log_earlier, log_conditional = tf.math.log_sigmoid(earlier_logit), tf.math.log_sigmoid(conditional_logit)
    log_p = log_earlier + log_conditional
    log_not_p = tf.reduce_logsumexp(
        tf.stack(
            [tf.math.log_sigmoid(-earlier_logit), log_earlier + tf.math.log_sigmoid(-conditional_logit)]
        ),
        axis=0,
    )
    return log_p - log_not_p


@keras.saving.register_keras_serializable(package="mtl")
class TaskLoss(keras.layers.Layer):
    """The multi-task loss: every task's loss, its label mask and sample weights, and how the task losses
    are weighted into one (the TensorFlow Recommenders `Task` idea, for several tasks).

    A task's loss is the weighted mean over the rows labelled for it in the global batch. `weighting` is
    `fixed` (each task's `weight`) or `uncertainty` (learned weights on top of them; see
    `UncertaintyWeights`, whose variables this layer owns and the model checkpoints).

    Args:
        tasks: the model's tasks.
        weighting: `fixed` or `uncertainty`.
    """

    def __init__(self, tasks: Sequence[TaskConfig], weighting: str = "fixed", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.tasks = tuple(tasks)
        self.weighting = check_choice("weighting", weighting, LOSS_WEIGHTINGS)
        self.heads = [Head(task) for task in self.tasks]
        # A funnel task's event given the earlier one: evaluated on the rows where the earlier one happened.
        self.conditional_heads = {
            task.name: Head(conditional_task(task)) for task in self.tasks if task.after
        }
        self.learned_weights = (
            UncertaintyWeights([task.name for task in self.tasks], name="loss_weights")
            if weighting == "uncertainty"
            else None
        )

    def build(self, input_shape: Any = None) -> None:
        if self.learned_weights is not None:
            self.learned_weights.build()
        self.built = True

    def call(
        self,
        labels: Mapping[str, tf.Tensor],
        weights: Mapping[str, tf.Tensor],
        logits: Mapping[str, tf.Tensor],
    ) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        """The weighted total loss of one replica's batch, and each task's loss (before its weight).

        Labels and weights are keyed by label column, logits by task. Each task's weighted loss sum over the
        replica's examples is divided by the task's weight sum over the global batch (an all-reduce across
        replicas), so the replicas' results sum to the weighted mean over the global batch's labelled rows
        (the `tf.distribute` convention). A task with no labelled row in the batch adds 0.
        """
        context = tf.distribute.get_replica_context()
        replicas = context.num_replicas_in_sync if context is not None else 1
        per_task: dict[str, Any] = {}
        labelled: dict[str, Any] = {}
        for head in self.heads:
            per_example = head.per_example_loss(labels[head.label], logits[head.name])
            task_weights = tf.cast(weights[head.label], per_example.dtype)
            weight_sum = tf.reduce_sum(task_weights)
            if replicas > 1:
                weight_sum = context.all_reduce(tf.distribute.ReduceOp.SUM, weight_sum)
            per_task[head.name] = tf.math.divide_no_nan(tf.reduce_sum(task_weights * per_example), weight_sum)
            if self.learned_weights is not None:
                labelled[head.name] = tf.cast(weight_sum > 0, per_example.dtype)
        return self._combine(per_task, replicas, labelled), per_task

    def create_metrics(self) -> dict[str, dict[str, keras.metrics.Metric]]:
        """Fresh evaluation metrics of every task and every conditional output, by name."""
        return {head.name: head.create_metrics() for head in (*self.heads, *self.conditional_heads.values())}

    def update_metrics(
        self,
        metrics: Mapping[str, Mapping[str, keras.metrics.Metric]],
        labels: Mapping[str, tf.Tensor],
        weights: Mapping[str, tf.Tensor],
        logits: Mapping[str, tf.Tensor],
        tower_logits: Mapping[str, tf.Tensor],
    ) -> None:
        """Adds one batch to `metrics` (from `create_metrics`): each task on its own labelled rows, with the
        label masks and sample weights of training; a funnel task's conditional output (its tower's logit) on
        the rows where the earlier event happened."""
        for head in self.heads:
            head.update_metrics(
                metrics[head.name], labels[head.label], logits[head.name], weights[head.label]
            )
        tasks = {task.name: task for task in self.tasks}
        for name, head in self.conditional_heads.items():
            task, earlier = tasks[name], tasks[tasks[name].after]
            happened = tf.cast(labels[earlier.label] > 0, tf.float32) * tf.cast(
                weights[earlier.label] > 0, tf.float32
            )
            head.update_metrics(
                metrics[head.name], labels[task.label], tower_logits[name], weights[task.label] * happened
            )

    def combine(self, task_losses: Mapping[str, float]) -> float:
        """The evaluation's `loss`: task losses that are means over a whole split, weighted by the tasks'
        fixed weights alone, so that runs compare whatever their weighting (learned weights move)."""
        return float(sum(head.weight * task_losses[head.name] for head in self.heads))

    def _combine(self, task_losses: Mapping[str, Any], replicas: int, labelled: Mapping[str, Any]) -> Any:
        if self.learned_weights is not None:
            task_weights = {head.name: head.weight for head in self.heads}
            return self.learned_weights(
                task_losses, task_weights=task_weights, replicas=replicas, present=labelled
            )
        return sum(head.weight * task_losses[head.name] for head in self.heads)

    def weights_now(self) -> dict[str, float]:
        """Each task's current learned loss weight (none with fixed weighting)."""
        return self.learned_weights.weights_now() if self.learned_weights is not None else {}
