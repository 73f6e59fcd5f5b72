"""Early stopping on scripted metric histories, and in `train_and_evaluate` with the best checkpoint."""

import dataclasses
import json
import math

import pytest

from pipeline import data
from pipeline.config import ExperimentConfig
from pipeline.early_stopping import direction, improves, metric_value, stop_reason
from pipeline.errors import ConfigError, ModelDirError, TrainingStopped
from pipeline.estimator import Estimator
from pipeline.task_types import TASK_TYPES
from tests.conftest import small_experiment


def _evaluation(step, auc, loss):
    return {"global_step": step, "loss": loss, "tasks": {"income": {"auc": auc, "loss": loss}}}


def _aucs(values):
    """Evaluations every 100 steps with these AUCs (and a loss that does not matter)."""
    return [_evaluation(100 * (i + 1), auc, 1.0) for i, auc in enumerate(values)]


def _losses(values):
    return [_evaluation(100 * (i + 1), 0.5, loss) for i, loss in enumerate(values)]


def _first_stop(history, metric, **kwargs):
    """The number of evaluations after which `stop_reason` first gives a reason (None: never)."""
    for n in range(1, len(history) + 1):
        if stop_reason(history[:n], metric, **kwargs) is not None:
            return n
    return None


# -- direction ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("metric", "expected"),
    [
        ("income/auc", "max"),
        ("y1_binary/auc", "max"),
        ("auc", "max"),
        ("loss", "min"),
        ("income/loss", "min"),
        ("y1/rmse", "min"),
        ("y1/mae", "min"),
        ("income/log_loss", "min"),
        ("auc/loss", "min"),  # the metric's name decides, not the task's
        ("plan/accuracy", "max"),
        ("plan/top_k_accuracy", "max"),
        ("plan/cross_entropy", "min"),
        ("visits/poisson_deviance", "min"),
    ],
)
def test_direction_follows_the_metric_name(metric, expected):
    assert direction(metric) == expected
    assert direction(metric, "auto") == expected


def test_every_rising_metric_is_one_its_task_type_reports():
    for task_type in TASK_TYPES.values():
        assert set(task_type.rising_metrics) <= set(task_type.metrics)


def test_an_explicit_mode_wins():
    assert direction("income/auc", "min") == "min"
    assert direction("y1/rmse", "max") == "max"
    assert direction("loss", "max") == "max"


# -- stop_reason -------------------------------------------------------------------------------------------


def test_stops_when_a_max_metric_has_not_improved_for_patience_evaluations():
    # best 0.70, 0.72 (new best), 0.71 (1 without), 0.72 (a tie is no improvement: 2) -> stop after 4.
    history = _aucs([0.70, 0.72, 0.71, 0.72, 0.73, 0.74])
    assert _first_stop(history, "income/auc", patience=2) == 4
    assert _first_stop(history, "income/auc", patience=3) is None  # 0.73 is a new best at 5


def test_stops_when_a_min_metric_has_not_improved_for_patience_evaluations():
    # 0.5 best, 0.45 best, 0.46 (1), 0.44 best (0), 0.445 (1), 0.45 (2) -> stop after 6.
    history = _losses([0.5, 0.45, 0.46, 0.44, 0.445, 0.45])
    assert _first_stop(history, "income/loss", patience=2) == 6
    assert stop_reason(history, "income/loss", patience=2) == (
        "income/loss has not improved for 2 evaluations since step 400 (0.44; lower is better)"
    )
    # Read as higher-is-better, the first evaluation (0.5) stays best: 1, 2 without improvement.
    assert _first_stop(history, "income/loss", patience=2, mode="max") == 3
    assert stop_reason(history[:3], "income/loss", patience=2, mode="max") == (
        "income/loss has not improved for 2 evaluations since step 100 (0.5; higher is better)"
    )


