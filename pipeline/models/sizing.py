"""Sizing a model to a parameter budget, as the MMoE paper compares architectures at equal size."""

from __future__ import annotations

import dataclasses

from absl import logging

from pipeline.config import ModelConfig
from pipeline.errors import ConfigError
from pipeline.models.multitask_model import model_fn

# The widths each built-in architecture's shared part is made of, which sizing scales.
_WIDTHS = {
    "shared_bottom": "bottom_units",
    "single_task": "bottom_units",
    "esmm": "bottom_units",
    "omoe": "expert_units",
    "mmoe": "expert_units",
    "ple": "expert_units",
}
_LARGEST_WIDTH = 1 << 16


def parameter_count(config: ModelConfig) -> int:
    return model_fn(config).count_params()


def fit_to_budget(config: ModelConfig, budget: int, tolerance: float = 0.02) -> ModelConfig:
    """`config` with its architecture's widths (`expert_units` or `bottom_units`) scaled by one factor, so
    that the model's parameter count is the closest to `budget` it can be, within `tolerance` of it.

    The towers, embeddings and expert counts stay as they are. The first layer's width is searched (the
    count grows with it); the other layers keep their proportions to it.

    Raises:
        ConfigError: the architecture is not a built-in one, or no width comes within `tolerance`.
    """
    if config.architecture not in _WIDTHS:
        raise ConfigError(f"param_budget sizes the built-in architectures ({', '.join(_WIDTHS)}) only.")
    field = _WIDTHS[config.architecture]
    base = getattr(config, field)

    def sized(width: int) -> ModelConfig:
        units = tuple(max(1, round(size * width / base[0])) for size in base)
        return dataclasses.replace(config, **{field: units})

    high = 1
    while parameter_count(sized(high)) < budget:  # doubling: no model built much larger than the budget
        if high >= _LARGEST_WIDTH:
            raise ConfigError(f"param_budget={budget}: a {field} of {high} is not enough.")
        high *= 2
    low = max(1, high // 2)
    while low < high:  # the smallest first-layer width whose model reaches the budget
        middle = (low + high) // 2
        if parameter_count(sized(middle)) < budget:
            low = middle + 1
        else:
            high = middle
    candidates = [sized(width) for width in {max(1, low - 1), low}]
    best = min(candidates, key=lambda candidate: abs(parameter_count(candidate) - budget))
    count = parameter_count(best)
    if abs(count - budget) > tolerance * budget:
        raise ConfigError(
            f"param_budget={budget}: the closest {config.architecture} has {count} parameters "
            f"({field}={','.join(map(str, getattr(best, field)))}), more than {tolerance:.0%} away; the "
            "towers and inputs alone may be too large, or the widths too coarse."
        )
    logging.info(
        "Sized %s to %d parameters (budget %d): %s=%s",
        config.architecture,
        count,
        budget,
        field,
        ",".join(map(str, getattr(best, field))),
    )
    return dataclasses.replace(best, param_budget=budget)
