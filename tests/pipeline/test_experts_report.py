"""The experts report on a model whose gates are set by hand: numbers computed by hand."""

import dataclasses
import json
import math

import numpy as np
import pytest

from pipeline import data, experts_report
from pipeline.estimator import Estimator
from pipeline.models import model_fn
from tests.conftest import small_experiment


def _mmoe_with_gate_rows(first_rows):
    """An MMoE (4 experts) whose gates see only the first input: gate g's kernel row 0 is `first_rows[g]`."""
    model = model_fn(small_experiment().model)
    for gate, row in zip(model.bottom.gates, first_rows, strict=True):
        kernel = np.zeros(gate.kernel.shape, np.float32)
        kernel[0] = row
        gate.kernel.assign(kernel)
    return model


def _batches(model, rows=8, value=1.0):
    """Two batches of inputs whose first feature is `value` and the others 0."""
    raw = np.zeros((rows, 100), np.float32)
    raw[:, 0] = value
    inputs = model.preprocessor({"inputs": raw})
    return [inputs, inputs]


def test_gates_of_different_experts_give_their_weights_and_entropies():
    model = _mmoe_with_gate_rows([[math.log(2), 0, 0, 0], [0, 0, 0, math.log(7)]])
    report = experts_report.gate_statistics(model, _batches(model))
    # softmax(log 2, 0, 0, 0) = (2, 1, 1, 1) / 5;  softmax(0, 0, 0, log 7) = (1, 1, 1, 7) / 10
    y1, y2 = report["gates"]["y1"], report["gates"]["y2"]
    assert report["examples"] == 16 and y1["experts"] == [f"expert_{i}" for i in range(4)]
    np.testing.assert_allclose(y1["mean_weights"], [0.4, 0.2, 0.2, 0.2], rtol=1e-5)
    np.testing.assert_allclose(y2["mean_weights"], [0.1, 0.1, 0.1, 0.7], rtol=1e-5)
    assert y1["mean_entropy"] == pytest.approx(-(0.4 * math.log(0.4) + 3 * 0.2 * math.log(0.2)), rel=1e-5)
    assert y2["mean_entropy"] == pytest.approx(-(3 * 0.1 * math.log(0.1) + 0.7 * math.log(0.7)), rel=1e-5)
    assert y1["max_entropy"] == pytest.approx(math.log(4))
    assert report["unused_experts"] == [] and report["collapsed_to"] is None


def test_experts_that_collapse_into_one_are_reported():
    model = _mmoe_with_gate_rows([[12.0, 0, 0, 0], [10.0, 0, 0, 0]])
    report = experts_report.gate_statistics(model, _batches(model))
    # softmax(12, 0, 0, 0): expert_0 takes 1 - 3 e^-12 / (1 + 3 e^-12); the others e^-12 / (...), ~6e-6
    assert report["gates"]["y1"]["mean_weights"][0] == pytest.approx(1 / (1 + 3 * math.exp(-12)), rel=1e-6)
    assert report["unused_experts"] == ["expert_1", "expert_2", "expert_3"]
    assert report["collapsed_to"] == "expert_0"
    lines = experts_report.summary(report)
    assert lines[-1] == "  Warning: the experts collapsed: expert_0 takes most of every gate's weight."
    assert lines[-2] == "  Experts no task uses (mean weight < 0.01): expert_1, expert_2, expert_3"


def test_ple_gates_name_their_own_and_the_shared_experts(tmp_path):
    config = small_experiment("ple")
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, num_levels=2))
    estimator = Estimator(config, tmp_path)
    estimator.train(data.input_fn(config, "train"), max_steps=5)
    report = estimator.report_experts(data.input_fn(config, "eval"))
    assert report["gates"]["y1_level_1"]["experts"] == [
        "level_1/y1_0",
        "level_1/y1_1",
        "level_1/shared_0",
        "level_1/shared_1",
    ]
    assert len(report["gates"]["shared_level_0"]["experts"]) == 6 and report["examples"] == 1024
    for gate in report["gates"].values():
        assert sum(gate["mean_weights"]) == pytest.approx(1.0, rel=1e-5)
    assert json.loads((tmp_path / "experts.json").read_text())["gates"] == report["gates"]
    assert (tmp_path / "experts.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
