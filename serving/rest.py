"""The REST frontend: TF Serving's `/v1/models/...` URLs and JSON on an aiohttp server.

URL matching follows model_servers/http_rest_api_handler.cc: case-insensitive, name and label URL-decoded, a
version or a label but not both. Requests are handled in the event loop; model calls run in batch threads or
in the REST lane of the model threads, as do the parsing and formatting of large bodies, so the loop keeps
answering meanwhile. A body must arrive within the request timeout (else 408), decode under its
`Content-Encoding` and stay within the size and `serving.limits` bounds; every refusal is TF Serving's JSON
error body.
"""

from __future__ import annotations

import asyncio
import json
import re
import zlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import unquote

import grpc
import numpy as np
from absl import logging
from aiohttp import web
from tensorflow_serving.apis import input_pb2

from serving import inference, inference_calls, rest_json
from serving.errors import ServingError, invalid_argument, shown, too_large
from serving.fair_executor import INLINE_BYTES, Lane
from serving.layout import MAX_VERSION
from serving.manager import ModelManager
from serving.metrics import ServingMetrics
from serving.responses import metadata_json, metadata_response, status_response, to_json_dict
from serving.servable import PREDICT_METHOD, Servable

_VERSION_OR_LABEL = r"(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?"
PREDICT_URL = re.compile(rf"/v1/models/([^/:]+){_VERSION_OR_LABEL}:(classify|regress|predict)", re.I)
STATUS_URL = re.compile(rf"/v1/models(?:/([^/:]+))?{_VERSION_OR_LABEL}(?:/(metadata))?", re.I)
JSON = "application/json"
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
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
        lane: the REST lane of the model threads: unbatched model calls, and the parsing and formatting of
            large bodies.
        max_request_bytes: bodies larger than this (after decoding their `Content-Encoding`) get a 413.
        max_request_elements: bodies that can hold more values than this get a 413.
        timeout_seconds: a body arriving slower gets a 408, a request running longer a 504, as
            `--rest_api_timeout_in_ms`.
        metrics_path: the Prometheus path, or None to serve no metrics.
        method_check: `:classify` and `:regress` need a signature of their method, as with TF Serving's
            `--enable_signature_method_name_check`.
    """

    def __init__(
        self,
        manager: ModelManager,
        metrics: ServingMetrics,
        lane: Lane,
        max_request_bytes: int,
        max_request_elements: int,
        timeout_seconds: float,
        metrics_path: str | None,
        method_check: bool = False,
    ) -> None:
        self.manager = manager
        self.metrics = metrics
        self.lane = lane
        self.max_request_bytes = max_request_bytes
        self.max_request_elements = max_request_elements
        self.timeout_seconds = timeout_seconds
        self.metrics_path = metrics_path
        self.method_check = method_check

    def application(self) -> web.Application:
        # The body limit is enforced in `_body`, which answers in TF Serving's JSON error form.
        app = web.Application(
            client_max_size=self.max_request_bytes + 1, handler_args={"auto_decompress": False}
        )
        app.router.add_route("*", "/{path:.*}", self._handle)
        return app

    async def _handle(self, request: web.Request) -> web.Response:
        path = request.raw_path.split("?", 1)[0]
        try:
            if self.metrics_path and path == self.metrics_path and request.method == "GET":
                return web.Response(body=self.metrics.exposition(), content_type="text/plain")
            if request.method == "POST" and (match := PREDICT_URL.fullmatch(path)):
                version = _version(match.group(2))
                try:
                    body = await self._body(request)
                except ServingError as error:  # the rest of the body is unread: close the connection
                    response = _error_response(error)
                    response.force_close()
                    return response
                if match.group(4).lower() == "predict":
                    return await self._run(self._predict(match, version, body))
                return await self._run(self._infer(match, version, body))
            if request.method == "GET" and (match := STATUS_URL.fullmatch(path)):
                return await self._run(self._status_or_metadata(match))
            if not path.lower().startswith("/v1/"):
                raise ServingError(grpc.StatusCode.NOT_FOUND, f"Not found: {request.method} {shown(path)}")
            raise invalid_argument(f"Malformed request: {request.method} {shown(path)}")
        except ServingError as error:
            return _error_response(error)

    async def _body(self, request: web.Request) -> bytes:
        """The request body, decoded from its `Content-Encoding`; the size limit holds before and after."""
        if request.content_length is not None and request.content_length > self.max_request_bytes:
            raise _payload_too_large(self.max_request_bytes)
        try:
            async with asyncio.timeout(self.timeout_seconds):
                body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise _payload_too_large(self.max_request_bytes) from None
        except TimeoutError:
            raise ServingError(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"The request body did not arrive within {self.timeout_seconds:g} s.",
                http_status=408,
            ) from None
        except web.RequestPayloadError as error:
            raise invalid_argument(f"Failed to read the request body: {shown(str(error), 300)}") from None
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding == "identity":
            return body
        return await self._off_loop_if_large(len(body), _decoded, body, encoding, self.max_request_bytes)

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
        """`fn(*args)` in the event loop for a small request; in the REST lane for a large one, whose JSON
        would hold up every other request meanwhile."""
        if body_bytes <= INLINE_BYTES:
            return fn(*args)
        return await self.lane.run(fn, *args)

    async def _predict(self, match: re.Match, version: int | None, body: bytes) -> tuple[int, str]:
        name, _, label, verb = match.groups()
        name = unquote(name)
        with self.metrics.observe(name, verb.lower(), "REST"):
            servable, signature_name, inputs, row_format = await self._off_loop_if_large(
                len(body), self._parse_predict, name, version, label, body
            )
            outputs = await servable.run_async(signature_name, inputs, (), self.lane)
            text = await self._off_loop_if_large(len(body), rest_json.format_response, outputs, row_format)
            return 200, text

    async def _infer(self, match: re.Match, version: int | None, body: bytes) -> tuple[int, str]:
        """`:classify` or `:regress`: the body's examples through the signature, answered as TF Serving's
        `{"results": [...]}`."""
        name, _, label, verb = match.groups()
        name, verb = unquote(name), verb.lower()
        with self.metrics.observe(name, verb, "REST"):
            signature_name, input_proto = await self._off_loop_if_large(len(body), self._parse_examples, body)
            servable = self.manager.servable(name, version, _label(label))
            classify = verb == "classify"
            method = inference.CLASSIFY_METHOD if classify else inference.REGRESS_METHOD
            response = await inference_calls.run(
                method,
                servable,
                signature_name,
                input_proto,
                self.lane,
                self.max_request_elements,
                self.method_check,
            )
            if classify:
                return 200, inference.classification_json(response.result)
            return 200, inference.regression_json(response.result)

    def _parse_examples(self, body: bytes) -> tuple[str, input_pb2.Input]:
        document = rest_json.parse_body(body, self.max_request_elements)
        signature_name = document.get("signature_name", "") if isinstance(document, dict) else ""
        if not isinstance(signature_name, str):
            raise invalid_argument("'signature_name' key must be a string value.")
        return signature_name, inference.input_from_json(document)

    def _parse_predict(
        self, name: str, version: int | None, label: str | None, body: bytes
    ) -> tuple[Servable, str, dict[str, np.ndarray], bool]:
        document = rest_json.parse_body(body, self.max_request_elements)
        signature_name, payload, row_format = rest_json.parse_predict_request(document)
        servable = self.manager.servable(name, version, _label(label))
        signature = servable.signature_def(signature_name)
        if signature is None:
            raise invalid_argument(
                f'Serving signature name: "{shown(signature_name or "serving_default")}" '
                "not found in signature def"
            )
        if signature.method_name != PREDICT_METHOD:
            raise invalid_argument(
                f"Expected prediction signature method_name to be {PREDICT_METHOD}. "
                f"Was: {signature.method_name}"
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
        name = unquote(name)
        if metadata:
            servable = self.manager.servable(name, _version(version), _label(label))
            return 200, json.dumps(metadata_json(metadata_response(servable)))
        statuses = self.manager.statuses(name, _version(version), _label(label))
        return 200, json.dumps(to_json_dict(status_response(statuses)))


def _version(digits: str | None) -> int | None:
    """The URL's version, an int64 as TF Serving's `absl::SimpleAtoi` reads it."""
    if digits is None:
        return None
    significant = digits.lstrip("0") or "0"
    if len(significant) > len(str(MAX_VERSION)) or int(significant) > MAX_VERSION:
        raise invalid_argument(f"Failed to convert version: {shown(digits)} to numeric.")
    return int(significant)


def _decoded(body: bytes, encoding: str, limit: int) -> bytes:
    """`body` decoded from gzip or deflate (zlib), at most `limit` bytes of it: aiohttp's own decoding
    answered a bad stream with a plain-text 400 (or a 500) and a logged traceback."""
    if encoding not in _WBITS:
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"Unsupported Content-Encoding: {shown(encoding)} (the server decodes gzip and deflate).",
            http_status=415,
        )
    decoder = zlib.decompressobj(_WBITS[encoding])
    try:
        decoded = decoder.decompress(body, limit + 1)
    except zlib.error as error:
        raise invalid_argument(f"The request body is not valid {encoding}: {error}") from None
    if len(decoded) > limit:
        raise _payload_too_large(limit)
    if not decoder.eof or decoder.unused_data:
        raise invalid_argument(
            f"The request body is not valid {encoding}: it ends early or has trailing bytes."
        )
    return decoded


def _label(label: str | None) -> str | None:
    return unquote(label) if label else None


def _payload_too_large(limit: int) -> ServingError:
    return too_large(f"Request body exceeds the limit of {limit} bytes.")
