"""The embedded model server: gRPC and REST frontends over one model manager, in one process.

It answers like `tensorflow_model_server` (see ../shared/reference/tf-serving-api.md), so the same clients and
tests run against it and against the `tensorflow/serving` container. Each frontend has an event loop (and a
thread) of its own, so one's clients never wait behind the other's at a loop turn; their model calls run in
the model threads, which take turns between them (`serving.fair_executor`).

Connections are bounded as a production server bounds them: each frontend holds at most `max_connections`
(REST stops accepting meanwhile, as HAProxy's `maxconn`; gRPC's own limit refuses them), a connection with
no request in progress is closed after `idle_timeout_seconds` (REST: also one whose headers have not all
arrived by then), and at the file-descriptor limit the REST accept loop backs off and says so once in a
while instead of once per attempt.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import os
import socket
import threading
from collections.abc import Coroutine, Iterable
from pathlib import Path
from typing import Any

import grpc
from absl import logging
from aiohttp import web

from serving.config import DEFAULT_METRICS_PATH, BatchingOptions, ModelSource, read_model_config_file
from serving.errors import ServingConfigError
from serving.fair_executor import FairExecutor
from serving.grpc_service import (
    MODEL_SERVICE,
    PREDICTION_SERVICE,
    ModelService,
    PredictionService,
    add_servicer,
)
from serving.layout import MAX_GRPC_MESSAGE_BYTES
from serving.limits import DEFAULT_MAX_REQUEST_ELEMENTS
from serving.manager import LoadRetries, ModelManager
from serving.metrics import ServingMetrics
from serving.rest import RestFrontend

MAX_PORT = 65535
OUT_OF_DESCRIPTORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
ACCEPT_BACKOFF_SECONDS = (0.05, 2.0)  # first and longest wait before accepting again
LIMIT_LOG_SECONDS = 10.0  # at most one log line this often about a limit reached
GRPC_KEEPALIVE_TIMEOUT_MS = 20_000
LINGER_SECONDS = 2.0  # after refusing a body (408, 413), how long the rest of it is read before closing
SHUTDOWN_GRACE_SECONDS = 1.0  # at stop, how long each front end lets the requests in flight finish


@dataclasses.dataclass(frozen=True)
class ServerOptions:
    """How the server listens and behaves; the names follow `tensorflow_model_server`'s flags.

    Raises:
        ServingConfigError: a port outside 0-65535, both ports the same, or a limit that is not positive.
    """

    host: str = "127.0.0.1"
    grpc_port: int = 8500
    rest_port: int = 8501
    poll_seconds: float = 1.0
    warmup: bool = True
    max_request_bytes: int = 64 * 2**20
    max_request_elements: int = DEFAULT_MAX_REQUEST_ELEMENTS
    rest_timeout_ms: int = 30_000
    idle_timeout_seconds: float = 60.0
    max_connections: int = 1000  # per frontend; also the most gRPC calls in progress at once
    metrics_path: str | None = DEFAULT_METRICS_PATH
    model_threads: int = dataclasses.field(default_factory=lambda: os.cpu_count() or 1)
    batching: BatchingOptions | None = None
    max_num_load_retries: int = LoadRetries.max_num_load_retries
    load_retry_interval_micros: int = LoadRetries.load_retry_interval_micros
    model_config_file: str | None = None  # re-read every `model_config_file_poll_wait_seconds` (0: never)
    model_config_file_poll_wait_seconds: float = 0.0
    enable_signature_method_name_check: bool = False  # Classify and Regress need a signature of their method

    def __post_init__(self) -> None:
        for name, port in (("gRPC", self.grpc_port), ("REST", self.rest_port)):
            if not 0 <= port <= MAX_PORT:
                raise ServingConfigError(f"The {name} port must be in 0-{MAX_PORT}. Received: `{port}`")
        if self.grpc_port == self.rest_port != 0:
            raise ServingConfigError(
                f"The gRPC and REST ports must differ. Received: `{self.grpc_port}` twice"
            )
        for name in (
            "max_request_bytes",
            "max_request_elements",
            "rest_timeout_ms",
            "idle_timeout_seconds",
            "max_connections",
            "model_threads",
        ):
            if getattr(self, name) <= 0:
                raise ServingConfigError(f"{name} must be positive. Received: `{getattr(self, name)}`")


class _LoopThread:
    """An event loop running in a thread of its own, for one frontend."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine) -> Any:
        """Runs `coroutine` in the loop and waits for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


class ModelServer:
    """Serves `sources` over gRPC and REST until `stop()`.

    Ports given as 0 are chosen by the OS; `grpc_port` and `rest_port` tell which after `start()`.
    """

    def __init__(self, sources: Iterable[ModelSource], options: ServerOptions = ServerOptions()) -> None:
        self.options = options
        retries = LoadRetries(options.max_num_load_retries, options.load_retry_interval_micros)
        self.manager = ModelManager(
            sources, warmup=options.warmup, batching=options.batching, retries=retries
        )
        self.metrics = ServingMetrics(self.manager.model_names)
        self.grpc_port = options.grpc_port
        self.rest_port = options.rest_port
        self._executor = FairExecutor(options.model_threads, ("rest", "grpc"))
        self._grpc: grpc.aio.Server | None = None
        self._loops: dict[str, _LoopThread] = {}
        self._runner: web.AppRunner | None = None
        self._rest_socket: socket.socket | None = None
        self._accepting: asyncio.Task | None = None
        self._stopped = threading.Event()

    def start(self) -> ModelServer:
        """Loads the models' current versions, then opens both ports (TF Serving's order)."""
        self.manager.refresh()
        try:
            self._loops["grpc"] = _LoopThread("grpc")
            self._loops["grpc"].run(self._start_grpc())
            self._loops["rest"] = _LoopThread("rest")
            self._loops["rest"].run(self._start_rest())
        except BaseException:
            self.stop()
            raise
        self.manager.start_polling(self.options.poll_seconds)
        if self.options.model_config_file and self.options.model_config_file_poll_wait_seconds > 0:
            threading.Thread(target=self._watch_config_file, name="config-poller", daemon=True).start()
        logging.info(
            "Serving %s: gRPC on %s:%d, REST on %s:%d",
            ", ".join(self.manager.model_names),
            self.options.host,
            self.grpc_port,
            self.options.host,
            self.rest_port,
        )
        return self

    async def _start_grpc(self) -> None:
        idle_ms = round(self.options.idle_timeout_seconds * 1000)
        self._grpc = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_BYTES),
                # gRPC shares ports by default on Linux: a second server would silently split the traffic.
                ("grpc.so_reuseport", 0),
                ("grpc.max_allowed_incoming_connections", self.options.max_connections),
                ("grpc.max_connection_idle_ms", idle_ms),
                ("grpc.server_handshake_timeout_ms", idle_ms),
                ("grpc.keepalive_time_ms", idle_ms),
                ("grpc.keepalive_timeout_ms", GRPC_KEEPALIVE_TIMEOUT_MS),
            ],
            maximum_concurrent_rpcs=self.options.max_connections,
        )
        lane = self._executor.lane("grpc")
        prediction = PredictionService(
            self.manager,
            self.metrics,
            lane,
            self.options.max_request_elements,
            self.options.enable_signature_method_name_check,
        )
        add_servicer(self._grpc, prediction, PREDICTION_SERVICE, lane)
        add_servicer(self._grpc, ModelService(self.manager, self.metrics), MODEL_SERVICE, lane)
        address = f"{self.options.host}:{self.options.grpc_port}"
        try:
            self.grpc_port = self._grpc.add_insecure_port(address)
        except RuntimeError:
            raise OSError(
                f"Cannot listen for gRPC on {address}: the port is in use or not allowed."
            ) from None
        await self._grpc.start()

    async def _start_rest(self) -> None:
        frontend = RestFrontend(
            self.manager,
            self.metrics,
            self._executor.lane("rest"),
            max_request_bytes=self.options.max_request_bytes,
            max_request_elements=self.options.max_request_elements,
            timeout_seconds=self.options.rest_timeout_ms / 1000,
            metrics_path=self.options.metrics_path,
            method_check=self.options.enable_signature_method_name_check,
        )
        # aiohttp closes a connection waiting this long for a request: idle, or still sending its headers.
        self._runner = web.AppRunner(
            frontend.application(),
            access_log=None,
            keepalive_timeout=self.options.idle_timeout_seconds,
            lingering_time=LINGER_SECONDS,
            shutdown_timeout=SHUTDOWN_GRACE_SECONDS,
        )
        await self._runner.setup()
        family = socket.AF_INET6 if ":" in self.options.host else socket.AF_INET
        address = (self.options.host, self.options.rest_port)
        try:
            self._rest_socket = socket.create_server(address, family=family)
        except OSError as error:
            raise OSError(f"Cannot listen for REST on {address[0]}:{address[1]}: {error.strerror}.") from None
        self._rest_socket.setblocking(False)
        self.rest_port = self._rest_socket.getsockname()[1]
        self._accepting = asyncio.get_running_loop().create_task(self._accept(self._rest_socket))

    async def _accept(self, listening: socket.socket) -> None:
        """Accepts REST connections while fewer than `max_connections` are open; out of file descriptors,
        waits ever longer (up to `ACCEPT_BACKOFF_SECONDS[1]`) before trying again."""
        loop = asyncio.get_running_loop()
        connections = self._runner.server  # aiohttp's protocol factory, which tracks open connections
        wait = ACCEPT_BACKOFF_SECONDS[0]
        while True:
            if len(connections.connections) >= self.options.max_connections:
                logging.log_every_n_seconds(
                    logging.WARNING,
                    "REST has %d connections open, its limit: new ones wait to be accepted.",
                    LIMIT_LOG_SECONDS,
                    self.options.max_connections,
                )
                await asyncio.sleep(ACCEPT_BACKOFF_SECONDS[0])
                continue
            try:
                connection, _ = await loop.sock_accept(listening)
            except OSError as error:
                if error.errno not in OUT_OF_DESCRIPTORS:
                    raise
                logging.log_every_n_seconds(
                    logging.WARNING,
                    "Cannot accept REST connections: %s. Retrying with back-off.",
                    LIMIT_LOG_SECONDS,
                    error.strerror,
                )
                await asyncio.sleep(wait)
                wait = min(wait * 2, ACCEPT_BACKOFF_SECONDS[1])
                continue
            wait = ACCEPT_BACKOFF_SECONDS[0]
            try:
                await loop.connect_accepted_socket(connections, connection)
            except OSError:  # the client went away meanwhile
                connection.close()

    async def _stop_accepting(self) -> None:
        if self._accepting is not None:
            self._accepting.cancel()
            await asyncio.gather(self._accepting, return_exceptions=True)
        if self._rest_socket is not None:
            self._rest_socket.close()

    def _watch_config_file(self) -> None:
        """Serves the models of `model_config_file` whenever its content changes, as TF Serving's
        `--model_config_file_poll_wait_seconds`; a config that cannot be used is logged and the served
        models stay."""
        path = Path(self.options.model_config_file)
        seen = _read_text(path)
        while not self._stopped.wait(self.options.model_config_file_poll_wait_seconds):
            text = _read_text(path)
            if text is None or text == seen:
                continue
            seen = text
            try:
                unavailable = self.manager.reload_config(read_model_config_file(path))
            except ServingConfigError as error:
                logging.error("Keeping the served models: %s", error)
                continue
            except Exception:
                logging.exception("Reloading %s failed", path)
                continue
            self.metrics.set_model_names(self.manager.model_names)
            logging.info("Serving %s from the changed %s", ", ".join(self.manager.model_names), path)
            if unavailable:
                logging.warning("Not available after the reload: %s", ", ".join(unavailable))

    def stop(self) -> None:
        """Stops polling, lets in-flight requests finish for up to `SHUTDOWN_GRACE_SECONDS`, closes the
        ports."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.manager.stop()
        if "rest" in self._loops:
            self._loops["rest"].run(self._stop_accepting())
            if self._runner is not None:
                self._loops["rest"].run(self._runner.cleanup())
        if "grpc" in self._loops and self._grpc is not None:
            self._loops["grpc"].run(self._grpc.stop(SHUTDOWN_GRACE_SECONDS))
        for loop in self._loops.values():
            loop.close()
        self._executor.close()
        self.manager.close()

    def __enter__(self) -> ModelServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError as error:
        logging.log_every_n_seconds(logging.WARNING, "Cannot read %s: %s", LIMIT_LOG_SECONDS, path, error)
        return None
