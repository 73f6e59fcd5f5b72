"""One bottom per task, sharing nothing: the single-task baseline that multi-task models must beat."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras

from pipeline.checks import check_unique
from pipeline.layers.mlp import MLP


@keras.saving.register_keras_serializable(package="mtl")
class SeparateBottoms(keras.layers.Layer):
    """An `MLP` per task, each seeing the inputs alone: training one task cannot move another's weights, so
    the gap between a multi-task model and this one is the transfer (positive or negative) between tasks.

    Input shape: `[batch, input_dim]`, or a list with each task's own `[batch, input_dim]` (inputs embedded
    per task). Output: a list with one `[batch, units[-1]]` per task.

    Args:
        task_names: the tasks, in the model's order; each bottom is named `bottom_<task>`.
        units: layer sizes of every bottom.
        activation: activation after every layer.
        dropout: dropout rate after every layer.
    """

    def __init__(
        self,
        task_names: Sequence[str],
        units: Sequence[int],
        activation: str = "relu",
        dropout: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_unique("task_names", list(task_names))
        self.task_names = tuple(task_names)
        self.units = tuple(units)
        self.activation = activation
        self.dropout = dropout
        self.bottoms = [
            MLP(units, activation=activation, dropout=dropout, name=f"bottom_{task}")
            for task in self.task_names
        ]

    def _per_task(self, inputs: Any) -> list[Any]:
        return list(inputs) if isinstance(inputs, (list, tuple)) else [inputs] * len(self.bottoms)

    def build(self, input_shape: Any) -> None:
        shapes = (
            input_shape if isinstance(input_shape[0], (list, tuple)) else [input_shape] * len(self.bottoms)
        )
        for bottom, shape in zip(self.bottoms, shapes, strict=True):
            bottom.build(tuple(shape))

    def call(self, inputs: Any, training: bool | None = None) -> list[Any]:
        return [
            bottom(x, training=training)
            for bottom, x in zip(self.bottoms, self._per_task(inputs), strict=True)
        ]

    def compute_output_shape(self, input_shape: Any) -> list[tuple]:
        batch = input_shape[0][0] if isinstance(input_shape[0], (list, tuple)) else input_shape[0]
        return [(batch, self.units[-1])] * len(self.bottoms)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "task_names": list(self.task_names),
            "units": list(self.units),
            "activation": self.activation,
            "dropout": self.dropout,
        }
