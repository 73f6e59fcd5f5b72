"""Starting a new model from another run's variables: fine-tuning, or adding a task to a trained model.

Variables match by their Keras path (`mmoe/experts/expert_kernel_0`, `mmoe/tower_income/logit/kernel`) and
shape. Layers are named after what they are (the architecture, the task), so the shared bottom and the towers
of tasks both runs have load, and a new task's tower starts fresh. The source run is rebuilt from its own
`config.json` and restored from its checkpoint, so any of this tool's checkpoints can be a source.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from pipeline import model_dir as model_dir_files
from pipeline.config import ExperimentConfig
from pipeline.errors import ModelDirError
from pipeline.models import model_fn
from pipeline.optimizers import make_optimizer


def _path(variable: keras.Variable) -> str:
    return variable.path


def _path_in_optimizer(variable: keras.Variable) -> str:
    """An optimizer variable's path without the optimizer's name, which Keras makes unique per process
    (`adam`, `adam_1`): `iteration`, `mmoe_experts_expert_kernel_0_momentum`."""
    return variable.path.split("/", 1)[-1]


@dataclasses.dataclass(frozen=True)
class WarmStartReport:
    """What a warm start loaded: variable paths, and for each one left as initialised, why."""

    checkpoint: str
    loaded: tuple[str, ...]
    not_loaded: tuple[tuple[str, str], ...]

    def lines(self) -> list[str]:
        lines = [
            f"Warm-started from {self.checkpoint}: loaded {len(self.loaded)} of "
            f"{len(self.loaded) + len(self.not_loaded)} variables."
        ]
        lines += [f"  loaded     {path}" for path in self.loaded]
        lines += [f"  not loaded {path}: {why}" for path, why in self.not_loaded]
        return lines


def source(path: str | os.PathLike) -> tuple[str, ExperimentConfig]:
    """The checkpoint and config of a warm-start source: a `model_dir` (its latest checkpoint, or the best
    one in `model_dir/best`) or a checkpoint prefix such as `model_dir/ckpt-2000`.

    Raises:
        ModelDirError: the path holds no checkpoint, or no `config.json` describes it.
    """
    given = Path(path)
    if given.is_dir():
        checkpoint = tf.train.latest_checkpoint(str(given))
        config_dirs = [given, given.parent]
    else:
        checkpoint = str(given) if tf.io.gfile.exists(f"{given}.index") else None
        config_dirs = [given.parent, given.parent.parent]
    if checkpoint is None:
        raise ModelDirError(
            f"--warm_start_from={path} is neither a model_dir with a checkpoint nor a checkpoint."
        )
    for directory in config_dirs:
        config = model_dir_files.load_config(directory)
        if config is not None:
            return checkpoint, config
    raise ModelDirError(
        f"--warm_start_from={path}: no {model_dir_files.CONFIG_FILE} beside the checkpoint {checkpoint}."
    )


def warm_start(
    model: keras.Model,
    optimizer: keras.optimizers.Optimizer,
    path: str | os.PathLike,
    with_optimizer: bool = False,
) -> WarmStartReport:
    """Assigns to `model` (and, `with_optimizer`, to `optimizer`) the source's variables of equal path and
    shape. The optimizer's state (its step and slots) stays fresh unless asked for: fine-tuning usually
    restarts the schedule."""
    checkpoint, config = source(path)
    source_model = model_fn(config.model)
    source_optimizer = make_optimizer(config.train)
    source_optimizer.build(source_model.trainable_variables)
    tf.train.Checkpoint(model=source_model, optimizer=source_optimizer).restore(
        checkpoint
    ).assert_existing_objects_matched()
    pairs = [(model.variables, source_model.variables, _path)]
    if with_optimizer:
        pairs.append((optimizer.variables, source_optimizer.variables, _path_in_optimizer))
    loaded, not_loaded = [], []
    for targets, sources, key in pairs:
        by_key = {key(variable): variable for variable in sources}
        for variable in targets:
            found = by_key.get(key(variable))
            if found is None:
                not_loaded.append((variable.path, "not in the source"))
            elif tuple(found.shape) != tuple(variable.shape):
                not_loaded.append(
                    (variable.path, f"shape {tuple(found.shape)} in the source, {tuple(variable.shape)} here")
                )
            else:
                variable.assign(np.asarray(found.numpy()))
                loaded.append(variable.path)
    return WarmStartReport(checkpoint, tuple(loaded), tuple(not_loaded))
