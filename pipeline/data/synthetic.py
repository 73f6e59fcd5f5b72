"""The MMoE paper's synthetic data (section 3.2): two regression tasks whose correlation is set by `p`.

For unit vectors `u1 ⟂ u2`, the task weights are `w1 = c·u1` and `w2 = c·(p·u1 + sqrt(1-p²)·u2)`, and
`y_i = w_i·x + Σ_k sin(α_k·w_i·x + β_k) + ε` with `x ~ N(0, I)`. The task parameters (`u1`, `u2`, `α`, `β`)
depend only on `seed`, so the train and eval splits are examples of the same two tasks; the seeds drew new
task parameters, from the global NumPy state, on every call.

Besides the paper's regression labels `y1`, `y2`, binary labels `y1_binary`, `y2_binary` mark examples above
the label's mean, `E[y] = Σ_k sin(β_k)·exp(-α_k²c²/2)` (as `w·x ~ N(0, c²)`), for click-like tasks.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from pipeline.config import FeatureConfig, SyntheticDataConfig

FEATURE = "inputs"
REGRESSION_LABELS = ("y1", "y2")
LABELS = (*REGRESSION_LABELS, "y1_binary", "y2_binary")
DEFAULT_TASKS = REGRESSION_LABELS
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
    return {FEATURE: x.astype(np.float32)}, labels


def features(config: SyntheticDataConfig) -> tuple[FeatureConfig, ...]:
    return (FeatureConfig(name=FEATURE, kind="numeric", dim=config.dim),)


@functools.lru_cache(maxsize=2)
def _generated(config: SyntheticDataConfig, split: str) -> tuple[dict[str, tf.Tensor], dict[str, tf.Tensor]]:
    """`generate` as immutable tensors, kept for the next call: `train_and_evaluate` asks for the same
    training data at every evaluation, and generating it costs about a second per 200,000 examples."""
    return tf.nest.map_structure(tf.constant, generate(config, split))


def in_memory(
    config: SyntheticDataConfig, split: str, preprocess: Callable[[dict], dict]
) -> tuple[dict, dict, dict]:
    """`(inputs, labels, weights)` of the whole split: preprocessed inputs, every label, unit weights."""
    features_, labels = _generated(config, split)
    weights = {name: tf.ones_like(label) for name, label in labels.items()}
    return preprocess(features_), labels, weights
