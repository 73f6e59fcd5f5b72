"""Errors of serving: what the server answers a request with (a gRPC status code and TF Serving's message),
and the mistakes of whoever configures the server or feeds the client, which are theirs to fix."""

from __future__ import annotations

import grpc

# TF Serving's REST status for each canonical code (model_servers/http_rest_api_util.cc).
HTTP_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.DATA_LOSS: 500,
}


MAX_MESSAGE_CHARS = 1024  # TF Serving truncates longer error messages
MAX_SHOWN_CHARS = 100  # of a client's value quoted in a message


def shown(text: str, limit: int = MAX_SHOWN_CHARS) -> str:
    """`text` as a message quotes it: whole when short, else its start and how long it was (a client that
    sends 10 MB must not get them back)."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}...({len(text)} characters)"


class ServingError(Exception):
    """A request failed with `code` (a `grpc.StatusCode`) and a message worded as TF Serving words it,
    truncated to `MAX_MESSAGE_CHARS`."""

    def __init__(self, code: grpc.StatusCode, message: str, http_status: int | None = None) -> None:
        message = message[:MAX_MESSAGE_CHARS]
        super().__init__(message)
        self.code = code
        self.message = message
        self.http_status = http_status or HTTP_STATUS[code]


def invalid_argument(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


def not_found(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.NOT_FOUND, message)


def too_large(message: str) -> ServingError:
    """RESOURCE_EXHAUSTED, as gRPC answers an oversize message; over REST a 413 (TF Serving's table would
    say 429, which tells a client to retry later, when it must send less instead)."""
    return ServingError(grpc.StatusCode.RESOURCE_EXHAUSTED, message, http_status=413)


class ServingConfigError(ValueError):
    """A server configuration (model config file, batching parameters, model sources) that cannot be used."""
