"""The `mtl` command as a user runs it: a separate process, flags, exit codes and what it prints."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SMALL = [
    "--synthetic_examples=2048",
    "--synthetic_eval_examples=512",
    "--batch_size=64",
    "--num_experts=4",
    "--log_every_steps=20",
    "--save_checkpoints_steps=20",
]


def _env(tf_config: str = "") -> dict[str, str]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("TF_CONFIG", None)
    if tf_config:
        env["TF_CONFIG"] = tf_config
    return env


def mtl(*args: str) -> subprocess.CompletedProcess:
    """Runs `mtl ARGS` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, timeout=300, env=_env()
    )


def mtl_process(*args: str, tf_config: str) -> subprocess.Popen:
    """Starts `mtl ARGS` as one task of a cluster described by `tf_config`."""
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(tf_config),
    )


def assert_one_line_error(result: subprocess.CompletedProcess, stage: str, message: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line == f"mtl {stage}: error: {message}", last_line


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory) -> Path:
    """An OMoE trained for 40 steps from a flag file, as a named experiment would be."""
    root = tmp_path_factory.mktemp("cli")
    flagfile = root / "omoe_small.flags"
    flagfile.write_text("\n".join(["--model=omoe", "--max_steps=40", *SMALL]) + "\n")
    model_dir = root / "omoe"
    result = mtl("train", f"--flagfile={flagfile}", f"--model_dir={model_dir}")
    assert result.returncode == 0, result.stderr
    assert "step 40/40 (100%)" in result.stderr
    return model_dir


def test_train_resume_evaluate_export(trained_dir, tmp_path):
    saved = json.loads((trained_dir / "config.json").read_text())
    assert saved["model"]["architecture"] == "omoe" and saved["model"]["num_experts"] == 4

    resumed = mtl("train", f"--model_dir={trained_dir}", "--max_steps=80")  # no model flags
    assert resumed.returncode == 0, resumed.stderr
    assert "(step 40)" in resumed.stderr and "Training omoe from step 40 to 80" in resumed.stderr
    assert (trained_dir / "ckpt-80.index").exists()

    evaluated = mtl("evaluate", f"--model_dir={trained_dir}")
    assert evaluated.returncode == 0, evaluated.stderr
    assert "Evaluation at step 80 on 512 examples:" in evaluated.stdout
    results = json.loads((trained_dir / "eval_results.json").read_text())
    assert results["global_step"] == 80 and sorted(results["tasks"]) == ["y1", "y2"]
    assert f"y1           loss {results['tasks']['y1']['loss']:.4f}" in evaluated.stdout

    exported = mtl("export", f"--model_dir={trained_dir}", f"--export_base={tmp_path / 'serving'}")
    assert exported.returncode == 0, exported.stderr
    (version,) = list((tmp_path / "serving").iterdir())
    assert exported.stdout.strip() == f"Exported {version}"
    assert (version / "saved_model.pb").exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--model=ple2"], "Unknown model 'ple2'. Valid models: mmoe, omoe, shared_bottom."),
        (["--num_experts=0"], "`num_experts` must be a positive integer. Received: num_experts=0"),
        (
            ["--tower_units=8,-2"],
            "`tower_units` must hold positive integers only. Received: tower_units=[8, -2]",
        ),
        (
            ["--task_labels=y1,y2", "--task_losses=mse"],
            "--task_losses has 1 entries (mse) but --task_labels has 2 (y1,y2); give one per task.",
        ),
        (
            ["--task_labels=y1,clicks"],
            "--task_labels: 'clicks' is not a label of the synthetic data "
            "(labels: y1, y2, y1_binary, y2_binary).",
        ),
        (
            ["--task_labels=y1", "--task_types=binary", "--task_losses=mse"],
            "`tasks[y1].loss` must be one of log_loss. Received: tasks[y1].loss='mse'",
        ),
    ],
)
def test_bad_flags_give_one_line_errors(flags, message, tmp_path):
    result = mtl("train", f"--model_dir={tmp_path / 'run'}", *flags)
    assert_one_line_error(result, "train", message)
    assert not (tmp_path / "run").exists()  # nothing was written


def test_a_model_dir_holding_another_architecture(trained_dir):
    result = mtl("train", f"--model_dir={trained_dir}", "--model=mmoe")
    assert_one_line_error(
        result,
        "train",
        f"--model=mmoe conflicts with {trained_dir}/config.json (model=omoe). "
        "Use a new --model_dir, or drop the flag.",
    )


def test_an_export_base_that_is_a_file(trained_dir, tmp_path):
    target = tmp_path / "models"
    target.write_text("")
    result = mtl("export", f"--model_dir={trained_dir}", f"--export_base={target}")
    assert_one_line_error(
        result,
        "export",
        f"--export_base={target} is a file; it must be a directory that will hold <version>/ folders.",
    )


def test_evaluating_an_untrained_model_dir(tmp_path):
    result = mtl("evaluate", f"--model_dir={tmp_path}")
    assert_one_line_error(
        result,
        "evaluate",
        f"--model_dir={tmp_path} holds no config.json; run `mtl train` there first.",
    )


def test_unknown_stage_and_helpfull():
    unknown = mtl("fit")
    assert unknown.returncode == 1 and "Traceback" not in unknown.stderr
    assert "Unknown stage 'fit'" in unknown.stderr

    helpfull = mtl("--help")
    assert helpfull.returncode == 1  # absl's convention for every help flag
    assert helpfull.stdout.startswith("`mtl STAGE --flags`: the pipeline's stages")
    from pipeline.cli import flags as cli_flags

    ours = cli_flags.FLAGS.flags_by_module_dict()["pipeline.cli.flags"]
    assert len(ours) > 30
    text = " ".join(helpfull.stdout.split())  # absl wraps the help lines
    for flag in ours:
        assert f"--{flag.name}:" in text and " ".join(flag.help.split()) in text, flag.name
