"""Server-side batching: the scheduler on its own, then through a real server over gRPC and REST."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf

from serving.batching import QUEUE_FULL, BatchScheduler
from serving.client import connect
from serving.config import BatchingOptions, single_model
from serving.errors import ServingError
from serving.server import ModelServer, ServerOptions


class RecordingModel:
    """Doubles `x` row by row and records the batches it was called with."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.batches: list[np.ndarray] = []
        self.gate = gate
        self.entered = threading.Event()

    def __call__(self, signature_name: str, inputs: dict) -> dict:
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(10)
        self.batches.append(inputs["x"])
        return {"y": inputs["x"] * 2, "name": np.array([signature_name] * len(inputs["x"]), object)}


def _submit_together(scheduler: BatchScheduler, rows: list[np.ndarray], signature: str = "s") -> list[dict]:
    with ThreadPoolExecutor(len(rows)) as pool:
        return list(pool.map(lambda x: scheduler.submit(signature, {"x": x}), rows))


def test_concurrent_requests_run_as_one_batch_and_get_their_own_rows():
    model = RecordingModel()
    scheduler = BatchScheduler(model, BatchingOptions(max_batch_size=8, batch_timeout_micros=2_000_000))
    rows = [np.full((1, 3), i, np.float32) for i in range(8)]
    results = _submit_together(scheduler, rows)
    scheduler.close()
    assert len(model.batches) == 1 and model.batches[0].shape == (8, 3)  # full: ran before the timeout
    for x, result in zip(rows, results, strict=True):
        np.testing.assert_array_equal(result["y"], x * 2)
    assert (scheduler.batches_run, scheduler.requests_run) == (1, 8)


def test_a_partial_batch_runs_when_its_timeout_expires():
    model = RecordingModel()
    scheduler = BatchScheduler(model, BatchingOptions(max_batch_size=8, batch_timeout_micros=100_000))
    started = time.monotonic()
    result = scheduler.submit("s", {"x": np.ones((2, 3), np.float32)})
    waited = time.monotonic() - started
    scheduler.close()
    assert 0.1 <= waited < 5
    np.testing.assert_array_equal(result["y"], np.full((2, 3), 2.0))
    assert [b.shape for b in model.batches] == [(2, 3)]


def test_batches_are_padded_to_an_allowed_size_and_the_padding_dropped():
    model = RecordingModel()
    options = BatchingOptions(max_batch_size=8, batch_timeout_micros=0, allowed_batch_sizes=(4, 8))
    scheduler = BatchScheduler(model, options)
    x = np.arange(9, dtype=np.float32).reshape(3, 3)
    result = scheduler.submit("s", {"x": x})
    scheduler.close()
    np.testing.assert_array_equal(model.batches[0], np.concatenate([x, x[:1]]))  # first row repeated
    np.testing.assert_array_equal(result["y"], x * 2)


def test_a_request_larger_than_max_batch_size_is_refused():
    scheduler = BatchScheduler(RecordingModel(), BatchingOptions(max_batch_size=4))
    with pytest.raises(ServingError) as error:
        scheduler.submit("s", {"x": np.ones((5, 3), np.float32)})
    scheduler.close()
    assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.message == "Task size 5 is larger than maximum input batch size 4"


def test_a_full_queue_refuses_with_unavailable_and_loses_nothing_queued():
    gate = threading.Event()
    model = RecordingModel(gate)
    options = BatchingOptions(max_batch_size=1, num_batch_threads=1, max_enqueued_batches=1)
    scheduler = BatchScheduler(model, options)
    with ThreadPoolExecutor(2) as pool:
        running = pool.submit(scheduler.submit, "s", {"x": np.full((1, 1), 1.0, np.float32)})
        assert model.entered.wait(10)  # the only batch thread holds the first request
        queued = pool.submit(scheduler.submit, "s", {"x": np.full((1, 1), 2.0, np.float32)})
        time.sleep(0.2)  # the second waits in the queue, which is now full
        with pytest.raises(ServingError) as error:
            scheduler.submit("s", {"x": np.full((1, 1), 3.0, np.float32)})
        gate.set()
        assert running.result(10)["y"][0, 0] == 2.0 and queued.result(10)["y"][0, 0] == 4.0
    scheduler.close()
    assert (error.value.code, error.value.message) == (grpc.StatusCode.UNAVAILABLE, QUEUE_FULL)


