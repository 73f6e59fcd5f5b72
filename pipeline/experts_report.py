"""What the gates of a mixture of experts do on a split: which experts each task uses, whether they collapse.

Over every example of the split, each gate's mean weight per expert and mean entropy; the experts no gate
uses; and a collapse warning when one expert takes most of every gate's weight (the experts then are one
shared bottom in disguise). Written as `experts.json` and as a task x expert heatmap, `experts.png`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.models import MultiTaskModel

REPORT_FILE = "experts.json"
PICTURE_FILE = "experts.png"
UNUSED_BELOW = 0.01  # a mean weight under this in every gate: an expert no task uses
COLLAPSE_ABOVE = 0.5  # a mean weight over this in every gate: one expert does the work


def gate_statistics(model: MultiTaskModel, batches: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Mean gate weights and entropies of `model` over `batches` of preprocessed inputs (what the data's
    input functions yield), and what they show.

    Returns:
        `{"examples", "gates": {gate: {"experts": [...], "mean_weights": [...], "mean_entropy",
        "max_entropy"}}, "unused_experts": [...], "collapsed_to": expert or None}`.
    """
    if not model.has_gates:
        raise ValueError(f"The {model.config.architecture} model mixes no experts with gates.")
    task_names = [task.name for task in model.config.tasks]
    gate_experts = model.bottom.gate_experts(task_names)
    sums = {gate: np.zeros(len(experts)) for gate, experts in gate_experts.items()}
    entropy_sums = dict.fromkeys(gate_experts, 0.0)
    examples = 0
    for inputs in batches:
        weights = model.bottom.named_gate_weights(model.encoder(inputs), task_names)
        for gate, value in weights.items():
            value = np.asarray(value, np.float64)
            sums[gate] += value.sum(axis=0)
            entropy_sums[gate] += float(-(value * np.log(np.clip(value, 1e-12, None))).sum())
        examples += len(next(iter(weights.values())))
    if not examples:
        raise ValueError("The split holds no examples.")
    gates = {
        gate: {
            "experts": experts,
            "mean_weights": (sums[gate] / examples).tolist(),
            "mean_entropy": entropy_sums[gate] / examples,
            "max_entropy": math.log(len(experts)),
        }
        for gate, experts in gate_experts.items()
    }
    return {"examples": examples, "gates": gates, **_findings(gates)}


def _findings(gates: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The experts no gate uses, and the expert every gate leans on, if one does."""
    best_use: dict[str, float] = {}
    for gate in gates.values():
        for expert, weight in zip(gate["experts"], gate["mean_weights"], strict=True):
            best_use[expert] = max(best_use.get(expert, 0.0), weight)
    unused = [expert for expert, weight in best_use.items() if weight < UNUSED_BELOW]
    leaders = {gate["experts"][int(np.argmax(gate["mean_weights"]))] for gate in gates.values()}
    collapsed = None
    if len(leaders) == 1 and all(max(gate["mean_weights"]) > COLLAPSE_ABOVE for gate in gates.values()):
        collapsed = leaders.pop()
    return {"unused_experts": unused, "collapsed_to": collapsed}


def summary(report: Mapping[str, Any]) -> list[str]:
    """Lines for a person: each gate's heaviest experts and entropy, then the findings."""
    lines = [f"Gate weights over {report['examples']} examples:"]
    for gate, values in report["gates"].items():
        ranked = sorted(zip(values["mean_weights"], values["experts"], strict=True), reverse=True)[:3]
        top = ", ".join(f"{expert} {weight:.2f}" for weight, expert in ranked)
        entropy = f"entropy {values['mean_entropy']:.2f} of {values['max_entropy']:.2f}"
        lines.append(f"  {gate:<16} {entropy}  heaviest: {top}")
    if report["unused_experts"]:
        lines.append(
            f"  Experts no task uses (mean weight < {UNUSED_BELOW}): {', '.join(report['unused_experts'])}"
        )
    if report["collapsed_to"]:
        lines.append(
            f"  Warning: the experts collapsed: {report['collapsed_to']} takes most of every gate's weight."
        )
    return lines


def draw(report: Mapping[str, Any], path: str | Path) -> None:
    """A heatmap of mean gate weights, a row per gate and a column per expert, each cell labelled, as a PNG
    (the colours span 0 to the largest weight, so that near-uniform gates still show their preferences)."""
    import matplotlib

    matplotlib.use("Agg")  # headless: no display is needed or used
    from matplotlib import pyplot as plt

    gates = list(report["gates"])
    experts = list(dict.fromkeys(e for gate in report["gates"].values() for e in gate["experts"]))
    grid = np.full((len(gates), len(experts)), np.nan)
    for row, gate in enumerate(gates):
        values = report["gates"][gate]
        for expert, weight in zip(values["experts"], values["mean_weights"], strict=True):
            grid[row, experts.index(expert)] = weight
    figure, axes = plt.subplots(figsize=(1.0 + 0.6 * len(experts), 1.2 + 0.5 * len(gates)))
    image = axes.imshow(grid, cmap="viridis", vmin=0.0, vmax=float(np.nanmax(grid)), aspect="auto")
    for (row, column), weight in np.ndenumerate(grid):
        if not np.isnan(weight):
            axes.text(column, row, f"{weight:.2f}", ha="center", va="center", fontsize=7, color="white")
    axes.set_xticks(range(len(experts)), experts, rotation=60, ha="right", fontsize=8)
    axes.set_yticks(range(len(gates)), gates, fontsize=8)
    axes.set_title(f"Mean gate weight per expert ({report['examples']} examples)", fontsize=9)
    figure.colorbar(image, ax=axes)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
