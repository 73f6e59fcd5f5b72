"""Classify, Regress and MultiInference as TF Serving does them: inputs, signature checks, results, REST
bodies (unit level; the server's round trips are in the protocol tests)."""

import json

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.example import example_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import inference_pb2, input_pb2

from serving import inference
from serving.errors import ServingError


def _example(**features) -> example_pb2.Example:
    example = example_pb2.Example()
    for name, value in features.items():
        if isinstance(value, str):
            example.features.feature[name].bytes_list.value.append(value.encode())
        else:
            example.features.feature[name].float_list.value.append(value)
    return example


def _parse(serialized):
    spec = {"x": tf.io.FixedLenFeature([], tf.float32), "k": tf.io.FixedLenFeature([], tf.string)}
    return {name: value.numpy().tolist() for name, value in tf.io.parse_example(serialized, spec).items()}


def test_an_example_list_and_a_context_merged_into_each_example():
    plain = input_pb2.Input()
    plain.example_list.examples.extend([_example(x=1.0, k="a"), _example(x=2.0, k="b")])
    assert _parse(inference.serialized_examples(plain)) == {"x": [1.0, 2.0], "k": [b"a", b"b"]}
    with_context = input_pb2.Input()
    with_context.example_list_with_context.context.CopyFrom(_example(k="shared", x=9.0))
    with_context.example_list_with_context.examples.extend([_example(x=1.0), _example(x=2.0, k="own")])
    # The context's features reach every example; an example's own feature of the same name wins.
    assert _parse(inference.serialized_examples(with_context)) == {"x": [1.0, 2.0], "k": [b"shared", b"own"]}


@pytest.mark.parametrize("kind", ["none", "example_list", "example_list_with_context"])
def test_an_input_without_examples_is_invalid(kind):
    input_proto = input_pb2.Input()
    if kind != "none":
        getattr(input_proto, kind).SetInParent()
    with pytest.raises(ServingError) as error:
        inference.serialized_examples(input_proto)
    assert (error.value.code, error.value.message) == (grpc.StatusCode.INVALID_ARGUMENT, "Input is empty.")


def _signature(method, inputs=("inputs",), outputs=("classes", "scores")):
    signature = meta_graph_pb2.SignatureDef(method_name=method)
    for name in inputs:
        signature.inputs[name].dtype = 7  # DT_STRING
    for name in outputs:
        signature.outputs[name].dtype = 1
    return signature


def test_signatures_are_checked_as_tf_serving_checks_them():
    assert inference.classification_outputs(_signature(inference.CLASSIFY_METHOD)) == ("classes", "scores")
    assert inference.classification_outputs(_signature("x", outputs=("scores",))) == ("scores",)
    assert inference.regression_outputs(_signature(inference.REGRESS_METHOD, outputs=("outputs",))) == (
        "outputs",
    )
    with pytest.raises(ServingError) as error:  # Classify on a regress signature
        inference.classification_outputs(_signature(inference.REGRESS_METHOD, outputs=("outputs",)))
    assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.message == (
        'Expected classification signature outputs to contain at least one of "classes" or "scores". '
        'Signature was: inputs {\n  key: "inputs"\n  value {\n    dtype: DT_STRING\n  }\n}\n'
        'outputs {\n  key: "outputs"\n  value {\n    dtype: DT_FLOAT\n  }\n}\n'
        'method_name: "tensorflow/serving/regress"\n'
    )
    with pytest.raises(ServingError, match="^Expected one output Tensor.$"):  # Regress on a classify one
        inference.regression_outputs(_signature(inference.CLASSIFY_METHOD))
    with pytest.raises(
        ServingError, match="^Expected one input Tensor.$"
    ):  # a predict signature of raw inputs
        inference.classification_outputs(_signature("tensorflow/serving/predict", inputs=("x", "k")))
    with pytest.raises(ServingError, match="^No regression inputs found in SignatureDef"):
        inference.regression_outputs(_signature(inference.REGRESS_METHOD, ("examples",), ("outputs",)))


