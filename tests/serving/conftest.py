"""Exported models and a running embedded server on loopback ports the OS picks."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from pipeline import data
from pipeline.config import TaskConfig
from pipeline.estimator import Estimator
from serving.config import read_model_config_file
from serving.server import ModelServer, ServerOptions
from tests.conftest import small_experiment


def train_and_export(model_dir: Path, export_base: Path, steps: int, tasks=None) -> Path:
    config = small_experiment("mmoe")
    if tasks is not None:
        config = dataclasses.replace(config, model=dataclasses.replace(config.model, tasks=tasks))
    estimator = Estimator(config, model_dir)
    estimator.train(data.input_fn(config, "train"), max_steps=steps)
    return estimator.export(export_base)


@pytest.fixture(scope="session")
def exports(tmp_path_factory) -> dict[str, Path]:
    """`two_tasks/1` and `/2` (an MMoE at 20 and 40 steps) and `one_task/1` (y1 only)."""
    root = tmp_path_factory.mktemp("exports")
    first = train_and_export(root / "run", root / "staging", steps=20)
    second = train_and_export(root / "run", root / "staging", steps=40)
    single = train_and_export(
        root / "single", root / "staging_single", steps=20, tasks=(TaskConfig("y1", "y1"),)
    )
    for source, target in ((first, "two_tasks/1"), (second, "two_tasks/2"), (single, "one_task/1")):
        shutil.copytree(source, root / target)
    return {"root": root, "two_tasks": root / "two_tasks", "one_task": root / "one_task"}


MODELS_CONFIG = """
model_config_list {
  config {
    name: "mmoe"
    base_path: "two_tasks"
    model_platform: "tensorflow"
    model_version_policy { all {} }
    version_labels { key: "stable" value: 1 }
    version_labels { key: "canary" value: 2 }
  }
  config {
    name: "single"
    base_path: "one_task"
    model_platform: "tensorflow"
  }
}
"""


@pytest.fixture(scope="session")
def server(exports) -> ModelServer:
    config_file = exports["root"] / "models.config"
    config_file.write_text(MODELS_CONFIG)
    options = ServerOptions(grpc_port=0, rest_port=0, poll_seconds=0, max_request_bytes=200_000)
    server = ModelServer(read_model_config_file(config_file), options).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def rest_url(server) -> str:
    return f"http://127.0.0.1:{server.rest_port}"


@pytest.fixture(scope="session")
def grpc_target(server) -> str:
    return f"127.0.0.1:{server.grpc_port}"
