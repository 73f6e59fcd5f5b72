"""Experts: several MLPs of one shape, fused so that all of them run as one matmul per layer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
from keras import ops

from pipeline.checks import check_positive_int, check_rate, check_units


def default_expert_initializer(num_experts: int) -> keras.initializers.Initializer:
    """Glorot-uniform for each expert's `[input_dim, units]` slice of the stacked `[E, in, out]` kernel.

    Keras counts the leading expert axis as a receptive field and so divides the variance by `E`; scaling by
    `E` gives every expert exactly the variance a separate `Dense` layer would get.
    """
    return keras.initializers.VarianceScaling(
        scale=float(num_experts), mode="fan_avg", distribution="uniform"
    )


def mix(weights: Any, expert_outputs: Any) -> Any:
    """The weighted sum of expert outputs: weights `[batch, E]` over outputs `[batch, E, units]`."""
    return ops.squeeze(ops.matmul(ops.expand_dims(weights, 1), expert_outputs), axis=1)


@keras.saving.register_keras_serializable(package="mtl")
class Experts(keras.layers.Layer):
    """`num_experts` MLPs of the same `units`, as stacked kernels `[E, in, out]` (one per layer).

    Input shape: `[batch, input_dim]`. Output shape: `[batch, num_experts, units[-1]]`.

    Args:
        num_experts: number of experts.
        units: layer sizes of every expert.
        activation: activation after every layer.
        dropout: dropout rate on the experts' outputs.
        kernel_initializer: initializer of the stacked kernels (default: Glorot per expert).
        bias_initializer: initializer of the biases.
    """

    def __init__(
        self,
        num_experts: int,
        units: Sequence[int],
        activation: str = "relu",
        dropout: float = 0.0,
        kernel_initializer: Any = None,
        bias_initializer: Any = "zeros",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.num_experts = check_positive_int("num_experts", num_experts)
        self.units = check_units("units", units)
        self.activation = keras.activations.get(activation)
        self.dropout = check_rate("dropout", dropout)
        self.kernel_initializer = keras.initializers.get(
            kernel_initializer or default_expert_initializer(num_experts)
        )
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.dropout_layer = keras.layers.Dropout(self.dropout) if self.dropout else None

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        kernels, biases = [], []
        fan_in = input_shape[-1]
        for i, size in enumerate(self.units):
            kernels.append(
                self.add_weight(
                    name=f"kernel_{i}",
                    shape=(self.num_experts, fan_in, size),
                    initializer=self.kernel_initializer,
                )
            )
            biases.append(
                self.add_weight(
                    name=f"bias_{i}", shape=(self.num_experts, size), initializer=self.bias_initializer
                )
            )
            fan_in = size
        self.kernels, self.biases = kernels, biases

    def call(self, inputs: Any, training: bool | None = None) -> Any:
        """The first layer runs as one plain matmul against the kernel's experts side by side, `[in, E * out]`
        (faster than a batched einsum), the others as one batched einsum each."""
        first_kernel, *other_kernels = self.kernels
        fan_in, units = first_kernel.shape[1:]
        side_by_side = ops.reshape(ops.transpose(first_kernel, (1, 0, 2)), (fan_in, -1))
        x = ops.reshape(ops.matmul(inputs, side_by_side), (-1, self.num_experts, units))
        x = self.activation(x + self.biases[0])
        for kernel, bias in zip(other_kernels, self.biases[1:], strict=True):
            x = self.activation(ops.einsum("bei,eio->beo", x, kernel) + bias)
        if self.dropout_layer is not None:
            x = self.dropout_layer(x, training=training)
        return x

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return (input_shape[0], self.num_experts, self.units[-1])

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "num_experts": self.num_experts,
            "units": list(self.units),
            "activation": keras.activations.serialize(self.activation),
            "dropout": self.dropout,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "bias_initializer": keras.initializers.serialize(self.bias_initializer),
        }
