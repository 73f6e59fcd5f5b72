"""Learning-rate schedules against hand-computed values, their validation, and resuming with a schedule."""

import dataclasses
import math
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipeline import data
from pipeline.config import TrainConfig
from pipeline.errors import ConfigError
from pipeline.estimator import Estimator
from pipeline.optimizers import (
    Constant,
    LinearWarmUp,
    learning_rate_schedule,
    make_optimizer,
    set_learning_rate,
)
from tests.conftest import small_experiment


def _rates(schedule, steps):
    return [float(schedule(step)) for step in steps]


# -- each schedule's rate at chosen steps --------------------------------------------------------------


def test_constant_schedule_is_the_learning_rate_at_every_step():
    schedule = learning_rate_schedule(TrainConfig(learning_rate=0.025))
    assert isinstance(schedule, Constant)
    assert _rates(schedule, [0, 1, 999, 10**6]) == pytest.approx([0.025] * 4, rel=1e-7)


def test_exponential_schedule():
    config = TrainConfig(
        learning_rate=0.1, learning_rate_schedule="exponential", decay_steps=10, decay_rate=0.5
    )
    steps = [0, 5, 10, 25]
    # lr * rate ** (step / decay_steps), not staircased: 0.1, 0.1*0.5**0.5, 0.1*0.5, 0.1*0.5**2.5
    expected = [0.1, 0.07071067811865475, 0.05, 0.017677669529663688]
    assert expected == pytest.approx([0.1 * 0.5 ** (s / 10) for s in steps])  # the golden values themselves
    assert _rates(learning_rate_schedule(config), steps) == pytest.approx(expected, rel=1e-6)


def test_cosine_schedule_decays_to_alpha_times_the_rate_and_stays_there():
    config = TrainConfig(
        learning_rate=0.1, learning_rate_schedule="cosine", decay_steps=100, cosine_alpha=0.2
    )
    steps = [0, 25, 50, 100, 150]
    # lr * ((1 - alpha) * 0.5 * (1 + cos(pi * min(step, decay) / decay)) + alpha), alpha = 0.2:
    #   step 0:   0.1 * (0.8 * 1 + 0.2)                      = 0.1
    #   step 25:  0.1 * (0.8 * 0.5 * (1 + cos(pi/4)) + 0.2)  = 0.1 * (0.4 * 1.7071068 + 0.2) = 0.0882843
    #   step 50:  0.1 * (0.8 * 0.5 * 1 + 0.2)                = 0.06
    #   step 100: 0.1 * (0 + 0.2)                            = 0.02, and 0.02 past decay_steps (step 150)
    expected = [0.1, 0.08828427124746191, 0.06, 0.02, 0.02]
    golden = [0.1 * (0.8 * 0.5 * (1 + math.cos(math.pi * min(s, 100) / 100)) + 0.2) for s in steps]
    assert expected == pytest.approx(golden)
    assert _rates(learning_rate_schedule(config), steps) == pytest.approx(expected, rel=1e-6)


def test_piecewise_schedule_boundaries_belong_to_the_earlier_value():
    # Keras semantics: values[0] for step <= boundaries[0], values[1] for
    # boundaries[0] < step <= boundaries[1], values[2] for step > boundaries[1]. So the step equal to a
    # boundary still uses the earlier value.
    config = TrainConfig(
        learning_rate_schedule="piecewise", piecewise_boundaries=(10, 20), piecewise_values=(1.0, 0.5, 0.1)
    )
    steps = [0, 9, 10, 11, 20, 21, 10**6]
    expected = [1.0, 1.0, 1.0, 0.5, 0.5, 0.1, 0.1]
    assert _rates(learning_rate_schedule(config), steps) == pytest.approx(expected, rel=1e-7)
    # With the int64 step the optimizer passes, too.
    schedule = learning_rate_schedule(config)
    assert _rates(schedule, [tf.constant(s, tf.int64) for s in (10, 11)]) == pytest.approx([1.0, 0.5])


def test_warm_up_rises_linearly_then_runs_the_schedule_from_its_step_0():
    config = TrainConfig(
        learning_rate=0.1,
        learning_rate_schedule="exponential",
        decay_steps=10,
        decay_rate=0.5,
        warmup_steps=4,
    )
    schedule = learning_rate_schedule(config)
    assert isinstance(schedule, LinearWarmUp)
    # s < W: base(0) * (s + 1) / W = 0.1 * (s + 1) / 4; s >= W: 0.1 * 0.5 ** ((s - 4) / 10).
    steps = [0, 1, 2, 3, 4, 9, 14, 24]
    expected = [0.025, 0.05, 0.075, 0.1, 0.1, 0.1 * 0.5**0.5, 0.05, 0.025]
    assert _rates(schedule, steps) == pytest.approx(expected, rel=1e-6)


