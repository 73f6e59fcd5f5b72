"""Serving latency and throughput of the embedded server (`mtl serve`), beside the in-process call.

One run: export an MMoE at the paper's synthetic sizes, then
- in process: `serving_default` on one row, called from Python (the reference);
- `mtl serve` in its own process, without batching and with `serving/tf_serving/batching.config`:
  one-row predict over REST and gRPC, p50 / p99 latency at concurrency 1 (one client, requests back to
  back; in alternating rounds with the in-process call and the other servers), and requests/s at
  concurrency 8 and 32 (asyncio clients: aiohttp and grpc.aio, in this process);
- the same measurements against an echo server (grpc.aio and aiohttp answering a fixed two-task
  response, no model, no checks) in its own process: the floor that this machine, these Python clients and
  these server frameworks set, whatever the model server does;
- the server's resident memory with the model loaded, and its peak.

    .venv/bin/python benchmarks/serving_latency.py --output=benchmarks/results/serving_latency.json
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import aiohttp  # noqa: E402
import grpc  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from aiohttp import web  # noqa: E402
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc  # noqa: E402

from pipeline import data  # noqa: E402
from pipeline.config import (  # noqa: E402
    DataConfig,
    ExperimentConfig,
    ModelConfig,
    SyntheticDataConfig,
    TaskConfig,
    TrainConfig,
)
from pipeline.estimator import Estimator  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
flags.DEFINE_string("output", "benchmarks/results/serving_latency.json", "Where the results go, as JSON.")
flags.DEFINE_integer("latency_requests", 2000, "Requests per latency measurement (concurrency 1).")
flags.DEFINE_float("load_seconds", 8.0, "Seconds of each throughput measurement.")
flags.DEFINE_list("concurrency", ["8", "32"], "Concurrent clients of the throughput measurements.")
flags.DEFINE_string(
    "batching_parameters_file",
    str(ROOT / "serving" / "tf_serving" / "batching.config"),
    "BatchingParameters of the batched server.",
)
flags.DEFINE_boolean("echo_server", False, "Internal: run the echo server (the benchmark starts it).")
FLAGS = flags.FLAGS

MODEL = "mmoe"
TASKS = (TaskConfig("y1", "y1"), TaskConfig("y2", "y2"))


def export_model(workdir: Path) -> Path:
    """An MMoE at the paper's sizes (8 experts x 16 units, towers of 8), briefly trained and exported."""
    data_config = DataConfig(synthetic=SyntheticDataConfig(num_examples=10_000))
    model = ModelConfig(
        architecture="mmoe",
        features=data.features(data_config),
        tasks=TASKS,
        num_experts=8,
        expert_units=(16,),
        tower_units=(8,),
    )
    config = ExperimentConfig(model=model, data=data_config, train=TrainConfig(batch_size=256))
    estimator = Estimator(config, workdir / "model")
    estimator.train(data.input_fn(config, "train"), 100)
    return estimator.export(workdir / "export")


def percentiles(seconds: list[float]) -> dict[str, float]:
    milliseconds = np.asarray(seconds) * 1e3
    return {"p50_ms": round(float(np.percentile(milliseconds, 50)), 3),
            "p99_ms": round(float(np.percentile(milliseconds, 99)), 3)}  # fmt: skip


def interleaved_latency(calls: dict[str, Callable[[], Any]], count: int, rounds: int = 5) -> dict[str, dict]:
    """p50 / p99 of each call, `count` times each, in `rounds` alternating rounds: load on the shared machine
    that comes and goes then falls on every call alike, so their ratios hold."""
    for call in calls.values():
        for _ in range(50):
            call()
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            for _ in range(count // rounds):
                started = time.perf_counter()
                call()
                seconds[name].append(time.perf_counter() - started)
    return {name: percentiles(values) for name, values in seconds.items()}


def in_process_call(version_dir: Path, row: np.ndarray) -> Callable[[], Any]:
    signature = tf.saved_model.load(str(version_dir)).signatures["serving_default"]
    return lambda: {k: v.numpy() for k, v in signature(inputs=tf.constant(row)).items()}


def serve_command(export_base: Path, batching: bool) -> list[str]:
    command = [sys.executable, "-m", "mtl", "serve", f"--model_name={MODEL}",
               f"--model_base_path={export_base}", "--port=0", "--rest_api_port=0"]  # fmt: skip
    if batching:
        command += ["--enable_batching", f"--batching_parameters_file={FLAGS.batching_parameters_file}"]
    return command


class Server:
    """A server in a child process that prints its ports as `mtl serve` does."""

    def __init__(self, command: list[str]) -> None:
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env
        )
        line = self.process.stdout.readline()
        match = re.search(r"REST http://([\d.]+):(\d+), gRPC ([\d.]+:\d+)\.", line)
        if not match:
            raise RuntimeError(f"mtl serve did not start: {line!r}")
        self.rest_host, self.rest_port, self.grpc_target = match.group(1), int(match.group(2)), match.group(3)

    def memory_mib(self) -> dict[str, int]:
        """Resident memory now (VmRSS) and at its peak so far (VmHWM)."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        kib = {key: int(re.search(rf"{key}:\s+(\d+) kB", status).group(1)) for key in ("VmRSS", "VmHWM")}
        return {"rss_mib": round(kib["VmRSS"] / 1024), "peak_rss_mib": round(kib["VmHWM"] / 1024)}

    def cpu_seconds(self) -> float:
        """User + system CPU time the server has used so far."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def rest_body(row: np.ndarray) -> bytes:
    return json.dumps({"instances": row.tolist()}).encode()


