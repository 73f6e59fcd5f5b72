"""Multi-task learning pipeline on TensorFlow 2: configs, layers, models, data, training and export.

The Python API, for use without the `mtl` command line:

    from pipeline import Estimator, ExperimentConfig, ModelConfig, TaskConfig, input_fn

Names load on first use, so that importing `pipeline` (as the CLI does before it quiets TensorFlow's
start-up logging) does not import TensorFlow.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Estimator": "pipeline.estimator",
    "ExperimentConfig": "pipeline.config",
    "ModelConfig": "pipeline.config",
    "TaskConfig": "pipeline.config",
    "FeatureConfig": "pipeline.config",
    "TrainConfig": "pipeline.config",
    "DataConfig": "pipeline.config",
    "SyntheticDataConfig": "pipeline.config",
    "TabularDataConfig": "pipeline.config",
    "input_fn": "pipeline.data",
    "model_features": "pipeline.data",
    "tasks": "pipeline.data",
    "steps_for_epochs": "pipeline.data",
    "table_config": "pipeline.data",
    "load_schema": "pipeline.data.schema",
    "schema_to_dict": "pipeline.data.schema",
    "load_config": "pipeline.model_dir",
    "model_fn": "pipeline.models",
    "TrainingStopped": "pipeline.errors",
    "UserError": "pipeline.errors",
    "import_tensorflow_quietly": "pipeline.quiet",
}

# `pipeline.features` is a module, so the data's features function is exported under another name.
_RENAMED = {"model_features": "features"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), _RENAMED.get(name, name))


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
