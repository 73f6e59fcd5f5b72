"""Starting a new model from another run's variables: fine-tuning, or adding a task to a trained model.

Variables match by their Keras path below the model (`experts/experts/kernel_0`, `tower_income/logit/kernel`)
and shape. Layers are named after what they are (MMoE's gates and every tower after their task), so the
shared layers and the towers and gates of tasks both runs have load, a new task's start fresh, and a model of
another architecture takes what it shares (towers, embeddings). An embedding table loads only when the two
runs' categorical inputs are the same (names, vocabularies, buckets): otherwise its rows would mean other
categories. `with_source_features` makes a new run take the source's inputs for that. The source run is
rebuilt from its own `config.json` and restored from its checkpoint, so any of this tool's checkpoints can be
a source.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from pipeline import model_dir as model_dir_files
from pipeline.config import ExperimentConfig, FeatureConfig
from pipeline.errors import ModelDirError
from pipeline.models import model_fn
from pipeline.optimizers import make_optimizer


def _path_below_root(variable: keras.Variable) -> str:
    """A variable's path without its model's or optimizer's name: the architecture (`mmoe`), or the
    optimizer's name, which Keras makes unique per process (`adam`, `adam_1`)."""
    return variable.path.split("/", 1)[-1]


# A shared table (`features/embedding_4/`) or a task's own (`features/features_y1/embedding_4/`).
_EMBEDDING_TABLE = re.compile(r"(^|/)features/(features_[^/]+/)?embedding_(\d+)/")


def _embedding_layout(features: Sequence[FeatureConfig], embedding_dim: int) -> list[tuple]:
    """What the rows of the shared embedding table of one width stand for."""
    return [
        (f.name, f.kind, f.vocabulary, f.oov_buckets, f.hash_buckets)
        for f in features
        if f.kind != "numeric" and f.embedding_dim == embedding_dim
    ]


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
        raise ModelDirError(f"{path} is neither a model_dir with a checkpoint nor a checkpoint.")
    for directory in config_dirs:
        config = model_dir_files.load_config(directory)
        if config is not None:
            return checkpoint, config
    raise ModelDirError(f"{path}: no {model_dir_files.CONFIG_FILE} beside the checkpoint {checkpoint}.")


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
    restored = model_dir_files.restore(
        tf.train.Checkpoint(model=source_model, optimizer=source_optimizer), checkpoint
    )
    restored.expect_partial()  # the source's step is not wanted
    pairs = [(model.variables, source_model.variables)]
    if with_optimizer:
        pairs.append((optimizer.variables, source_optimizer.variables))
    loaded, not_loaded = [], []
    for targets, sources in pairs:
        by_path = {_path_below_root(variable): variable for variable in sources}
        for variable in targets:
            found = by_path.get(_path_below_root(variable))
            table = _EMBEDDING_TABLE.search(variable.path)
            if found is None:
                not_loaded.append((variable.path, "not in the source"))
            elif tuple(found.shape) != tuple(variable.shape):
                not_loaded.append(
                    (variable.path, f"shape {tuple(found.shape)} in the source, {tuple(variable.shape)} here")
                )
            elif table and _embedding_layout(model.config.features, int(table.group(3))) != _embedding_layout(
                config.model.features, int(table.group(3))
            ):
                not_loaded.append((variable.path, "the source's categorical inputs or vocabularies differ"))
            else:
                variable.assign(np.asarray(found.numpy()))
                loaded.append(variable.path)
    if not loaded:
        raise ModelDirError(f"Nothing in {checkpoint} matches this model by name and shape.")
    return WarmStartReport(checkpoint, tuple(loaded), tuple(not_loaded))


def with_source_features(config: ExperimentConfig, path: str | os.PathLike) -> ExperimentConfig:
    """`config` with the warm-start source's input features (vocabularies, normalisation statistics) when
    it has the same inputs (names, kinds, widths): a category keeps its embedding row and a number its
    scale, so fine-tuning on new data continues the model rather than scrambling it. Otherwise `config` as
    it is (and embedding tables whose categories differ are not loaded)."""
    _, source_config = source(path)
    ours = [(f.name, f.kind, f.dim) for f in config.model.features]
    theirs = [(f.name, f.kind, f.dim) for f in source_config.model.features]
    if ours != theirs:
        logging.info("%s has other inputs: their vocabularies and statistics are not reused.", path)
        return config
    model = dataclasses.replace(config.model, features=source_config.model.features)
    return dataclasses.replace(config, model=model)
