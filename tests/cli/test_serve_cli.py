"""`mtl serve` and `mtl predict` as separate processes, as a user runs them."""

import ctypes
import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from tests.cli.commands import _env, assert_one_line_error, mtl

BATCHING_CONFIG = Path(__file__).resolve().parents[2] / "serving" / "tf_serving" / "batching.config"


@pytest.fixture(scope="module")
def served(trained_dir, tmp_path_factory):
    """`mtl serve` of the CLI tests' trained OMoE, on ports the OS picks, batching with the repo's
    `batching.config` (the one the TF Serving container gets)."""
    export_base = tmp_path_factory.mktemp("serve") / "omoe"
    assert mtl("export", f"--model_dir={trained_dir}", f"--export_base={export_base}").returncode == 0
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mtl",
            "serve",
            "--model_name=omoe",
            f"--model_base_path={export_base}",
            "--port=0",
            "--rest_api_port=0",
            "--enable_batching",
            f"--batching_parameters_file={BATCHING_CONFIG}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    line = process.stdout.readline()
    match = re.search(r"REST (http://\S+), gRPC (\S+)\. Ctrl-C stops\.", line)
    assert match, (line, process.stderr.read() if process.poll() is not None else "")
    yield {"rest": match.group(1), "grpc": match.group(2), "export": export_base, "process": process}
    if process.poll() is None:
        process.kill()


@pytest.mark.parametrize("scheme", ["rest", "grpc"])
def test_predict_prints_per_task_predictions_of_each_row(served, tmp_path, scheme):
    rows = np.random.default_rng(2).normal(size=(5, 100)).astype(np.float32)
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps({"inputs": r.tolist()}) + "\n" for r in rows))
    server = served["rest"] if scheme == "rest" else served["grpc"]
    result = mtl(
        "predict",
        f"--server={server}",
        "--model_name=omoe",
        f"--input={tmp_path / 'rows.jsonl'}",
        "--predict_batch_size=2",
    )
    assert result.returncode == 0, result.stderr
    printed = [json.loads(line) for line in result.stdout.splitlines()]
    (version,) = list(served["export"].iterdir())
    expected = tf.saved_model.load(str(version)).signatures["serving_default"](inputs=tf.constant(rows))
    assert [sorted(p) for p in printed] == [["y1", "y2"]] * 5
    for task in ("y1", "y2"):  # batches of 2 against one of 5: oneDNN may round the last bit differently
        np.testing.assert_allclose(np.float32([p[task] for p in printed]), expected[task].numpy(), rtol=1e-6)


def test_predict_prints_the_gate_weights_of_each_row(served, tmp_path):
    rows = np.random.default_rng(3).normal(size=(3, 100)).astype(np.float32)
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps({"inputs": r.tolist()}) + "\n" for r in rows))
    result = mtl(
        "predict",
        f"--server={served['grpc']}",
        "--model_name=omoe",
        "--signature_name=gates",
        f"--input={tmp_path / 'rows.jsonl'}",
    )
    assert result.returncode == 0, result.stderr
    printed = [json.loads(line) for line in result.stdout.splitlines()]
    (version,) = list(served["export"].iterdir())
    expected = tf.saved_model.load(str(version)).signatures["gates"](inputs=tf.constant(rows))
    for task in ("y1", "y2"):  # OMoE: one gate all tasks share, over its 4 experts
        weights = np.float32([p[task] for p in printed])
        assert weights.shape == (3, 4)
        np.testing.assert_allclose(weights, expected[task].numpy(), rtol=1e-6)
    np.testing.assert_array_equal([p["y1"] for p in printed], [p["y2"] for p in printed])


def test_predict_reports_server_and_input_mistakes_in_one_line(served, tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"inputs": [0.5]}\n')
    result = mtl("predict", f"--server={served['grpc']}", "--model_name=omoe", f"--input={rows}")
    assert_one_line_error(
        result,
        "predict",
        "the server answered INVALID_ARGUMENT: "
        "input 'inputs' has shape [1,1] but the signature expects [-1,100]",
    )
    rows.write_text('{"features": [0.5]}\n')
    result = mtl("predict", f"--server={served['rest']}", "--model_name=omoe", f"--input={rows}")
    assert_one_line_error(result, "predict", f"{rows} row 1: missing input 'inputs' (inputs: inputs).")
    result = mtl("predict", f"--server={served['rest']}", "--model_name=wrong", f"--input={rows}")
    assert_one_line_error(
        result, "predict", "the server answered NOT_FOUND: Servable not found for request: Latest(wrong)"
    )


def test_serve_refuses_a_busy_port_and_stops_on_sigterm(served):
    port = served["grpc"].rsplit(":", 1)[1]
    busy = mtl(
        "serve",
        "--model_name=omoe",
        f"--model_base_path={served['export']}",
        f"--port={port}",
        "--rest_api_port=0",
    )
    assert busy.returncode == 2 and "Traceback" not in busy.stderr
    assert f"Cannot listen for gRPC on 127.0.0.1:{port}" in busy.stderr.strip().splitlines()[-1]

    process = served["process"]
    _signal_another_thread(process.pid, signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    assert "Server stopped by SIGTERM." in process.stderr.read()


def _signal_another_thread(pid: int, signum: int) -> None:
    """Sends `signum` to a thread of process `pid` other than its main thread, as the kernel does when the
    main thread has a signal pending already: a main thread blocked in a wait would never run the handler."""
    for task in sorted(Path(f"/proc/{pid}/task").iterdir()):
        blocked = int(re.search(r"SigBlk:\s*([0-9a-f]+)", (task / "status").read_text()).group(1), 16)
        if int(task.name) != pid and not blocked & (1 << (signum - 1)):
            assert ctypes.CDLL(None, use_errno=True).tgkill(pid, int(task.name), signum) == 0
            return
    raise AssertionError(f"every thread of {pid} but the main one blocks signal {signum}")


def test_batching_parameters_need_enable_batching(served):
    result = mtl(
        "serve",
        "--model_name=omoe",
        f"--model_base_path={served['export']}",
        f"--batching_parameters_file={BATCHING_CONFIG}",
    )
    assert_one_line_error(result, "serve", "--batching_parameters_file is used only with --enable_batching.")
