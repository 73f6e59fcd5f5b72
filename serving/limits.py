"""What one request may make the server allocate, checked before it allocates.

A JSON body is scanned before it is parsed (nesting depth, number literal length, how many values it can
hold), a gRPC tensor's shape before its values are read: a 34-byte PredictRequest can declare a
[1048576, 100] tensor with no values, which TensorFlow would fill with 100 million zeros.
"""

from __future__ import annotations

from serving.errors import too_large

MAX_JSON_DEPTH = 64  # numpy arrays have at most 64 dimensions
MAX_NUMBER_CHARS = 100  # a float64 needs 24 characters; an int64, 20
DEFAULT_MAX_REQUEST_ELEMENTS = 2**24


def check_elements(count: int, limit: int) -> None:
    """Refuses a request whose tensors would hold more than `limit` values in all."""
    if count > limit:
        raise too_large(f"The request holds up to {count} tensor elements, more than the limit of {limit}.")
