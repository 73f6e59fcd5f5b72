"""Progressive Layered Extraction (PLE): task-specific and shared experts, gated level by level."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
from keras import ops

from pipeline.checks import check_positive_int, check_rate, check_unique, check_units, invalid
from pipeline.layers.experts import Experts, mix
from pipeline.layers.gate import Gate
from pipeline.layers.initializers import fresh_copy


@keras.saving.register_keras_serializable(package="mtl")
class ExtractionLevel(keras.layers.Layer):
    """One level of PLE, Customized Gate Control (CGC): each task has experts of its own and shares the
    shared experts; task `t`'s gate mixes its own and the shared experts, and (below the last level) a shared
    gate mixes all of them into the input of the next level's shared experts.

    Inputs: a list of `num_tasks + 1` tensors `[batch, dim]`, each task's input then the shared input (the
    first level gets the model's input in every slot). Output: a list of `num_tasks` task representations
    `[batch, units[-1]]`, then the shared one unless `last`.

    Args:
        task_names: the tasks, in the model's order; their experts and gates are named after them.
        num_task_experts: experts of each task.
        num_shared_experts: experts all tasks share.
        units: layer sizes of every expert.
        last: whether this is the top level (no shared gate).
        activation, dropout: of the experts.
    """

    def __init__(
        self,
        task_names: Sequence[str],
        num_task_experts: int,
        num_shared_experts: int,
        units: Sequence[int],
        last: bool,
        activation: str = "relu",
        dropout: float = 0.0,
        gate_kernel_initializer: Any = "glorot_uniform",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if "shared" in task_names:
            raise invalid(
                "task_names", list(task_names), "must not hold 'shared', PLE's name for shared experts"
            )
        check_unique("task_names", list(task_names))
        self.task_names = tuple(task_names)
        self.num_task_experts = check_positive_int("num_task_experts", num_task_experts)
        self.num_shared_experts = check_positive_int("num_shared_experts", num_shared_experts)
        self.units = check_units("expert_units", units)
        self.last = bool(last)
        self.activation = activation
        self.dropout = check_rate("dropout", dropout)
        self.gate_kernel_initializer = keras.initializers.get(gate_kernel_initializer)
        self.task_experts = [
            Experts(num_task_experts, units, activation, dropout, name=f"experts_{task}")
            for task in self.task_names
        ]
        self.shared_experts = Experts(num_shared_experts, units, activation, dropout, name="experts_shared")
        own_and_shared = num_task_experts + num_shared_experts
        self.task_gates = [
            Gate(
                own_and_shared,
                kernel_initializer=fresh_copy(self.gate_kernel_initializer),
                name=f"gate_{task}",
            )
            for task in self.task_names
        ]
        every_expert = len(self.task_names) * num_task_experts + num_shared_experts
        self.shared_gate = (
            None
            if self.last
            else Gate(
                every_expert, kernel_initializer=fresh_copy(self.gate_kernel_initializer), name="gate_shared"
            )
        )

    def build(self, input_shape: Sequence[tuple[int | None, ...]]) -> None:
        *task_shapes, shared_shape = input_shape
        for experts, gate, shape in zip(self.task_experts, self.task_gates, task_shapes, strict=True):
            experts.build(shape)
            gate.build(shape)
        self.shared_experts.build(shared_shape)
        if self.shared_gate is not None:
            self.shared_gate.build(shared_shape)

    def gate_weights(self, inputs: Sequence[Any], training: bool | None = None) -> list[Any]:
        """Each task gate's weights `[batch, num_task_experts + num_shared_experts]` (own experts first),
        then the shared gate's `[batch, every expert]` unless `last`."""
        *task_inputs, shared_input = inputs
        weights = [gate(x) for gate, x in zip(self.task_gates, task_inputs, strict=True)]
        if self.shared_gate is not None:
            weights.append(self.shared_gate(shared_input))
        return weights

    def call(self, inputs: Sequence[Any], training: bool | None = None) -> list[Any]:
        *task_inputs, shared_input = inputs
        shared = self.shared_experts(shared_input, training=training)
        own = [
            experts(x, training=training) for experts, x in zip(self.task_experts, task_inputs, strict=True)
        ]
        weights = self.gate_weights(inputs)
        outputs = [
            mix(task_weights, ops.concatenate([task_outputs, shared], axis=1))
            for task_weights, task_outputs in zip(weights[: len(own)], own, strict=True)
        ]
        if self.shared_gate is not None:
            outputs.append(mix(weights[-1], ops.concatenate([*own, shared], axis=1)))
        return outputs

    def compute_output_shape(self, input_shape: Sequence[tuple[int | None, ...]]) -> list[tuple]:
        count = len(self.task_names) + (0 if self.last else 1)
        return [(input_shape[0][0], self.units[-1])] * count

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "task_names": list(self.task_names),
            "num_task_experts": self.num_task_experts,
            "num_shared_experts": self.num_shared_experts,
            "units": list(self.units),
            "last": self.last,
            "activation": self.activation,
            "dropout": self.dropout,
            "gate_kernel_initializer": keras.initializers.serialize(self.gate_kernel_initializer),
        }


