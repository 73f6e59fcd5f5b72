"""Argument checks shared by the configs and the layers.

Messages follow one form, naming the field and the value: "`num_experts` must be a positive integer.
Received: num_experts=0". They raise `ConfigError`, a `ValueError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pipeline.errors import ConfigError


def invalid(field: str, value: Any, expected: str) -> ConfigError:
    return ConfigError(f"`{field}` {expected}. Received: {field}={value!r}")


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def check_positive_int(field: str, value: Any) -> int:
    if not _is_positive_int(value):
        raise invalid(field, value, "must be a positive integer")
    return value


def check_units(field: str, units: Sequence[int], allow_empty: bool = False) -> tuple[int, ...]:
    units = tuple(units)
    if not units and not allow_empty:
        raise invalid(field, list(units), "must list at least one layer size")
    if not all(_is_positive_int(u) for u in units):
        raise invalid(field, list(units), "must hold positive integers only")
    return units


def check_rate(field: str, value: Any) -> float:
    if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise invalid(field, value, "must be in [0, 1)")
    return float(value)


def check_choice(field: str, value: Any, choices: Sequence[str]) -> Any:
    if value not in choices:
        raise invalid(field, value, f"must be one of {', '.join(choices)}")
    return value


def check_unique(field: str, names: Sequence[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise invalid(field, list(names), f"must not repeat a name ({name!r} appears twice)")
        seen.add(name)
