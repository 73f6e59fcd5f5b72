"""REST and gRPC sharing one embedded server (`mtl serve`): each front end's throughput alone and together.

Three phases of `--load_seconds` each, against one unbatched `mtl serve` in its own process: REST alone
(`--rest_clients` client processes), gRPC alone (`--grpc_clients` client processes), then both together.
Every client is a process of its own with one connection, sending one-row predicts back to back, so the
clients neither share a GIL with each other nor with the server. It reports requests/s and p50 / p99
latency per front end and phase, and each front end's share: its rate together over its rate alone.
The server promises each front end at least half the model calls while both have requests waiting
(README, "The embedded server").

    .venv/bin/python benchmarks/serving_mixed_load.py --output=benchmarks/results/serving_mixed_load.json
    .venv/bin/python benchmarks/serving_mixed_load.py --model_base_path=runs/demo/export --load_seconds=3

Without `--model_base_path` it first exports an MMoE at the paper's sizes (as `serving_latency.py` does).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import tempfile
import threading
import time
import types
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from serving_latency import (  # noqa: E402
    MODEL,
    Server,
    export_model,
    grpc_call,
    grpc_request,
    percentiles,
    rest_body,
    rest_call,
)

flags.DEFINE_string("model_base_path", None, "An export base to serve (default: export a fresh MMoE).")
flags.DEFINE_integer("rest_clients", 4, "REST client processes (one keep-alive connection each).")
flags.DEFINE_integer("grpc_clients", 1, "gRPC client processes (one channel each).")
FLAGS = flags.FLAGS
FLAGS.set_default("output", "benchmarks/results/serving_mixed_load.json")
FLAGS.set_default("load_seconds", 20.0)

WARMUP_SECONDS = 1.0
STARTUP_SECONDS = 300.0  # spawned clients import TensorFlow first


def client_process(protocol: str, address: dict, seconds: float, ready, results) -> None:
    """Once every client is ready, sends predicts back to back for `seconds` after a warm-up; puts
    (protocol, requests answered, requests failed, their latencies, error) on `results`."""
    try:
        row = np.random.default_rng(os.getpid()).normal(size=(1, 100)).astype(np.float32)
        server = types.SimpleNamespace(**address)
        if protocol == "rest":
            call = rest_call(server, rest_body(row))
        else:
            call = grpc_call(server, grpc_request(row))
        call()
        ready.wait(STARTUP_SECONDS)
    except Exception as error:  # the parent must hear of it rather than wait for this client forever
        ready.abort()
        results.put((protocol, 0, 0, [], repr(error)))
        return
    warm_until = time.time() + WARMUP_SECONDS
    latencies, failed = [], 0
    stop_at = warm_until + seconds
    while (now := time.time()) < stop_at:
        started = time.perf_counter()
        try:
            call()
        except Exception:
            failed += 1
            continue
        if now >= warm_until:
            latencies.append(time.perf_counter() - started)
    results.put((protocol, len(latencies), failed, latencies, None))


def run_phase(server: Server, rest_clients: int, grpc_clients: int, seconds: float) -> dict:
    """Requests/s and latency of each front end with this many client processes of each."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    address = {
        "rest_host": server.rest_host,
        "rest_port": server.rest_port,
        "grpc_target": server.grpc_target,
    }
    ready = context.Barrier(rest_clients + grpc_clients + 1)
    processes = [
        context.Process(target=client_process, args=(protocol, address, seconds, ready, results))
        for protocol, count in (("rest", rest_clients), ("grpc", grpc_clients))
        for _ in range(count)
    ]
    for process in processes:
        process.start()
    try:
        ready.wait(STARTUP_SECONDS)
    except threading.BrokenBarrierError:  # a client failed to start: it says why below
        pass
    collected = [results.get(timeout=STARTUP_SECONDS + seconds + 60) for _ in processes]
    for process in processes:
        process.join()
    errors = [r[4] for r in collected if r[4]]
    if errors:
        raise RuntimeError(f"A client failed: {errors[0]}")
    phase = {}
    for protocol in ("rest", "grpc"):
        mine = [r for r in collected if r[0] == protocol]
        if not mine:
            continue
        latencies = [value for r in mine for value in r[3]]
        phase[protocol] = {
            "clients": len(mine),
            "requests_per_sec": round(sum(r[1] for r in mine) / seconds, 1),
            "failed": sum(r[2] for r in mine),
            **(percentiles(latencies) if latencies else {}),
        }
    return phase


def main(argv: list[str]) -> None:
    del argv
    with tempfile.TemporaryDirectory() as workdir:
        export_base = FLAGS.model_base_path or str(export_model(Path(workdir)).parent)
        command = [sys.executable, "-m", "mtl", "serve", f"--model_name={MODEL}",
                   f"--model_base_path={export_base}", "--port=0", "--rest_api_port=0"]  # fmt: skip
        server = Server(command)
        try:
            seconds = FLAGS.load_seconds
            phases = {
                "rest_alone": run_phase(server, FLAGS.rest_clients, 0, seconds),
                "grpc_alone": run_phase(server, 0, FLAGS.grpc_clients, seconds),
                "together": run_phase(server, FLAGS.rest_clients, FLAGS.grpc_clients, seconds),
            }
        finally:
            server.stop()
    together = phases["together"]
    shares = {}
    for protocol in ("rest", "grpc"):
        alone = phases[f"{protocol}_alone"][protocol]["requests_per_sec"]
        shares[f"{protocol}_together_over_alone"] = round(together[protocol]["requests_per_sec"] / alone, 2)
    result = {"shares": shares, "phases": phases, "load_seconds": seconds, "cpus": os.cpu_count()}
    Path(FLAGS.output).parent.mkdir(parents=True, exist_ok=True)
    Path(FLAGS.output).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    app.run(main)
