"""Gating network of a mixture of experts."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from pipeline.checks import check_positive_int


def softmax(logits: Any) -> Any:
    """Softmax over the last axis, from elementwise ops.

    oneDNN's fused softmax kernel costs more than the whole gate matmul on rows as short as a gate's
    (one weight per expert); these few elementwise ops do not.
    """
    exponentials = ops.exp(logits - ops.max(logits, axis=-1, keepdims=True))
    return exponentials / ops.sum(exponentials, axis=-1, keepdims=True)


@keras.saving.register_keras_serializable(package="mtl")
class Gate(keras.layers.Layer):
    """Mixture weights over experts: `softmax(inputs @ kernel)`, one distribution per example.

    Input shape: `[batch, input_dim]`. Output shape: `[batch, num_experts]`; every row sums to 1.
    No bias, as in the MMoE paper's `g(x) = softmax(W_g x)`.

    Args:
        num_experts: how many experts the weights are over.
        kernel_initializer: initializer of the gate kernel.

    References:
        Ma et al., "Modeling Task Relationships in Multi-task Learning with Multi-gate Mixture-of-Experts",
        KDD 2018.
    """

    def __init__(self, num_experts: int, kernel_initializer: Any = "glorot_uniform", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.num_experts = check_positive_int("num_experts", num_experts)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        self.kernel = self.add_weight(
            name="kernel",
            shape=(input_shape[-1], self.num_experts),
            initializer=self.kernel_initializer,
        )

    def call(self, inputs: Any) -> Any:
        return softmax(ops.matmul(inputs, self.kernel))

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return (*tuple(input_shape)[:-1], self.num_experts)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "num_experts": self.num_experts,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
        }
