"""The optimizer and its learning-rate schedule: the rate is a function of the optimizer's step.

Keras calls a schedule with `optimizer.iterations`, which is checkpointed with the optimizer; nothing else
needs saving. Each schedule here is a Keras `LearningRateSchedule`; warm-up wraps any of them.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from pipeline.config import TrainConfig

Schedule = keras.optimizers.schedules.LearningRateSchedule

_OPTIMIZERS = {
    "adam": keras.optimizers.Adam,
    "adagrad": keras.optimizers.Adagrad,
    "sgd": keras.optimizers.SGD,
    "rmsprop": keras.optimizers.RMSprop,
}


def make_optimizer(train: TrainConfig) -> keras.optimizers.Optimizer:
    """`train.optimizer` following `train`'s learning-rate schedule."""
    return _OPTIMIZERS[train.optimizer](learning_rate=learning_rate_schedule(train))


@keras.saving.register_keras_serializable(package="mtl")
class Constant(Schedule):
    """A fixed rate. A schedule rather than a float, so the rate is not a checkpointed variable and a resumed
    run may change it."""

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


def learning_rate_schedule(train: TrainConfig) -> Schedule:
    """The schedule `train` describes (validated by `TrainConfig.validate`)."""
    name = train.learning_rate_schedule
    schedules = keras.optimizers.schedules
    if name == "exponential":
        schedule: Schedule = schedules.ExponentialDecay(
            train.learning_rate, train.decay_steps, train.decay_rate
        )
    elif name == "cosine":
        schedule = schedules.CosineDecay(train.learning_rate, train.decay_steps, alpha=train.cosine_alpha)
    elif name == "piecewise":
        schedule = schedules.PiecewiseConstantDecay(
            [float(b) for b in train.piecewise_boundaries], [float(v) for v in train.piecewise_values]
        )
    else:
        schedule = Constant(train.learning_rate)
    return LinearWarmUp(schedule, train.warmup_steps) if train.warmup_steps else schedule
