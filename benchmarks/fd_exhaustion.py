"""The embedded server (`mtl serve`) at its file-descriptor limit: how much it logs, and that it recovers.

One run: `mtl serve` in its own process, its RLIMIT_NOFILE lowered to `--nofile` once it has started, and
`--max_connections` above that (so the descriptor limit, not the connection cap, runs out); then idle TCP
connections to its REST and gRPC ports, `--connections` of them, held for `--hold_seconds`, while a client
keeps trying a predict; then they are closed and the time until REST and gRPC predicts succeed again is
measured. It reports the server's open descriptors at the peak, the log lines and bytes written while it was
out of descriptors (REST logs one line per `LIMIT_LOG_SECONDS`, 10 s, not one per attempt; gRPC's C core one
a second), and the recovery time.

    .venv/bin/python benchmarks/fd_exhaustion.py --output=benchmarks/results/fd_exhaustion.json
    .venv/bin/python benchmarks/fd_exhaustion.py --model_base_path=runs/demo/export --hold_seconds=3

Without `--model_base_path` it first exports an MMoE at the paper's sizes (as `serving_latency.py` does).
"""

from __future__ import annotations

import json
import os
import re
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import grpc  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from serving_latency import MODEL, export_model, grpc_request, rest_body  # noqa: E402

flags.DEFINE_string("model_base_path", None, "An export base to serve (default: export a fresh MMoE).")
flags.DEFINE_integer("nofile", 256, "RLIMIT_NOFILE of the server process.")
flags.DEFINE_integer("connections", 600, "Idle connections opened, split between the REST and gRPC ports.")
flags.DEFINE_float("hold_seconds", 20.0, "How long the connections are held open.")
FLAGS = flags.FLAGS
FLAGS.set_default("output", "benchmarks/results/fd_exhaustion.json")

RECOVERY_TIMEOUT_SECONDS = 60.0
CONNECT_TIMEOUT_SECONDS = 0.5  # past the server's listen backlog a connect waits; it counts as refused
# Which front end a log line about the limit comes from (gRPC's C core logs its own).
LIMIT_LINES = {"rest": b"Cannot accept REST connections", "grpc": b"File descriptor limit reached"}


def start_server(export_base: str, log_path: Path) -> tuple[subprocess.Popen, int, int]:
    """`mtl serve` limited to `--nofile` descriptors once started, logging to `log_path`: its process and
    ports."""
    command = [sys.executable, "-m", "mtl", "serve", f"--model_name={MODEL}",
               f"--model_base_path={export_base}", "--port=0", "--rest_api_port=0",
               f"--max_connections={10 * FLAGS.connections}"]  # fmt: skip
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=log_path.open("w"),
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    line = process.stdout.readline()
    match = re.search(r"REST http://[\d.]+:(\d+), gRPC [\d.]+:(\d+)\.", line)
    if not match:
        process.kill()
        raise RuntimeError(f"mtl serve did not start: {line!r}\n{log_path.read_text()[-2000:]}")
    resource.prlimit(process.pid, resource.RLIMIT_NOFILE, (FLAGS.nofile, FLAGS.nofile))
    return process, int(match.group(1)), int(match.group(2))


def open_descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rest_predict_ok(port: int, body: bytes, timeout: float) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as connection:
            connection.sendall(
                f"POST /v1/models/{MODEL}:predict HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode()
                + body
            )
            return connection.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def grpc_predict_ok(port: int, request, timeout: float) -> bool:
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=timeout)
        except grpc.RpcError:
            return False
    return True


def log_lines(path: Path) -> dict[str, int]:
    """Lines and bytes of the server's log so far, and its lines about the descriptor limit by front end."""
    text = path.read_bytes()
    counts = {"lines": text.count(b"\n"), "bytes": len(text)}
    counts.update({f"{front_end}_limit_lines": text.count(words) for front_end, words in LIMIT_LINES.items()})
    return counts


def difference(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {key: after[key] - before[key] for key in after}


def main(argv: list[str]) -> None:
    del argv
    row = np.random.default_rng(0).normal(size=(1, 100)).astype(np.float32)
    body, request = rest_body(row), grpc_request(row)
    with tempfile.TemporaryDirectory() as workdir:
        export_base = FLAGS.model_base_path or str(export_model(Path(workdir)).parent)
        log_path = Path(workdir) / "serve.log"
        process, rest_port, grpc_port = start_server(export_base, log_path)
        held: list[socket.socket] = []
        try:
            assert rest_predict_ok(rest_port, body, 10) and grpc_predict_ok(grpc_port, request, 10)
            log_before, log_started = log_lines(log_path), time.monotonic()
            refused = 0
            for index in range(FLAGS.connections):
                try:
                    port = (rest_port, grpc_port)[index % 2]
                    held.append(socket.create_connection(("127.0.0.1", port), CONNECT_TIMEOUT_SECONDS))
                except OSError:
                    refused += 1
            peak_descriptors = open_descriptors(process.pid)
            opening_seconds = time.monotonic() - log_started
            attempts = answered = 0
            started = time.monotonic()
            while attempts == 0 or time.monotonic() < started + FLAGS.hold_seconds:
                attempts += 1
                answered += rest_predict_ok(rest_port, body, 0.5)
                peak_descriptors = max(peak_descriptors, open_descriptors(process.pid))
            held_seconds = time.monotonic() - started
            log_held, log_held_seconds = log_lines(log_path), time.monotonic() - log_started
            for connection in held:
                connection.close()
            closed_at = time.monotonic()
            recovered = {"rest": None, "grpc": None}
            while time.monotonic() < closed_at + RECOVERY_TIMEOUT_SECONDS and None in recovered.values():
                if recovered["rest"] is None and rest_predict_ok(rest_port, body, 1):
                    recovered["rest"] = round(time.monotonic() - closed_at, 2)
                if recovered["grpc"] is None and grpc_predict_ok(grpc_port, request, 1):
                    recovered["grpc"] = round(time.monotonic() - closed_at, 2)
                time.sleep(0.1)
            log_after = log_lines(log_path)
            tail = log_path.read_text()[-3000:]
        finally:
            for connection in held:
                connection.close()
            process.terminate()
            process.wait(timeout=30)
    result = {
        "nofile": FLAGS.nofile,
        "connections_opened": len(held),
        "connections_refused": refused,
        "server_peak_open_descriptors": peak_descriptors,
        "opening_seconds": round(opening_seconds, 1),
        "held_seconds": round(held_seconds, 1),
        "predicts_tried_while_held": attempts,
        "predicts_answered_while_held": answered,
        "log_while_held": difference(log_held, log_before),  # from the first connection on
        "log_while_held_seconds": round(log_held_seconds, 1),
        "log_until_recovered": difference(log_after, log_before),
        "recovery_seconds": recovered,
        "log_tail": tail.splitlines()[-8:],
    }
    Path(FLAGS.output).parent.mkdir(parents=True, exist_ok=True)
    Path(FLAGS.output).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    app.run(main)
