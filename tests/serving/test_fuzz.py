"""Generated malformed requests against `mtl serve` in its own process, over real sockets.

Thousands of REST bodies and URLs (wrong types, shapes, nesting, huge numbers, invalid UTF-8 and
encodings, oversize and undersized payloads) and gRPC requests (wrong dtypes, shapes, values, bytes that
are no request): never a 5xx, never INTERNAL or UNKNOWN, every answer small, the server's memory bounded,
and correct predictions afterwards. Seeded, so every run sends the same requests; `-m slow` runs ten times
as many.
"""

from __future__ import annotations

import gzip
import http.client
import json
import random
import re
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from urllib.parse import quote

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from serving.errors import MAX_MESSAGE_CHARS
from tests.cli.commands import _env

SEED = 20240611
MAX_REQUEST_BYTES = 300_000
MAX_REQUEST_ELEMENTS = 20_000
MAX_ERROR_BODY_BYTES = MAX_MESSAGE_CHARS + 64
MAX_ANSWER_BYTES = 64 * 1024  # 200 rows of two outputs, the most the element limit lets through
MAX_RSS_GROWTH_MIB = 300
REFUSALS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNIMPLEMENTED,
}
ROWS = np.random.default_rng(SEED).normal(size=(3, 100)).astype(np.float32)


