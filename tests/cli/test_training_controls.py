"""Training controls through `mtl`, as a user runs them: signals, the evaluator task, the best checkpoint,
early stopping, warm start, epochs, schedules and help."""

from __future__ import annotations

import json
import math
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from pipeline import data
from pipeline.model_dir import load_config
from tests.cli.commands import SMALL, _env, assert_one_line_error, mtl
from tests.cli.test_real_data_cli import SCHEMA, SMALL_MODEL, write_table


def _start(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "mtl", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )


def _wait_for_line(process: subprocess.Popen, text: str) -> list[str]:
    """Reads the process' standard error up to the first line holding `text`; returns the lines read."""
    lines = []
    while not lines or text not in lines[-1]:
        line = process.stderr.readline()
        assert line, f"the process ended before printing {text!r}: {''.join(lines)}"
        lines.append(line)
    return lines


def test_sigterm_saves_a_checkpoint_at_the_step_reached_and_a_rerun_resumes_from_it(tmp_path):
    model_dir = tmp_path / "run"
    training = _start(
        "train",
        f"--model_dir={model_dir}",
        "--max_steps=10000000",
        *SMALL,
        "--save_checkpoints_steps=100000",
    )
    read = _wait_for_line(training, "step 20/10000000")
    training.send_signal(signal.SIGTERM)
    _, rest = training.communicate(timeout=120)
    stderr = "".join(read) + rest
    assert training.returncode == 128 + signal.SIGTERM, stderr
    assert "Traceback" not in stderr
    assert "SIGTERM: stopping after the running steps (again to stop at once)." in stderr
    stopped = re.search(r"mtl: stopped by SIGTERM at step (\d+); saved a checkpoint of step \1\.", stderr)
    assert stopped, stderr
    step = int(stopped.group(1))
    assert 20 <= step < 100000 and step % 20 == 0  # whole groups of steps (--log_every_steps=20)
    assert tf.train.latest_checkpoint(str(model_dir)) == str(model_dir / f"ckpt-{step}")

    resumed = mtl("train", f"--model_dir={model_dir}", f"--max_steps={step + 20}")
    assert resumed.returncode == 0, resumed.stderr
    assert f"Training mmoe from step {step} to {step + 20}" in resumed.stderr


def test_a_second_signal_ends_training_at_once(tmp_path):
    training = _start(
        "train",
        f"--model_dir={tmp_path / 'run'}",
        "--max_steps=10000000",
        *SMALL,
        "--log_every_steps=10000000",  # one group of steps: the first signal would wait for all of it
        "--save_checkpoints_steps=10000000",
    )
    _wait_for_line(training, "Training mmoe from step 0 to 10000000")
    time.sleep(1)
    training.send_signal(signal.SIGINT)
    _wait_for_line(training, "SIGINT: stopping after the running steps (again to stop at once).")
    started = time.monotonic()
    training.send_signal(signal.SIGINT)
    training.communicate(timeout=60)
    assert training.returncode == -signal.SIGINT and time.monotonic() - started < 10


def test_continuous_evaluation_evaluates_each_checkpoint_of_a_concurrent_trainer_once(tmp_path):
    model_dir = tmp_path / "run"
    evaluator = _start(
        "evaluate", f"--model_dir={model_dir}", "--continuous", "--timeout_secs=120", "--max_steps=100"
    )
    _wait_for_line(evaluator, "Waiting for training to start")
    trainer = mtl("train", f"--model_dir={model_dir}", "--max_steps=100", *SMALL, "--keep_checkpoint_max=10")
    assert trainer.returncode == 0, trainer.stderr
    stdout, stderr = evaluator.communicate(timeout=180)
    assert evaluator.returncode == 0, stderr
    steps = [int(s) for s in re.findall(r"Evaluation of the eval split at step (\d+) on 512", stdout)]
    assert steps == [20, 40, 60, 80, 100]  # each once, in order, and it stops at --max_steps


