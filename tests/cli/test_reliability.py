"""Careless use of the training stages: each mistake or fault is a one-line error that loses nothing."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.cli.commands import SMALL, _env, assert_one_line_error, mtl, mtl_on_csv

FEATURES = [{"name": "x", "type": "numeric"}, {"name": "k", "type": "categorical"}]


def _table(path, rows: int, x_cells=None, y_cells=None):
    rng = np.random.default_rng(0)
    x = rng.normal(size=rows)
    x_cells = x_cells or {}
    y_cells = y_cells or {}
    lines = ["x,k,y"] + [
        f"{x_cells.get(i, f'{x[i]:.3f}')},{rng.choice(['a', 'b'])},{y_cells.get(i, f'{2 * x[i]:.3f}')}"
        for i in range(rows)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


SCHEMA = {"features": FEATURES, "tasks": [{"name": "y", "column": "y", "type": "regression"}]}


def test_infinite_numbers_are_counted_and_read_as_missing(tmp_path):
    # nan, inf, -inf, and 1e300 (beyond float32: infinite once read) in the feature column.
    cells = {i: value for i in range(0, 200, 20) for value in [("nan", "inf", "-inf", "1e300")[i // 20 % 4]]}
    table = _table(tmp_path / "t.csv", 200, x_cells=cells)
    (tmp_path / "schema.json").write_text(json.dumps(SCHEMA))
    summary = mtl(
        "data",
        "--data=csv",
        f"--schema={tmp_path / 'schema.json'}",
        f"--train_files={table}",
        "--split=80/20/0",
    )
    assert summary.returncode == 0, summary.stderr
    x_line = next(line for line in summary.stdout.splitlines() if line.strip().startswith("x "))
    # 10 bad cells, all in the train split (rows 0, 20, ...; rows 4, 9, ... are eval): 3 nan, 7 infinite.
    assert "10 missing (7 infinite)" in x_line, x_line
    assert "nan" not in x_line.split("missing")[1] and "inf " not in x_line, x_line
    trained = mtl_on_csv("train", tmp_path / "run", SCHEMA, table, "--max_steps=20", "--batch_size=32")
    assert trained.returncode == 0, trained.stderr
    assert "holds 7 infinite or out-of-range numbers in the train split: read as missing" in trained.stderr
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["model"]["features"]
    assert all(np.isfinite(f["mean"]) and np.isfinite(f["variance"]) for f in saved if f["kind"] == "numeric")


def test_a_loss_that_overflows_stops_training_in_one_line(tmp_path):
    table = _table(tmp_path / "t.csv", 400, y_cells={i: "3e38" for i in range(0, 400, 7)})
    result = mtl_on_csv(
        "train", tmp_path / "run", SCHEMA, table, "--max_steps=40", "--log_every_steps=10", "--batch_size=32"
    )
    assert_one_line_error(
        result,
        "train",
        "The training loss became non-finite between steps 0 and 10 (y nan); nothing of those steps was "
        "saved and no checkpoint was written. Lower the learning rate, or look for extreme values in the "
        "data.",
    )
    assert not list((tmp_path / "run").glob("ckpt-*"))


def test_an_unwritable_model_dir_is_one_line(tmp_path):
    assert_one_line_error(
        mtl("train", "--model_dir=/proc/mtl_run", "--max_steps=2", *SMALL),
        "train",
        "Cannot write /proc/mtl_run/config.json: No such file or directory.",
    )


def test_a_truncated_checkpoint_is_one_line_and_deleting_it_resumes_from_the_one_before(tmp_path):
    run = tmp_path / "run"
    assert mtl("train", f"--model_dir={run}", "--max_steps=40", *SMALL).returncode == 0
    (data_file,) = run.glob("ckpt-40.data-*")
    data_file.write_bytes(data_file.read_bytes()[:100])
    assert_one_line_error(
        mtl("evaluate", f"--model_dir={run}"),
        "evaluate",
        f"{run / 'ckpt-40'} cannot be read (Read less bytes than requested); it may be truncated: delete its "
        "files to go back to the checkpoint before it.",
    )
    for path in run.glob("ckpt-40.*"):
        path.unlink()
    resumed = mtl("train", f"--model_dir={run}", "--max_steps=60", *SMALL)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{run / 'ckpt-40'} has no files; using {run / 'ckpt-20'}" in resumed.stderr
    assert f"Restored {run / 'ckpt-20'} (step 20)" in resumed.stderr
    assert (run / "ckpt-60.index").exists()


@pytest.mark.parametrize(
    "tf_config, message",
    [
        (
            {"cluster": {"worker": ["localhost:1", "localhost:2"]}, "task": {"type": "worker", "index": 2}},
            "TF_CONFIG: task index 2 is out of range: the cluster has 2 worker address(es), indices 0 to 1.",
        ),
        (
            {"cluster": {"worker": ["localhost:1", "localhost:2"]}},
            'TF_CONFIG has a cluster but no task: add "task": {"type": "worker", "index": N} for this '
            "process.",
        ),
        (
            {"cluster": {"worker": ["localhost:1"]}, "task": {"type": "ps", "index": 0}},
            "TF_CONFIG: task type 'ps' is not a role of the cluster (worker).",
        ),
    ],
)
def test_a_tf_config_naming_no_task_of_its_cluster_is_one_line(tmp_path, tf_config, message):
    env = {**_env(), "TF_CONFIG": json.dumps(tf_config)}
    result = subprocess.run(
        [sys.executable, "-m", "mtl", "train", f"--model_dir={tmp_path}", "--max_steps=2"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert_one_line_error(result, "train", message)


def test_verbose_shows_the_traceback_of_an_error(tmp_path):
    (tmp_path / "file").write_text("")
    quiet = mtl("train", f"--model_dir={tmp_path / 'file'}")
    assert_one_line_error(
        quiet, "train", f"--model_dir={tmp_path / 'file'} is a file; it must be a directory."
    )
    verbose = mtl("train", f"--model_dir={tmp_path / 'file'}", "--verbose")
    assert verbose.returncode == 2
    assert "Traceback (most recent call last)" in verbose.stderr
    assert verbose.stderr.strip().splitlines()[-1].startswith("mtl train: error: --model_dir=")


def test_reject_non_finite_refuses_infinite_numbers_naming_the_column(tmp_path):
    table = _table(tmp_path / "t.csv", 200, x_cells={0: "inf", 20: "1e300", 40: "nan"})
    result = mtl_on_csv("train", tmp_path / "run", SCHEMA, table, "--max_steps=2", "--reject_non_finite")
    assert_one_line_error(
        result,
        "train",
        f"Column 'x' holds 2 infinite or out-of-range numbers in the train split of {table}; fix them, or "
        "leave out --reject_non_finite to read them as missing.",
    )
