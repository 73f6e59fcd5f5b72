"""Connections over real sockets: idle and stalled ones are closed, a body that stalls gets a 408, open
connections are capped, and at the file-descriptor limit the server logs a line now and then, backs off,
keeps its models and recovers."""

from __future__ import annotations

import json
import re
import resource
import socket
import subprocess
import sys
import time

import grpc
import pytest
from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

from serving.config import single_model
from serving.server import LIMIT_LOG_SECONDS, LINGER_SECONDS, ModelServer, ServerOptions
from tests.cli.commands import _env
from tests.serving.conftest import STRICT

STATUS_REQUEST = b"GET /v1/models/mmoe HTTP/1.1\r\nHost: test\r\n\r\n"


def _connect(port: int, timeout: float = 10) -> socket.socket:
    connection = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    connection.settimeout(timeout)
    return connection


def _seconds_until_closed(connection: socket.socket, limit: float) -> float:
    """Reads (and drops) what arrives until the server closes the connection; its time, or `limit`."""
    started = time.monotonic()
    connection.settimeout(limit)
    try:
        while connection.recv(65536):
            pass
    except TimeoutError:
        return limit
    except ConnectionResetError:
        pass
    return time.monotonic() - started


def test_an_idle_keep_alive_connection_is_closed(strict_server):
    with _connect(strict_server.rest_port) as connection:
        connection.sendall(STATUS_REQUEST)
        assert connection.recv(65536).startswith(b"HTTP/1.1 200")
        assert _seconds_until_closed(connection, 10) < STRICT.idle_timeout_seconds + 2


def test_a_request_whose_headers_stall_is_closed(strict_server):
    with _connect(strict_server.rest_port) as connection:
        connection.sendall(b"POST /v1/models/mmoe:predict HTTP/1.1\r\nHost: test\r\n")
        assert _seconds_until_closed(connection, 10) < STRICT.idle_timeout_seconds + 2


def test_a_body_that_stalls_gets_a_408_and_the_connection_closes(strict_server):
    with _connect(strict_server.rest_port) as connection:
        connection.sendall(
            b'POST /v1/models/mmoe:predict HTTP/1.1\r\nHost: test\r\nContent-Length: 1000\r\n\r\n{"instances"'
        )
        started = time.monotonic()
        head, _, body = connection.recv(65536).partition(b"\r\n\r\n")
        assert time.monotonic() - started < STRICT.rest_timeout_ms / 1000 + 2
        assert head.startswith(b"HTTP/1.1 408") and b"application/json" in head
        assert json.loads(body) == {"error": "The request body did not arrive within 1.5 s."}
        assert _seconds_until_closed(connection, 10) < LINGER_SECONDS + 2


@pytest.fixture(scope="module")
def capped_server(exports):
    options = ServerOptions(
        grpc_port=0, rest_port=0, poll_seconds=0, max_connections=3, idle_timeout_seconds=30
    )
    with ModelServer(single_model("single", exports["one_task"]), options) as server:
        yield server


def test_rest_connections_past_the_cap_wait_to_be_accepted(capped_server):
    held = [_connect(capped_server.rest_port) for _ in range(3)]
    waiting = _connect(capped_server.rest_port)
    try:
        waiting.sendall(b"GET /v1/models/single HTTP/1.1\r\nHost: test\r\n\r\n")
        waiting.settimeout(1.0)
        with pytest.raises(TimeoutError):
            waiting.recv(65536)
        held.pop().close()
        waiting.settimeout(10)
        assert waiting.recv(65536).startswith(b"HTTP/1.1 200")
    finally:
        for connection in [*held, waiting]:
            connection.close()


def _status(channel: grpc.Channel, timeout: float = 10):
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "single"
    return model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=timeout)


def _own_channel(port: int) -> grpc.Channel:
    """A channel with a connection of its own (channels to one target share one by default)."""
    return grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)])


def test_grpc_connections_past_the_cap_are_refused(capped_server):
    held = [_own_channel(capped_server.grpc_port) for _ in range(3)]
    try:
        for channel in held:
            _status(channel)
        with _own_channel(capped_server.grpc_port) as extra, pytest.raises(grpc.RpcError) as refused:
            _status(extra, timeout=2)
        assert refused.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        held.pop().close()
        deadline = time.monotonic() + 10
        while True:
            with _own_channel(capped_server.grpc_port) as extra:
                try:
                    _status(extra, timeout=2)
                    break
                except grpc.RpcError:
                    assert time.monotonic() < deadline, "a freed gRPC connection slot was never reused"
    finally:
        for channel in held:
            channel.close()


NOFILE = 200


def test_at_the_descriptor_limit_the_server_logs_now_and_then_keeps_its_models_and_recovers(
    exports, tmp_path
):
    """`mtl serve` with 200 file descriptors, flooded with idle connections (more than it can hold) for a
    few seconds: at most one line a front end per `LIMIT_LOG_SECONDS` about it (the asyncio accept loop
    logged a traceback per attempt, 384k in 55 s), no version unloaded although its polls cannot list the
    base path meanwhile, and predictions as soon as the connections close."""
    log_path = tmp_path / "serve.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "mtl", "serve", "--model_name=single",
         f"--model_base_path={exports['one_task']}", "--port=0", "--rest_api_port=0",
         "--max_connections=100000", "--file_system_poll_wait_seconds=0.2"],
        stdout=subprocess.PIPE,
        stderr=log_path.open("w"),
        text=True,
        env=_env(),
    )  # fmt: skip
    held: list[socket.socket] = []
    try:
        line = process.stdout.readline()
        rest_port, grpc_port = map(
            int, re.search(r"127\.0\.0\.1:(\d+), gRPC 127\.0\.0\.1:(\d+)", line).groups()
        )
        resource.prlimit(process.pid, resource.RLIMIT_NOFILE, (NOFILE, NOFILE))
        flooded = time.monotonic()
        for _ in range(NOFILE + 60):
            try:
                held.append(socket.create_connection(("127.0.0.1", rest_port), timeout=0.2))
            except OSError:  # the listen backlog is full too
                pass
        time.sleep(3)
        log = log_path.read_text()
        most = 1 + (time.monotonic() - flooded) // LIMIT_LOG_SECONDS
        assert 1 <= log.count("Cannot accept REST connections: Too many open files") <= most, log[-3000:]
        assert "Traceback" not in log and "Unloaded" not in log, log[-3000:]
        for connection in held:
            connection.close()
        held.clear()
        deadline = time.monotonic() + 15
        while True:
            with _connect(rest_port) as connection:
                connection.sendall(b"GET /v1/models/single HTTP/1.1\r\nHost: test\r\n\r\n")
                if connection.recv(65536).startswith(b"HTTP/1.1 200"):
                    break
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.2)
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            assert (
                _status(channel).model_version_status[0].state
                == get_model_status_pb2.ModelVersionStatus.AVAILABLE
            )
    finally:
        for connection in held:
            connection.close()
        process.terminate()
        process.wait(timeout=30)
