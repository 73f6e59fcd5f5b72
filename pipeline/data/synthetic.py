"""The MMoE paper's synthetic data (section 3.2): two regression tasks whose correlation is set by `p`.

For unit vectors `u1 ⟂ u2`, the task weights are `w1 = c·u1` and `w2 = c·(p·u1 + sqrt(1-p²)·u2)`, and
`y_i = w_i·x + Σ_k sin(α_k·w_i·x + β_k) + ε` with `x ~ N(0, I)`. The task parameters (`u1`, `u2`, `α`, `β`)
depend only on `seed`, so the train and eval splits are examples of the same two tasks; the seeds drew new
task parameters, from the global NumPy state, on every call.

Besides the paper's regression labels `y1`, `y2`, binary labels `y1_binary`, `y2_binary` mark examples above
the label's mean, `E[y] = Σ_k sin(β_k)·exp(-α_k²c²/2)` (as `w·x ~ N(0, c²)`), for click-like tasks.

A click-then-conversion funnel (ESMM's setting: an impression may be clicked, and only a clicked one may
convert) comes with the same examples: `click` is 1 with probability `sigmoid(2·w1·x/c - 2.5)` (about 17% of
the examples), and `conversion` is 1 only on a clicked example, with probability `sigmoid(2·w2·x/c - 3)`
given the click (about 30% of the clicks at the default `p`, 5% of the examples), so the two steps are
related as the tasks are, by `p`. `FUNNEL_TASKS` are ESMM's tasks on
them: `ctr` learns the click; `ctcvr` the conversion over every example, as the click's probability times
the conversion's given the click, which is served as `cvr`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf

from pipeline.config import FeatureConfig, SyntheticDataConfig, TaskConfig
from pipeline.errors import ConfigError

FEATURE = "inputs"
REGRESSION_LABELS = ("y1", "y2")
FUNNEL_LABELS = ("click", "conversion")
LABEL_TYPES = {
    "y1": "regression",
    "y2": "regression",
    "y1_binary": "binary",
    "y2_binary": "binary",
    "click": "binary",
    "conversion": "binary",
}
LABELS = tuple(LABEL_TYPES)
DEFAULT_TASKS = REGRESSION_LABELS
FUNNEL_TASKS = (
    TaskConfig(name="ctr", label="click", type="binary"),
    TaskConfig(name="ctcvr", label="conversion", type="binary", after="ctr", conditional_output="cvr"),
)
_NOISE_STDDEV = 0.01
_SPLIT_STREAMS = {"train": 1, "eval": 2, "test": 3}


@dataclasses.dataclass(frozen=True)
class TaskParameters:
    """What defines the two tasks: weight vectors and the sine terms' coefficients."""

    w1: np.ndarray
    w2: np.ndarray
    alpha: np.ndarray
    beta: np.ndarray


def task_parameters(config: SyntheticDataConfig) -> TaskParameters:
    rng = np.random.default_rng([config.seed, 0])
    u1 = rng.normal(size=config.dim)
    u1 = (u1 - u1.mean()) / (u1.std() * np.sqrt(config.dim))  # zero-mean, unit norm
    u2 = rng.normal(size=config.dim)
    u2 -= u2.dot(u1) * u1
    u2 /= np.linalg.norm(u2)
    return TaskParameters(
        w1=config.c * u1,
        w2=config.c * (config.p * u1 + np.sqrt(1.0 - config.p**2) * u2),
        alpha=rng.normal(size=config.m),
        beta=rng.normal(size=config.m),
    )


def generate(config: SyntheticDataConfig, split: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """All examples of `split` ("train", "eval" or "test") as `({"inputs": x}, {"y1": y1, "y2": y2, ...})`.

    The test split has as many examples as the eval split, drawn independently."""
    if split not in _SPLIT_STREAMS:
        raise ValueError(f"Unknown split {split!r}; expected one of {sorted(_SPLIT_STREAMS)}")
    params = task_parameters(config)
    num_examples = config.num_examples if split == "train" else config.eval_examples
    rng = np.random.default_rng([config.seed, _SPLIT_STREAMS[split]])
    x = rng.normal(size=(num_examples, config.dim))
    mean = np.sum(np.sin(params.beta) * np.exp(-(params.alpha**2) * config.c**2 / 2))
    labels = {}
    for name, w in zip(REGRESSION_LABELS, (params.w1, params.w2), strict=True):
        wx = x @ w
        sines = np.sin(np.outer(wx, params.alpha) + params.beta).sum(axis=1)
        y = wx + sines + rng.normal(scale=_NOISE_STDDEV, size=num_examples)
        labels[name] = y.astype(np.float32)
        labels[f"{name}_binary"] = (y > mean).astype(np.float32)
    click_probability = _sigmoid(2.0 * (x @ params.w1) / config.c - 2.5)
    conversion_probability = _sigmoid(2.0 * (x @ params.w2) / config.c - 3.0)
    click = rng.random(num_examples) < click_probability
    labels["click"] = click.astype(np.float32)
    labels["conversion"] = (click & (rng.random(num_examples) < conversion_probability)).astype(np.float32)
    return {FEATURE: x.astype(np.float32)}, labels


def check_funnel(config: SyntheticDataConfig, tasks: Sequence[TaskConfig]) -> None:
    """Stops a funnel of labels where the later event happens without the earlier one (`click` and
    `conversion` are a funnel; `y1_binary` and `y2_binary` are not), which the product cannot learn.

    Raises:
        ConfigError: naming the task and how many training examples break the funnel.
    """
    _, labels = generate(config, "train")
    by_name = {task.name: task for task in tasks}
    for task in tasks:
        if task.after:
            earlier = by_name[task.after]
            broken = int(np.sum((labels[task.label] > 0) & (labels[earlier.label] == 0)))
            if broken:
                raise ConfigError(
                    f"tasks[{task.name}].after: {broken} training examples have {task.label} 1 where "
                    f"{earlier.label} is 0; a task after another can only happen where the earlier one did."
                )


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def features(config: SyntheticDataConfig) -> tuple[FeatureConfig, ...]:
    return (FeatureConfig(name=FEATURE, kind="numeric", dim=config.dim),)


@functools.lru_cache(maxsize=2)
def _generated(config: SyntheticDataConfig, split: str) -> tuple[dict[str, tf.Tensor], dict[str, tf.Tensor]]:
    """`generate` as immutable tensors, kept for the next call: `train_and_evaluate` asks for the same
    training data at every evaluation, and generating it costs about a second per 200,000 examples."""
    return tf.nest.map_structure(tf.constant, generate(config, split))


def in_memory(
    config: SyntheticDataConfig, split: str, preprocess: Callable[[dict], dict], labels_used: Sequence[str]
) -> tuple[dict, dict, dict]:
    """`(inputs, labels, weights)` of the whole split: preprocessed inputs, the labels the tasks use (every
    batch carries only those), unit weights."""
    features_, labels = _generated(config, split)
    labels = {name: labels[name] for name in dict.fromkeys(labels_used)}
    weights = {name: tf.ones_like(label) for name, label in labels.items()}
    return preprocess(features_), labels, weights
