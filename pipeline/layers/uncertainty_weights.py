"""Task loss weights learned from each task's uncertainty, so no one tunes them by hand."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="mtl")
class UncertaintyWeights(keras.layers.Layer):
    """Combines task losses as `sum_t exp(-s_t) L_t + s_t`, with `s_t` (the log of task `t`'s variance)
    learned with the model: a task whose loss stays high (noisy, hard) is weighted down, and the `+ s_t` term
    keeps the weights from collapsing to 0. The `s_t` start at 0 (weight 1) and are checkpointed with the
    model.

    References:
        Kendall, Gal and Cipolla, "Multi-Task Learning Using Uncertainty to Weigh Losses for Scene Geometry
        and Semantics", CVPR 2018.
    """

    def __init__(self, task_names: Sequence[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.task_names = tuple(task_names)

    def build(self, input_shape: Any = None) -> None:
        self.log_variances = {
            task: self.add_weight(name=f"log_variance_{task}", shape=(), initializer="zeros")
            for task in self.task_names
        }

    def call(
        self,
        task_losses: Mapping[str, Any],
        task_weights: Mapping[str, float],
        replicas: int = 1,
        present: Mapping[str, Any] | None = None,
    ) -> Any:
        """The total of `task_weights[t] * (exp(-s_t) L_t + s_t)` over the tasks. Called on each of `replicas`
        replicas with its share of each task loss, it adds its share `s_t / replicas` of the `s_t` terms too,
        so that the replicas' results sum to the total. `present[t]` (1 or 0) says whether task `t` has any
        labelled row in the batch: without one, its `s_t` term is left out too, or batches without labels
        would only ever push its weight up."""
        total = 0.0
        for task, loss in task_losses.items():
            s = self.log_variances[task]
            regulariser = s / replicas if present is None else present[task] * s / replicas
            total += task_weights[task] * (ops.exp(-s) * loss + regulariser)
        return total

    def weights_now(self) -> dict[str, float]:
        """Each task's current loss weight `exp(-s_t)`."""
        return {task: float(ops.exp(-variable)) for task, variable in self.log_variances.items()}

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "task_names": list(self.task_names)}
