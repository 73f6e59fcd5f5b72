"""Versions appearing and disappearing under a polling server, while clients keep asking."""

import logging
import os
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
from serving.manager import (
    MAX_ENDED_STATUSES,
    NO_VERSIONS_WARNING_SECONDS,
    LoadRetries,
    ModelManager,
    _warm_up,
)
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
    options = ServerOptions(grpc_port=0, rest_port=0, poll_seconds=0.1, max_num_load_retries=0)
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
    _wait_for(lambda: (3, "END") in [(s.version, s.state) for s in server.manager.statuses("mmoe")])
    status = server.manager.statuses("mmoe", version=3)[0]
    assert status.state == "END" and status.error_code == "UNKNOWN" and status.error_message
    with connect(f"grpc://127.0.0.1:{server.grpc_port}", "mmoe") as client:
        assert client.predict({"inputs": ROWS})["y1"].shape == (2,)
    assert server.manager.servable("mmoe").version == 1


def test_warmup_requests_are_replayed_and_a_failing_one_fails_the_load(exports, tmp_path):
    good = Servable("mmoe", 1, exports["two_tasks"] / "1")
    assert _warm_up(good) == 9  # as `mtl export` writes: 3 batch sizes for serving_default, gates, predict

    base = tmp_path / "models"
    base.mkdir()
    _publish(exports["two_tasks"] / "1", base, 1)
    request = predict_pb2.PredictRequest()
    request.inputs["inputs"].CopyFrom(tf.make_tensor_proto(np.zeros((1, 7), np.float32)))  # wrong width
    with tf.io.TFRecordWriter(str(base / "1" / WARMUP_FILE)) as writer:
        log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
        writer.write(log.SerializeToString())
    manager = ModelManager(single_model("mmoe", base), retries=LoadRetries(max_num_load_retries=0))
    manager.refresh()
    (status,) = manager.statuses("mmoe")
    assert (status.state, status.error_code) == ("END", "UNKNOWN")
    assert "has shape [1,7] but the signature expects [-1,100]" in status.error_message
    without_warmup = ModelManager(single_model("mmoe", base), warmup=False)
    without_warmup.refresh()
    assert without_warmup.statuses("mmoe")[0].state == "AVAILABLE"


def _broken(base, version: int) -> None:
    (base / str(version)).mkdir()
    (base / str(version) / "saved_model.pb").write_bytes(b"not a SavedModel")


def _states(manager: ModelManager) -> list[tuple[int, str]]:
    return [(s.version, s.state) for s in manager.statuses("mmoe")]


def test_a_failed_load_is_retried_while_the_serving_version_stays(exports, tmp_path):
    """TF Serving's `--max_num_load_retries` and `--load_retry_interval_micros`: a version whose files
    were not all there yet loads on a retry; one that never loads ends with its error; the version serving
    meanwhile stays."""
    base = tmp_path / "models"
    base.mkdir()
    _publish(exports["two_tasks"] / "1", base, 1)
    manager = ModelManager(single_model("mmoe", base), retries=LoadRetries(2, 200_000))
    manager.refresh()
    _broken(base, 2)
    manager.refresh()
    assert _states(manager) == [(2, "LOADING"), (1, "AVAILABLE")]
    shutil.rmtree(base / "2")
    shutil.copytree(exports["two_tasks"] / "2", base / "2")
    manager.refresh()  # before the retry interval: not tried yet
    assert manager.servable("mmoe").version == 1
    time.sleep(0.25)
    manager.refresh()
    assert _states(manager) == [(2, "AVAILABLE"), (1, "END")]

    _broken(base, 3)
    for _ in range(3):  # the first try and two retries
        manager.refresh()
        assert manager.servable("mmoe").version == 2
        time.sleep(0.25)
    manager.refresh()
    status = manager.statuses("mmoe", version=3)[0]
    assert (status.state, status.error_code) == ("END", "UNKNOWN") and status.error_message
    assert manager.servable("mmoe").version == 2
    manager.close()