def test_improvements_of_at_most_min_delta_do_not_count():
    history = _aucs([0.70, 0.705, 0.708, 0.709, 0.72])
    # Every step improves, so without min_delta training goes on.
    assert _first_stop(history, "income/auc", patience=3) is None
    # With min_delta 0.01 nothing beats 0.70 by more than 0.01 until 0.72: 3 evaluations without -> stop at 4.
    assert _first_stop(history, "income/auc", patience=3, min_delta=0.01) == 4
    assert stop_reason(history[:4], "income/auc", patience=3, min_delta=0.01) == (
        "income/auc has not improved by more than 0.01 for 3 evaluations "
        "since step 100 (0.7; higher is better)"
    )


def test_min_delta_is_measured_from_the_best_not_the_last_evaluation():
    # 0.706 is not > 0.70 + 0.01 (1 without); 0.712 is > 0.71, so it is a new best although it is only 0.006
    # above the previous evaluation.
    history = _aucs([0.70, 0.706, 0.712, 0.715, 0.7155])
    assert stop_reason(history[:3], "income/auc", patience=2, min_delta=0.01) is None
    # 0.715 and 0.7155 are within 0.01 of 0.712: stop after 5, best 0.712 at step 300.
    assert _first_stop(history, "income/auc", patience=2, min_delta=0.01) == 5


def test_min_delta_for_a_min_metric():
    # Improvements must exceed 0.05: 1.0 best, 0.96 (1), 0.94 best (1.0 - 0.06), 0.90 (1), 0.895 (2).
    history = _losses([1.0, 0.96, 0.94, 0.90, 0.895])
    assert _first_stop(history, "loss", patience=2, min_delta=0.05) == 5
    assert _first_stop(history, "loss", patience=2) is None


def test_nan_never_improves():
    history = _losses([0.5, math.nan, math.nan])
    assert _first_stop(history, "income/loss", patience=2) == 3
    assert stop_reason(history, "income/loss", patience=2) == (
        "income/loss has not improved for 2 evaluations since step 100 (0.5; lower is better)"
    )


# -- improves and metric_value ------------------------------------------------------------------------------


def test_improves_by_more_than_min_delta_and_never_with_nan():
    assert improves(0.76, 0.75, "max") and not improves(0.75, 0.75, "max")
    assert improves(0.4, 0.5, "min") and not improves(0.5, 0.4, "min")
    assert not improves(0.755, 0.75, "max", min_delta=0.01) and improves(0.761, 0.75, "max", min_delta=0.01)
    assert not improves(math.nan, 0.5, "min") and improves(0.5, math.nan, "min")


def test_metric_value():
    results = _evaluation(100, 0.75, 0.3)
    assert metric_value(results, "loss") == 0.3
    assert metric_value(results, "income/auc") == 0.75


@pytest.mark.parametrize("metric", ["income/rmse", "wealth/auc", "auc"])
def test_an_unknown_metric_lists_the_known_ones(metric):
    with pytest.raises(ConfigError) as error:
        metric_value(_evaluation(100, 0.75, 0.3), metric)
    assert str(error.value) == (
        f"The evaluation has no metric {metric!r}; it has loss, income/auc, income/loss."
    )


def test_experiment_config_refuses_an_unknown_metric():
    base = small_experiment()
    for field in ("early_stopping_metric", "best_metric"):
        config = dataclasses.replace(base, train=dataclasses.replace(base.train, **{field: "y1/auc"}))
        with pytest.raises(ConfigError) as error:
            config.validate()
        assert str(error.value) == (
            f"`{field}` must be one of the evaluation's metrics: "
            f"loss, y1/loss, y1/rmse, y1/mae, y2/loss, y2/rmse, y2/mae. Received: {field}='y1/auc'"
        )
    assert isinstance(small_experiment(early_stopping_metric="y2/mae").validate(), ExperimentConfig)


# -- in train_and_evaluate ---------------------------------------------------------------------------


EVERY = 20


def _plateau_config(patience=2):
    # y1/rmse falls while training, so read as higher-is-better the first evaluation stays the best: with
    # patience 2 training stops after exactly 3 evaluations.
    return small_experiment(
        early_stopping_metric="y1/rmse",
        early_stopping_mode="max",
        early_stopping_patience=patience,
        keep_checkpoint_max=1,
        save_checkpoints_steps=EVERY,
    )


