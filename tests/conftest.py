"""Shared fixtures: small experiment configs that train in seconds on a 2-core CPU."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import dataclasses  # noqa: E402

import pytest  # noqa: E402

from pipeline.config import (  # noqa: E402
    DataConfig,
    ExperimentConfig,
    ModelConfig,
    SyntheticDataConfig,
    TaskConfig,
    TrainConfig,
)
from pipeline.data import synthetic  # noqa: E402

SMALL_DATA = SyntheticDataConfig(num_examples=4096, eval_examples=1024, seed=3)
TASKS = (TaskConfig(name="y1", label="y1"), TaskConfig(name="y2", label="y2"))


def small_experiment(architecture: str = "mmoe", **train_overrides) -> ExperimentConfig:
    """A small MMoE-paper-like experiment: 4 experts of 16 units, towers of 8."""
    model = ModelConfig(
        architecture=architecture,
        features=synthetic.features(SMALL_DATA),
        tasks=TASKS,
        num_experts=4,
        expert_units=(16,),
        bottom_units=(32,),
        tower_units=(8,),
    )
    train = dataclasses.replace(
        TrainConfig(batch_size=64, learning_rate=3e-3, log_every_steps=25, save_checkpoints_steps=50),
        **train_overrides,
    )
    return ExperimentConfig(model=model, data=DataConfig(synthetic=SMALL_DATA), train=train)


@pytest.fixture
def experiment() -> ExperimentConfig:
    return small_experiment()
