"""Careless and hostile requests over real sockets: each is a client's mistake, so a 4xx with TF Serving's
JSON error body (REST) or INVALID_ARGUMENT / NOT_FOUND / RESOURCE_EXHAUSTED (gRPC), whose message is short
and names what was wrong; limits are checked before anything large is allocated; and made-up model names
leave one metrics series, not one each."""

from __future__ import annotations

import gzip
import json
import re
import time
import zlib

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc, predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc as prediction_grpc

from serving.errors import MAX_MESSAGE_CHARS
from tests.serving.conftest import STRICT

ROW = [0.25] * 100
PREDICT = "/v1/models/mmoe:predict"
MAX_ERROR_BODY_BYTES = MAX_MESSAGE_CHARS + 64


@pytest.fixture(scope="module")
def rest(strict_server) -> str:
    return f"http://127.0.0.1:{strict_server.rest_port}"


@pytest.fixture(scope="module")
def stub(strict_server):
    with grpc.insecure_channel(f"127.0.0.1:{strict_server.grpc_port}") as channel:
        yield prediction_grpc.PredictionServiceStub(channel)


def _refused(response: requests.Response, status: int, words: str) -> str:
    assert response.status_code == status, (response.status_code, response.text[:300])
    assert response.headers["Content-Type"].startswith("application/json")
    assert len(response.content) <= MAX_ERROR_BODY_BYTES
    (message,) = response.json().values()
    assert words in message, message
    return message


@pytest.mark.parametrize(
    "path, body, headers, status, words",
    [
        (
            PREDICT,
            b'{"instances": ' + b"[" * 300 + b"]" * 300 + b"}",
            {},
            400,
            "Nesting deeper than 64 levels",
        ),
        (
            PREDICT,
            b'{"instances": [[' + b"7" * 5000 + b"]]}",
            {},
            400,
            "Number literal longer than 100 characters",
        ),
        (
            "/v1/models/mmoe/versions/" + "9" * 5000 + ":predict",
            b"{}",
            {},
            400,
            "Failed to convert version: 99999",
        ),
        (
            "/v1/models/mmoe/versions/9223372036854775808:predict",
            json.dumps({"instances": [ROW]}),
            {},
            400,
            "Failed to convert version: 9223372036854775808 to numeric.",
        ),
        (
            "/v1/models/mmoe/versions/" + "1" * 3000,
            None,
            {},
            400,
            "Failed to convert version: 11111",
        ),
        (PREDICT, b"plain text", {"Content-Encoding": "gzip"}, 400, "not valid gzip: Error -3 while"),
        (PREDICT, b"plain text", {"Content-Encoding": "deflate"}, 400, "not valid deflate: Error -3"),
        (
            PREDICT,
            gzip.compress(b"{}")[:-5],
            {"Content-Encoding": "gzip"},
            400,
            "not valid gzip: it ends early",
        ),
        (PREDICT, zlib.compress(b"{}")[:-3], {"Content-Encoding": "deflate"}, 400, "deflate: it ends early"),
        (
            PREDICT,
            gzip.compress(b" " * 3_000_000),
            {"Content-Encoding": "gzip"},
            413,
            "limit of 2000000 bytes",
        ),
        (PREDICT, b"{}", {"Content-Encoding": "br"}, 415, "Unsupported Content-Encoding: br"),
        (
            PREDICT,
            b'{"instances": [["\\ud800", 1]]}',
            {},
            400,
            "JSON Parse error: The surrogate pair in string is invalid at offset: 17",
        ),
        (PREDICT, b'{"instances": [["\\udc00"]]}', {}, 400, "The surrogate pair in string is invalid"),
        (
            PREDICT,
            b'{"inputs": [' + b"0," * 150_000 + b"0]}",
            {},
            413,
            "more than the limit of 100000",
        ),
    ],
    ids=[
        "deep nesting",
        "long integer literal",
        "version of 5000 digits",
        "version beyond int64",
        "status of a version of 3000 digits",
        "not gzip",
        "not deflate",
        "truncated gzip",
        "truncated deflate",
        "gzip bomb",
        "brotli",
        "lone high surrogate",
        "lone low surrogate",
        "too many elements",
    ],
)
def test_rest_client_mistakes_are_4xx_naming_what_was_wrong(rest, path, body, headers, status, words):
    method = "GET" if body is None else "POST"
    response = requests.request(method, rest + path, data=body, headers=headers, timeout=30)
    _refused(response, status, words)
    assert requests.post(rest + PREDICT, json={"instances": [ROW]}, timeout=30).status_code == 200


@pytest.mark.parametrize(
    "body",
    [
        {"signature_name": "s" * 1_500_000, "instances": [ROW]},
        {"instances": [{"b64": "!" * 1_500_000}]},
        {"instances": [["a" * 1_500_000] + [0.5] * 99]},
        {"instances": [ROW], "inputs": "x" * 1_500_000},
    ],
    ids=["signature name", "b64", "string value", "both keys"],
)
def test_error_bodies_do_not_echo_the_whole_offending_value(rest, body):
    response = requests.post(rest + PREDICT, data=json.dumps(body), timeout=30)
    assert response.status_code == 400 and len(response.content) <= MAX_ERROR_BODY_BYTES, response.text[:200]


