"""Whether an evaluation improves on the best, and when training has stopped improving.

Early stopping is a pure function of the evaluations so far, which `train_and_evaluate` keeps in
`model_dir/eval_history.json`: a rerun reaches the same decision, and a rerun with more patience trains on.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from pipeline import task_types
from pipeline.errors import ConfigError


def direction(metric: str, mode: str = "auto") -> str:
    """`max` or `min`: `mode` itself, or for `auto` what the metric's task type says of it (AUC and accuracy
    up, losses and errors down)."""
    if mode != "auto":
        return mode
    return "max" if task_types.higher_is_better(metric.rsplit("/", 1)[-1]) else "min"


def metric_value(results: Mapping[str, Any], metric: str) -> float:
    """`loss` or `<task>/<metric>` of an evaluation's results."""
    if metric == "loss":
        return float(results["loss"])
    task, _, name = metric.partition("/")
    try:
        return float(results["tasks"][task][name])
    except KeyError:
        known = ["loss", *(f"{t}/{m}" for t, values in results["tasks"].items() for m in values)]
        raise ConfigError(f"The evaluation has no metric {metric!r}; it has {', '.join(known)}.") from None


def improves(value: float, best: float, mode: str, min_delta: float = 0.0) -> bool:
    """Whether `value` beats `best` by more than `min_delta` in direction `mode`; NaN never improves, and
    anything improves on NaN (no best yet)."""
    if math.isnan(value):
        return False
    if math.isnan(best):
        return True
    return value > best + min_delta if mode == "max" else value < best - min_delta


def stop_reason(
    history: Sequence[Mapping[str, Any]],
    metric: str,
    patience: int,
    min_delta: float = 0.0,
    mode: str = "auto",
) -> str | None:
    """Why to stop after these evaluations, or None to go on.

    Training stops once `patience` evaluations in a row have not improved on the best so far by more than
    `min_delta`.
    """
    mode = direction(metric, mode)
    best_value, best_step, waited = math.nan, 0, 0
    for results in history:
        value = metric_value(results, metric)
        if improves(value, best_value, mode, min_delta):
            best_value, best_step, waited = value, results["global_step"], 0
        else:
            waited += 1
    if waited < patience:
        return None
    by = f" by more than {min_delta:g}" if min_delta else ""
    better = "higher" if mode == "max" else "lower"
    return (
        f"{metric} has not improved{by} for {waited} evaluations since step {best_step} "
        f"({best_value:.6g}; {better} is better)"
    )
