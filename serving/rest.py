"""The REST frontend: TF Serving's `/v1/models/...` URLs and JSON on an aiohttp server.

URL matching follows model_servers/http_rest_api_handler.cc: case-insensitive, name and label URL-decoded, a
version or a label but not both. Requests are handled in the event loop; batched model calls run in batch
threads, and large requests (their parsing, model call and formatting) in a thread pool, so the loop keeps
answering meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from typing import Any, TypeVar
from urllib.parse import unquote

import grpc
import numpy as np
from absl import logging
from aiohttp import web

from serving import rest_json
from serving.errors import ServingError, invalid_argument
from serving.manager import ModelManager
from serving.metrics import ServingMetrics
from serving.responses import metadata_json, metadata_response, status_response, to_json_dict
from serving.servable import PREDICT_METHOD, Servable

_VERSION_OR_LABEL = r"(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?"
PREDICT_URL = re.compile(rf"/v1/models/([^/:]+){_VERSION_OR_LABEL}:(classify|regress|predict)", re.I)
STATUS_URL = re.compile(rf"/v1/models(?:/([^/:]+))?{_VERSION_OR_LABEL}(?:/(metadata))?", re.I)
JSON = "application/json"
INLINE_BODY_BYTES = 64 * 1024
_T = TypeVar("_T")


def _error_response(error: ServingError) -> web.Response:
    return web.Response(
        status=error.http_status, text=json.dumps({"error": error.message}), content_type=JSON
    )


class RestFrontend:
    """Builds the aiohttp application answering TF Serving's REST API.

    Args:
        manager: the served models.
        metrics: where request counts and latencies go.
        executor: runs large unbatched model calls, and the parsing and formatting of large bodies.
        max_request_bytes: bodies larger than this (after gzip decoding) get a 413.
        timeout_seconds: a request running longer gets a 504, as `--rest_api_timeout_in_ms`.
        metrics_path: the Prometheus path, or None to serve no metrics.
    """

    def __init__(
        self,
        manager: ModelManager,
        metrics: ServingMetrics,
        executor: Executor,
        max_request_bytes: int,
        timeout_seconds: float,
        metrics_path: str | None,
    ) -> None:
        self.manager = manager
        self.metrics = metrics
        self.executor = executor
        self.max_request_bytes = max_request_bytes
        self.timeout_seconds = timeout_seconds
        self.metrics_path = metrics_path

    def application(self) -> web.Application:
        # The body limit is enforced in `_body`, which answers in TF Serving's JSON error form.
        app = web.Application(client_max_size=self.max_request_bytes + 1)
        app.router.add_route("*", "/{path:.*}", self._handle)
        return app

    async def _handle(self, request: web.Request) -> web.Response:
        path = request.raw_path.split("?", 1)[0]
        try:
            if self.metrics_path and path == self.metrics_path and request.method == "GET":
                return web.Response(body=self.metrics.exposition(), content_type="text/plain")
            if request.method == "POST" and (match := PREDICT_URL.fullmatch(path)):
                body = await self._body(request)
                return await self._run(self._predict(match, body))
            if request.method == "GET" and (match := STATUS_URL.fullmatch(path)):
                return await self._run(self._status_or_metadata(match))
            if not path.lower().startswith("/v1/"):
                raise ServingError(grpc.StatusCode.NOT_FOUND, f"Not found: {request.method} {path}")
            raise invalid_argument(f"Malformed request: {request.method} {path}")
        except ServingError as error:
            return _error_response(error)

    async def _body(self, request: web.Request) -> bytes:
        """The request body; aiohttp decodes `Content-Encoding: gzip`, and the limit counts decoded bytes."""
        if request.content_length is not None and request.content_length > self.max_request_bytes:
            raise _payload_too_large(self.max_request_bytes)
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise _payload_too_large(self.max_request_bytes) from None
        return body

    async def _run(self, answer: Awaitable[tuple[int, str]]) -> web.Response:
        try:
            async with asyncio.timeout(self.timeout_seconds):  # unlike wait_for, no task per request
                status, text = await answer
        except TimeoutError:
            raise ServingError(grpc.StatusCode.DEADLINE_EXCEEDED, "Request timed out.") from None
        except ServingError:
            raise
        except Exception as error:  # a bug must cost one request, never the server
            logging.exception("REST request failed")
            raise ServingError(grpc.StatusCode.INTERNAL, f"Internal error: {error}") from None
        return web.Response(status=status, text=text, content_type=JSON)

    async def _off_loop_if_large(self, body_bytes: int, fn: Callable[..., _T], *args: Any) -> _T:
        """`fn(*args)` in the event loop for a small request; in a thread for a large one, whose JSON
        would hold up every other request meanwhile."""
        if body_bytes <= INLINE_BODY_BYTES:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def _predict(self, match: re.Match, body: bytes) -> tuple[int, str]:
        name, version, label, verb = match.groups()
        name = unquote(name)
        with self.metrics.observe(name, verb.lower(), "REST"):
            servable, signature_name, inputs, row_format = await self._off_loop_if_large(
                len(body), self._parse_predict, name, version, label, verb, body
            )
            outputs = await servable.run_async(signature_name, inputs, (), self.executor)
            text = await self._off_loop_if_large(len(body), rest_json.format_response, outputs, row_format)
            return 200, text

    def _parse_predict(
        self, name: str, version: str | None, label: str | None, verb: str, body: bytes
    ) -> tuple[Servable, str, dict[str, np.ndarray], bool]:
        signature_name, payload, row_format = rest_json.parse_predict_request(rest_json.parse_body(body))
        servable = self.manager.servable(name, int(version) if version else None, _label(label))
        signature = servable.signature_def(signature_name)
        if signature is None:
            raise invalid_argument(
                f'Serving signature name: "{signature_name or "serving_default"}" not found in signature def'
            )
        if verb.lower() != "predict" or signature.method_name != PREDICT_METHOD:
            raise invalid_argument(
                f"Expected {verb.lower()} signature method_name to be "
                f"tensorflow/serving/{verb.lower()}. Was: {signature.method_name}"
            )
        return (
            servable,
            signature_name,
            rest_json.tensors_from_json(payload, row_format, servable.input_dtypes(signature_name)),
            row_format,
        )

    async def _status_or_metadata(self, match: re.Match) -> tuple[int, str]:
        name, version, label, metadata = match.groups()
        if not name:
            raise invalid_argument("Missing model name in request.")
        name, version = unquote(name), int(version) if version else None
        if metadata:
            servable = self.manager.servable(name, version, _label(label))
            return 200, json.dumps(metadata_json(metadata_response(servable)))
        statuses = self.manager.statuses(name, version, _label(label))
        return 200, json.dumps(to_json_dict(status_response(statuses)))


def _label(label: str | None) -> str | None:
    return unquote(label) if label else None


def _payload_too_large(limit: int) -> ServingError:
    """413, which TF Serving's code table lacks: the client sent too much, the server is fine."""
    message = f"Request body exceeds the limit of {limit} bytes."
    return ServingError(grpc.StatusCode.RESOURCE_EXHAUSTED, message, http_status=413)
