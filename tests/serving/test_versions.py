"""Versions appearing and disappearing under a polling server, while clients keep asking."""

import shutil
import threading
import time

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

from serving.client import PredictionError, connect
from serving.config import single_model
from serving.layout import WARMUP_FILE
from serving.manager import ModelManager, _warm_up
from serving.servable import Servable
from serving.server import ModelServer, ServerOptions

ROWS = np.random.default_rng(3).normal(size=(2, 100)).astype(np.float32)


def _publish(source, base_path, version: int) -> None:
    """What `mtl export` does: write under a non-integer name, then rename into place."""
    staging = base_path / f".tmp-{version}"
    shutil.copytree(source, staging)
    staging.rename(base_path / str(version))


@pytest.fixture
def polling_server(exports, tmp_path):
    base = tmp_path / "models"
    base.mkdir()
    _publish(exports["two_tasks"] / "1", base, 1)
    options = ServerOptions(grpc_port=0, rest_port=0, poll_seconds=0.1)
    with ModelServer(single_model("mmoe", base), options) as server:
        yield server, base


def _wait_for(condition, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_new_version_under_load_is_picked_up_with_no_failed_request(polling_server, exports):
    server, base = polling_server
    addresses = [f"http://127.0.0.1:{server.rest_port}", f"grpc://127.0.0.1:{server.grpc_port}"]
    expected = {}
    with connect(addresses[1], "mmoe") as probe:
        expected[1] = probe.predict({"inputs": ROWS})["y1"]
    stop = threading.Event()
    failures: list[str] = []
    seen: dict[str, list[int]] = {address: [] for address in addresses}

    def hammer(address: str) -> None:
        with connect(address, "mmoe", retries=0) as client:
            while not stop.is_set():
                try:
                    y1 = client.predict({"inputs": ROWS})["y1"]
                except PredictionError as error:
                    failures.append(f"{address}: {error}")
                    continue
                seen[address].append(1 if np.array_equal(y1, expected[1]) else 2)

    threads = [threading.Thread(target=hammer, args=(a,)) for a in addresses for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        _wait_for(lambda: all(len(s) > 20 for s in seen.values()))
        _publish(exports["two_tasks"] / "2", base, 2)
        _wait_for(lambda: all(s and s[-1] == 2 and s.count(2) > 20 for s in seen.values()))
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert failures == []
    for answers in seen.values():
        switch = answers.index(2)
        assert set(answers[:switch]) == {1} and answers[switch:].count(1) <= 4  # in-flight stragglers only
    statuses = server.manager.statuses("mmoe")
    assert [(s.version, s.state) for s in statuses] == [(2, "AVAILABLE"), (1, "END")]


def test_a_broken_version_is_reported_and_the_old_one_keeps_serving(polling_server):
    server, base = polling_server
    (base / "3").mkdir()
    (base / "3" / "saved_model.pb").write_bytes(b"not a SavedModel")
    _wait_for(lambda: 3 in [s.version for s in server.manager.statuses("mmoe")])
    status = server.manager.statuses("mmoe", version=3)[0]
    assert status.state == "END" and status.error_code == "UNKNOWN" and status.error_message
    with connect(f"grpc://127.0.0.1:{server.grpc_port}", "mmoe") as client:
        assert client.predict({"inputs": ROWS})["y1"].shape == (2,)
    assert server.manager.servable("mmoe").version == 1


def test_warmup_requests_are_replayed_and_a_failing_one_fails_the_load(exports, tmp_path):
    good = Servable("mmoe", 1, exports["two_tasks"] / "1")
    assert _warm_up(good) == 6  # what `mtl export` writes: 3 batch sizes for serving_default and for gates

    base = tmp_path / "models"
    base.mkdir()
    _publish(exports["two_tasks"] / "1", base, 1)
    request = predict_pb2.PredictRequest()
    request.inputs["inputs"].CopyFrom(tf.make_tensor_proto(np.zeros((1, 7), np.float32)))  # wrong width
    with tf.io.TFRecordWriter(str(base / "1" / WARMUP_FILE)) as writer:
        log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
        writer.write(log.SerializeToString())
    manager = ModelManager(single_model("mmoe", base))
    manager.refresh()
    (status,) = manager.statuses("mmoe")
    assert (status.state, status.error_code) == ("END", "UNKNOWN")
    assert "has shape [1,7] but the signature expects [-1,100]" in status.error_message
    without_warmup = ModelManager(single_model("mmoe", base), warmup=False)
    without_warmup.refresh()
    assert without_warmup.statuses("mmoe")[0].state == "AVAILABLE"
