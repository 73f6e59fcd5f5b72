"""Experts mixed by gates: the shared part of OMoE (one gate) and MMoE (one gate per task)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
from keras import ops

from pipeline.checks import check_positive_int, check_units, invalid
from pipeline.layers.experts import Experts
from pipeline.layers.gate import Gate, softmax
from pipeline.layers.initializers import fresh_copy


@keras.saving.register_keras_serializable(package="mtl")
class MixtureOfExperts(keras.layers.Layer):
    """`num_experts` expert MLPs mixed by `num_gates` softmax gates: one `Experts` and a `Gate` per mixture.

    The experts are fused (`Experts`), so that each layer runs as one matmul for all experts rather than `E`
    small ones; for the same reason the gates run together, as one matmul against their kernels side by side.

    Input shape: `[batch, input_dim]`. Output: a list of `num_gates` tensors `[batch, expert_units[-1]]`,
    gate `g`'s weighted sum of the expert outputs. `gate_weights` gives the mixture weights themselves.

    Args:
        num_experts: number of experts.
        expert_units: layer sizes of every expert.
        num_gates: 1 for OMoE (all tasks share the mixture), the number of tasks for MMoE.
        activation: activation after every expert layer.
        dropout: dropout rate on the expert outputs.
        kernel_initializer: initializer of the stacked expert kernels (default: Glorot per expert).
        bias_initializer: initializer of the expert biases.
        gate_kernel_initializer: initializer of the gate kernels.
        gate_names: a name per gate (default `gate_0`, `gate_1`, ...). MMoE names each after its task, so
            a gate keeps its variables' names when tasks are added or reordered (what warm start matches).

    References:
        Ma et al., "Modeling Task Relationships in Multi-task Learning with Multi-gate Mixture-of-Experts",
        KDD 2018.
    """

    def __init__(
        self,
        num_experts: int,
        expert_units: Sequence[int],
        num_gates: int,
        activation: str = "relu",
        dropout: float = 0.0,
        kernel_initializer: Any = None,
        bias_initializer: Any = "zeros",
        gate_kernel_initializer: Any = "glorot_uniform",
        gate_names: Sequence[str] = (),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        # `expert_units` is checked here as well as by `Experts`, so that errors name this layer's argument.
        self.experts = Experts(
            num_experts,
            check_units("expert_units", expert_units),
            activation=activation,
            dropout=dropout,
            kernel_initializer=kernel_initializer,
            bias_initializer=bias_initializer,
            name="experts",
        )
        self.num_gates = check_positive_int("num_gates", num_gates)
        self.gate_kernel_initializer = keras.initializers.get(gate_kernel_initializer)
        self.gate_names = tuple(gate_names) or tuple(f"gate_{g}" for g in range(num_gates))
        if len(self.gate_names) != num_gates:
            raise invalid("gate_names", list(gate_names), f"must name each of the {num_gates} gates")
        self.gates = [
            Gate(self.num_experts, kernel_initializer=fresh_copy(self.gate_kernel_initializer), name=name)
            for name in self.gate_names
        ]

    @property
    def num_experts(self) -> int:
        return self.experts.num_experts

    @property
    def expert_units(self) -> tuple[int, ...]:
        return self.experts.units

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        self.experts.build(input_shape)
        for gate in self.gates:
            gate.build(input_shape)

    def expert_outputs(self, inputs: Any, training: bool | None = None) -> Any:
        """Every expert's output: `[batch, num_experts, expert_units[-1]]`."""
        return self.experts(inputs, training=training)

    def gate_weights(self, inputs: Any) -> Any:
        """Mixture weights of every gate: `[batch, num_gates, num_experts]`, summing to 1 over experts.

        All gates run as one matmul against their kernels side by side.
        """
        if not self.built:
            self.build(tuple(inputs.shape))
        kernels = ops.concatenate([gate.kernel for gate in self.gates], axis=1)
        logits = ops.reshape(ops.matmul(inputs, kernels), (-1, self.num_gates, self.num_experts))
        return softmax(logits)

    def named_gate_weights(self, inputs: Any, task_names: Sequence[str]) -> dict[str, Any]:
        """Each task's mixture weights `[batch, num_experts]`, by task name (OMoE's tasks share one gate)."""
        weights = self.gate_weights(inputs)
        return {task: weights[:, 0 if self.num_gates == 1 else i] for i, task in enumerate(task_names)}

    def gate_experts(self, task_names: Sequence[str]) -> dict[str, list[str]]:
        """The experts each of `named_gate_weights`' gates weighs, in order: `expert_<i>`, for every gate."""
        return {task: [f"expert_{i}" for i in range(self.num_experts)] for task in task_names}

    def call(self, inputs: Any, training: bool | None = None) -> list[Any]:
        mixed = ops.matmul(self.gate_weights(inputs), self.expert_outputs(inputs, training))
        return ops.unstack(mixed, num=self.num_gates, axis=1)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> list[tuple]:
        return [(input_shape[0], self.expert_units[-1])] * self.num_gates

    def get_config(self) -> dict[str, Any]:
        experts = self.experts.get_config()
        return {
            **super().get_config(),
            "num_experts": self.num_experts,
            "expert_units": list(self.expert_units),
            "num_gates": self.num_gates,
            "activation": experts["activation"],
            "dropout": experts["dropout"],
            "kernel_initializer": experts["kernel_initializer"],
            "bias_initializer": experts["bias_initializer"],
            "gate_kernel_initializer": keras.initializers.serialize(self.gate_kernel_initializer),
            "gate_names": list(self.gate_names),
        }