def grpc_request(row: np.ndarray) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.inputs["inputs"].CopyFrom(tf.make_tensor_proto(row))
    return request


def rest_call(server: Server, body: bytes) -> Callable[[], None]:
    """One keep-alive connection's predict, for requests back to back."""
    connection = http.client.HTTPConnection(server.rest_host, server.rest_port)
    headers = {"Content-Type": "application/json"}

    def call() -> None:
        connection.request("POST", f"/v1/models/{MODEL}:predict", body, headers)
        response = connection.getresponse()
        payload = response.read()
        if response.status != 200:
            raise RuntimeError(payload)

    return call


def grpc_call(server: Server, request: predict_pb2.PredictRequest) -> Callable[[], Any]:
    predict = prediction_service_pb2_grpc.PredictionServiceStub(
        grpc.insecure_channel(server.grpc_target)
    ).Predict
    return lambda: predict(request, timeout=10)


async def _load(server: Server, concurrency: int, send) -> dict[str, float]:
    """`concurrency` clients sending back to back for --load_seconds (after one second of warm-up).

    Also gives the CPU time per request of the server and of this client process: on a small machine
    the two share the cores, so the client's cost is part of the picture.
    """
    done = {"ok": 0, "failed": 0}
    measuring = False
    stop_at = time.perf_counter() + 1.0 + FLAGS.load_seconds

    async def client() -> None:
        while time.perf_counter() < stop_at:
            try:
                await send()
                outcome = "ok"
            except Exception:
                outcome = "failed"
            if measuring:
                done[outcome] += 1

    tasks = [asyncio.create_task(client()) for _ in range(concurrency)]
    await asyncio.sleep(1.0)
    measuring, started = True, time.perf_counter()
    server_cpu, client_cpu = server.cpu_seconds(), time.process_time()
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - started
    requests = max(done["ok"] + done["failed"], 1)
    return {
        "requests_per_sec": round(done["ok"] / elapsed),
        "failed": done["failed"],
        "server_cpu_ms_per_request": round((server.cpu_seconds() - server_cpu) / requests * 1e3, 3),
        "client_cpu_ms_per_request": round((time.process_time() - client_cpu) / requests * 1e3, 3),
    }


async def rest_load(server: Server, body: bytes, concurrency: int) -> dict[str, float]:
    url = f"http://{server.rest_host}:{server.rest_port}/v1/models/{MODEL}:predict"
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def send() -> None:
            async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(response.status)

        return await _load(server, concurrency, send)


async def grpc_load(
    server: Server, request: predict_pb2.PredictRequest, concurrency: int
) -> dict[str, float]:
    async with grpc.aio.insecure_channel(server.grpc_target) as channel:
        predict = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict
        return await _load(server, concurrency, lambda: predict(request, timeout=10))


def run_echo_server() -> None:
    """Answers every predict with the same two-task response, over gRPC and REST, until terminated."""
    response = predict_pb2.PredictResponse()
    for task, value in (("y1", 0.5), ("y2", 0.25)):
        response.outputs[task].CopyFrom(tf.make_tensor_proto(np.array([value], np.float32)))
    body = json.dumps({"predictions": [{"y1": 0.5, "y2": 0.25}]})

    class Echo(prediction_service_pb2_grpc.PredictionServiceServicer):
        async def Predict(self, request, context):  # noqa: N802
            return response

    async def rest(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(text=body, content_type="application/json")

    async def serve() -> None:
        grpc_server = grpc.aio.server()
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Echo(), grpc_server)
        grpc_port = grpc_server.add_insecure_port("127.0.0.1:0")
        await grpc_server.start()
        app = web.Application()
        app.router.add_post(f"/v1/models/{MODEL}:predict", rest)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        print(f"REST http://127.0.0.1:{runner.addresses[0][1]}, gRPC 127.0.0.1:{grpc_port}.", flush=True)
        await asyncio.Event().wait()

    asyncio.run(serve())