@pytest.fixture(scope="module")
def served(models_config):
    """`mtl serve` of the suite's models with small limits, in a process of its own: (process, REST port,
    gRPC port)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "mtl", "serve", f"--model_config_file={models_config}",
         "--port=0", "--rest_api_port=0", "--file_system_poll_wait_seconds=0",
         f"--max_request_bytes={MAX_REQUEST_BYTES}", f"--max_request_elements={MAX_REQUEST_ELEMENTS}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=_env(),
    )  # fmt: skip
    line = process.stdout.readline()
    match = re.search(r"127\.0\.0\.1:(\d+), gRPC 127\.0\.0\.1:(\d+)", line)
    assert match, line
    yield process, int(match.group(1)), int(match.group(2))
    process.terminate()
    process.wait(timeout=30)


def _memory_mib(pid: int) -> dict[str, float]:
    status = open(f"/proc/{pid}/status").read()
    return {key: int(re.search(rf"{key}:\s+(\d+) kB", status).group(1)) / 1024 for key in ("VmRSS", "VmHWM")}


# -- REST -----------------------------------------------------------------------------------------


def _json_value(rng: random.Random, depth: int = 0) -> object:
    """A random JSON value: numbers of every kind, strings, nulls, booleans, lists and objects."""
    kind = rng.randrange(9 if depth < 6 else 5)
    if kind == 0:
        return rng.uniform(-1e6, 1e6)
    if kind == 1:
        return rng.choice([0, -1, 2**31, 2**63, -(2**64), 10**30, 1e308, -0.0, float("nan"), float("inf")])
    if kind == 2:
        return "".join(rng.choice('ab\u00e9\u4e2d\U0001f600"\\\n') for _ in range(rng.randrange(6)))
    if kind == 3:
        return rng.choice([None, True, False])
    if kind == 4:
        return {"b64": rng.choice(["aGk=", "!!", "", "a" * 7])}
    if kind in (5, 6):
        return [_json_value(rng, depth + 1) for _ in range(rng.randrange(5))]
    if kind == 7:
        return [
            [rng.random() for _ in range(rng.choice([0, 1, 99, 100, 101]))] for _ in range(rng.randrange(4))
        ]
    return {
        rng.choice(["inputs", "instances", "x", ""]): _json_value(rng, depth + 1)
        for _ in range(rng.randrange(3))
    }


def _rest_body(rng: random.Random) -> tuple[bytes, dict[str, str]]:
    """A body that is wrong in one of many ways (now and then a right one), and its extra headers."""
    valid = {"instances": [[rng.random() for _ in range(100)] for _ in range(rng.randrange(1, 4))]}
    kind = rng.randrange(16)
    if kind == 0:
        body = json.dumps(valid).encode()
    elif kind == 1:
        body = json.dumps({rng.choice(["instances", "inputs"]): _json_value(rng)}).encode()
    elif kind == 2:
        body = json.dumps(_json_value(rng)).encode()
    elif kind == 3:  # nested deeper and deeper
        depth = rng.randrange(1, 400)
        body = b'{"instances": ' + b"[" * depth + b"0.5" + b"]" * depth + b"}"
    elif kind == 4:  # numbers far too long, or too large for any type
        number = rng.choice(
            [b"9" * rng.randrange(50, 6000), b"1e" + b"9" * rng.randrange(1, 400), b"-0." + b"0" * 200]
        )
        body = b'{"instances": [[' + number + b"]]}"
    elif kind == 5:  # invalid UTF-8 and lone surrogates
        body = rng.choice(
            [b"\xff\xfe", b'{"instances": [["\xc3\x28"]]}', b'{"instances": [["\\ud800"]]}',
             b'{"signature_name": "\\udfff", "instances": [[1]]}', b'{"x": "\xed\xa0\x80"}']
        )  # fmt: skip
    elif kind == 6:  # cut short
        text = json.dumps(valid).encode()
        body = text[: rng.randrange(len(text))]
    elif kind == 7:  # random bytes
        body = rng.randbytes(rng.randrange(200))
    elif kind == 8:  # oversize, or as many values as the element limit allows and more
        body = rng.choice(
            [b" " * (MAX_REQUEST_BYTES + 1), b'{"inputs": [' + b"0," * MAX_REQUEST_ELEMENTS + b"0]}"]
        )
    elif kind == 9:  # compressed right, compressed wrong, or claimed and not compressed
        plain = json.dumps(valid).encode()
        encoding = rng.choice(["gzip", "deflate"])
        packed = gzip.compress(plain) if encoding == "gzip" else zlib.compress(plain)
        body = rng.choice([packed, packed[: len(packed) // 2], plain, rng.randbytes(50)])
        return body, {"Content-Encoding": encoding}
    elif kind == 10:  # a compressed bomb: small on the wire, over the limit once decoded
        return gzip.compress(b" " * (MAX_REQUEST_BYTES * 4)), {"Content-Encoding": "gzip"}
    elif kind == 11:  # wrong shapes: ragged rows, rows of the wrong width, no rows
        rows = [[0.5] * rng.choice([0, 1, 99, 101]) for _ in range(rng.randrange(3))] + [[0.5] * 100]
        body = json.dumps({"instances": rng.sample(rows, len(rows))}).encode()
    elif kind == 12:  # signature names and keys of every kind
        body = json.dumps({"signature_name": rng.choice(["", "gates", "nope", "x" * 10_000, 3, None]),
                           "instances": valid["instances"]}).encode()  # fmt: skip
    elif kind == 13:  # row format with named inputs, right and wrong
        body = json.dumps({"instances": [{"inputs": [0.5] * 100, **rng.choice([{}, {"extra": 1}])}]}).encode()
    elif kind == 14:  # columnar
        body = json.dumps(
            {"inputs": rng.choice([{"inputs": valid["instances"]}, {"x": 1}, valid["instances"]])}
        ).encode()
    else:  # an unsupported encoding, or one aiohttp cannot decode here
        return json.dumps(valid).encode(), {
            "Content-Encoding": rng.choice(["br", "zstd", "foo", "gzip, deflate"])
        }
    return body, {}


def _rest_target(rng: random.Random) -> tuple[str, str]:
    """A method and a URL path: mostly predict URLs of served and unknown models, versions and labels."""
    name = rng.choice(
        ["mmoe", "single", "MMOE", "nope", quote("\u00e9\U0001f600"), "%ff%fe", "a" * 3000, "%"]
    )
    version = rng.choice(
        ["", "/versions/1", "/versions/2", "/versions/0", "/versions/" + "9" * rng.randrange(1, 5000),
         "/labels/stable", "/labels/" + quote("\u00e9"), "/labels/%", "/versions/1/labels/stable"]
    )  # fmt: skip
    verb = rng.choice([":predict", ":predict", ":classify", ":regress", ":nope", "", "/metadata"])
    path = rng.choice(
        [f"/v1/models/{name}{version}{verb}", "/v1/models", "/v1/", "/", "/v2/x", "/v1/models//:predict"]
    )
    method = rng.choice(["POST", "POST", "POST", "GET", "PUT", "DELETE"])
    return method, path


def _rest_requests(rng: random.Random, count: int) -> Iterator[tuple[str, str, bytes, dict[str, str]]]:
    """Requests to served models' predict URLs (a fifth of them with a right body), and to random URLs."""
    for _ in range(count):
        body, headers = _rest_body(rng)
        draw = rng.random()
        if draw < 0.4:
            method, path = (
                "POST",
                rng.choice(["/v1/models/mmoe:predict", "/v1/models/single/versions/1:predict"]),
            )
            if draw < 0.1:
                body, headers = json.dumps({"instances": ROWS[: rng.randrange(1, 4)].tolist()}).encode(), {}
        else:
            method, path = _rest_target(rng)
        yield method, path, body, headers


