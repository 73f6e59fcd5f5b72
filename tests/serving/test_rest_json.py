"""TF Serving's JSON tensor rules, on their own."""

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import tensor_shape_pb2, types_pb2
from tensorflow.core.protobuf import meta_graph_pb2

from serving import rest_json
from serving.errors import ServingError
from serving.servable import signature_dtype


def _signature(**inputs: int) -> meta_graph_pb2.SignatureDef:
    signature = meta_graph_pb2.SignatureDef()
    for name, dtype in inputs.items():
        signature.inputs[name].dtype = dtype
        signature.inputs[name].tensor_shape.CopyFrom(tensor_shape_pb2.TensorShapeProto(unknown_rank=True))
    return signature


def input_dtypes(signature: meta_graph_pb2.SignatureDef) -> dict:
    return {alias: signature_dtype(info) for alias, info in signature.inputs.items()}


def _message(payload, row_format, signature) -> str:
    with pytest.raises(ServingError) as error:
        rest_json.tensors_from_json(payload, row_format, input_dtypes(signature))
    return error.value.message


def test_integers_reject_json_floats_and_floats_accept_integers():
    ints = _signature(ids=types_pb2.DT_INT32)
    assert rest_json.tensors_from_json({"ids": [1, 2]}, False, input_dtypes(ints))["ids"].dtype == np.int32
    assert (
        _message({"ids": [1.0]}, False, ints) == "JSON Value: 1.0 Type: Number is not of expected type: int32"
    )
    floats = _signature(x=types_pb2.DT_FLOAT)
    np.testing.assert_array_equal(
        rest_json.tensors_from_json([1, 2.5], False, input_dtypes(floats))["x"], [1.0, 2.5]
    )
    assert _message([True], False, floats) == "JSON Value: true Type: Bool is not of expected type: float"


def test_non_finite_tokens_are_accepted():
    values = rest_json.tensors_from_json(
        rest_json.parse_body(b"[NaN, Infinity, -Infinity]"),
        False,
        input_dtypes(_signature(x=types_pb2.DT_FLOAT)),
    )["x"]
    assert np.isnan(values[0]) and values[1] == np.inf and values[2] == -np.inf


def test_strings_and_b64():
    signature = _signature(word=types_pb2.DT_STRING)
    parsed = rest_json.tensors_from_json([{"b64": "aGk="}, "yo"], True, input_dtypes(signature))["word"]
    assert parsed.tolist() == [b"hi", b"yo"]
    assert _message([3], True, signature) == "JSON Value: 3 Type: Number is not of expected type: string"


def test_row_format_needs_named_objects_for_several_inputs():
    signature = _signature(a=types_pb2.DT_FLOAT, b=types_pb2.DT_FLOAT)
    batch = rest_json.tensors_from_json([{"a": 1, "b": 2}, {"a": 3, "b": 4}], True, input_dtypes(signature))
    np.testing.assert_array_equal(batch["a"], [1, 3])
    assert "missing input(s): ['b']" in _message([{"a": 1}], True, signature)
    assert "unknown input(s): ['c']" in _message([{"a": 1, "b": 2, "c": 3}], True, signature)
    assert "Expecting shape [2] for input 'a' but got [3]" in _message(
        [{"a": [1, 2], "b": 0}, {"a": [1, 2, 3], "b": 0}], True, signature
    )


def test_ragged_lists_are_refused():
    assert "ragged" in _message([[1, 2], [3]], False, _signature(x=types_pb2.DT_FLOAT))
    # A list deeper than an earlier value at the same level, after and before a row of plain numbers.
    assert "ragged" in _message([[1.0, 2.0], [1.0, [2.0]]], False, _signature(x=types_pb2.DT_FLOAT))
    assert "ragged" in _message([[1.0, [2.0]], [1.0, 2.0]], False, _signature(x=types_pb2.DT_FLOAT))


def test_response_formats():
    outputs = {"p": np.float32([0.1, 2.0]), "n": np.int64([3, 4])}
    assert (
        rest_json.format_response(outputs, row_format=True)
        == '{"predictions":[{"n":3,"p":0.1},{"n":4,"p":2.0}]}'
    )
    assert rest_json.format_response(outputs, row_format=False) == '{"outputs":{"n":[3,4],"p":[0.1,2.0]}}'
    assert (
        rest_json.format_response({"p": np.float32([np.nan, -np.inf])}, False)
        == '{"outputs":[NaN,-Infinity]}'
    )
    assert (
        rest_json.format_response({"x_bytes": np.array([b"hi"], object)}, True)
        == '{"predictions":[{"b64":"aGk="}]}'
    )
    with pytest.raises(ServingError, match="inconsistent batch size"):
        rest_json.format_response({"a": np.zeros(2), "b": np.zeros(3)}, row_format=True)


def test_integers_outside_the_types_range_are_type_errors():
    dtypes = {"ids": tf.uint8, "big": tf.int64}
    assert (
        _message(
            {"ids": [1, 300], "big": [1]}, False, _signature(ids=types_pb2.DT_UINT8, big=types_pb2.DT_INT64)
        )
        == "JSON Value: 300 Type: Number is not of expected type: uint8"
    )
    with pytest.raises(ServingError, match="JSON Value: 9223372036854775808 Type: Number .* int64"):
        rest_json.tensors_from_json({"ids": [1], "big": [2**63]}, False, dtypes)


@pytest.mark.parametrize(
    "body",
    [
        b'{"instances": [["' + b"[" * 500 + b'"]]}',  # brackets in a string are no nesting
        b'{"instances": [["' + b"9" * 500 + b'"]]}',  # nor digits a number
        b'{"instances": [["' + b"," * 500 + b'"]]}',  # nor commas values
        b'{"instances": [["\\\\ud800"]]}',  # an escaped backslash, then text: no surrogate
        b'{"instances": [["\\ud83d\\ude00"]]}',  # a surrogate pair
    ],
)
def test_what_strings_hold_counts_for_no_limit(body):
    document = rest_json.parse_body(body, max_elements=100)
    assert rest_json.tensors_from_json(document["instances"], True, {"x": tf.string})["x"].shape == (1, 1)


@pytest.mark.parametrize(
    "body, message",
    [
        (b"[" * 65 + b"]" * 65, "JSON Parse error: Nesting deeper than 64 levels"),
        (b'{"a": ' * 65 + b"1" + b"}" * 65, "JSON Parse error: Nesting deeper than 64 levels"),
        (b"[" + b"1" * 101 + b"]", "JSON Parse error: Number literal longer than 100 characters: 111"),
        (
            b"[" + b"0," * 100 + b"0]",
            "The request holds up to 101 tensor elements, more than the limit of 100.",
        ),
    ],
)
def test_limits_are_checked_before_parsing(body, message):
    with pytest.raises(ServingError) as error:
        rest_json.parse_body(body, max_elements=100)
    assert error.value.message.startswith(message)
    assert rest_json.parse_body(b"[" * 64 + b"]" * 64, max_elements=100) is not None