def test_warm_up_shifts_piecewise_boundaries_by_the_warm_up():
    config = TrainConfig(
        learning_rate_schedule="piecewise",
        piecewise_boundaries=(10,),
        piecewise_values=(1.0, 0.5),
        warmup_steps=5,
    )
    # Warm-up: 1.0 * (s + 1) / 5 for s < 5; then piecewise at s - 5: 1.0 up to s - 5 = 10, 0.5 after.
    steps = [0, 4, 5, 15, 16]
    expected = [0.2, 1.0, 1.0, 1.0, 0.5]
    assert _rates(learning_rate_schedule(config), steps) == pytest.approx(expected, rel=1e-7)


def test_warm_up_schedule_survives_keras_serialization():
    config = TrainConfig(
        learning_rate=0.1, learning_rate_schedule="cosine", decay_steps=100, cosine_alpha=0.2, warmup_steps=4
    )
    schedule = learning_rate_schedule(config)
    copy = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    assert isinstance(copy, LinearWarmUp) and copy.warmup_steps == 4
    steps = [0, 3, 4, 29, 104, 200]
    assert _rates(copy, steps) == pytest.approx(_rates(schedule, steps), rel=1e-7)
    # step 29 is cosine step 25: 0.1 * (0.8 * 0.5 * (1 + cos(pi / 4)) + 0.2)
    assert float(copy(29)) == pytest.approx(0.08828427124746191, rel=1e-6)


# -- validation -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"learning_rate_schedule": "cosine", "decay_steps": -1},
            "`decay_steps` must be an integer >= 0. Received: decay_steps=-1",
        ),
        (
            {
                "learning_rate_schedule": "piecewise",
                "piecewise_boundaries": (10, 20),
                "piecewise_values": (0.1,),
            },
            "`piecewise_values` must hold one learning rate more than piecewise_boundaries (3). "
            "Received: piecewise_values=[0.1]",
        ),
        (
            {
                "learning_rate_schedule": "piecewise",
                "piecewise_boundaries": (10, 10),
                "piecewise_values": (0.1, 0.01, 0.001),
            },
            "`piecewise_boundaries` must be increasing positive step numbers. "
            "Received: piecewise_boundaries=[10, 10]",
        ),
        (
            {
                "learning_rate_schedule": "piecewise",
                "piecewise_boundaries": (20, 10),
                "piecewise_values": (0.1, 0.01, 0.001),
            },
            "`piecewise_boundaries` must be increasing positive step numbers. "
            "Received: piecewise_boundaries=[20, 10]",
        ),
        (
            {"learning_rate_schedule": "cosine", "decay_steps": 100, "cosine_alpha": 1.5},
            "`cosine_alpha` must be in [0, 1]. Received: cosine_alpha=1.5",
        ),
        (
            {"learning_rate_schedule": "cosine", "decay_steps": 100, "cosine_alpha": -0.1},
            "`cosine_alpha` must be in [0, 1]. Received: cosine_alpha=-0.1",
        ),
        (
            {"learning_rate_schedule": "exponential", "decay_steps": 100, "piecewise_boundaries": (10,)},
            "`piecewise_boundaries` is for the piecewise schedule only. Received: piecewise_boundaries=[10]",
        ),
        (
            {"piecewise_boundaries": (10,), "piecewise_values": (0.1, 0.01)},
            "`piecewise_boundaries` is for the piecewise schedule only. Received: piecewise_boundaries=[10]",
        ),
        (
            {"piecewise_values": (0.1,)},
            "`piecewise_values` is for the piecewise schedule only. Received: piecewise_values=[0.1]",
        ),
    ],
)
def test_invalid_schedules_are_refused(overrides, message):
    with pytest.raises(ConfigError) as error:
        TrainConfig(**overrides).validate()
    assert str(error.value) == message


