"""REST and gRPC share the model fairly: the model threads take turns between the front ends' lanes, so a
busy front end cannot starve the other (`benchmarks/serving_mixed_load.py` measures the rates)."""

from __future__ import annotations

import asyncio
import threading
import time

import grpc
import numpy as np
import requests
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc as prediction_grpc

from serving.fair_executor import FairExecutor

ROW = np.full((1, 100), 0.25, np.float32)


def test_the_model_threads_take_turns_between_lanes():
    """With one thread, 8 REST calls queued before 3 gRPC calls: the gRPC calls run second, fourth and
    sixth, not after every REST call."""
    executor = FairExecutor(1, ("rest", "grpc"))
    gate, ran = threading.Event(), []

    async def main() -> None:
        blocker = asyncio.ensure_future(executor.run("rest", gate.wait))
        await asyncio.sleep(0.05)  # the thread is held by the blocker; everything below queues
        calls = [executor.run("rest", ran.append, f"rest{i}") for i in range(8)]
        calls += [executor.run("grpc", ran.append, f"grpc{i}") for i in range(3)]
        tasks = [asyncio.ensure_future(call) for call in calls]
        await asyncio.sleep(0.05)
        gate.set()
        await asyncio.gather(blocker, *tasks)

    asyncio.run(main())
    executor.close()
    assert ran[:6] == ["grpc0", "rest0", "grpc1", "rest1", "grpc2", "rest2"]
    assert ran[6:] == [f"rest{i}" for i in range(3, 8)]


def test_a_call_cancelled_before_it_starts_never_runs():
    executor = FairExecutor(1, ("rest",))
    gate, ran = threading.Event(), []

    async def main() -> None:
        blocker = asyncio.ensure_future(executor.run("rest", gate.wait))
        await asyncio.sleep(0.05)
        waiting = asyncio.ensure_future(executor.run("rest", ran.append, "late"))
        await asyncio.sleep(0.05)
        waiting.cancel()
        gate.set()
        await blocker

    asyncio.run(main())
    executor.close()
    assert ran == []


def test_grpc_keeps_answering_beside_a_rest_flood(server):
    """Eight REST clients send predicts back to back while one gRPC client sends 40: the gRPC client waits
    for a few REST requests per request of its own, not for dozens (model calls in the event loop made it
    wait behind every REST request ready at each of its several loop turns)."""
    rest_url = f"http://127.0.0.1:{server.rest_port}/v1/models/mmoe:predict"
    body = {"instances": ROW.tolist()}
    stop, rest_done = threading.Event(), [0]

    def rest_client() -> None:
        with requests.Session() as session:
            while not stop.is_set():
                assert session.post(rest_url, json=body, timeout=30).status_code == 200
                rest_done[0] += 1

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "mmoe"
    request.inputs["inputs"].CopyFrom(tf.make_tensor_proto(ROW))
    clients = [threading.Thread(target=rest_client) for _ in range(8)]
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        predict = prediction_grpc.PredictionServiceStub(channel).Predict
        predict(request, timeout=30)
        for client in clients:
            client.start()
        try:
            while rest_done[0] < 50:  # the flood is on
                time.sleep(0.01)
            before = rest_done[0]
            for _ in range(40):
                predict(request, timeout=30)
            rest_during = rest_done[0] - before
        finally:
            stop.set()
            for client in clients:
                client.join()
    assert rest_during / 40 < 12, rest_during
