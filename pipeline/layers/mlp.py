"""The one dense stack of the package: bottoms, experts (unfused) and towers are all built from it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras

from pipeline.checks import check_rate, check_units
from pipeline.layers.initializers import fresh_copy


@keras.saving.register_keras_serializable(package="mtl")
class MLP(keras.layers.Layer):
    """Dense layers, each followed by the activation and, while training, dropout.

    Input shape: `[batch, input_dim]`. Output shape: `[batch, units[-1]]`.

    Args:
        units: sizes of the dense layers, at least one.
        activation: activation after every layer (the seeds left the last one linear, which made a
            single-layer expert a purely linear map).
        dropout: dropout rate after every layer, in [0, 1).
        kernel_initializer: initializer of the dense kernels.
        bias_initializer: initializer of the dense biases.
    """

    def __init__(
        self,
        units: Sequence[int],
        activation: str = "relu",
        dropout: float = 0.0,
        kernel_initializer: Any = "glorot_uniform",
        bias_initializer: Any = "zeros",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.units = check_units("units", units)
        self.activation = keras.activations.get(activation)
        self.dropout = check_rate("dropout", dropout)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.dense_layers = [
            keras.layers.Dense(
                size,
                activation=self.activation,
                kernel_initializer=fresh_copy(self.kernel_initializer),
                bias_initializer=fresh_copy(self.bias_initializer),
                name=f"dense_{i}",
            )
            for i, size in enumerate(self.units)
        ]
        self.dropout_layer = keras.layers.Dropout(self.dropout) if self.dropout else None

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        shape = tuple(input_shape)
        for layer in self.dense_layers:
            layer.build(shape)
            shape = (*shape[:-1], layer.units)

    def call(self, inputs: Any, training: bool | None = None) -> Any:
        x = inputs
        for layer in self.dense_layers:
            x = layer(x)
            if self.dropout_layer is not None:
                x = self.dropout_layer(x, training=training)
        return x

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return (*tuple(input_shape)[:-1], self.units[-1])

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "units": list(self.units),
            "activation": keras.activations.serialize(self.activation),
            "dropout": self.dropout,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "bias_initializer": keras.initializers.serialize(self.bias_initializer),
        }
