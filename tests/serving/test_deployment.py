"""The compose deployment, checked without a container engine: the file against the Compose specification,
every TF Serving config it mounts parsed as the server parses it, and its healthcheck run for real."""

import json
import re
import subprocess
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
from compose_spec import PyCompose

from pipeline.config import SyntheticDataConfig
from pipeline.data import synthetic
from serving.config import read_batching_parameters, read_model_config_file, read_monitoring_config
from serving.errors import ServingConfigError

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_TEXT = (ROOT / "docker-compose.yml").read_text()


@pytest.fixture(scope="module")
def compose():
    return PyCompose.from_yaml(COMPOSE_TEXT).to_spec()


def _flags(service) -> dict[str, str]:
    return dict(arg[2:].split("=", 1) for arg in service.command if arg.startswith("--"))


def _host_path(service, container_path: str) -> Path:
    """Where a container path of a bind-mounted service lives in this repository."""
    for volume in service.volumes:
        source, target, *_ = volume.split(":")
        if container_path.startswith(target + "/") and source.startswith("./"):
            return ROOT / source / container_path[len(target) + 1 :]
    raise AssertionError(f"{container_path} is not under a bind mount")


def test_the_compose_file_follows_the_compose_specification(compose):
    assert sorted(compose.services) == ["client", "serving", "trainer"]
    for typo, error in (("restart: unless-stopped", "restrat: unless-stopped"), ('cpus: "2"', "cpus: two")):
        with pytest.raises(Exception):  # noqa: B017  (the validator's own error types)
            PyCompose.from_yaml(COMPOSE_TEXT.replace(typo, error)).to_spec()


def test_serving_runs_a_pinned_tf_serving_that_loads_our_exports(compose):
    serving = compose.services["serving"]
    image, tag = serving.image.split(":")
    assert image == "tensorflow/serving"
    assert tag == metadata.version("tensorflow-serving-api") == "2.21.0"
    assert tag.rsplit(".", 1)[0] == metadata.version("tensorflow").rsplit(".", 1)[0]  # >= the exporting TF
    assert "models:/models:ro" in serving.volumes
    assert serving.restart == "unless-stopped"
    assert serving.deploy.resources.limits.memory in ("2g", "2gb")  # the parser normalises units
    assert serving.depends_on["trainer"].condition == "service_completed_successfully"
    assert compose.services["client"].depends_on["serving"].condition == "service_healthy"


def test_every_config_file_parses_as_tf_serving_parses_it(compose):
    serving = compose.services["serving"]
    flags = _flags(serving)
    (model,) = read_model_config_file(_host_path(serving, flags["model_config_file"]))
    assert (model.name, str(model.base_path), model.policy, model.num_versions) == (
        "mmoe",
        "/models/mmoe",
        "latest",
        2,
    )
    batching = read_batching_parameters(_host_path(serving, flags["batching_parameters_file"]))
    assert (batching.max_batch_size, batching.batch_timeout_micros) == (64, 2000)
    assert batching.allowed_batch_sizes[-1] == batching.max_batch_size
    assert read_monitoring_config(_host_path(serving, flags["monitoring_config_file"])) == (
        "/monitoring/prometheus/metrics"
    )
    # The trainer exports where models.config looks, and the client asks for that model.
    assert "--export_base=/models/mmoe" in " ".join(compose.services["trainer"].command)
    assert "--model_name=mmoe" in compose.services["client"].command


def test_config_parsing_rejects_what_tf_serving_rejects(tmp_path):
    bad = tmp_path / "batching.config"
    bad.write_text("max_batch_sizes { value: 8 }\n")
    with pytest.raises(ServingConfigError, match='has no field named "max_batch_sizes"'):
        read_batching_parameters(bad)
    mismatch = tmp_path / "sizes.config"
    mismatch.write_text("max_batch_size { value: 64 }\nallowed_batch_sizes: 8\nallowed_batch_sizes: 32\n")
    with pytest.raises(ServingConfigError, match="last allowed_batch_sizes entry must equal max_batch_size"):
        read_batching_parameters(mismatch)
    models = tmp_path / "models.config"
    models.write_text('model_config_list { config { name: "a" base_path: "/m" model_platform: "pytorch" } }')
    with pytest.raises(ServingConfigError, match="has platform 'pytorch'"):
        read_model_config_file(models)


def test_the_clients_example_rows_are_synthetic_eval_rows(compose):
    client = compose.services["client"]
    rows_path = _host_path(client, _flags(client)["input"])
    rows = [json.loads(line)["inputs"] for line in rows_path.read_text().splitlines()]
    features, _ = synthetic.generate(SyntheticDataConfig(), "eval")
    np.testing.assert_array_equal(np.float32(rows), features["inputs"][: len(rows)])


def test_the_image_copies_what_exists():
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), source


def _healthcheck_script(compose, port: int, model: str) -> str:
    script = compose.services["serving"].healthcheck.test[-1]
    return re.sub(r"/dev/tcp/127.0.0.1/8501", f"/dev/tcp/127.0.0.1/{port}", script).replace(
        "/v1/models/mmoe", f"/v1/models/{model}"
    )


def test_the_healthcheck_passes_only_once_the_model_is_available(compose, server):
    healthy = subprocess.run(
        ["bash", "-c", _healthcheck_script(compose, server.rest_port, "mmoe")], timeout=10
    )
    assert healthy.returncode == 0
    unknown = subprocess.run(
        ["bash", "-c", _healthcheck_script(compose, server.rest_port, "nope")], timeout=10
    )
    assert unknown.returncode != 0
