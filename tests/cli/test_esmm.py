"""ESMM on the synthetic click-then-conversion funnel, through `mtl` training, export and both serving
protocols; and a funnel declared by flags on another architecture."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.config import SyntheticDataConfig
from pipeline.data import synthetic
from serving.client import connect
from serving.config import single_model
from serving.server import ModelServer, ServerOptions
from tests.cli.commands import SMALL, assert_one_line_error, mtl, mtl_on_csv


def _rows(count: int) -> dict[str, np.ndarray]:
    features, _ = synthetic.generate(SyntheticDataConfig(eval_examples=count), "test")
    return features


def test_esmm_trains_on_every_impression_and_serves_ctr_cvr_and_ctcvr(tmp_path):
    model_dir, export = tmp_path / "run", tmp_path / "export"
    trained = mtl(
        "train_and_evaluate",
        "--model=esmm",
        f"--model_dir={model_dir}",
        "--synthetic_examples=20000",
        "--synthetic_eval_examples=4000",
        "--bottom_units=32",
        "--batch_size=256",
        "--max_steps=400",
        "--eval_every_steps=400",
    )
    assert trained.returncode == 0, trained.stderr
    results = json.loads((model_dir / "eval_results.json").read_text())
    tasks = results["tasks"]
    assert sorted(tasks) == ["ctcvr", "ctr", "cvr"]
    # Both tasks are evaluated on every impression, clicked or not; cvr, the conversion given the click,
    # on the clicked ones.
    assert tasks["ctr"]["examples"] == tasks["ctcvr"]["examples"] == 4000
    _, labels = synthetic.generate(SyntheticDataConfig(num_examples=20000, eval_examples=4000), "eval")
    assert tasks["cvr"]["examples"] == int(labels["click"].sum())
    assert min(tasks["ctr"]["auc"], tasks["ctcvr"]["auc"], tasks["cvr"]["auc"]) > 0.7, results

    assert mtl("export", f"--model_dir={model_dir}", f"--export_base={export}").returncode == 0
    features = _rows(8)
    options = ServerOptions(grpc_port=0, rest_port=0, poll_seconds=0)
    with ModelServer(single_model("esmm", export), options) as server:
        answers = {}
        for address in (f"http://127.0.0.1:{server.rest_port}", f"grpc://127.0.0.1:{server.grpc_port}"):
            with connect(address, "esmm") as client:
                answers[address] = client.predict(features)
    rest, grpc_ = answers.values()
    assert sorted(rest) == ["ctcvr", "ctr", "cvr"]
    for name in rest:
        np.testing.assert_allclose(rest[name], grpc_[name], rtol=1e-6)
    np.testing.assert_allclose(rest["ctcvr"], rest["ctr"] * rest["cvr"], rtol=1e-5)


def test_a_funnel_declared_by_flags_on_mmoe(tmp_path):
    model_dir = tmp_path / "run"
    trained = mtl(
        "train",
        "--model=mmoe",
        "--task_labels=click,conversion",
        "--task_after=,click",
        f"--model_dir={model_dir}",
        "--max_steps=20",
        *SMALL,
    )
    assert trained.returncode == 0, trained.stderr
    tasks = json.loads((model_dir / "config.json").read_text())["model"]["tasks"]
    assert [(t["name"], t["type"], t["after"], t["conditional_output"]) for t in tasks] == [
        ("click", "binary", "", ""),
        ("conversion", "binary", "click", "conversion_given_click"),
    ]
    assert mtl("export", f"--model_dir={model_dir}", f"--export_base={tmp_path / 'export'}").returncode == 0
    with ModelServer(
        single_model("funnel", tmp_path / "export"), ServerOptions(grpc_port=0, rest_port=0, poll_seconds=0)
    ) as server:
        with connect(f"http://127.0.0.1:{server.rest_port}", "funnel") as client:
            outputs = client.predict(_rows(4))
    assert sorted(outputs) == ["click", "conversion", "conversion_given_click"]
    np.testing.assert_allclose(
        outputs["conversion"], outputs["click"] * outputs["conversion_given_click"], rtol=1e-5
    )


@pytest.mark.parametrize(
    "flags, message",
    [
        (
            ["--model=esmm", "--task_labels=y1,y2"],
            "`tasks` must hold a funnel for esmm: a binary task `after` another (e.g. a conversion after a "
            "click). Received: tasks=['y1', 'y2']",
        ),
        (
            ["--task_labels=click,conversion", "--task_after=conversion,"],
            "`tasks[click].after` must name a task listed before it (tasks: click, conversion). "
            "Received: tasks[click].after='conversion'",
        ),
        (
            ["--model=esmm", "--task_types=binary,binary"],
            "--task_types: --model=esmm trains the synthetic funnel's tasks as they are; name --task_labels "
            "to choose others.",
        ),
    ],
)
def test_funnel_mistakes_are_one_line_errors(tmp_path, flags, message):
    assert_one_line_error(
        mtl("train", f"--model_dir={tmp_path / 'run'}", "--max_steps=1", *SMALL, *flags), "train", message
    )


FUNNEL_SCHEMA = {
    "features": [{"name": "x", "type": "numeric"}],
    "tasks": [
        {"name": "ctr", "column": "click", "positive_values": ["1"]},
        {
            "name": "ctcvr",
            "column": "bought",
            "positive_values": ["yes"],
            "after": "ctr",
            "conditional_output": "cvr",
        },
    ],
}


def _funnel_table(path, rows: int, bought_without_click: int = 0):
    """`bought` is filled only on clicked rows (yes/no), as logs often are; empty elsewhere."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=rows)
    click = rng.random(rows) < 1 / (1 + np.exp(-(2 * x - 1)))
    bought = np.where(click, np.where(rng.random(rows) < 0.4, "yes", "no"), "")
    bought[np.flatnonzero(~click)[:bought_without_click]] = "yes"
    lines = ["x,click,bought"] + [f"{x[i]:.3f},{int(click[i])},{bought[i]}" for i in range(rows)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_funnel_column_filled_only_after_the_earlier_event_is_a_0_elsewhere(tmp_path):
    table = _funnel_table(tmp_path / "log.csv", 1000)
    trained = mtl_on_csv(
        "train_and_evaluate",
        tmp_path / "run",
        FUNNEL_SCHEMA,
        table,
        "--model=esmm",
        "--max_steps=20",
        "--eval_every_steps=20",
        "--batch_size=64",
    )
    assert trained.returncode == 0, trained.stderr
    tasks = json.loads((tmp_path / "run" / "eval_results.json").read_text())["tasks"]
    # Every eval row counts for ctcvr (an empty `bought` after no click is a 0); cvr only the clicked ones.
    assert tasks["ctr"]["examples"] == tasks["ctcvr"]["examples"] == 200
    assert 0 < tasks["cvr"]["examples"] < 200


def test_an_event_without_the_earlier_one_is_refused(tmp_path):
    table = _funnel_table(tmp_path / "log.csv", 1000, bought_without_click=5)
    result = mtl_on_csv("train", tmp_path / "run", FUNNEL_SCHEMA, table, "--model=esmm", "--max_steps=2")
    assert_one_line_error(
        result,
        "train",
        "schema.tasks[1].after: 4 training rows have 'ctcvr' positive where 'ctr' is negative (columns "
        "'bought', 'click'); a task after another can only happen where the earlier one did.",
    )
