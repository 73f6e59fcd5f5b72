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
def models_config(exports) -> Path:
    """`MODELS_CONFIG` beside the exports: `mmoe` (both versions, labelled) and `single`."""
    config_file = exports["root"] / "models.config"
    config_file.write_text(MODELS_CONFIG)
    return config_file


@pytest.fixture(scope="session")
def server(models_config) -> ModelServer:
    options = ServerOptions(grpc_port=0, rest_port=0, poll_seconds=0, max_request_bytes=200_000)
    server = ModelServer(read_model_config_file(models_config), options).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def rest_url(server) -> str:
    return f"http://127.0.0.1:{server.rest_port}"


@pytest.fixture(scope="session")
def grpc_target(server) -> str:
    return f"127.0.0.1:{server.grpc_port}"


STRICT = ServerOptions(
    grpc_port=0,
    rest_port=0,
    poll_seconds=0,
    max_request_bytes=2_000_000,
    max_request_elements=100_000,
    rest_timeout_ms=1500,
    idle_timeout_seconds=1.5,
    max_connections=12,
)


@pytest.fixture(scope="module")
def strict_server(models_config) -> ModelServer:
    """The models of `server` behind `STRICT`'s small limits, which tests of limits reach quickly."""
    with ModelServer(read_model_config_file(models_config), STRICT) as server:
        yield server
