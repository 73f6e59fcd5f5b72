"""The `mtl` command as a user runs it: a separate process, flags, exit codes and what it prints."""

import json
import re

import pytest

from tests.cli.commands import SMALL, assert_one_line_error, mtl


def test_train_resume_evaluate_export(trained_dir, tmp_path):
    saved = json.loads((trained_dir / "config.json").read_text())
    assert saved["model"]["architecture"] == "omoe" and saved["model"]["num_experts"] == 4

    resumed = mtl("train", f"--model_dir={trained_dir}", "--max_steps=80")  # no model flags
    assert resumed.returncode == 0, resumed.stderr
    assert "(step 40)" in resumed.stderr and "Training omoe from step 40 to 80" in resumed.stderr
    assert (trained_dir / "ckpt-80.index").exists()

    evaluated = mtl("evaluate", f"--model_dir={trained_dir}")
    assert evaluated.returncode == 0, evaluated.stderr
    assert "Evaluation of the eval split at step 80 on 512 examples:" in evaluated.stdout
    results = json.loads((trained_dir / "eval_results.json").read_text())
    assert results["global_step"] == 80 and sorted(results["tasks"]) == ["y1", "y2"]
    assert f"y1           loss {results['tasks']['y1']['loss']:.4f}" in evaluated.stdout

    exported = mtl("export", f"--model_dir={trained_dir}", f"--export_base={tmp_path / 'serving'}")
    assert exported.returncode == 0, exported.stderr
    (version,) = list((tmp_path / "serving").iterdir())
    assert exported.stdout.strip() == f"Exported {version} from {trained_dir / 'ckpt-80'}"
    assert (version / "saved_model.pb").exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (
            ["--model=ple2"],
            "Unknown model 'ple2'. Valid models: esmm, mmoe, omoe, ple, shared_bottom, single_task.",
        ),
        (["--num_experts=0"], "`num_experts` must be a positive integer. Received: num_experts=0"),
        (
            ["--tower_units=8,-2"],
            "`tower_units` must hold positive integers only. Received: tower_units=[8, -2]",
        ),
        (
            ["--task_labels=y1,y2", "--task_losses=mse"],
            "--task_losses has 1 entries (mse) but there are 2 tasks (y1,y2); give one per task.",
        ),
        (
            ["--task_labels=y1,clicks"],
            "--task_labels: 'clicks' is not a label of the synthetic data "
            "(labels: y1, y2, y1_binary, y2_binary, click, conversion).",
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


def test_unknown_stage():
    unknown = mtl("fit")
    assert unknown.returncode == 1 and "Traceback" not in unknown.stderr
    assert "Unknown stage 'fit'" in unknown.stderr


def test_evaluate_reports_what_the_gates_do(trained_dir):
    reported = mtl("evaluate", f"--model_dir={trained_dir}", "--report_experts")
    assert reported.returncode == 0, reported.stderr
    lines = reported.stdout.splitlines()
    assert "Gate weights over 512 examples:" in lines
    assert re.search(r"^  y1 +entropy \d\.\d\d of 1\.39  heaviest: expert_\d 0\.\d\d", reported.stdout, re.M)
    report = json.loads((trained_dir / "experts.json").read_text())
    assert report["global_step"] == json.loads((trained_dir / "eval_results.json").read_text())["global_step"]
    # OMoE: one gate every task shares, reported under each task's name.
    assert report["gates"]["y1"] == report["gates"]["y2"] and report["split"] == "eval"
    assert (trained_dir / "experts.png").read_bytes()[:4] == b"\x89PNG"


def test_param_budget_sizes_a_new_model_and_not_a_trained_one(tmp_path):
    sized = mtl("train", f"--model_dir={tmp_path / 'run'}", "--param_budget=20000", "--max_steps=10", *SMALL)
    assert sized.returncode == 0, sized.stderr
    assert "Sized mmoe to" in sized.stderr
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["model"]
    assert saved["num_experts"] == 4 and saved["expert_units"] != [16]
    # The same command again resumes (the saved widths are not checked against --expert_units' proportions).
    again = mtl("train", f"--model_dir={tmp_path / 'run'}", "--param_budget=20000", "--max_steps=20", *SMALL)
    assert again.returncode == 0, again.stderr
    assert "Training mmoe from step 10 to 20" in again.stderr
    other = mtl("train", f"--model_dir={tmp_path / 'run'}", "--param_budget=30000", "--max_steps=30")
    assert_one_line_error(
        other,
        "train",
        f"--param_budget=30000 conflicts with {tmp_path / 'run' / 'config.json'} (param_budget=20000). "
        "Use a new --model_dir, or drop the flag.",
    )


def test_mistakes_with_the_toolbox_flags_are_one_line_errors(tmp_path):
    count = mtl("train", f"--model_dir={tmp_path / 'a'}", "--task_labels=y1", "--task_types=count")
    assert_one_line_error(
        count,
        "train",
        "--task_types: 'y1' is a real number, not a count; of the synthetic labels only y1_binary, "
        "y2_binary, click, conversion are whole numbers >= 0.",
    )
    trained = mtl("train", f"--model_dir={tmp_path / 'b'}", "--model=shared_bottom", "--max_steps=2", *SMALL)
    assert trained.returncode == 0, trained.stderr
    report = mtl("evaluate", f"--model_dir={tmp_path / 'b'}", "--report_experts")
    assert_one_line_error(report, "evaluate", "--report_experts: the shared_bottom model has no gates.")
    assert "Evaluation of" not in report.stdout  # refused before evaluating