class _Rest:
    """One keep-alive connection, reopened whenever the server closes it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def send(self, method: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict, bytes]:
        for attempt in range(2):
            try:
                self.connection.request(method, path, body=body, headers=headers)
                response = self.connection.getresponse()
                return response.status, dict(response.getheaders()), response.read()
            except (ConnectionError, http.client.HTTPException):
                self.connection.close()
                self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                if attempt:
                    raise
        raise AssertionError("unreachable")


# -- gRPC -----------------------------------------------------------------------------------------

DTYPES = [
    types_pb2.DT_FLOAT, types_pb2.DT_DOUBLE, types_pb2.DT_INT32, types_pb2.DT_INT64, types_pb2.DT_UINT8,
    types_pb2.DT_STRING, types_pb2.DT_BOOL, types_pb2.DT_HALF, types_pb2.DT_RESOURCE, types_pb2.DT_VARIANT,
    types_pb2.DT_FLOAT_REF, types_pb2.DT_INVALID, 999,
]  # fmt: skip


def _tensor(rng: random.Random, tensor) -> None:
    tensor.dtype = rng.choice(DTYPES) if rng.random() < 0.5 else types_pb2.DT_FLOAT
    rank = rng.choice([0, 1, 2, 2, 2, 3, 70])
    for _ in range(rank):
        tensor.tensor_shape.dim.add(size=rng.choice([0, 1, 3, 100, 100, 101, -1, 2**31, 2**62, 2**63 - 1]))
    if rng.random() < 0.1:
        tensor.tensor_shape.unknown_rank = True
    filler = rng.randrange(6)
    if filler == 0:
        tensor.float_val.extend(rng.random() for _ in range(rng.choice([0, 1, 100, 300])))
    elif filler == 1:
        tensor.int_val.extend(rng.choice([0, 255, 256, -1, 2**31 - 1]) for _ in range(rng.randrange(200)))
    elif filler == 2:
        tensor.tensor_content = rng.randbytes(rng.choice([0, 3, 400, 1200, 4000]))
    elif filler == 3:
        tensor.string_val.extend(rng.randbytes(rng.randrange(20)) for _ in range(rng.randrange(5)))
    elif filler == 4:
        tensor.int64_val.extend(rng.randrange(-(2**63), 2**63) for _ in range(rng.randrange(10)))


def _predict_request(rng: random.Random) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    if rng.random() < 0.95:
        request.model_spec.name = rng.choice(["mmoe", "single", "nope", "", "x" * 5000])
    if rng.random() < 0.2:
        request.model_spec.version.value = rng.choice([0, 1, 2, -1, 2**63 - 1])
    elif rng.random() < 0.2:
        request.model_spec.version_label = rng.choice(["stable", "canary", "nope", ""])
    if rng.random() < 0.2:
        request.model_spec.signature_name = rng.choice(["gates", "nope", "serving_default", "é" * 100])
    for _ in range(rng.choice([0, 1, 1, 1, 2])):
        _tensor(rng, request.inputs[rng.choice(["inputs", "inputs", "inputs", "extra", ""])])
    if rng.random() < 0.1:
        request.output_filter.extend(rng.sample(["y1", "y2", "y3", ""], rng.randrange(1, 3)))
    if rng.random() < 0.15:  # a right one now and then
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "mmoe"
        request.inputs["inputs"].CopyFrom(tf.make_tensor_proto(ROWS[: rng.randrange(1, 4)]))
    return request


def _grpc_calls(channel: grpc.Channel, rng: random.Random, count: int) -> Iterator[Callable[[], object]]:
    predict = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict
    metadata = prediction_service_pb2_grpc.PredictionServiceStub(channel).GetModelMetadata
    status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus
    methods = [
        "/tensorflow.serving.PredictionService/Predict",
        "/tensorflow.serving.PredictionService/Classify",
        "/tensorflow.serving.PredictionService/GetModelMetadata",
        "/tensorflow.serving.ModelService/GetModelStatus",
    ]
    for _ in range(count):
        kind = rng.randrange(10)
        if kind < 6:
            request = _predict_request(rng)
            yield lambda request=request: predict(request, timeout=30)
        elif kind == 6:
            raw = rng.randbytes(rng.randrange(64))
            method = channel.unary_unary(rng.choice(methods))
            yield lambda method=method, raw=raw: method(raw, timeout=30)
        elif kind == 7:  # a valid request, mangled
            serialized = bytearray(_predict_request(rng).SerializeToString())
            for _ in range(rng.randrange(1, 4)):
                if serialized:
                    serialized[rng.randrange(len(serialized))] = rng.randrange(256)
            method = channel.unary_unary(methods[0])
            yield lambda method=method, raw=bytes(serialized): method(raw, timeout=30)
        elif kind == 8:
            request = get_model_metadata_pb2.GetModelMetadataRequest(
                metadata_field=rng.sample(["signature_def", "nope", ""], rng.randrange(3))
            )
            request.model_spec.name = rng.choice(["mmoe", "single", "nope"])
            yield lambda request=request: metadata(request, timeout=30)
        else:
            request = get_model_status_pb2.GetModelStatusRequest()
            if rng.random() < 0.9:
                request.model_spec.name = rng.choice(["mmoe", "single", "nope"])
                if rng.random() < 0.3:
                    request.model_spec.version.value = rng.choice([1, 2, 9])
            yield lambda request=request: status(request, timeout=30)


# -- the run --------------------------------------------------------------------------------------


def _fuzz(served, exports, rest_count: int, grpc_count: int) -> None:
    process, rest_port, grpc_port = served
    started = _memory_mib(process.pid)
    rng = random.Random(SEED)
    rest = _Rest(rest_port)
    statuses: dict[int, int] = {}
    for method, path, body, headers in _rest_requests(rng, rest_count):
        status, response_headers, answer = rest.send(method, path, body, headers)
        statuses[status] = statuses.get(status, 0) + 1
        where = (method, path[:100], body[:100], headers, status, answer[:200])
        assert status < 500, where
        assert len(answer) <= (MAX_ANSWER_BYTES if status == 200 else MAX_ERROR_BODY_BYTES), where
        if path.startswith("/v1/") and status != 200:
            assert response_headers["Content-Type"].startswith("application/json"), where
    assert statuses.get(200, 0) > rest_count // 50 and len(statuses) >= 3, (
        statuses
    )  # the fuzz reached the model
    codes: dict[grpc.StatusCode, int] = {}
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        for call in _grpc_calls(channel, rng, grpc_count):
            try:
                call()
                code = grpc.StatusCode.OK
            except grpc.RpcError as error:
                code = error.code()
                assert code in REFUSALS and len(error.details()) <= MAX_MESSAGE_CHARS, (code, error.details())
            codes[code] = codes.get(code, 0) + 1
    assert codes.get(grpc.StatusCode.OK, 0) > grpc_count // 50, codes
    memory = _memory_mib(process.pid)
    assert memory["VmHWM"] - started["VmRSS"] < MAX_RSS_GROWTH_MIB, (started, memory)
    _assert_predictions_are_right(rest_port, grpc_port, exports)


def _assert_predictions_are_right(rest_port: int, grpc_port: int, exports) -> None:
    expected = tf.saved_model.load(str(exports["two_tasks"] / "2")).signatures["serving_default"](
        inputs=tf.constant(ROWS)
    )
    status, _, answer = _Rest(rest_port).send(
        "POST", "/v1/models/mmoe:predict", json.dumps({"inputs": ROWS.tolist()}).encode(), {}
    )
    assert status == 200
    outputs = json.loads(answer)["outputs"]
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "mmoe"
    request.inputs["inputs"].CopyFrom(tf.make_tensor_proto(ROWS))
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
    for task in ("y1", "y2"):
        np.testing.assert_array_equal(np.float32(outputs[task]), expected[task].numpy())
        np.testing.assert_array_equal(tf.make_ndarray(response.outputs[task]), expected[task].numpy())


def test_fuzzed_requests_get_4xx_answers_and_leave_the_server_serving(served, exports):
    started = time.monotonic()
    _fuzz(served, exports, rest_count=4000, grpc_count=3000)
    assert time.monotonic() - started < 60


@pytest.mark.slow
def test_ten_times_as_many_fuzzed_requests(served, exports):
    _fuzz(served, exports, rest_count=25_000, grpc_count=15_000)
