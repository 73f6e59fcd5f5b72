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

    Input shape: `[batch, input_dim]`. Output: a list with one `[batch, units[-1]]` per task.

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

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        for bottom in self.bottoms:
            bottom.build(input_shape)

    def call(self, inputs: Any, training: bool | None = None) -> list[Any]:
        return [bottom(inputs, training=training) for bottom in self.bottoms]

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> list[tuple]:
        return [(input_shape[0], self.units[-1])] * len(self.bottoms)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "task_names": list(self.task_names),
            "units": list(self.units),
            "activation": self.activation,
            "dropout": self.dropout,
        }