def test_classification_and_regression_results():
    outputs = {
        "classes": np.array([[b"0", b"1"], [b"0", b"1"]], dtype=object),
        "scores": np.array([[0.25, 0.75], [0.9, 0.1]], np.float32),
    }
    result = inference.classification_result(outputs, 2)
    assert [[(c.label, round(c.score, 6)) for c in item.classes] for item in result.classifications] == [
        [("0", 0.25), ("1", 0.75)],
        [("0", 0.9), ("1", 0.1)],
    ]
    assert json.loads(inference.classification_json(result)) == {
        "results": [[["0", 0.25], ["1", 0.75]], [["0", pytest.approx(0.9)], ["1", pytest.approx(0.1)]]]
    }
    regression = inference.regression_result({"outputs": np.array([[1.5], [-2.0]], np.float32)}, 2)
    assert [r.value for r in regression.regressions] == [1.5, -2.0]
    assert json.loads(inference.regression_json(regression)) == {"results": [1.5, -2.0]}
    with pytest.raises(ServingError, match=r"^Expected output Tensor shape to be either \[batch_size\] or"):
        inference.regression_result({"outputs": np.zeros((2, 3), np.float32)}, 2)
    with pytest.raises(ServingError, match="^Tensors class and score should match in dim_size"):
        inference.classification_result({**outputs, "scores": np.zeros((2, 3), np.float32)}, 2)


def _task(name, model="m", method=inference.CLASSIFY_METHOD):
    task = inference_pb2.InferenceTask(method_name=method)
    task.model_spec.name, task.model_spec.signature_name = model, name
    return task


@pytest.mark.parametrize(
    "tasks, code, message",
    [
        ([], grpc.StatusCode.INVALID_ARGUMENT, "Expected at least one task."),
        (
            [_task("a", model="")],
            grpc.StatusCode.INVALID_ARGUMENT,
            "Found ModelSpec with an empty model name.",
        ),
        (
            [_task("a"), _task("b", model="other")],
            grpc.StatusCode.INVALID_ARGUMENT,
            "All ModelSpecs in a MultiInferenceRequest must access the same model name.",
        ),
        ([_task("a"), _task("a")], grpc.StatusCode.INVALID_ARGUMENT, "Duplicate evaluation of signature: a"),
        (
            [_task("serving_default", method="tensorflow/serving/predict")],
            grpc.StatusCode.UNIMPLEMENTED,
            "Unsupported signature method_name: tensorflow/serving/predict",
        ),
    ],
)
def test_multi_inference_requests_are_checked(tasks, code, message):
    with pytest.raises(ServingError) as error:
        inference.check_multi_inference(inference_pb2.MultiInferenceRequest(tasks=tasks))
    assert (error.value.code, error.value.message) == (code, message)


def test_a_rest_body_becomes_examples_with_tf_servings_typing():
    body = {
        "context": {"k": "shared"},
        "examples": [{"x": 1.5, "n": 3, "tags": ["a", {"b64": "Yg=="}]}, {"x": [2.0, 2.5], "n": True}],
    }
    input_proto = inference.input_from_json(body)
    first, second = input_proto.example_list_with_context.examples
    assert list(first.features.feature["x"].float_list.value) == [1.5]
    assert list(first.features.feature["n"].int64_list.value) == [3]  # a whole number is an int64
    assert list(first.features.feature["tags"].bytes_list.value) == [b"a", b"b"]
    assert list(second.features.feature["n"].int64_list.value) == [1]
    assert list(input_proto.example_list_with_context.context.features.feature["k"].bytes_list.value) == [
        b"shared"
    ]
    assert inference.input_from_json({"examples": [{"x": 1.0}]}).WhichOneof("kind") == "example_list"


@pytest.mark.parametrize(
    "body, message",
    [
        ({}, "JSON Value: When method is classify, key 'examples' is expected and was not found"),
        ({"examples": {}}, "JSON Value: Expecting 'examples' value to be an list/array"),
        ({"examples": []}, "JSON Value: 'examples' value is an empty array"),
        ({"examples": [3]}, "Example must be JSON object but got JSON Number"),
        ({"examples": [{"x": None}]}, "Feature: x has element with unexpected JSON type: Null"),
        ({"examples": [{"x": [[1.0]]}]}, "Feature: x has element with unexpected JSON type: Array"),
        ({"examples": [{"x": [1.0, "a"]}]}, "Unexpected element type in feature: x expecting type: float"),
        ({"examples": [{"x": 2**64}]}, "Feature: x has uint64 element. Only int64 is supported."),
        (
            {"examples": [{"x": 1e300}]},
            "Cannot convert JSON value: 1e+300 to float without loss of precision.",
        ),
        ({"examples": [{"x": {"b64": "%%%"}}]}, "Unable to base64 decode"),
    ],
)
def test_rest_body_mistakes_are_invalid_arguments(body, message):
    with pytest.raises(ServingError) as error:
        inference.input_from_json(body)
    assert (error.value.code, error.value.message) == (grpc.StatusCode.INVALID_ARGUMENT, message)
