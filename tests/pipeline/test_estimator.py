import dataclasses
import json
import logging

import numpy as np
import pytest
import tensorflow as tf

from pipeline import data
from pipeline.config import TaskConfig
from pipeline.errors import ConfigError, ModelDirError, TrainingDiverged
from pipeline.estimator import Estimator
from tests.conftest import small_experiment


def _input_fns(config):
    return data.input_fn(config, "train"), data.input_fn(config, "eval")


def _weights(estimator):
    return [np.asarray(v) for v in estimator.model.weights]


@pytest.mark.parametrize("architecture", ["shared_bottom", "omoe", "mmoe", "ple", "single_task"])
def test_loss_falls_on_synthetic_data(tmp_path, architecture):
    config = small_experiment(architecture)
    train_fn, eval_fn = _input_fns(config)
    estimator = Estimator(config, tmp_path)
    estimator.train(train_fn, max_steps=5)
    early = estimator.evaluate(eval_fn)
    estimator.train(train_fn, max_steps=400)
    late = estimator.evaluate(eval_fn)
    assert late["global_step"] == 400
    assert late["loss"] < 0.3 * early["loss"], (early["loss"], late["loss"])
    for task in ("y1", "y2"):
        assert late["tasks"][task]["loss"] < early["tasks"][task]["loss"]


def test_resume_continues_the_step_counter_from_the_checkpoint(tmp_path):
    config = small_experiment(save_checkpoints_steps=50)
    train_fn, _ = _input_fns(config)
    first = Estimator(config, tmp_path / "resumed")
    first.train(train_fn, max_steps=50)
    assert tf.train.latest_checkpoint(str(tmp_path / "resumed")).endswith("ckpt-50")
    trained_weights = _weights(first)

    second = Estimator(config, tmp_path / "resumed")  # a new process, in effect
    assert second.step == 50
    for restored, trained in zip(_weights(second), trained_weights, strict=True):
        np.testing.assert_array_equal(restored, trained)
    second.train(train_fn, max_steps=100)
    assert second.step == 100
    assert int(second.optimizer.iterations.numpy()) == 100
    assert tf.train.latest_checkpoint(str(tmp_path / "resumed")).endswith("ckpt-100")

    # Stopping and resuming gives the model an uninterrupted run gives (same batches, same state).
    straight = Estimator(config, tmp_path / "straight")
    straight.train(train_fn, max_steps=100)
    for resumed, uninterrupted in zip(_weights(second), _weights(straight), strict=True):
        np.testing.assert_allclose(resumed, uninterrupted, rtol=1e-5, atol=1e-6)


def test_training_past_max_steps_is_a_no_op(tmp_path):
    config = small_experiment()
    estimator = Estimator(config, tmp_path)
    estimator.train(_input_fns(config)[0], max_steps=30)
    assert estimator.train(_input_fns(config)[0], max_steps=20) == {"global_step": 30}


def test_deterministic_given_the_seed(tmp_path):
    runs = {}
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        config = small_experiment(seed=seed)
        estimator = Estimator(config, tmp_path / name)
        estimator.train(_input_fns(config)[0], max_steps=30)
        runs[name] = _weights(estimator)
    for a, b in zip(runs["a"], runs["b"], strict=True):
        np.testing.assert_array_equal(a, b)
    assert not all(np.array_equal(a, c) for a, c in zip(runs["a"], runs["c"], strict=True))


def test_model_dir_records_config_checkpoints_events_and_results(tmp_path):
    config = small_experiment(keep_checkpoint_max=2, save_checkpoints_steps=25)
    train_fn, eval_fn = _input_fns(config)
    estimator = Estimator(config, tmp_path)
    results = estimator.train_and_evaluate(train_fn, eval_fn, max_steps=100, eval_every_steps=50)
    assert results["global_step"] == 100 and results["examples"] == 1024
    saved = json.loads((tmp_path / "eval_results.json").read_text())
    assert saved == results
    assert sorted(saved["tasks"]["y1"]) == ["examples", "loss", "mae", "rmse"]
    assert saved["tasks"]["y1"]["examples"] == 1024 and saved["split"] == "eval"
    assert (tmp_path / "config.json").read_text() == config.to_json()
    indexes = sorted(p.name for p in tmp_path.glob("ckpt-*.index"))
    assert indexes == ["ckpt-100.index", "ckpt-75.index"]  # keep_checkpoint_max=2
    assert list((tmp_path / "train").glob("events.out.tfevents.*"))
    assert list((tmp_path / "eval").glob("events.out.tfevents.*"))


def test_a_model_dir_holding_another_architecture_is_refused(tmp_path):
    config = small_experiment("mmoe")
    Estimator(config, tmp_path).train(_input_fns(config)[0], max_steps=10)
    with pytest.raises(ConfigError) as error:
        Estimator(small_experiment("omoe"), tmp_path)
    assert "model.architecture: saved 'mmoe', requested 'omoe'" in str(error.value)


def test_evaluate_needs_a_checkpoint(tmp_path):
    config = small_experiment()
    with pytest.raises(ModelDirError, match="No checkpoint in .*; train there first."):
        Estimator(config, tmp_path).evaluate(_input_fns(config)[1])


def test_model_dir_that_is_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ModelDirError, match="is a file"):
        Estimator(small_experiment(), tmp_path / "file")


def _exact_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    positives, negatives = scores[labels == 1], scores[labels == 0]
    greater = (positives[:, None] > negatives[None, :]).sum()
    ties = (positives[:, None] == negatives[None, :]).sum()
    return (greater + 0.5 * ties) / (len(positives) * len(negatives))