def test_the_best_checkpoint_survives_keep_checkpoint_max_and_exports(tmp_path):
    model_dir = tmp_path / "run"
    # RMSE falls as the model learns, so under "max" the first evaluation stays the best one.
    trained = mtl(
        "train_and_evaluate",
        f"--model_dir={model_dir}",
        "--max_steps=80",
        "--eval_every_steps=20",
        *SMALL,
        "--keep_checkpoint_max=1",
        "--early_stopping_metric=y1/rmse",
        "--early_stopping_mode=max",
        "--early_stopping_patience=10",
        "--export_best",
    )
    assert trained.returncode == 0, trained.stderr
    best = json.loads((model_dir / "best" / "best.json").read_text())
    assert (best["metric"], best["mode"], best["global_step"]) == ("y1/rmse", "max", 20)
    assert not (model_dir / "ckpt-20.index").exists() and (model_dir / "best" / "ckpt-20.index").exists()
    assert len(list((model_dir / "export").iterdir())) == 1  # --export_best: one best, one version

    evaluated = mtl("evaluate", f"--model_dir={model_dir}", "--checkpoint=best")
    assert evaluated.returncode == 0, evaluated.stderr
    assert "at step 20 on 512 examples" in evaluated.stdout
    results = json.loads((model_dir / "eval_results.json").read_text())
    assert results["tasks"]["y1"]["rmse"] == pytest.approx(best["value"], rel=1e-6)

    exported = mtl(
        "export", f"--model_dir={model_dir}", "--checkpoint=best", f"--export_base={tmp_path / 'e'}"
    )
    assert exported.returncode == 0, exported.stderr
    (version,) = list((tmp_path / "e").iterdir())
    assert exported.stdout.strip() == f"Exported {version} from {model_dir / 'best' / 'ckpt-20'}"
    config = load_config(model_dir)
    features, labels = data.examples(config.data, "eval", count=512)
    served = tf.saved_model.load(str(version)).signatures["serving_default"](
        **{name: tf.constant(values) for name, values in features.items()}
    )
    rmse = math.sqrt(float(np.mean((served["y1"].numpy() - labels["y1"]) ** 2)))
    assert rmse == pytest.approx(best["value"], rel=1e-4)

    missing = mtl("export", f"--model_dir={model_dir}", "--checkpoint=40")
    assert_one_line_error(
        missing,
        "export",
        f"{model_dir} has no checkpoint of step 40; it has steps 80 (and latest, best).",
    )