def test_folders_that_are_not_plain_versions_are_ignored_with_one_warning_each(exports, tmp_path, caplog):
    base = tmp_path / "models"
    base.mkdir()
    _publish(exports["two_tasks"] / "1", base, 1)
    odd = ["0000108", "١٠٨", "²", "99999999999999999999", "v2"]
    for name in odd:
        shutil.copytree(exports["two_tasks"] / "2", base / name)
    (base / "notes").mkdir()  # no digit: not meant as a version, skipped silently as TF Serving does
    manager = ModelManager(single_model("mmoe", base), warmup=False)
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            manager.refresh()
    warnings = [r.getMessage() for r in caplog.records if "Ignoring" in r.getMessage()]
    assert sorted(w.split()[1] for w in warnings) == sorted(str(base / name) for name in odd)
    assert _states(manager) == [(1, "AVAILABLE")]
    _publish(exports["two_tasks"] / "2", base, 2)  # polling goes on working
    manager.refresh()
    assert manager.servable("mmoe").version == 2
    manager.close()


def test_a_base_path_without_versions_is_warned_about_at_a_bounded_rate(tmp_path, caplog):
    empty, missing = tmp_path / "empty", tmp_path / "missing"
    empty.mkdir()
    manager = ModelManager([*single_model("a", empty), *single_model("b", missing)], retries=LoadRetries(0))

    def warnings() -> tuple[int, int]:
        messages = [r.getMessage() for r in caplog.records]
        return (
            sum(f"No versions of servable a found under base path {empty}" in m for m in messages),
            sum(f"Could not find base path {missing} for servable b" in m for m in messages),
        )

    with caplog.at_level(logging.WARNING):
        for _ in range(20):
            manager.refresh()
        assert warnings() == (1, 1)
        # As if the interval had passed since the warnings (the clock itself is the whole process's).
        warned_at = manager._no_versions_warned_at
        manager._no_versions_warned_at = {k: v - NO_VERSIONS_WARNING_SECONDS for k, v in warned_at.items()}
        for _ in range(20):
            manager.refresh()
        assert warnings() == (2, 2)  # said again once the interval has passed, still once per interval


def test_a_base_path_that_cannot_be_read_unloads_nothing(exports, tmp_path):
    """As in TF Serving, only a listing that succeeds changes what is served: a base path that vanished or
    cannot be listed (out of file descriptors, say) leaves the versions serving."""
    base = tmp_path / "models"
    base.mkdir()
    _publish(exports["two_tasks"] / "1", base, 1)
    manager = ModelManager(single_model("mmoe", base), warmup=False)
    manager.refresh()
    base.rename(tmp_path / "elsewhere")
    manager.refresh()
    assert _states(manager) == [(1, "AVAILABLE")] and manager.servable("mmoe").version == 1
    manager.close()


def test_partial_exports_left_behind_are_removed_once_stale_and_never_served(exports, tmp_path):
    base = tmp_path / "models"
    base.mkdir()
    _publish(exports["two_tasks"] / "1", base, 1)
    stale, fresh = base / ".tmp-5-killed", base / ".tmp-6-writing"
    for folder in (stale, fresh):
        shutil.copytree(exports["two_tasks"] / "2", folder / "saved_model")
    an_hour_ago = time.time() - 3600
    for path in [stale, *stale.rglob("*")]:
        os.utime(path, (an_hour_ago, an_hour_ago))
    manager = ModelManager(single_model("mmoe", base), warmup=False, stale_export_seconds=600)
    manager.refresh()
    assert not stale.exists() and fresh.exists()
    assert _states(manager) == [(1, "AVAILABLE")]
    manager.close()


def test_the_status_list_is_bounded(tmp_path):
    """Versions that come and go leave at most `MAX_ENDED_STATUSES` rows behind them."""
    base = tmp_path / "models"
    base.mkdir()
    manager = ModelManager(single_model("mmoe", base), retries=LoadRetries(0))
    for version in range(1, 3 * MAX_ENDED_STATUSES):
        _broken(base, version)
        manager.refresh()
        shutil.rmtree(base / str(version))
    manager.refresh()
    statuses = manager.statuses("mmoe")
    assert len(statuses) == MAX_ENDED_STATUSES
    assert statuses[0].version == 3 * MAX_ENDED_STATUSES - 1
