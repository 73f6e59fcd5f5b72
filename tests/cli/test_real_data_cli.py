"""`mtl` on CSV files as a user runs it: held-out splits, other files and directories, `mtl data`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.cli.commands import mtl

SCHEMA = {
    "features": [{"name": "x", "type": "numeric"}, {"name": "k", "type": "categorical"}],
    "tasks": [
        {"name": "spend", "column": "spend", "type": "regression"},
        {"name": "churn", "column": "churn", "positive_values": ["yes"]},
    ],
}
SMALL_MODEL = [
    "--data=csv",
    "--model=shared_bottom",
    "--bottom_units=8",
    "--tower_units=4",
    "--batch_size=16",
    "--max_steps=20",
    "--log_every_steps=10",
    "--save_checkpoints_steps=20",
]


def write_table(path: Path, rows: int, seed: int) -> Path:
    """A CSV with a header: x (2 blanks per 20 rows), k (1 blank), spend (3 blanks), churn (2 blanks)."""
    rng = np.random.default_rng(seed)
    lines = ["x,k,spend,churn"]
    for i in range(rows):
        x = "" if i % 20 in (3, 11) else f"{rng.normal():.3f}"
        k = "" if i % 20 == 5 else str(rng.choice(["a", "b", "c"]))
        spend = "" if i % 20 in (0, 7, 14) else f"{10 + rng.normal():.3f}"
        churn = "" if i % 20 in (2, 9) else ("yes" if i % 20 in (1, 4, 8, 12, 16, 19) else "no")
        lines.append(f"{x},{k},{spend},{churn}")
    path.write_text("\n".join(lines) + "\n")
    return path


def mtl_in(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """Runs `mtl ARGS` from the directory `cwd`."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("TF_CONFIG", None)
    return subprocess.run(
        [sys.executable, "-m", "mtl", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=cwd,
    )


def assert_one_line_error(result: subprocess.CompletedProcess, stage: str, contains: str) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith(f"mtl {stage}: error: ") and contains in last_line, last_line
    return last_line


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tables")
    (root / "schema.json").write_text(json.dumps(SCHEMA))
    return {
        "root": root,
        "schema": root / "schema.json",
        "train": write_table(root / "train.csv", 120, seed=0),
        "eval": write_table(root / "eval.csv", 40, seed=1),
        "test": write_table(root / "test.csv", 20, seed=2),
        "other": write_table(root / "other.csv", 60, seed=3),
    }


@pytest.fixture(scope="module")
def with_test(files) -> Path:
    """A model trained on CSV files with train, eval and test files."""
    model_dir = files["root"] / "with_test"
    result = mtl(
        "train",
        *SMALL_MODEL,
        f"--schema={files['schema']}",
        f"--train_files={files['train']}",
        f"--eval_files={files['eval']}",
        f"--test_files={files['test']}",
        f"--model_dir={model_dir}",
    )
    assert result.returncode == 0, result.stderr
    assert (model_dir / "ckpt-20.index").exists()
    return model_dir


@pytest.fixture(scope="module")
def relative_run(tmp_path_factory) -> Path:
    """A model trained from its data's directory with relative paths, and no test files.

    Its only feature is numeric: exporting a categorical feature is covered in tests/pipeline/data.
    """
    here = tmp_path_factory.mktemp("project")
    numeric_only = {**SCHEMA, "features": SCHEMA["features"][:1], "drop": ["k"]}
    (here / "schema.json").write_text(json.dumps(numeric_only))
    write_table(here / "train.csv", 120, seed=0)
    write_table(here / "eval.csv", 40, seed=1)
    result = mtl_in(
        here,
        "train",
        *SMALL_MODEL,
        "--schema=schema.json",
        "--train_files=train.csv",
        "--eval_files=eval.csv",
        "--model_dir=run",
    )
    assert result.returncode == 0, result.stderr
    return here / "run"


def test_evaluate_on_the_test_split_names_the_split_and_its_file(with_test, files):
    result = mtl("evaluate", f"--model_dir={with_test}", "--eval_split=test")
    assert result.returncode == 0, result.stderr
    results = json.loads((with_test / "test_results.json").read_text())
    assert results["split"] == "test"
    assert results["files"] == [str(files["test"])]
    assert results["examples"] == 20 and results["global_step"] == 20
    assert results["tasks"]["spend"]["examples"] == 17 and results["tasks"]["churn"]["examples"] == 18
    assert f"Evaluation of the test split of {files['test']} at step 20 on 20 examples:" in result.stdout


def test_evaluate_on_other_eval_files_reads_them_without_a_conflict(with_test, files):
    result = mtl("evaluate", f"--model_dir={with_test}", f"--eval_files={files['other']}")
    assert result.returncode == 0, result.stderr
    results = json.loads((with_test / "eval_results.json").read_text())
    assert results["split"] == "eval" and results["files"] == [str(files["other"])]
    assert results["examples"] == 60
    assert results["tasks"]["spend"]["examples"] == 51  # 3 blank labels per 20 rows
    saved = json.loads((with_test / "config.json").read_text())
    assert saved["data"]["tabular"]["eval_files"] == [str(files["eval"])]  # the trained model's own files


def test_evaluate_on_a_test_split_the_model_never_had_is_a_one_line_error(relative_run):
    result = mtl("evaluate", f"--model_dir={relative_run}", "--eval_split=test")
    assert_one_line_error(result, "evaluate", "no test split")
    assert not (relative_run / "test_results.json").exists()


def test_later_stages_run_from_another_directory(relative_run, tmp_path):
    saved = json.loads((relative_run / "config.json").read_text())["data"]["tabular"]
    project = relative_run.parent.resolve()
    assert saved["train_files"] == [str(project / "train.csv")]
    assert saved["eval_files"] == [str(project / "eval.csv")]
    assert saved["test_files"] == []

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    evaluated = mtl_in(elsewhere, "evaluate", f"--model_dir={relative_run.resolve()}")
    assert evaluated.returncode == 0, evaluated.stderr
    results = json.loads((relative_run / "eval_results.json").read_text())
    assert results["files"] == [str(project / "eval.csv")] and results["examples"] == 40

    exported = mtl_in(elsewhere, "export", f"--model_dir={relative_run.resolve()}")
    assert exported.returncode == 0, exported.stderr
    (version,) = list((relative_run / "export").iterdir())
    assert (version / "saved_model.pb").exists()
    assert list(elsewhere.iterdir()) == []  # nothing was written where the stages ran


def test_a_schema_conflict_on_resume_names_the_differing_key(with_test, files, tmp_path):
    changed = {**SCHEMA, "tasks": [SCHEMA["tasks"][0], {**SCHEMA["tasks"][1], "positive_values": ["no"]}]}
    (tmp_path / "schema.json").write_text(json.dumps(changed))
    result = mtl(
        "train",
        *SMALL_MODEL,
        "--max_steps=40",
        f"--schema={tmp_path / 'schema.json'}",
        f"--train_files={files['train']}",
        f"--eval_files={files['eval']}",
        f"--model_dir={with_test}",
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    # What mtl writes, after TensorFlow's own start-up lines (which ignore TF_CPP_MIN_LOG_LEVEL).
    error = result.stderr[result.stderr.index("mtl train: error: ") :]
    assert len(error) < 600, error
    lines = [line.strip() for line in error.strip().splitlines()]
    assert lines[0].startswith("mtl train: error: ") and "--schema" in lines[0], lines
    differing = [line for line in lines if "positive_values" in line]
    assert differing == ["schema.tasks[1].positive_values: saved ['yes'], requested ['no']"], lines
    assert not (with_test / "ckpt-40.index").exists()


def test_mtl_data_counts_missing_cells_labels_and_positives(files):
    result = mtl(
        "data",
        "--data=csv",
        f"--schema={files['schema']}",
        f"--train_files={files['train']}",
        f"--eval_files={files['eval']}",
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    train = out[out.index("train: 120 rows") : out.index("eval: 40 rows")]
    # Per 20 rows: x 2 blanks, k 1, spend 3, churn 2; churn "yes" on 6 of its 18 labelled rows.
    for column, missing in (("x", 12), ("k", 6), ("spend", 18), ("churn", 12)):
        assert re.search(rf"^\s+{column}\s.*\b{missing} missing\b", train, re.M), (column, train)
    assert re.search(r"^\s+task spend\s+102 labelled \(85\.0%\)", train, re.M), train
    assert re.search(r"^\s+task churn\s+108 labelled \(90\.0%\), positive rate 0\.3333\b", train, re.M), train
    evaluated = out[out.index("eval: 40 rows") :]
    assert re.search(r"^\s+x\s.*\b4 missing\b", evaluated, re.M), evaluated
    assert re.search(r"^\s+task churn\s+36 labelled \(90\.0%\), positive rate 0\.3333\b", evaluated, re.M)