def measure_load(server: Server, row: np.ndarray) -> dict:
    body, request = rest_body(row), grpc_request(row)
    result: dict = {"rest": {}, "grpc": {}}
    for concurrency in map(int, FLAGS.concurrency):
        result["rest"][f"c{concurrency}"] = asyncio.run(rest_load(server, body, concurrency))
        result["grpc"][f"c{concurrency}"] = asyncio.run(grpc_load(server, request, concurrency))
    return result


def main(argv: list[str]) -> None:
    del argv
    if FLAGS.echo_server:
        run_echo_server()
        return
    row = np.random.default_rng(0).normal(size=(1, 100)).astype(np.float32)
    with tempfile.TemporaryDirectory() as workdir:
        version_dir = export_model(Path(workdir))
        commands = {
            "unbatched": serve_command(version_dir.parent, batching=False),
            "batching": serve_command(version_dir.parent, batching=True),
            "echo": [sys.executable, __file__, "--echo_server"],
        }
        running = {mode: Server(command) for mode, command in commands.items()}
        try:
            servers = {mode: {"memory_after_load": server.memory_mib()} for mode, server in running.items()}
            calls = {"in_process": in_process_call(version_dir, row)}
            for mode, server in running.items():
                calls[f"{mode}/rest"] = rest_call(server, rest_body(row))
                calls[f"{mode}/grpc"] = grpc_call(server, grpc_request(row))
            latency = interleaved_latency(calls, FLAGS.latency_requests)
            reference = latency["in_process"]
            for mode, server in running.items():
                servers[mode].update(measure_load(server, row))
                for protocol in ("rest", "grpc"):
                    servers[mode][protocol]["latency"] = latency[f"{mode}/{protocol}"]
                servers[mode]["memory_at_end"] = server.memory_mib()
                logging.info("%s: %s", mode, servers[mode])
        finally:
            for server in running.values():
                server.stop()
    unbatched, batching, echo = servers["unbatched"], servers["batching"], servers["echo"]
    top = f"c{max(map(int, FLAGS.concurrency))}"
    ratios = {
        "rest_p50_over_in_process": round(unbatched["rest"]["latency"]["p50_ms"] / reference["p50_ms"], 2),
        "grpc_p50_over_in_process": round(unbatched["grpc"]["latency"]["p50_ms"] / reference["p50_ms"], 2),
        f"rest_batching_speedup_{top}": round(
            batching["rest"][top]["requests_per_sec"] / unbatched["rest"][top]["requests_per_sec"], 2
        ),
        f"grpc_batching_speedup_{top}": round(
            batching["grpc"][top]["requests_per_sec"] / unbatched["grpc"][top]["requests_per_sec"], 2
        ),
        f"rest_echo_over_unbatched_{top}": round(
            echo["rest"][top]["requests_per_sec"] / unbatched["rest"][top]["requests_per_sec"], 2
        ),
        f"grpc_echo_over_unbatched_{top}": round(
            echo["grpc"][top]["requests_per_sec"] / unbatched["grpc"][top]["requests_per_sec"], 2
        ),
    }
    result = {
        "ratios": ratios,
        "in_process": reference,
        "servers": servers,
        "batching_parameters_file": os.path.relpath(FLAGS.batching_parameters_file, ROOT),
        "cpus": os.cpu_count(),
    }
    Path(FLAGS.output).parent.mkdir(parents=True, exist_ok=True)
    Path(FLAGS.output).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(ratios, indent=2))
    print(f"in-process p50 {reference['p50_ms']} ms, p99 {reference['p99_ms']} ms")
    for mode, server in servers.items():
        for protocol in ("rest", "grpc"):
            latency = server[protocol]["latency"]
            loads = ", ".join(
                f"{key} {value['requests_per_sec']:,} req/s ({value['failed']} failed, server CPU "
                f"{value['server_cpu_ms_per_request']} ms/req, client {value['client_cpu_ms_per_request']})"
                for key, value in server[protocol].items()
                if key != "latency"
            )
            print(f"{mode:9} {protocol:4} p50 {latency['p50_ms']} ms p99 {latency['p99_ms']} ms; {loads}")
        print(f"{mode:9} memory after load {server['memory_after_load']}, at end {server['memory_at_end']}")


if __name__ == "__main__":
    app.run(main)