def test_binary_task_auc_is_computed_on_that_tasks_own_labels(tmp_path):
    tasks = (
        TaskConfig("y1_binary", "y1_binary", type="binary", loss="log_loss"),
        TaskConfig("y2", "y2"),
    )
    base = small_experiment()
    config = dataclasses.replace(base, model=dataclasses.replace(base.model, tasks=tasks))
    train_fn, eval_fn = _input_fns(config)
    estimator = Estimator(config, tmp_path)
    estimator.train(train_fn, max_steps=300)
    results = estimator.evaluate(eval_fn)

    features, labels = data.synthetic.generate(config.data.synthetic, "eval")
    scores = np.asarray(estimator.model(features)["y1_binary"])
    expected = _exact_auc(labels["y1_binary"], scores)
    assert results["tasks"]["y1_binary"]["auc"] == pytest.approx(expected, abs=2e-3)
    assert expected > 0.8
    assert sorted(results["tasks"]["y1_binary"]) == ["auc", "examples", "log_loss", "loss"]


def test_continuous_evaluation_evaluates_each_checkpoint_once_and_skips_deleted_ones(tmp_path, caplog):
    config = small_experiment(save_checkpoints_steps=10, keep_checkpoint_max=10)
    Estimator(config, tmp_path).train(data.input_fn(config, "train"), max_steps=40)
    (tmp_path / "ckpt-20.data-00000-of-00001").unlink()  # deleted while being written over
    for part in tmp_path.glob("ckpt-30.*"):  # deleted whole
        part.unlink()
    evaluator = Estimator(config, tmp_path)
    with caplog.at_level(logging.WARNING):
        results = list(
            evaluator.evaluate_continuously(
                data.input_fn(config, "eval"), max_steps=40, timeout_secs=0, present_at_start=[]
            )
        )
    assert [r["global_step"] for r in results] == [10, 40]
    skipped = [
        r.getMessage() for r in caplog.records if "deleted before it could be evaluated" in r.getMessage()
    ]
    assert (
        len(skipped) == 2
        and str(tmp_path / "ckpt-20") in skipped[0]
        and str(tmp_path / "ckpt-30") in skipped[1]
    )

    # Started now, it evaluates the latest checkpoint and waits for newer ones, up to the timeout.
    assert [
        r["global_step"]
        for r in evaluator.evaluate_continuously(data.input_fn(config, "eval"), max_steps=100, timeout_secs=0)
    ] == [40]


def test_uncertainty_loss_weights_are_learned_logged_and_resumed(tmp_path):
    config = small_experiment(save_checkpoints_steps=50)
    config = dataclasses.replace(
        config, model=dataclasses.replace(config.model, loss_weighting="uncertainty")
    )
    train_fn = data.input_fn(config, "train")
    estimator = Estimator(config, tmp_path)
    estimator.train(train_fn, max_steps=100)
    learned = estimator.model.task_loss.weights_now()
    assert sorted(learned) == ["y1", "y2"] and all(abs(w - 1.0) > 1e-3 for w in learned.values()), learned

    logged = {}
    for path in (tmp_path / "train").iterdir():
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                if value.tag.startswith("loss_weight/") and event.step == 100:
                    logged[value.tag.split("/")[1]] = float(tf.make_ndarray(value.tensor))
    assert logged == pytest.approx(learned, rel=1e-6)

    resumed = Estimator(config, tmp_path)
    assert resumed.model.task_loss.weights_now() == pytest.approx(learned, rel=1e-7)
    resumed.train(train_fn, max_steps=150)
    assert resumed.model.task_loss.weights_now() != pytest.approx(learned, rel=1e-7)


def test_a_checkpoint_of_another_model_is_refused_in_one_line(tmp_path):
    experiment = small_experiment()
    Estimator(experiment, tmp_path / "a").train(data.input_fn(experiment, "train"), max_steps=2)
    wider = dataclasses.replace(experiment, model=dataclasses.replace(experiment.model, expert_units=(24,)))
    Estimator(wider, tmp_path / "b").train(data.input_fn(wider, "train"), max_steps=2)
    for name in ("checkpoint", "ckpt-2.index", "ckpt-2.data-00000-of-00001"):  # b's checkpoint, a's weights
        (tmp_path / "b" / name).write_bytes((tmp_path / "a" / name).read_bytes())
    with pytest.raises(ModelDirError) as error:
        Estimator(wider, tmp_path / "b")
    message = str(error.value)
    assert message.startswith(f"{tmp_path / 'b' / 'ckpt-2'} does not hold this model (")
    assert "\n" not in message


def test_a_loss_that_becomes_nan_stops_training_and_keeps_the_last_good_checkpoint(tmp_path):
    experiment = small_experiment(save_checkpoints_steps=5, log_every_steps=5)
    estimator = Estimator(experiment, tmp_path)
    estimator.train(data.input_fn(experiment, "train"), max_steps=10)
    good = {v.path: v.numpy() for v in estimator.model.trainable_variables}

    def poisoned(context, start):  # y2's labels become NaN from now on
        return data.input_fn(experiment, "train")(context, start).map(
            lambda inputs, labels, weights: (inputs, {**labels, "y2": labels["y2"] * np.nan}, weights)
        )

    with pytest.raises(TrainingDiverged) as error:
        estimator.train(poisoned, max_steps=20)
    assert str(error.value) == (
        "The training loss became non-finite between steps 10 and 15 (y2 nan); nothing of those steps was "
        f"saved and the latest checkpoint is still {tmp_path / 'ckpt-10'}. Lower the learning rate, or look "
        "for extreme values in the data."
    )
    assert tf.train.latest_checkpoint(str(tmp_path)) == str(tmp_path / "ckpt-10")
    restored = Estimator(experiment, tmp_path)
    for variable in restored.model.trainable_variables:
        np.testing.assert_array_equal(variable.numpy(), good[variable.path])