def _history(model_dir):
    return json.loads((model_dir / "eval_history.json").read_text())


def test_train_and_evaluate_stops_early_keeps_the_best_and_remembers(tmp_path):
    config = _plateau_config()
    train_fn, eval_fn = data.input_fn(config, "train"), data.input_fn(config, "eval")
    estimator = Estimator(config, tmp_path)
    results = estimator.train_and_evaluate(train_fn, eval_fn, max_steps=5 * EVERY, eval_every_steps=EVERY)

    history = _history(tmp_path)
    assert [h["global_step"] for h in history] == [EVERY, 2 * EVERY, 3 * EVERY]
    rmse = [h["tasks"]["y1"]["rmse"] for h in history]
    assert rmse[0] > rmse[1] and rmse[0] > rmse[2], rmse  # what makes the first evaluation the best
    assert estimator.step == 3 * EVERY and results["global_step"] == 3 * EVERY
    assert results["stopped_early"] == (
        f"y1/rmse has not improved for 2 evaluations since step {EVERY} ({rmse[0]:.6g}; higher is better)"
    )
    assert {k: v for k, v in results.items() if k != "stopped_early"} == history[-1]

    # The best evaluation's checkpoint outlives keep_checkpoint_max=1.
    best = json.loads((tmp_path / "best" / "best.json").read_text())
    assert best["global_step"] == EVERY and best["metric"] == "y1/rmse" and best["mode"] == "max"
    assert best["value"] == rmse[0] and best["checkpoint"] == f"ckpt-{EVERY}"
    assert sorted(p.name for p in tmp_path.glob("ckpt-*.index")) == [f"ckpt-{3 * EVERY}.index"]
    assert (tmp_path / "best" / f"ckpt-{EVERY}.index").exists()
    assert estimator.checkpoint_path("best") == str(tmp_path / "best" / f"ckpt-{EVERY}")

    # Restoring it gives back the best evaluation's model.
    restored = Estimator(config, tmp_path)
    assert restored.restore("best") == str(tmp_path / "best" / f"ckpt-{EVERY}")
    assert restored.step == EVERY
    again = restored.evaluate(eval_fn)
    assert again["global_step"] == EVERY
    for task, metrics in best["results"]["tasks"].items():
        assert again["tasks"][task] == pytest.approx(metrics, rel=1e-5, abs=1e-7), task
    assert again["loss"] == pytest.approx(best["results"]["loss"], rel=1e-5)

    # A rerun decides the same from eval_history.json and trains nothing.
    rerun = Estimator(config, tmp_path)
    rerun_results = rerun.train_and_evaluate(train_fn, eval_fn, max_steps=5 * EVERY, eval_every_steps=EVERY)
    assert rerun.step == 3 * EVERY
    assert rerun_results == results
    assert len(_history(tmp_path)) == 3
    assert sorted(p.name for p in tmp_path.glob("ckpt-*.index")) == [f"ckpt-{3 * EVERY}.index"]

    # More patience trains on to max_steps: 2 more evaluations, 4 without improvement < 10.
    patient = Estimator(_plateau_config(patience=10), tmp_path)
    patient_results = patient.train_and_evaluate(
        train_fn, eval_fn, max_steps=5 * EVERY, eval_every_steps=EVERY
    )
    assert patient.step == 5 * EVERY
    assert "stopped_early" not in patient_results and patient_results["global_step"] == 5 * EVERY
    assert [h["global_step"] for h in _history(tmp_path)] == [EVERY * i for i in range(1, 6)]
    assert json.loads((tmp_path / "best" / "best.json").read_text())["global_step"] == EVERY


def _nan_labels_first(input_fn):
    """The input function, with NaN labels (so a NaN loss) on its first call: a first evaluation gone bad."""
    calls = []

    def make(context, start_step=0):
        dataset = input_fn(context, start_step)
        calls.append(start_step)
        if len(calls) > 1:
            return dataset
        return dataset.map(lambda x, labels, w: (x, {k: v * float("nan") for k, v in labels.items()}, w))

    return make


