"""The MMoE-paper reproduction runs end to end in a tiny configuration, writes its results and plots, and
resumes from its results file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.cli.commands import _env

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "reproduce_mmoe.py"
CENSUS = Path(__file__).resolve().parents[3] / "shared" / "data" / "census-income"


def _reproduce(tmp_path, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), f"--output={tmp_path / 'runs.json'}", f"--plots_dir={tmp_path}"]
        + list(flags),
        capture_output=True,
        text=True,
        timeout=600,
        env=_env(),
    )


def test_a_tiny_synthetic_sweep_writes_results_and_plots_and_resumes(tmp_path):
    flags = [
        "--experiments=synthetic",
        "--models=shared_bottom,mmoe",
        "--p=0.5",
        "--seeds=2",
        "--synthetic_examples=500",
        "--synthetic_steps=20",
        "--eval_every_steps=10",
    ]
    first = _reproduce(tmp_path, *flags)
    assert first.returncode == 0, first.stderr
    runs = json.loads((tmp_path / "runs.json").read_text())
    assert sorted(runs) == [f"synthetic/p=0.5/{m}/{s}" for m in ("mmoe", "shared_bottom") for s in (1, 2)]
    mmoe = runs["synthetic/p=0.5/mmoe/1"]
    assert mmoe["steps_evaluated"] == [10, 20] and len(mmoe["eval_loss"]["y1"]) == 2
    np.testing.assert_allclose([sum(w) for w in mmoe["gate_weights"].values()], [1.0, 1.0], rtol=1e-5)
    assert runs["synthetic/p=0.5/shared_bottom/1"]["gate_weights"] is None
    for picture in ("runs_curves.png", "runs_final_losses.png", "runs_gates.png"):  # named after the output
        assert (tmp_path / picture).read_bytes()[:4] == b"\x89PNG"
    tables = (tmp_path / "runs_tables.md").read_text()
    assert "| 0.5 | mmoe | 2 |" in tables and "| 0.5 | shared_bottom | 2 |" in tables
    assert "c = 0.3, m = 5, 500 training examples, 20 steps" in tables
    gates = tables.split("| gate distance y1-y2, mean [95% interval] |")[1]  # MMoE's two gates compared
    assert gates.splitlines()[2].startswith("| 0.5 | 2 | 0.")
    difficulty = tables.split("| a linear fit's eval loss |")[1].splitlines()[2]  # the data, not a model
    correlation, variance, linear_loss = (float(v) for v in difficulty.strip("|").split("|")[2:])
    assert 0.3 < correlation < 0.6 and 0 < linear_loss < variance  # p = 0.5; a linear fit explains some
    assert "## Census" not in tables  # only the experiments that ran
    paired = tables.split("| difference |")[1]  # pairs of models, by seed
    assert "| 0.5 | mmoe - shared_bottom | 2 |" in paired and "omoe" not in paired  # no OMoE runs
    row = next(line for line in paired.splitlines() if "| mmoe - shared_bottom |" in line).strip("|")
    final = {k: sum(r["eval_loss"][t][-1] for t in ("y1", "y2")) for k, r in runs.items()}
    ratios = [
        final[f"synthetic/p=0.5/mmoe/{s}"] / final[f"synthetic/p=0.5/shared_bottom/{s}"] for s in (1, 2)
    ]
    assert row.split("|")[5].split()[0] == f"{np.sqrt(np.prod(ratios)):.2f}"  # geometric mean over seeds
    assert row.split("|")[7].strip() == f"{sum(r < 1 for r in ratios)} of 2"
    worst = max((1, 2), key=lambda s: final[f"synthetic/p=0.5/mmoe/{s}"])
    mmoe_row = next(line for line in tables.splitlines() if line.startswith("| 0.5 | mmoe | 2 |"))
    assert f"| {final[f'synthetic/p=0.5/mmoe/{worst}']:.5f} ({worst}) |" in mmoe_row
    totals = [
        np.add(*(runs[f"synthetic/p=0.5/mmoe/{s}"]["eval_loss"][t] for t in ("y1", "y2"))) for s in (1, 2)
    ]
    fall = np.median([1 - total[-1] / total[0] for total in totals])  # evaluated at steps 10 and 20
    assert mmoe_row.endswith(f"| {fall:.1%} |") and fall > 0  # the loss still falls this early

    again = _reproduce(tmp_path, *flags, "--seeds=3")  # one more seed: only the new runs train
    assert again.returncode == 0, again.stderr
    assert "6 runs planned, 4 done before, 2 to run." in again.stderr
    assert len(json.loads((tmp_path / "runs.json").read_text())) == 6

    other = _reproduce(tmp_path, *flags, "--seeds=3", "--synthetic_c=0.5", "--models=mmoe")
    assert other.returncode == 0, other.stderr
    assert "3 runs planned, 0 done before, 3 to run." in other.stderr  # other settings: run again
    assert json.loads((tmp_path / "runs.json").read_text())["synthetic/p=0.5/mmoe/1"]["c"] == 0.5


@pytest.mark.slow
def test_a_tiny_census_comparison_reports_test_aucs_and_the_paired_difference(tmp_path):
    flags = [
        "--experiments=census",
        "--models=shared_bottom,mmoe",
        "--census_groups=1",
        "--census_seeds=2",
        "--census_steps=10",
        f"--data_dir={CENSUS}",
    ]
    result = _reproduce(tmp_path, *flags)
    assert result.returncode == 0, result.stderr
    runs = json.loads((tmp_path / "runs.json").read_text())
    assert sorted(runs["census/group=1/mmoe/1"]["test_auc"]) == ["income", "marital"]
    tables = (tmp_path / "runs_tables.md").read_text()
    difference = np.mean(
        [
            runs[f"census/group=1/mmoe/{seed}"]["test_auc"]["income"]
            - runs[f"census/group=1/shared_bottom/{seed}"]["test_auc"]["income"]
            for seed in (1, 2)
        ]
    )
    line = next(
        line for line in tables.splitlines() if line.startswith("| 1 | MMoE - shared-bottom | income | 2 |")
    )
    # Two seeds give four sign flips, so the p-value is 0.5 or 1.
    assert line.startswith(f"| 1 | MMoE - shared-bottom | income | 2 | | {difference:+.4f} [")
    assert line.endswith(("p = 0.500 |", "p = 1.000 |")), line
    assert "## Synthetic" not in tables