def test_signatures_and_input_shapes_are_never_mixed_in_a_batch():
    model = RecordingModel()
    scheduler = BatchScheduler(model, BatchingOptions(max_batch_size=8, batch_timeout_micros=300_000))
    with ThreadPoolExecutor(3) as pool:
        a = pool.submit(scheduler.submit, "a", {"x": np.ones((1, 3), np.float32)})
        b = pool.submit(scheduler.submit, "b", {"x": np.ones((1, 3), np.float32)})
        c = pool.submit(scheduler.submit, "a", {"x": np.ones((1, 4), np.float32)})
        assert [f.result(10)["name"][0] for f in (a, b, c)] == ["a", "b", "a"]
    scheduler.close()
    assert sorted(batch.shape for batch in model.batches) == [(1, 3), (1, 3), (1, 4)]


def test_a_failing_batch_fails_each_of_its_requests():
    def broken(signature_name, inputs):
        raise ServingError(grpc.StatusCode.INTERNAL, "model broke")

    scheduler = BatchScheduler(broken, BatchingOptions(max_batch_size=4, batch_timeout_micros=300_000))
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(scheduler.submit, "s", {"x": np.ones((1, 2))}) for _ in range(4)]
        for future in futures:
            with pytest.raises(ServingError, match="model broke"):
                future.result(10)
    scheduler.close()


def test_close_runs_what_is_queued_and_later_requests_run_unbatched():
    model = RecordingModel()
    scheduler = BatchScheduler(model, BatchingOptions(max_batch_size=8, batch_timeout_micros=60_000_000))
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(scheduler.submit, "s", {"x": np.ones((1, 2), np.float32)})
        time.sleep(0.2)
        scheduler.close()  # does not wait the minute out
        np.testing.assert_array_equal(waiting.result(10)["y"], [[2.0, 2.0]])
    np.testing.assert_array_equal(
        scheduler.submit("s", {"x": np.ones((1, 2), np.float32)})["y"], [[2.0, 2.0]]
    )


# -- through a real server ------------------------------------------------------------------------


def _mmoe_server(exports, **options) -> ModelServer:
    """A server of the two-task MMoE's newest version on ports the OS picks (not started)."""
    sources = single_model("mmoe", exports["two_tasks"])
    return ModelServer(sources, ServerOptions(grpc_port=0, rest_port=0, poll_seconds=0, **options))


@pytest.fixture(scope="module")
def batching_server(exports):
    """max_batch_size 32: the exports' warmup requests (up to 32 rows) must fit, as in TF Serving."""
    batching = BatchingOptions(max_batch_size=32, batch_timeout_micros=200_000, num_batch_threads=1)
    with _mmoe_server(exports, batching=batching) as server:
        yield server


def test_concurrent_single_rows_over_grpc_and_rest_are_batched_and_exact(batching_server, exports):
    rows = np.random.default_rng(3).normal(size=(16, 100)).astype(np.float32)
    expected = tf.saved_model.load(str(exports["two_tasks"] / "2")).signatures["serving_default"](
        inputs=tf.constant(rows)
    )
    targets = [
        f"grpc://127.0.0.1:{batching_server.grpc_port}",
        f"http://127.0.0.1:{batching_server.rest_port}",
    ]

    def predict(i: int) -> dict:
        with connect(targets[i % 2], "mmoe") as client:
            return client.predict({"inputs": rows[i : i + 1]})

    batcher = batching_server.manager.servable("mmoe").batcher
    before = (batcher.batches_run, batcher.requests_run)
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(predict, range(16)))
    batches, served = batcher.batches_run - before[0], batcher.requests_run - before[1]
    assert served == 16 and batches < 16
    for i, result in enumerate(results):
        for task in ("y1", "y2"):
            np.testing.assert_allclose(result[task], expected[task].numpy()[i : i + 1], rtol=1e-5, atol=1e-6)


def test_a_request_over_max_batch_size_gets_tf_servings_error(batching_server):
    url = f"http://127.0.0.1:{batching_server.rest_port}/v1/models/mmoe:predict"
    response = requests.post(url, json={"instances": np.zeros((33, 100)).tolist()}, timeout=10)
    assert response.status_code == 400
    assert response.json() == {"error": "Task size 33 is larger than maximum input batch size 32"}


def test_a_request_still_waiting_at_the_rest_timeout_gets_504_and_the_server_goes_on(exports):
    batching = BatchingOptions(max_batch_size=32, batch_timeout_micros=3_000_000)
    with _mmoe_server(exports, warmup=False, rest_timeout_ms=200, batching=batching) as server:
        url = f"http://127.0.0.1:{server.rest_port}/v1/models/mmoe"
        started = time.monotonic()
        response = requests.post(f"{url}:predict", json={"instances": [[0.0] * 100]}, timeout=10)
        assert (response.status_code, response.json()) == (504, {"error": "Request timed out."})
        assert time.monotonic() - started < 2.0
        assert requests.get(url, timeout=10).json()["model_version_status"][0]["state"] == "AVAILABLE"
