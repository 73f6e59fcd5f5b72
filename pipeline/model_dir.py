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

from pipeline.config import ExperimentConfig
from pipeline.errors import ConfigError, ModelDirError

CONFIG_FILE = "config.json"
EVAL_HISTORY_FILE = "eval_history.json"
BEST_FILE = "best.json"


def results_file(split: str) -> str:
    """Where a split's last evaluation is kept: `eval_results.json`, `test_results.json`."""
    return f"{split}_results.json"


def check_usable(model_dir: str | os.PathLike) -> Path:
    path = Path(model_dir)
    if path.exists() and not path.is_dir():
        raise ModelDirError(f"--model_dir={path} is a file; it must be a directory.")
    return path


def write_json_atomically(path: Path, payload: Any) -> None:
    """Writes JSON (keys in their order: metrics as evaluation reports them) so that a reader sees the old
    file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = payload if isinstance(payload, str) else json.dumps(payload, indent=2)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as f:
        f.write(text)
    os.replace(f.name, path)


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
    """What makes a model this model: everything but the data's file paths and bad-row policy."""
    tabular = dataclasses.asdict(config.data.tabular)
    for moving in ("train_files", "eval_files", "test_files", "skip_bad_rows"):
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