def test_early_stopping_stops_on_a_plateau_and_a_rerun_does_not_train_on(tmp_path):
    rng = np.random.default_rng(0)
    rows = ["x,k,spend,churn"] + [
        f"{rng.normal():.3f},{rng.choice(['a', 'b'])},{rng.normal():.3f},{rng.choice(['yes', 'no'])}"
        for _ in range(400)
    ]  # labels independent of the inputs: nothing to learn beyond their means
    (tmp_path / "noise.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "schema.json").write_text(json.dumps(SCHEMA))
    model_dir = tmp_path / "run"
    flags = [
        "train_and_evaluate",
        f"--model_dir={model_dir}",
        f"--schema={tmp_path / 'schema.json'}",
        f"--train_files={tmp_path / 'noise.csv'}",
        "--split=80/20/0",
        *SMALL_MODEL,
        "--max_steps=5000",
        "--eval_every_steps=20",
        "--learning_rate=0.01",
        "--early_stopping_metric=loss",
        "--early_stopping_patience=3",
        "--early_stopping_min_delta=0.01",
    ]
    first = mtl(*flags)
    assert first.returncode == 0, first.stderr
    stopped = re.search(
        r"Stopped early: loss has not improved by more than 0.01 for 3 evaluations", first.stdout
    )
    assert stopped, first.stdout
    history = json.loads((model_dir / "eval_history.json").read_text())
    step = history[-1]["global_step"]
    assert step < 5000 and len(history) == step // 20

    again = mtl(*flags)
    assert again.returncode == 0, again.stderr
    assert "Stopped early before" in again.stderr and "Training" not in again.stderr
    assert json.loads((model_dir / "eval_history.json").read_text()) == history


def test_warm_start_fine_tunes_on_new_data_with_the_source_vocabulary(tmp_path):
    (tmp_path / "schema.json").write_text(json.dumps(SCHEMA))
    write_table(tmp_path / "a.csv", 120, seed=0)
    write_table(tmp_path / "b.csv", 200, seed=5)
    common = [f"--schema={tmp_path / 'schema.json'}", "--split=80/20/0", *SMALL_MODEL]
    source = mtl(
        "train", f"--model_dir={tmp_path / 'source'}", f"--train_files={tmp_path / 'a.csv'}", *common
    )
    assert source.returncode == 0, source.stderr

    tuned = mtl(
        "train",
        f"--model_dir={tmp_path / 'tuned'}",
        f"--train_files={tmp_path / 'b.csv'}",
        f"--warm_start_from={tmp_path / 'source'}",
        *common,
    )
    assert tuned.returncode == 0, tuned.stderr
    source_model = load_config(tmp_path / "source").model
    assert (
        f"] Warm-started from {tmp_path / 'source' / 'ckpt-20'}: loaded 11 of 11 variables.\n" in tuned.stderr
    )
    assert "]   loaded     shared_bottom/tower_spend/logit/kernel\n" in tuned.stderr
    assert load_config(tmp_path / "tuned").model.features == source_model.features


def test_num_epochs_sets_the_steps_from_the_table_and_excludes_max_steps(tmp_path):
    (tmp_path / "schema.json").write_text(json.dumps(SCHEMA))
    write_table(tmp_path / "a.csv", 120, seed=0)
    common = [
        f"--schema={tmp_path / 'schema.json'}",
        f"--train_files={tmp_path / 'a.csv'}",
        "--split=80/20/0",
        *[flag for flag in SMALL_MODEL if not flag.startswith("--max_steps")],
    ]
    trained = mtl("train", f"--model_dir={tmp_path / 'run'}", "--num_epochs=2", *common)
    assert trained.returncode == 0, trained.stderr
    assert "step 12/12 (100%)" in trained.stderr  # 96 training rows x 2 epochs / batch 16

    both = mtl("train", f"--model_dir={tmp_path / 'other'}", "--num_epochs=2", "--max_steps=5", *common)
    assert_one_line_error(both, "train", "Give --max_steps or --num_epochs, not both.")

    # A named experiment's --max_steps gives way to --num_epochs on the command line.
    (tmp_path / "named.flags").write_text("--max_steps=5\n")
    named = mtl(
        "train",
        f"--model_dir={tmp_path / 'named'}",
        f"--flagfile={tmp_path / 'named.flags'}",
        "--num_epochs=1",
        *common,
    )
    assert named.returncode == 0, named.stderr
    assert "step 6/6 (100%)" in named.stderr

    endless = mtl("train", f"--model_dir={tmp_path / 'endless'}", "--num_epochs=inf", *common)
    assert_one_line_error(endless, "train", "--num_epochs must be a number > 0. Received: --num_epochs=inf")


def test_a_cosine_schedule_decays_over_the_run_and_its_rate_is_logged(tmp_path):
    model_dir = tmp_path / "run"
    trained = mtl(
        "train",
        f"--model_dir={model_dir}",
        "--max_steps=60",
        *SMALL,
        "--learning_rate=0.01",
        "--learning_rate_schedule=cosine",
        "--warmup_steps=10",
        "--cosine_alpha=0.1",
    )
    assert trained.returncode == 0, trained.stderr
    assert load_config(model_dir).train.decay_steps == 0  # over the whole run: --max_steps less the warm-up
    rates = {}
    for path in (model_dir / "train").iterdir():
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                if value.tag == "learning_rate":
                    rates[event.step] = float(tf.make_ndarray(value.tensor))
    # After step s the next step's rate: warm-up for s < 10, then cosine over s - 10 of 50 steps.
    cosine = 0.01 * (0.9 * 0.5 * (1 + math.cos(math.pi * 10 / 50)) + 0.1)
    assert rates[20] == pytest.approx(cosine, rel=1e-5)
    assert rates[60] == pytest.approx(0.001, rel=1e-5)


def _mtl_with_default_logging(*args: str) -> subprocess.CompletedProcess:
    env = _env()
    env.pop("TF_CPP_MIN_LOG_LEVEL")
    return subprocess.run(
        [sys.executable, "-m", "mtl", *args], capture_output=True, text=True, timeout=300, env=env
    )


def test_mtl_starts_without_cpp_lines(tmp_path):
    trained = _mtl_with_default_logging("train", f"--model_dir={tmp_path / 'run'}", "--max_steps=20", *SMALL)
    assert trained.returncode == 0, trained.stderr
    lines = trained.stderr.splitlines()
    assert lines[0].startswith("I") and "estimator.py" in lines[0], lines[0]  # the first line is ours
    assert not [line for line in lines if re.match(r"([IWE]0000 |WARNING: All log messages)", line)], lines


def test_help_lists_the_mtl_flags_by_group_without_start_up_lines():
    shown = _mtl_with_default_logging("--help")
    assert shown.returncode == 0 and shown.stderr == "", shown.stderr
    assert shown.stdout.startswith("`mtl STAGE --flags`: the pipeline's stages")
    from mtl import flags as cli_flags

    ours = cli_flags.FLAGS.flags_by_module_dict()["mtl.flags"]
    grouped = [name for _, _, names in cli_flags.HELP_GROUPS for name in names]
    assert sorted(grouped) == sorted(flag.name for flag in ours)  # every flag, once
    text = " ".join(shown.stdout.split())
    for flag in ours:
        assert f"--{flag.name}" in text and " ".join(flag.help.split()) in text, flag.name
    assert "--test_srcdir" not in text and "--tpu" not in text  # absltest's and TensorFlow's flags

    serve = mtl("serve", "--help")
    assert serve.returncode == 0 and serve.stderr == ""
    assert serve.stdout.startswith("mtl serve [--flags]") and "--rest_api_port=8501" in serve.stdout
    assert "--learning_rate" not in serve.stdout

    full = mtl("--helpfull")
    assert "--test_srcdir" in full.stdout and "--learning_rate_schedule" in full.stdout
