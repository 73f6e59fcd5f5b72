"""The REST frontend: TF Serving's `/v1/models/...` URLs and JSON on an aiohttp server.

URL matching follows model_servers/http_rest_api_handler.cc: case-insensitive, name and label URL-decoded, a
version or a label but not both. Model work runs in a thread pool so the event loop keeps accepting requests.
"""

from __future__ import annotations

import asyncio
import json
import re
from concurrent.futures import Executor
from urllib.parse import unquote

import grpc
from absl import logging
from aiohttp import web

from serving import rest_json
from serving.errors import ServingError, invalid_argument
from serving.manager import ModelManager
from serving.metrics import ServingMetrics
from serving.responses import metadata_json, metadata_response, status_response, to_json_dict
from serving.servable import PREDICT_METHOD

_VERSION_OR_LABEL = r"(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?"
PREDICT_URL = re.compile(rf"/v1/models/([^/:]+){_VERSION_OR_LABEL}:(classify|regress|predict)", re.I)
STATUS_URL = re.compile(rf"/v1/models(?:/([^/:]+))?{_VERSION_OR_LABEL}(?:/(metadata))?", re.I)
JSON = "application/json"


def _error_response(error: ServingError) -> web.Response:
    return web.Response(
        status=error.http_status, text=json.dumps({"error": error.message}), content_type=JSON
    )


class RestFrontend:
    """Builds the aiohttp application answering TF Serving's REST API.

    Args:
        manager: the served models.
        metrics: where request counts and latencies go.
        executor: runs parsing, model calls and formatting off the event loop.
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
                return await self._run(self._predict, match, body)
            if request.method == "GET" and (match := STATUS_URL.fullmatch(path)):
                return await self._run(self._status_or_metadata, match)
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

    async def _run(self, handler, *args) -> web.Response:
        loop = asyncio.get_running_loop()
        try:
            status, text = await asyncio.wait_for(
                loop.run_in_executor(self.executor, handler, *args), self.timeout_seconds
            )
        except TimeoutError:
            raise ServingError(grpc.StatusCode.DEADLINE_EXCEEDED, "Request timed out.") from None
        except ServingError:
            raise
        except Exception as error:  # a bug must cost one request, never the server
            logging.exception("REST request failed")
            raise ServingError(grpc.StatusCode.INTERNAL, f"Internal error: {error}") from None
        return web.Response(status=status, text=text, content_type=JSON)

    def _predict(self, match: re.Match, body: bytes) -> tuple[int, str]:
        name, version, label, verb = match.groups()
        name = unquote(name)
        with self.metrics.observe(name, verb.lower(), "REST"):
            signature_name, payload, row_format = rest_json.parse_predict_request(rest_json.parse_body(body))
            servable = self.manager.servable(name, int(version) if version else None, _label(label))
            signature = servable.signature_def(signature_name)
            if signature is None:
                raise invalid_argument(
                    f'Serving signature name: "{signature_name or "serving_default"}" not found in '
                    "signature def"
                )
            if verb.lower() != "predict" or signature.method_name != PREDICT_METHOD:
                raise invalid_argument(
                    f"Expected {verb.lower()} signature method_name to be "
                    f"tensorflow/serving/{verb.lower()}. Was: {signature.method_name}"
                )
            inputs = rest_json.tensors_from_json(payload, row_format, signature)
            outputs = servable.run(signature_name, inputs)
            return 200, rest_json.format_response(outputs, row_format)

    def _status_or_metadata(self, match: re.Match) -> tuple[int, str]:
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