@keras.saving.register_keras_serializable(package="mtl")
class ProgressiveLayeredExtraction(keras.layers.Layer):
    """`num_levels` stacked `ExtractionLevel`s; with one level it is CGC.

    Input shape: `[batch, input_dim]`. Output: a list with one `[batch, units[-1]]` per task.

    References:
        Tang et al., "Progressive Layered Extraction (PLE): A Novel Multi-Task Learning (MTL) Model for
        Personalized Recommendations", RecSys 2020.
    """

    def __init__(
        self,
        task_names: Sequence[str],
        num_levels: int,
        num_task_experts: int,
        num_shared_experts: int,
        units: Sequence[int],
        activation: str = "relu",
        dropout: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.task_names = tuple(task_names)
        self.num_levels = check_positive_int("num_levels", num_levels)
        self.num_task_experts = num_task_experts
        self.num_shared_experts = num_shared_experts
        self.units = tuple(units)
        self.activation = activation
        self.dropout = dropout
        self.levels = [
            ExtractionLevel(
                task_names,
                num_task_experts,
                num_shared_experts,
                units,
                last=level == num_levels - 1,
                activation=activation,
                dropout=dropout,
                name=f"level_{level}",
            )
            for level in range(num_levels)
        ]

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        shapes = [tuple(input_shape)] * (len(self.task_names) + 1)
        for level in self.levels:
            level.build(shapes)
            shapes = [(input_shape[0], self.units[-1])] * (len(self.task_names) + 1)

    def call(self, inputs: Any, training: bool | None = None) -> list[Any]:
        x = [inputs] * (len(self.task_names) + 1)
        for level in self.levels:
            x = level(x, training=training)
        return x

    def named_gate_weights(self, inputs: Any, task_names: Sequence[str] = ()) -> dict[str, Any]:
        """Every gate's weights by name: `<task>_level_<l>` (over the task's own experts, then the shared
        ones) and, below the top level, `shared_level_<l>` (over every task's experts, then the shared
        ones)."""
        named = {}
        for level, weights in enumerate(self.gate_weights(inputs)):
            names = [*self.task_names, "shared"][: len(weights)]
            named.update({f"{name}_level_{level}": w for name, w in zip(names, weights, strict=True)})
        return named

    def gate_experts(self, task_names: Sequence[str] = ()) -> dict[str, list[str]]:
        """The experts each of `named_gate_weights`' gates weighs, in order, named `level_<l>/<owner>_<i>`
        (the owner a task, or `shared`)."""
        named = {}
        for level in range(self.num_levels):

            def experts(owner: str, count: int, level: int = level) -> list[str]:
                return [f"level_{level}/{owner}_{i}" for i in range(count)]

            shared = experts("shared", self.num_shared_experts)
            for task in self.task_names:
                named[f"{task}_level_{level}"] = experts(task, self.num_task_experts) + shared
            if level < self.num_levels - 1:
                every = [name for task in self.task_names for name in experts(task, self.num_task_experts)]
                named[f"shared_level_{level}"] = every + shared
        return named

    def gate_weights(self, inputs: Any) -> list[list[Any]]:
        """Every level's gate weights (see `ExtractionLevel.gate_weights`), level by level."""
        x, weights = [inputs] * (len(self.task_names) + 1), []
        for level in self.levels:
            weights.append(level.gate_weights(x))
            x = level(x)
        return weights

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> list[tuple]:
        return [(input_shape[0], self.units[-1])] * len(self.task_names)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "task_names": list(self.task_names),
            "num_levels": self.num_levels,
            "num_task_experts": self.num_task_experts,
            "num_shared_experts": self.num_shared_experts,
            "units": list(self.units),
            "activation": self.activation,
            "dropout": self.dropout,
        }