def _predict_request(shape, dtype=types_pb2.DT_FLOAT, name="mmoe") -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    tensor = request.inputs["inputs"]
    tensor.dtype = dtype
    for size in shape:
        tensor.tensor_shape.dim.add(size=size)
    return request


def _grpc_error(call, request, timeout: float = 30) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as raised:
        call(request, timeout=timeout)
    code, details = raised.value.code(), raised.value.details()
    assert len(details) <= MAX_MESSAGE_CHARS
    return code, details


def test_grpc_tensors_no_request_can_carry_are_invalid_arguments(stub):
    for dtype, name in ((types_pb2.DT_RESOURCE, "DT_RESOURCE"), (types_pb2.DT_VARIANT, "DT_VARIANT")):
        assert _grpc_error(stub.Predict, _predict_request([1, 100], dtype)) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            f"tensor parsing error: inputs ({name} tensors cannot be sent in a request)",
        )
    assert _grpc_error(stub.Predict, _predict_request([1, 100], 999)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "tensor parsing error: inputs (999 is not a DataType)",
    )
    out_of_range = _predict_request([1], types_pb2.DT_UINT8)
    out_of_range.inputs["inputs"].int_val.append(300)
    assert _grpc_error(stub.Predict, out_of_range) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "Expects arg[0] to be float but uint8 is provided",
    )
    assert _grpc_error(stub.Predict, _predict_request([-5, 100])) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "tensor parsing error: inputs (negative dimension in shape [-5, 100])",
    )


def test_grpc_requests_implying_too_many_values_are_refused_before_allocating(stub):
    """A 34-byte request declaring a [1048576, 100] float tensor with no values, and shapes whose element
    count overflows int64, are refused before any value is read or filled in."""
    small = _predict_request([1_048_576, 100])
    assert small.ByteSize() < 40
    started = time.perf_counter()
    code, details = _grpc_error(stub.Predict, small)
    assert time.perf_counter() - started < 5
    limit = STRICT.max_request_elements
    assert (code, details) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        f"The request holds up to 104857600 tensor elements, more than the limit of {limit}.",
    )
    code, details = _grpc_error(stub.Predict, _predict_request([3_074_457_345_618_258_603, 100]))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "307445734561825860300 tensor elements" in details
    code, _ = _grpc_error(stub.Predict, _predict_request([2**62, 2**62]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT  # not the signature's shape


def test_grpc_bytes_that_are_no_request_are_invalid_arguments(strict_server):
    with grpc.insecure_channel(f"127.0.0.1:{strict_server.grpc_port}") as channel:
        for method, message in (
            ("/tensorflow.serving.PredictionService/Predict", "tensorflow.serving.PredictRequest"),
            ("/tensorflow.serving.ModelService/GetModelStatus", "tensorflow.serving.GetModelStatusRequest"),
        ):
            code, details = _grpc_error(channel.unary_unary(method), b"\xff\xff\xff\xff")
            assert code == grpc.StatusCode.INVALID_ARGUMENT
            assert details.startswith(f"Failed to parse the request as a {message}: ")


def test_grpc_messages_quoting_a_client_value_are_bounded(stub, strict_server):
    code, details = _grpc_error(stub.Predict, _predict_request([1, 100], name="m" * 1_000_000))
    assert code == grpc.StatusCode.NOT_FOUND and details.startswith(
        "Servable not found for request: Latest(mmm"
    )
    assert "(1000000 characters)" in details
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "mmoe"
    request.inputs["inputs"].CopyFrom(tf.make_tensor_proto(np.zeros((1, 100), np.float32)))
    request.output_filter.append("o" * 1_000_000)
    code, details = _grpc_error(stub.Predict, request)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "output tensor alias not found" in details
    with grpc.insecure_channel(f"127.0.0.1:{strict_server.grpc_port}") as channel:
        status = get_model_status_pb2.GetModelStatusRequest()
        status.model_spec.name = "n" * 1_000_000
        code, _ = _grpc_error(model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus, status)
    assert code == grpc.StatusCode.NOT_FOUND


def test_made_up_model_names_share_one_metrics_series(rest, stub, strict_server):
    def metrics_page() -> str:
        return requests.get(rest + "/monitoring/prometheus/metrics", timeout=30).text

    for index in range(300):
        requests.post(f"{rest}/v1/models/made-up-{index}:predict", json={"instances": [ROW]}, timeout=30)
        if index == 50:
            size_after_50 = len(metrics_page())
        with pytest.raises(grpc.RpcError):
            stub.Predict(_predict_request([1, 100], name=f"grpc-made-up-{index}"), timeout=30)
    page = metrics_page()
    assert "made-up" not in page
    assert len(page) - size_after_50 < 200  # only counts grow, not series
    unknown = re.search(
        r':tensorflow:serving:request_count\{model_name="__unknown__",status="NOT_FOUND"\} (\d+)', page
    )
    assert int(unknown.group(1)) >= 600
