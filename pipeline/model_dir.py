"""What a `model_dir` holds besides checkpoints: the resolved config and the evaluation results.

Checkpoints sit at the top (`ckpt-N.*`, `checkpoint`), TensorBoard events in `train/` and `eval/`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from pipeline.config import ExperimentConfig
from pipeline.errors import ConfigError, ModelDirError

CONFIG_FILE = "config.json"
EVAL_RESULTS_FILE = "eval_results.json"


def check_usable(model_dir: str | os.PathLike) -> Path:
    path = Path(model_dir)
    if path.exists() and not path.is_dir():
        raise ModelDirError(f"--model_dir={path} is a file; it must be a directory.")
    return path


def write_json_atomically(path: Path, payload: Any) -> None:
    """Writes JSON so that a reader sees the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = payload if isinstance(payload, str) else json.dumps(payload, indent=2, sort_keys=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as f:
        f.write(text)
    os.replace(f.name, path)


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
    """Refuses to train or restore `config` in a `model_dir` that holds a different model or data."""
    saved = load_config(model_dir)
    if saved is None:
        return
    differences = [
        f"{section}.{name}: saved {old!r}, requested {new!r}"
        for section in ("model", "data")
        for name, old, new in _differences(getattr(saved, section), getattr(config, section))
    ]
    if differences:
        raise ConfigError(
            f"{Path(model_dir) / CONFIG_FILE} holds a different model ({'; '.join(differences)}). "
            "Use a new --model_dir, or drop the conflicting flags."
        )


def _differences(saved: Any, requested: Any) -> list[tuple[str, Any, Any]]:
    old, new = dataclasses.asdict(saved), dataclasses.asdict(requested)
    return [(name, old[name], new[name]) for name in old if old[name] != new[name]]
