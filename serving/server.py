"""The embedded model server: gRPC and REST frontends over one model manager, in one process.

It answers like `tensorflow_model_server` (see ../shared/reference/tf-serving-api.md), so the same clients and
tests run against it and against the `tensorflow/serving` container.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Coroutine, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from absl import logging
from aiohttp import web
from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

from serving.config import DEFAULT_METRICS_PATH, BatchingOptions, ModelSource
from serving.grpc_service import ModelService, PredictionService
from serving.layout import MAX_GRPC_MESSAGE_BYTES
from serving.manager import ModelManager
from serving.metrics import ServingMetrics
from serving.rest import RestFrontend


@dataclasses.dataclass(frozen=True)
class ServerOptions:
    """How the server listens and behaves; the names follow `tensorflow_model_server`'s flags."""

    host: str = "127.0.0.1"
    grpc_port: int = 8500
    rest_port: int = 8501
    poll_seconds: float = 1.0
    warmup: bool = True
    max_request_bytes: int = 64 * 2**20
    rest_timeout_ms: int = 30_000
    metrics_path: str | None = DEFAULT_METRICS_PATH
    worker_threads: int = 16  # large unbatched model calls and large REST bodies run in these
    batching: BatchingOptions | None = None


class ModelServer:
    """Serves `sources` over gRPC and REST until `stop()`.

    Ports given as 0 are chosen by the OS; `grpc_port` and `rest_port` tell which after `start()`.
    """

    def __init__(self, sources: Iterable[ModelSource], options: ServerOptions = ServerOptions()) -> None:
        self.options = options
        self.manager = ModelManager(sources, warmup=options.warmup, batching=options.batching)
        self.metrics = ServingMetrics()
        self.grpc_port = options.grpc_port
        self.rest_port = options.rest_port
        self._executor = ThreadPoolExecutor(options.worker_threads, thread_name_prefix="model")
        self._grpc: grpc.aio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._stopped = threading.Event()

    def start(self) -> ModelServer:
        """Loads the models' current versions, then opens both ports (TF Serving's order)."""
        self.manager.refresh()
        self._loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(target=self._loop.run_forever, name="frontends", daemon=True)
        self._loop_thread.start()
        try:
            self._in_loop(self._start_grpc())
            self._in_loop(self._start_rest())
        except BaseException:
            self.stop()
            raise
        self.manager.start_polling(self.options.poll_seconds)
        logging.info(
            "Serving %s: gRPC on %s:%d, REST on %s:%d",
            ", ".join(self.manager.model_names),
            self.options.host,
            self.grpc_port,
            self.options.host,
            self.rest_port,
        )
        return self

    def _in_loop(self, coroutine: Coroutine) -> Any:
        """Runs `coroutine` in the frontends' event loop and waits for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    async def _start_grpc(self) -> None:
        self._grpc = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_BYTES),
                # gRPC shares ports by default on Linux: a second server would silently split the traffic.
                ("grpc.so_reuseport", 0),
            ],
        )
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            PredictionService(self.manager, self.metrics, self._executor), self._grpc
        )
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(self.manager), self._grpc)
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
            self._executor,
            max_request_bytes=self.options.max_request_bytes,
            timeout_seconds=self.options.rest_timeout_ms / 1000,
            metrics_path=self.options.metrics_path,
        )
        self._runner = web.AppRunner(frontend.application(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.options.host, self.options.rest_port, reuse_address=True)
        await site.start()
        self.rest_port = self._runner.addresses[0][1]

    def stop(self, grace_seconds: float = 1.0) -> None:
        """Stops polling, lets in-flight requests finish for up to `grace_seconds`, closes the ports."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.manager.stop()
        if self._loop is not None:
            if self._grpc is not None:
                self._in_loop(self._grpc.stop(grace_seconds))
            if self._runner is not None:
                self._in_loop(self._runner.cleanup())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._loop_thread.join()
            self._loop.close()
        self._executor.shutdown(wait=True)
        self.manager.close()

    def wait(self) -> None:
        """Blocks until `stop()` is called (from a signal handler, say)."""
        self._stopped.wait()

    def __enter__(self) -> ModelServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