def test_a_nan_evaluation_is_never_the_best(tmp_path):
    config = small_experiment(save_checkpoints_steps=EVERY)
    estimator = Estimator(config, tmp_path)
    results = estimator.train_and_evaluate(
        data.input_fn(config, "train"),
        _nan_labels_first(data.input_fn(config, "eval")),
        max_steps=2 * EVERY,
        eval_every_steps=EVERY,
    )
    history = _history(tmp_path)
    assert math.isnan(history[0]["loss"]) and not math.isnan(results["loss"])
    best = json.loads((tmp_path / "best" / "best.json").read_text())
    assert best["global_step"] == 2 * EVERY and best["value"] == results["loss"]


def test_a_changed_best_metric_starts_choosing_anew(tmp_path):
    config = small_experiment(save_checkpoints_steps=EVERY)
    train_fn, eval_fn = data.input_fn(config, "train"), data.input_fn(config, "eval")
    Estimator(config, tmp_path).train_and_evaluate(train_fn, eval_fn, max_steps=EVERY, eval_every_steps=EVERY)
    first = json.loads((tmp_path / "best" / "best.json").read_text())
    assert (first["metric"], first["mode"], first["global_step"]) == ("loss", "min", EVERY)

    by_mae_of_y1 = small_experiment(save_checkpoints_steps=EVERY, best_metric="y1/mae")
    Estimator(by_mae_of_y1, tmp_path).train_and_evaluate(
        train_fn, eval_fn, max_steps=2 * EVERY, eval_every_steps=EVERY
    )
    best = json.loads((tmp_path / "best" / "best.json").read_text())
    assert (best["metric"], best["mode"], best["global_step"]) == ("y1/mae", "min", 2 * EVERY)
    assert sorted(p.name for p in (tmp_path / "best").glob("ckpt-*.index")) == [f"ckpt-{2 * EVERY}.index"]


def test_training_after_restoring_an_older_checkpoint_is_refused(tmp_path):
    config = _plateau_config()
    train_fn, eval_fn = data.input_fn(config, "train"), data.input_fn(config, "eval")
    Estimator(config, tmp_path).train_and_evaluate(
        train_fn, eval_fn, max_steps=3 * EVERY, eval_every_steps=EVERY
    )
    estimator = Estimator(config, tmp_path)
    estimator.restore("best")
    with pytest.raises(ModelDirError) as error:
        estimator.train(train_fn, max_steps=4 * EVERY)
    assert str(error.value) == (
        f"The loaded checkpoint (step {EVERY}) is not the latest of {tmp_path}; training goes on from the "
        "latest one, with a new Estimator."
    )
    assert estimator.restore("latest") and estimator.train(train_fn, max_steps=4 * EVERY)["global_step"] == 80


def test_a_run_stopped_during_an_evaluation_evaluates_that_step_when_rerun(tmp_path):
    config = small_experiment(save_checkpoints_steps=EVERY)
    train_fn, eval_fn = data.input_fn(config, "train"), data.input_fn(config, "eval")
    estimator = Estimator(config, tmp_path)

    def signalled_during_evaluation(context, start_step=0):
        estimator.request_stop("SIGTERM")  # as the signal handler does
        return eval_fn(context, start_step)

    with pytest.raises(TrainingStopped) as stopped:
        estimator.train_and_evaluate(
            train_fn, signalled_during_evaluation, max_steps=2 * EVERY, eval_every_steps=EVERY
        )
    assert (stopped.value.step, stopped.value.reason) == (EVERY, "SIGTERM")
    assert not (tmp_path / "eval_history.json").exists() and (tmp_path / f"ckpt-{EVERY}.index").exists()

    rerun = Estimator(config, tmp_path)
    rerun.train_and_evaluate(train_fn, eval_fn, max_steps=2 * EVERY, eval_every_steps=EVERY)
    assert [h["global_step"] for h in _history(tmp_path)] == [EVERY, 2 * EVERY]