def test_valid_schedules_pass_validation():
    for config in (
        TrainConfig(learning_rate_schedule="cosine"),  # decay_steps 0: over the whole run
        TrainConfig(learning_rate_schedule="exponential", decay_steps=1),
        TrainConfig(learning_rate_schedule="cosine", decay_steps=1, cosine_alpha=1.0),
        TrainConfig(
            learning_rate_schedule="piecewise", piecewise_boundaries=(1,), piecewise_values=(1.0, 0.5)
        ),
    ):
        config.validate()


# -- the optimizer follows its step -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "cls"),
    [("adam", keras.optimizers.Adam), ("sgd", keras.optimizers.SGD), ("rmsprop", keras.optimizers.RMSprop)],
)
def test_make_optimizer_builds_the_named_optimizer(name, cls):
    assert type(make_optimizer(TrainConfig(optimizer=name))) is cls


def test_set_learning_rate_follows_the_optimizers_iterations():
    config = TrainConfig(
        learning_rate=0.1, learning_rate_schedule="cosine", decay_steps=100, cosine_alpha=0.2, optimizer="sgd"
    )
    optimizer, schedule = make_optimizer(config), learning_rate_schedule(config)
    variable = keras.Variable(0.0)
    optimizer.build([variable])
    # Golden values as in test_cosine_schedule_decays_to_alpha_times_the_rate_and_stays_there.
    for step, expected in [(0, 0.1), (25, 0.08828427124746191), (50, 0.06), (100, 0.02), (150, 0.02)]:
        optimizer.iterations.assign(step)
        set_learning_rate(optimizer, schedule)
        assert float(optimizer.learning_rate) == pytest.approx(expected, rel=1e-6)


def test_each_update_uses_the_rate_of_the_step_before_it():
    config = TrainConfig(
        optimizer="sgd",
        learning_rate_schedule="piecewise",
        piecewise_boundaries=(2,),
        piecewise_values=(1.0, 0.5),
    )
    optimizer, schedule = make_optimizer(config), learning_rate_schedule(config)
    variable = keras.Variable(0.0)
    optimizer.build([variable])
    for _ in range(4):
        set_learning_rate(optimizer, schedule)
        optimizer.apply_gradients([(tf.constant(1.0), variable)])
    # Plain SGD with gradient 1 subtracts the rate: iterations 0, 1, 2 (<= boundary 2) use 1.0, iteration 3
    # uses 0.5: 0 - (1 + 1 + 1 + 0.5) = -3.5.
    assert float(variable.numpy()) == -3.5
    assert int(optimizer.iterations.numpy()) == 4
    assert float(optimizer.learning_rate) == 0.5  # the last update's


# -- resuming keeps the schedule ----------------------------------------------------------------------


def _weights(estimator):
    return [np.asarray(v) for v in estimator.model.weights]


def test_a_resumed_run_continues_the_schedule_and_matches_an_uninterrupted_one(tmp_path):
    config = small_experiment(
        learning_rate_schedule="cosine", decay_steps=100, cosine_alpha=0.1, save_checkpoints_steps=30
    )
    train_fn = data.input_fn(config, "train")
    Estimator(config, tmp_path / "resumed").train(train_fn, max_steps=30)
    resumed = Estimator(config, tmp_path / "resumed")  # a new process, in effect
    assert int(resumed.optimizer.iterations.numpy()) == 30
    # 3e-3 * (0.9 * 0.5 * (1 + cos(pi * 30 / 100)) + 0.1) = 3e-3 * (0.45 * 1.5877853 + 0.1) = 0.00244351
    assert resumed.learning_rate == pytest.approx(0.0024435100906, rel=1e-6)
    resumed.train(train_fn, max_steps=60)

    straight = Estimator(config, tmp_path / "straight")
    straight.train(train_fn, max_steps=60)

    # 3e-3 * (0.9 * 0.5 * (1 + cos(pi * 60 / 100)) + 0.1) = 3e-3 * (0.45 * 0.6909830 + 0.1) = 0.00123283
    expected_rate = 3e-3 * (0.9 * 0.5 * (1 + math.cos(math.pi * 60 / 100)) + 0.1)
    assert expected_rate == pytest.approx(0.0012328270576, rel=1e-9)
    for estimator in (resumed, straight):
        assert int(estimator.optimizer.iterations.numpy()) == 60
        assert estimator.learning_rate == pytest.approx(expected_rate, rel=1e-6)
    # Same batches, same optimizer state, same rates: the weights agree to the bit (on one CPU device).
    for a, b in zip(_weights(resumed), _weights(straight), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=0)
    for a, b in zip(resumed.optimizer.variables, straight.optimizer.variables, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=0)


