"""Task-specific tower: hidden layers, then the task's logits (one per example, or one per class)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
from keras import ops

from pipeline.checks import check_positive_int, check_rate, check_units
from pipeline.layers.initializers import fresh_copy
from pipeline.layers.mlp import MLP


@keras.saving.register_keras_serializable(package="mtl")
class Tower(keras.layers.Layer):
    """An `MLP` (possibly empty) followed by a linear read-out of `output_units` logits.

    Input shape: `[batch, input_dim]`. Output shape: `[batch]` for one unit (squeezed on its axis only: the
    seeds squeezed without an axis, which turned a batch of one into a scalar), else `[batch, output_units]`
    (a multi-class task's logits). The task's head applies the output activation.

    Args:
        units: hidden layer sizes; empty for a plain linear read-out.
        activation: activation of the hidden layers.
        dropout: dropout rate after every hidden layer.
        kernel_initializer: initializer of all kernels.
        bias_initializer: initializer of all biases.
        output_units: logits per example.
    """

    def __init__(
        self,
        units: Sequence[int] = (),
        activation: str = "relu",
        dropout: float = 0.0,
        kernel_initializer: Any = "glorot_uniform",
        bias_initializer: Any = "zeros",
        output_units: int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.units = check_units("units", units, allow_empty=True)
        self.output_units = check_positive_int("output_units", output_units)
        self.activation = activation
        self.dropout = check_rate("dropout", dropout)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.hidden = (
            MLP(
                self.units,
                activation=activation,
                dropout=self.dropout,
                kernel_initializer=self.kernel_initializer,
                bias_initializer=self.bias_initializer,
                name="hidden",
            )
            if self.units
            else None
        )
        self.logit = keras.layers.Dense(
            self.output_units,
            kernel_initializer=fresh_copy(self.kernel_initializer),
            bias_initializer=fresh_copy(self.bias_initializer),
            name="logit",
        )

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        shape = tuple(input_shape)
        if self.hidden is not None:
            self.hidden.build(shape)
            shape = self.hidden.compute_output_shape(shape)
        self.logit.build(shape)

    def call(self, inputs: Any, training: bool | None = None) -> Any:
        x = inputs if self.hidden is None else self.hidden(inputs, training=training)
        logits = self.logit(x)
        return ops.squeeze(logits, axis=-1) if self.output_units == 1 else logits

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        batch = tuple(input_shape)[:-1]
        return batch if self.output_units == 1 else (*batch, self.output_units)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "units": list(self.units),
            "activation": self.activation,
            "dropout": self.dropout,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            "output_units": self.output_units,
        }
