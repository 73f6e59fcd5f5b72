"""The gRPC services over a real socket, with `tensorflow-serving-api`'s own stubs and protos."""

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

ROWS = np.random.default_rng(5).normal(size=(4, 100)).astype(np.float32)


@pytest.fixture(scope="module")
def channel(grpc_target):
    with grpc.insecure_channel(grpc_target) as channel:
        yield channel


def _request(name="mmoe", rows=ROWS, **spec) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    for key, value in spec.items():
        if key == "version":
            request.model_spec.version.value = value
        else:
            setattr(request.model_spec, key, value)
    request.inputs["inputs"].CopyFrom(tf.make_tensor_proto(rows))
    return request


def _error(call, request) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as error:
        call(request, timeout=10)
    return error.value.code(), error.value.details()


def test_predict_equals_the_exported_model_and_names_the_version(channel, exports):
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    response = stub.Predict(_request(), timeout=10)
    assert (response.model_spec.name, response.model_spec.version.value) == ("mmoe", 2)
    assert response.model_spec.signature_name == "serving_default"
    signature = tf.saved_model.load(str(exports["two_tasks"] / "2")).signatures["serving_default"]
    expected = signature(inputs=tf.constant(ROWS))
    for task in ("y1", "y2"):
        np.testing.assert_array_equal(tf.make_ndarray(response.outputs[task]), expected[task].numpy())


def test_versions_labels_and_output_filter(channel):
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    assert stub.Predict(_request(version=1), timeout=10).model_spec.version.value == 1
    assert stub.Predict(_request(version_label="canary"), timeout=10).model_spec.version.value == 2
    request = _request()
    request.output_filter.append("y2")
    assert list(stub.Predict(request, timeout=10).outputs) == ["y2"]


def test_metadata_and_status(channel):
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "single"
    response = stub.GetModelMetadata(request, timeout=10)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signatures)
    assert list(signatures.signature_def["serving_default"].outputs) == ["y1"]
    assert response.model_spec.version.value == 1

    models = model_service_pb2_grpc.ModelServiceStub(channel)
    status_request = get_model_status_pb2.GetModelStatusRequest()
    status_request.model_spec.name = "mmoe"
    statuses = models.GetModelStatus(status_request, timeout=10).model_version_status
    assert [(s.version, s.state) for s in statuses] == [
        (2, get_model_status_pb2.ModelVersionStatus.AVAILABLE),
        (1, get_model_status_pb2.ModelVersionStatus.AVAILABLE),
    ]


def test_error_codes_and_messages(channel):
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    assert _error(stub.Predict, _request(name="nope")) == (
        grpc.StatusCode.NOT_FOUND,
        "Servable not found for request: Latest(nope)",
    )
    assert _error(stub.Predict, _request(version=9)) == (
        grpc.StatusCode.NOT_FOUND,
        "Servable not found for request: Specific(mmoe, 9)",
    )
    assert _error(stub.Predict, _request(version_label="beta")) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "Unrecognized servable version label: beta",
    )
    assert _error(stub.Predict, _request(signature_name="nope")) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        'Serving signature key "nope" not found.',
    )
    extra = _request()
    extra.inputs["age"].CopyFrom(tf.make_tensor_proto(np.zeros(4, np.float32)))
    assert _error(stub.Predict, extra) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "input size does not match signature: 2!=1 len({age,inputs}) != len({inputs}). "
        "Sent extra: {age}. Missing but required: {}.",
    )
    assert _error(stub.Predict, _request(rows=ROWS.astype(np.int32))) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "Expects arg[0] to be float but int32 is provided",
    )
    assert _error(stub.Predict, _request(rows=ROWS[:, :50])) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "input 'inputs' has shape [4,50] but the signature expects [-1,100]",
    )
    short = _request()
    short.inputs["inputs"].tensor_shape.dim[0].size = 5  # 4 rows of content for 5
    assert _error(stub.Predict, short) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "tensor parsing error: inputs (tensor_content holds 400 values for shape [5, 100])",
    )
    assert _error(stub.Classify, classification_pb2.ClassificationRequest()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "Missing ModelSpec",
    )
    filtered = _request()
    filtered.output_filter.append("y3")
    assert _error(stub.Predict, filtered) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "output tensor alias not found in signature: y3 Outputs expected to be in the set {y1,y2}.",
    )
    assert _error(stub.Predict, predict_pb2.PredictRequest()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "Missing ModelSpec",
    )
    no_field = get_model_metadata_pb2.GetModelMetadataRequest()
    no_field.model_spec.name = "mmoe"
    assert _error(stub.GetModelMetadata, no_field)[0] == grpc.StatusCode.INVALID_ARGUMENT
    models = model_service_pb2_grpc.ModelServiceStub(channel)
    status_request = get_model_status_pb2.GetModelStatusRequest()
    status_request.model_spec.name = "mmoe"
    status_request.model_spec.version.value = 5
    assert _error(models.GetModelStatus, status_request) == (
        grpc.StatusCode.NOT_FOUND,
        "Could not find version 5 of model mmoe",
    )
    # After all that, the server still answers.
    assert stub.Predict(_request(), timeout=10).model_spec.version.value == 2
