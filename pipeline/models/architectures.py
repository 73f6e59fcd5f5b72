"""The built-in architectures; each differs from the others only in its bottom.

- `shared_bottom`: one MLP shared by all tasks (Caruana, 1997).
- `omoe`: a mixture of experts with one gate shared by all tasks.
- `mmoe`: a mixture of experts with one gate per task (Ma et al., KDD 2018).
- `single_task`: a bottom per task, and embeddings per task, sharing nothing: the baseline that shows
  negative transfer.
- `ple`: Progressive Layered Extraction, task-specific and shared experts gated level by level (Tang et al.,
  RecSys 2020); with one level it is CGC.
- `esmm`: Entire Space Multi-task Model (Ma et al., SIGIR 2018): for a funnel (tasks `after` others, as a
  conversion follows a click), a network per task over the shared embeddings; each later step learns its
  probability given the earlier one, trained through the product on every example.
"""

from __future__ import annotations

import keras

from pipeline.checks import invalid
from pipeline.config import ModelConfig
from pipeline.layers import MLP, MixtureOfExperts, ProgressiveLayeredExtraction, SeparateBottoms
from pipeline.models.registry import register


@register("shared_bottom")
def shared_bottom(config: ModelConfig) -> keras.layers.Layer:
    return MLP(config.bottom_units, activation=config.activation, dropout=config.dropout, name="bottom")


def _mixture(config: ModelConfig, gate_names: tuple[str, ...]) -> keras.layers.Layer:
    return MixtureOfExperts(
        num_experts=config.num_experts,
        expert_units=config.expert_units,
        num_gates=len(gate_names),
        gate_names=gate_names,
        activation=config.activation,
        dropout=config.dropout,
        name="experts",
    )


@register("omoe")
def one_gate_mixture_of_experts(config: ModelConfig) -> keras.layers.Layer:
    return _mixture(config, gate_names=("gate",))


@register("mmoe")
def multi_gate_mixture_of_experts(config: ModelConfig) -> keras.layers.Layer:
    return _mixture(config, gate_names=tuple(f"gate_{task.name}" for task in config.tasks))


@register("single_task", shares_embeddings=False)
def single_task(config: ModelConfig) -> keras.layers.Layer:
    return _separate_bottoms(config)


@register("esmm")
def entire_space_multitask_model(config: ModelConfig) -> keras.layers.Layer:
    if not config.funnel_tasks():
        raise invalid(
            "tasks",
            [task.name for task in config.tasks],
            "must hold a funnel for esmm: a binary task `after` another (e.g. a conversion after a click)",
        )
    return _separate_bottoms(config)


def _separate_bottoms(config: ModelConfig) -> keras.layers.Layer:
    return SeparateBottoms(
        [task.name for task in config.tasks],
        config.bottom_units,
        activation=config.activation,
        dropout=config.dropout,
        name="bottoms",
    )


@register("ple")
def progressive_layered_extraction(config: ModelConfig) -> keras.layers.Layer:
    return ProgressiveLayeredExtraction(
        [task.name for task in config.tasks],
        num_levels=config.num_levels,
        num_task_experts=config.num_task_experts,
        num_shared_experts=config.num_shared_experts,
        units=config.expert_units,
        activation=config.activation,
        dropout=config.dropout,
        name="extraction",
    )
