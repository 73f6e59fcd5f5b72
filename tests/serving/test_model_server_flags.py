"""`mtl serve` takes `tensorflow_model_server`'s flags: the compose deployment's command line runs as is, and
a changed model config file is served without a restart."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from compose_spec import PyCompose

from mtl.flags import NO_EFFECT_FLAGS
from tests.cli.commands import _env

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "serving" / "tf_serving"
MODEL = 'config {{ name: "{name}" base_path: "{path}" model_platform: "tensorflow" }}'


def _serve(*flags: str) -> tuple[subprocess.Popen, str]:
    """`mtl serve` with `flags` on ports the OS picks: (the process, its REST URL)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "mtl", "serve", *flags, "--port=0", "--rest_api_port=0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    line = process.stdout.readline()
    match = re.search(r"REST (http://\S+), gRPC", line)
    if not match:
        process.kill()
        pytest.fail(f"mtl serve did not start: {line} {process.communicate()[1][-2000:]}")
    return process, match.group(1)


def _stop(process: subprocess.Popen) -> str:
    """Stops the server; returns what it wrote to stderr."""
    process.terminate()
    _, stderr = process.communicate(timeout=60)
    return stderr


def _state(url: str, model: str) -> str | None:
    response = requests.get(f"{url}/v1/models/{model}", timeout=10)
    if response.status_code != 200:
        return None
    return response.json()["model_version_status"][0]["state"]


def test_the_compose_serving_command_runs(exports, tmp_path):
    command = (
        PyCompose.from_yaml((ROOT / "docker-compose.yml").read_text()).to_spec().services["serving"].command
    )
    config = tmp_path / "config"
    config.mkdir()
    for name in ("batching.config", "monitoring.config"):
        (config / name).write_text((CONFIGS / name).read_text())
    models = (CONFIGS / "models.config").read_text().replace("/models/mmoe", str(exports["two_tasks"]))
    (config / "models.config").write_text(models)
    process, url = _serve(*(flag.replace("/config/", f"{config}/") for flag in command))
    try:
        assert _state(url, "mmoe") == "AVAILABLE"
        metrics = requests.get(f"{url}/monitoring/prometheus/metrics", timeout=10)
        assert metrics.status_code == 200
    finally:
        stderr = _stop(process)
    assert "with no effect" not in stderr  # every flag of the compose file does something here


def test_a_changed_config_file_is_served_and_no_op_flags_are_warned_about_once(exports, tmp_path):
    config = tmp_path / "models.config"
    config.write_text(f"model_config_list {{ {MODEL.format(name='single', path=exports['one_task'])} }}")
    process, url = _serve(
        f"--model_config_file={config}",
        "--model_config_file_poll_wait_seconds=0.5",
        "--file_system_poll_wait_seconds=0",
        "--tensorflow_intra_op_parallelism=1",
        "--tensorflow_inter_op_parallelism=1",
        "--rest_api_num_threads=8",
        "--grpc_max_threads=8",
        "--allow_version_labels_for_unavailable_models",
        "--enable_signature_method_name_check=false",
        "--per_process_gpu_memory_fraction=0.5",
        "--saved_model_tags=serve",
        "--grpc_channel_arguments=grpc.max_connection_age_ms=60000",
        "--num_load_threads=4",
        "--num_unload_threads=4",
        "--tensorflow_session_parallelism=2",
    )
    try:
        assert _state(url, "single") == "AVAILABLE" and _state(url, "mmoe") is None
        config.write_text(f"model_config_list {{ {MODEL.format(name='mmoe', path=exports['two_tasks'])} }}")
        deadline = time.monotonic() + 60
        while _state(url, "single") != "END" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert (_state(url, "mmoe"), _state(url, "single")) == ("AVAILABLE", "END")
    finally:
        stderr = _stop(process)
    warnings = [line for line in stderr.splitlines() if "with no effect" in line]
    assert len(warnings) == 1
    for name in NO_EFFECT_FLAGS:
        assert f"--{name}" in warnings[0]


# tensorflow_model_server's flags that deployments pass, with its defaults (rest_api_port: the image's).
MODEL_SERVER_DEFAULTS = {
    "port": "8500",
    "rest_api_port": "8501",
    "model_name": None,
    "model_base_path": None,
    "model_config_file": None,
    "model_config_file_poll_wait_seconds": "0.0",
    "file_system_poll_wait_seconds": "1.0",
    "enable_batching": "false",
    "batching_parameters_file": None,
    "monitoring_config_file": None,
    "rest_api_timeout_in_ms": "30000",
    "enable_model_warmup": "true",
    "tensorflow_intra_op_parallelism": "0",
    "tensorflow_inter_op_parallelism": "0",
    "tensorflow_session_parallelism": "0",
    "max_num_load_retries": "5",
    "load_retry_interval_micros": "60000000",
    "num_load_threads": "0",
    "num_unload_threads": "0",
    "grpc_channel_arguments": "",
    "enable_signature_method_name_check": "false",
    "allow_version_labels_for_unavailable_models": "false",
    "per_process_gpu_memory_fraction": "0.0",
    "saved_model_tags": "serve",
}


def test_helpfull_lists_the_model_servers_flags_with_its_defaults():
    shown = subprocess.run(
        [sys.executable, "-m", "mtl", "serve", "--helpfull"],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=120,
    )
    assert shown.returncode == 0, shown.stderr
    # absl's help: "  --[no]name: help" and, on a following line, "(default: 'value')" when there is one.
    blocks = re.findall(r"^  --(?:\[no\])?(\w+):(.*?)(?=^  --|\Z)", shown.stdout, re.M | re.S)
    defaults = {name: re.search(r"\(default: '(.*?)'\)", text, re.S) for name, text in blocks}
    assert MODEL_SERVER_DEFAULTS.keys() <= defaults.keys()
    for name, default in MODEL_SERVER_DEFAULTS.items():
        assert (defaults[name] and defaults[name].group(1)) == default, name