def test_a_resumed_run_uses_a_changed_constant_learning_rate(tmp_path):
    config = small_experiment(optimizer="sgd", learning_rate=0.01, save_checkpoints_steps=10)
    train_fn = data.input_fn(config, "train")
    first = Estimator(config, tmp_path / "same")
    first.train(train_fn, max_steps=10)
    start = _weights(first)
    shutil.copytree(tmp_path / "same", tmp_path / "changed")

    same = Estimator(config, tmp_path / "same")
    changed = Estimator(
        dataclasses.replace(config, train=dataclasses.replace(config.train, learning_rate=0.03)),
        tmp_path / "changed",
    )
    assert changed.step == 10 and int(changed.optimizer.iterations.numpy()) == 10
    assert same.learning_rate == pytest.approx(0.01)
    assert changed.learning_rate == pytest.approx(0.03)  # not the checkpoint's 0.01
    same.train(train_fn, max_steps=11)
    changed.train(train_fn, max_steps=11)

    # One SGD step from the same weights on the same batch: w - lr * g, so (w0 - w1) / lr is the same
    # gradient g in both runs (up to float32 rounding of w, ~1e-7 * |w| / lr).
    for w0, a, b in zip(start, _weights(same), _weights(changed), strict=True):
        gradient_same, gradient_changed = (w0 - a) / 0.01, (w0 - b) / 0.03
        np.testing.assert_allclose(gradient_changed, gradient_same, rtol=1e-3, atol=2e-4)
    assert max(float(np.abs(w0 - b).max()) for w0, b in zip(start, _weights(changed), strict=True)) > 1e-3


def test_a_run_may_resume_with_another_schedule(tmp_path):
    config = small_experiment(learning_rate=0.01, save_checkpoints_steps=10)
    train_fn = data.input_fn(config, "train")
    Estimator(config, tmp_path).train(train_fn, max_steps=10)
    decaying = dataclasses.replace(
        config.train, learning_rate_schedule="exponential", decay_steps=10, decay_rate=0.5
    )
    resumed = Estimator(dataclasses.replace(config, train=decaying), tmp_path)
    assert resumed.step == 10 and resumed.learning_rate == pytest.approx(0.005)  # 0.01 * 0.5 ** (10 / 10)
    resumed.train(train_fn, max_steps=20)
    assert float(resumed.optimizer.learning_rate) == pytest.approx(0.01 * 0.5 ** (19 / 10), rel=1e-6)


def test_a_schedule_without_decay_steps_decays_over_the_run_it_is_trained_for():
    config = TrainConfig(
        learning_rate=0.1, learning_rate_schedule="cosine", cosine_alpha=0.2, warmup_steps=10
    )
    # Warm-up to step 9, then cosine over 60 - 10 = 50 steps: 0.1 * (0.8 * 0.5 * (1 + cos(pi * s / 50)) + 0.2)
    assert _rates(learning_rate_schedule(config, max_steps=60), [35, 60]) == pytest.approx(
        [0.06, 0.02], rel=1e-6
    )
    with pytest.raises(ConfigError) as error:
        learning_rate_schedule(config)
    assert (
        str(error.value)
        == "The cosine schedule decays over the run (decay_steps 0): give the run's max_steps."
    )


def test_a_run_resumed_to_more_steps_stretches_a_schedule_over_the_run(tmp_path):
    config = small_experiment(learning_rate=0.01, learning_rate_schedule="cosine", save_checkpoints_steps=10)
    train_fn = data.input_fn(config, "train")
    first = Estimator(config, tmp_path)
    first.train(train_fn, max_steps=20)
    assert first.learning_rate == pytest.approx(0.0)  # the end of a cosine over 20 steps
    resumed = Estimator(config, tmp_path)
    with pytest.raises(ConfigError):
        resumed.learning_rate  # noqa: B018  (known once a run trains)
    resumed.train(train_fn, max_steps=40)
    # The last update (iteration 39) used 0.01 * 0.5 * (1 + cos(pi * 39 / 40)): not 0, as a schedule fixed
    # to the first run's 20 steps would give.
    assert float(resumed.optimizer.learning_rate) == pytest.approx(
        0.01 * 0.5 * (1 + math.cos(math.pi * 39 / 40)),
        rel=1e-4,  # float32 cosine near its end
    )
    assert float(resumed.optimizer.learning_rate) > 0
