"""The optimizer and its learning-rate schedule: the rate is a function of the optimizer's step.

The optimizer holds its rate in a variable, which the training step sets from the schedule before every
update (`set_learning_rate`), rather than holding the schedule itself. So every schedule checkpoints the same
variables: a run may resume with another schedule or rate, and checkpoints load whatever schedule wrote
them. The optimizer's step is checkpointed, so a resumed run continues its schedule exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import keras
import tensorflow as tf

from pipeline.errors import ConfigError

if TYPE_CHECKING:  # the config validates its names against the tables here
    from pipeline.config import TrainConfig

Schedule = keras.optimizers.schedules.LearningRateSchedule

OPTIMIZERS = {
    "adam": keras.optimizers.Adam,
    "adagrad": keras.optimizers.Adagrad,
    "sgd": keras.optimizers.SGD,
    "rmsprop": keras.optimizers.RMSprop,
}


def make_optimizer(train: TrainConfig) -> keras.optimizers.Optimizer:
    """`train.optimizer`, its rate a variable for `set_learning_rate` to follow the schedule with."""
    return OPTIMIZERS[train.optimizer](learning_rate=float(train.learning_rate))


def set_learning_rate(optimizer: keras.optimizers.Optimizer, schedule: Schedule) -> None:
    """Sets the optimizer's rate to the schedule's rate at the optimizer's next step."""
    optimizer.learning_rate.assign(schedule(optimizer.iterations))


@keras.saving.register_keras_serializable(package="mtl")
class Constant(Schedule):
    """A fixed rate, as a schedule like the others."""

    def __init__(self, learning_rate: float) -> None:
        self.learning_rate = learning_rate

    def __call__(self, step: Any) -> tf.Tensor:
        return tf.constant(self.learning_rate, tf.float32)

    def get_config(self) -> dict[str, Any]:
        return {"learning_rate": self.learning_rate}


@keras.saving.register_keras_serializable(package="mtl")
class LinearWarmUp(Schedule):
    """Rises linearly over `warmup_steps`, then runs `after` from its step 0.

    Step `s < warmup_steps` uses `(s + 1) / warmup_steps` of `after(0)`: the first step already learns and
    the last warm-up step uses the full rate.
    """

    def __init__(self, after: Schedule, warmup_steps: int) -> None:
        self.after = after
        self.warmup_steps = warmup_steps

    def __call__(self, step: Any) -> tf.Tensor:
        step = tf.cast(step, tf.float32)
        warmup = float(self.warmup_steps)
        rising = self.after(0) * (step + 1.0) / warmup
        return tf.where(step < warmup, rising, self.after(tf.maximum(step - warmup, 0.0)))

    def get_config(self) -> dict[str, Any]:
        return {"after": keras.saving.serialize_keras_object(self.after), "warmup_steps": self.warmup_steps}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> LinearWarmUp:
        return cls(keras.saving.deserialize_keras_object(config["after"]), config["warmup_steps"])


# Each schedule from the training config and its decay steps (`TrainConfig` describes their settings).
SCHEDULES: dict[str, Callable[[TrainConfig, int], Schedule]] = {
    "constant": lambda train, decay_steps: Constant(train.learning_rate),
    "exponential": lambda train, decay_steps: keras.optimizers.schedules.ExponentialDecay(
        train.learning_rate, decay_steps, train.decay_rate
    ),
    "cosine": lambda train, decay_steps: keras.optimizers.schedules.CosineDecay(
        train.learning_rate, decay_steps, alpha=train.cosine_alpha
    ),
    "piecewise": lambda train, decay_steps: keras.optimizers.schedules.PiecewiseConstantDecay(
        [float(b) for b in train.piecewise_boundaries], [float(v) for v in train.piecewise_values]
    ),
}


def decays_over_the_run(train: TrainConfig) -> bool:
    """Whether the schedule's length is the run's (`decay_steps` 0), so it depends on `max_steps`."""
    return train.learning_rate_schedule in ("exponential", "cosine") and not train.decay_steps


def learning_rate_schedule(train: TrainConfig, max_steps: int | None = None) -> Schedule:
    """The schedule `train` describes (validated by `TrainConfig.validate`) for a run to `max_steps`.

    Raises:
        ConfigError: the schedule decays over the run and `max_steps` is not given.
    """
    name = train.learning_rate_schedule
    decay_steps = train.decay_steps
    if decays_over_the_run(train):
        if max_steps is None:
            raise ConfigError(
                f"The {name} schedule decays over the run (decay_steps 0): give the run's max_steps."
            )
        decay_steps = max(1, max_steps - train.warmup_steps)
    schedule = SCHEDULES[name](train, decay_steps)
    return LinearWarmUp(schedule, train.warmup_steps) if train.warmup_steps else schedule
