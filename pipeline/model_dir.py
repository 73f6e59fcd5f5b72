"""What a `model_dir` holds besides checkpoints: the resolved config and the evaluation results.

Checkpoints sit at the top (`ckpt-N.*`, `checkpoint`), the best evaluation's in `best/` with `best.json`,
TensorBoard events in `train/` and `eval/`, and `train_and_evaluate`'s evaluations in `eval_history.json`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import tensorflow as tf
from absl import logging

from pipeline.config import ExperimentConfig
from pipeline.errors import ConfigError, ModelDirError

CONFIG_FILE = "config.json"
EVAL_HISTORY_FILE = "eval_history.json"
BEST_FILE = "best.json"


def results_file(split: str) -> str:
    """Where a split's last evaluation is kept: `eval_results.json`, `test_results.json`."""
    return f"{split}_results.json"


def check_usable(model_dir: str | os.PathLike) -> Path:
    """`model_dir` as a path: a directory, or one that can be created, which this user can write to.

    Raises:
        ModelDirError: it is a file, or it (or the directory it would be created in) is not writable.
    """
    path = Path(model_dir)
    if path.exists() and not path.is_dir():
        raise ModelDirError(f"--model_dir={path} is a file; it must be a directory.")
    existing = next(p for p in (path.absolute(), *path.absolute().parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ModelDirError(f"--model_dir={path} cannot be written: {existing} is not a writable directory.")
    return path


def write_json_atomically(path: Path, payload: Any) -> None:
    """Writes JSON (keys in their order: metrics as evaluation reports them) so that a reader sees the old
    file or the new one, never half of one."""
    text = payload if isinstance(payload, str) else json.dumps(payload, indent=2)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as f:
            f.write(text)
        os.replace(f.name, path)
    except OSError as error:
        raise ModelDirError(f"Cannot write {path}: {error.strerror}.") from None


def read_json(path: Path, default: Any) -> Any:
    """A JSON file's content, or `default` when there is no such file."""
    if not path.exists():
        return default
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ModelDirError(f"{path} is not valid JSON ({error}); remove it or restore it.") from None


def checkpoint_steps(model_dir: str | os.PathLike) -> list[int]:
    """The steps of the complete checkpoints in `model_dir`, oldest first (those its `checkpoint` file
    lists: a checkpoint is listed only once written)."""
    state = tf.train.get_checkpoint_state(str(model_dir))
    if state is None:
        return []
    steps = []
    for path in state.all_model_checkpoint_paths:
        number = Path(path).name.rpartition("-")[2]
        if number.isdigit():
            steps.append(int(number))
    return sorted(set(steps))


def checkpoint_files_exist(path: str) -> bool:
    """Whether checkpoint `path` (a prefix) has its index and data files."""
    return bool(tf.io.gfile.exists(f"{path}.index") and tf.io.gfile.glob(f"{path}.data-*"))


def restore(checkpoint: tf.train.Checkpoint, path: str) -> Any:
    """Loads checkpoint `path` into `checkpoint`'s objects, every one of which it must hold; returns the
    load status.

    Raises:
        ModelDirError: the checkpoint holds another model (a variable missing or of another shape), or its
            files cannot be read (truncated).
        tf.errors.OpError: its files were deleted while being read.
    """
    try:
        return checkpoint.restore(path).assert_existing_objects_matched()
    except (ValueError, AssertionError) as error:
        first_line = str(error).strip().splitlines()[0]
        raise ModelDirError(
            f"{path} does not hold this model (another architecture or size, or a version of it that "
            f"stored other variables: train it in a new model_dir): {first_line}"
        ) from None
    except (tf.errors.OpError, IndexError) as error:  # IndexError: a data file shorter than its index
        if not checkpoint_files_exist(path):
            raise
        first_line = str(getattr(error, "message", error)).strip().splitlines()[0]
        raise ModelDirError(
            f"{path} cannot be read ({first_line}); it may be truncated: delete its files to go back to the "
            "checkpoint before it."
        ) from None


def latest_checkpoint(model_dir: str | os.PathLike) -> str | None:
    """The newest checkpoint in `model_dir` whose files are all there, or None before the first one.

    The `checkpoint` file may name one whose files were deleted (a truncated checkpoint a user removed):
    the one before it is used then, with a warning, rather than starting over as if nothing was trained.

    Raises:
        ModelDirError: checkpoints are listed but none of them has its files.
    """
    state = tf.train.get_checkpoint_state(str(model_dir))
    if state is None:
        return None
    listed = list(state.all_model_checkpoint_paths) or [state.model_checkpoint_path]
    for path in reversed(listed):
        path = str(Path(model_dir) / Path(path).name)
        if checkpoint_files_exist(path):
            if Path(path).name != Path(state.model_checkpoint_path).name:
                logging.warning(
                    "%s has no files; using %s, the newest checkpoint that has.", listed[-1], path
                )
            return path
    raise ModelDirError(
        f"{Path(model_dir) / 'checkpoint'} lists checkpoints ({', '.join(Path(p).name for p in listed)}) "
        "whose files are all missing; restore them, or train in a new --model_dir."
    )


def load_config(model_dir: str | os.PathLike) -> ExperimentConfig | None:
    """The config saved in `model_dir`, or None when the directory was never trained."""
    path = check_usable(model_dir) / CONFIG_FILE
    if not path.exists():
        return None
    try:
        return ExperimentConfig.from_json(path.read_text())
    except (json.JSONDecodeError, TypeError, ConfigError) as error:
        raise ModelDirError(f"{path} is not a config this version can read: {error}") from None


def save_config(model_dir: str | os.PathLike, config: ExperimentConfig) -> None:
    write_json_atomically(check_usable(model_dir) / CONFIG_FILE, config.to_json())


def check_same_model(model_dir: str | os.PathLike, config: ExperimentConfig) -> None:
    """Refuses to train or restore `config` in a `model_dir` that holds a different model or data.

    The data's files may differ (files move; a trained model may be evaluated on other files), its schema,
    split and source may not.
    """
    saved = load_config(model_dir)
    if saved is None:
        return
    lines = differences(_identity(saved), _identity(config))
    if lines:
        raise ConfigError(
            f"{Path(model_dir) / CONFIG_FILE} holds a different model. Use a new --model_dir, or drop the "
            "conflicting flags. What differs:\n  " + "\n  ".join(lines)
        )


def _identity(config: ExperimentConfig) -> dict[str, Any]:
    """What makes a model this model: everything but the data's file paths and bad-value policies."""
    tabular = dataclasses.asdict(config.data.tabular)
    for moving in ("train_files", "eval_files", "test_files", "skip_bad_rows", "reject_non_finite"):
        tabular.pop(moving)
    data = {**dataclasses.asdict(config.data), "tabular": tabular}
    return {"model": dataclasses.asdict(config.model), "data": data}


def differences(saved: Any, requested: Any, path: str = "") -> list[str]:
    """One line per leaf where two JSON-like values differ: "path: saved X, requested Y"."""
    if isinstance(saved, dict) and isinstance(requested, dict):
        lines = []
        for key in list(dict.fromkeys([*saved, *requested])):
            where = f"{path}.{key}" if path else str(key)
            lines += differences(saved.get(key), requested.get(key), where)
        return lines
    if (
        isinstance(saved, (list, tuple))
        and isinstance(requested, (list, tuple))
        and len(saved) == len(requested)
    ):
        if all(isinstance(v, (dict, list, tuple)) for v in (*saved, *requested)):
            return [
                line
                for i, (a, b) in enumerate(zip(saved, requested, strict=True))
                for line in differences(a, b, f"{path}[{i}]")
            ]
    if _plain(saved) == _plain(requested):
        return []
    return [f"{path}: saved {_plain(saved)!r}, requested {_plain(requested)!r}"]


def _plain(value: Any) -> Any:
    """Tuples as lists, so that a fresh config and one read from JSON compare equal."""
    return json.loads(json.dumps(value))
