"""Classify, Regress and MultiInference over REST and gRPC, against the model that was exported."""

from __future__ import annotations

import dataclasses
import json
import shutil

import grpc
import numpy as np
import pytest
import requests
from tensorflow.core.example import example_pb2
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    inference_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from pipeline import data, export
from pipeline.config import TaskConfig
from pipeline.estimator import Estimator
from pipeline.features import to_examples
from serving import inference_calls
from serving.client import PredictionError, connect
from serving.config import ModelSource
from serving.errors import ServingError
from serving.server import ModelServer, ServerOptions
from tests.cli.commands import mtl
from tests.conftest import small_experiment

TASKS = (
    TaskConfig("click", "y1_binary", "binary"),
    TaskConfig("kind", "y2_binary", "multiclass", num_classes=3, classes=("low", "mid", "high")),
    TaskConfig("y1", "y1"),
)
CLASSIFY = "tensorflow/serving/classify"
REGRESS = "tensorflow/serving/regress"
ROWS = 5


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(server, features of `ROWS` rows, the in-process model's outputs for them) for an export with a
    binary, a multi-class and a regression task, served as `tasks` and again as `other`."""
    root = tmp_path_factory.mktemp("inference_api")
    experiment = small_experiment("mmoe")
    experiment = dataclasses.replace(experiment, model=dataclasses.replace(experiment.model, tasks=TASKS))
    estimator = Estimator(experiment, root / "run")
    estimator.train(data.input_fn(experiment, "train"), max_steps=10)
    shutil.copytree(estimator.export(root / "staging"), root / "tasks" / "1")
    _give_each_signature_its_own_input(shutil.copytree(root / "tasks" / "1", root / "keras_only" / "1"))
    features = export.sample_features(estimator.model, ROWS)
    expected = {name: value.numpy() for name, value in estimator.model(features).items()}
    sources = [
        ModelSource("tasks", root / "tasks"),
        ModelSource("other", root / "tasks"),
        ModelSource("keras_only", root / "keras_only"),
    ]
    with ModelServer(sources, ServerOptions(grpc_port=0, rest_port=0, poll_seconds=0)) as server:
        yield server, features, expected, to_examples(experiment.model.features, features)


def _give_each_signature_its_own_input(path) -> None:
    """Names each task signature's input tensor after the signature, as a SavedModel written by Keras alone
    has them (the export shares one)."""
    saved_model = saved_model_pb2.SavedModel.FromString((path / "saved_model.pb").read_bytes())
    for name in ("click", "kind", "y1"):
        saved_model.meta_graphs[0].signature_def[name].inputs["inputs"].name = f"{name}_inputs:0"
    (path / "saved_model.pb").write_bytes(saved_model.SerializeToString())


@pytest.fixture(params=["rest", "grpc"])
def address(request, trained):
    server = trained[0]
    return (
        f"http://127.0.0.1:{server.rest_port}" if request.param == "rest" else f"127.0.0.1:{server.grpc_port}"
    )


@pytest.fixture
def stub(trained):
    with grpc.insecure_channel(f"127.0.0.1:{trained[0].grpc_port}") as channel:
        yield prediction_service_pb2_grpc.PredictionServiceStub(channel)


def _check_classes(classes, expected, task):
    if task == "click":
        assert [[label for label, _ in row] for row in classes] == [["0", "1"]] * ROWS
        scores = np.array([[score for _, score in row] for row in classes])
        np.testing.assert_allclose(scores[:, 1], expected["click"], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(scores[:, 0], 1 - expected["click"], rtol=1e-5, atol=1e-7)
    else:
        assert [[label for label, _ in row] for row in classes] == [["low", "mid", "high"]] * ROWS
        scores = np.array([[score for _, score in row] for row in classes])
        np.testing.assert_allclose(scores, expected["kind"], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("task", ["click", "kind"])
def test_classify_gives_the_models_scores(address, trained, task):
    _, features, expected, examples = trained
    with connect(address, "tasks") as client:
        assert client.signature(task).method == CLASSIFY
        _check_classes(client.classify(list(examples), task), expected, task)
        rows = [{"inputs": features["inputs"][i]} for i in range(ROWS)]  # rows become examples too
        _check_classes(client.classify(rows, task), expected, task)


def test_regress_gives_the_models_values(address, trained):
    _, _, expected, examples = trained
    with connect(address, "tasks", signature_name="y1") as client:
        assert client.signature().method == REGRESS
        np.testing.assert_allclose(client.regress(list(examples)), expected["y1"], rtol=1e-5, atol=1e-7)


def test_the_examples_predict_signature_equals_serving_default(address, trained):
    _, features, _, examples = trained
    with connect(address, "tasks") as raw, connect(address, "tasks", signature_name="predict") as parsed:
        by_features = raw.predict(features)
        by_examples = parsed.predict({"examples": examples})
    assert sorted(by_examples) == sorted(by_features) == ["click", "kind", "y1"]
    for task in by_features:
        np.testing.assert_allclose(by_examples[task], by_features[task], rtol=1e-6)


def test_grpc_responses_name_the_model_version_and_signature(stub, trained):
    request = regression_pb2.RegressionRequest()
    request.model_spec.name = "tasks"
    request.model_spec.signature_name = "y1"
    request.input.example_list.examples.add().ParseFromString(trained[3][0])
    response = stub.Regress(request, timeout=30)
    assert (response.model_spec.name, response.model_spec.version.value) == ("tasks", 1)
    assert response.model_spec.signature_name == "y1"


def test_a_context_is_shared_by_the_examples_and_overridden_by_them(stub, trained):
    _, features, expected, examples = trained
    request = regression_pb2.RegressionRequest()
    request.model_spec.name = "tasks"
    request.model_spec.signature_name = "y1"
    listed = request.input.example_list_with_context
    listed.context.ParseFromString(examples[0])
    listed.examples.add()  # only the context's features
    listed.examples.add().ParseFromString(examples[1])  # its own `inputs` replaces the context's
    values = [r.value for r in stub.Regress(request, timeout=30).result.regressions]
    np.testing.assert_allclose(values, expected["y1"][:2], rtol=1e-5, atol=1e-7)


def test_a_rest_context_is_shared_by_the_examples(trained):
    server, features, expected, _ = trained
    body = {
        "signature_name": "kind",
        "context": {"inputs": features["inputs"][2].tolist()},
        "examples": [{}, {}],
    }
    response = requests.post(
        f"http://127.0.0.1:{server.rest_port}/v1/models/tasks:classify", data=json.dumps(body), timeout=30
    )
    assert response.status_code == 200
    results = response.json()["results"]
    assert [[label for label, _ in row] for row in results] == [["low", "mid", "high"]] * 2
    np.testing.assert_allclose([[s for _, s in row] for row in results], [expected["kind"][2]] * 2, rtol=1e-5)


def test_multi_inference_answers_every_task_in_order(stub, trained):
    _, _, expected, examples = trained
    request = inference_pb2.MultiInferenceRequest()
    for name, method in (("y1", REGRESS), ("kind", CLASSIFY), ("click", CLASSIFY)):
        task = request.tasks.add(method_name=method)
        task.model_spec.name = "tasks"
        task.model_spec.signature_name = name
    for serialized in examples:
        request.input.example_list.examples.add().ParseFromString(serialized)
    results = stub.MultiInference(request, timeout=30).results
    assert [
        (r.model_spec.name, r.model_spec.version.value, r.model_spec.signature_name) for r in results
    ] == [
        ("tasks", 1, "y1"),
        ("tasks", 1, "kind"),
        ("tasks", 1, "click"),
    ]
    np.testing.assert_allclose(
        [r.value for r in results[0].regression_result.regressions], expected["y1"], rtol=1e-5, atol=1e-7
    )
    for result, task in ((results[1], "kind"), (results[2], "click")):
        classes = [
            [(c.label, c.score) for c in item.classes]
            for item in result.classification_result.classifications
        ]
        _check_classes(classes, expected, task)


def _request(request_class, signature_name: str, examples=()):
    """A ClassificationRequest or RegressionRequest of the `tasks` model."""
    request = request_class()
    request.model_spec.name = "tasks"
    request.model_spec.signature_name = signature_name
    for serialized in examples:
        request.input.example_list.examples.add().ParseFromString(serialized)
    return request


def _classification(signature_name: str, examples=()) -> classification_pb2.ClassificationRequest:
    return _request(classification_pb2.ClassificationRequest, signature_name, examples)


def _regression(signature_name: str, examples=()) -> regression_pb2.RegressionRequest:
    return _request(regression_pb2.RegressionRequest, signature_name, examples)


def _multi(*tasks: tuple[str, str, str], examples=()) -> inference_pb2.MultiInferenceRequest:
    request = inference_pb2.MultiInferenceRequest()
    for model, signature_name, method in tasks:
        task = request.tasks.add(method_name=method)
        task.model_spec.name = model
        task.model_spec.signature_name = signature_name
    for serialized in examples:
        request.input.example_list.examples.add().ParseFromString(serialized)
    return request


def _error(call, request) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as error:
        call(request, timeout=30)
    return error.value.code(), error.value.details()


# The y1 signature as TF Serving quotes it (its DebugString); OUTPUT_TENSOR is its output's name in the graph.
REGRESS_SIGNATURE = """inputs {
  key: "inputs"
  value {
    name: "input_example_tensor:0"
    dtype: DT_STRING
    tensor_shape {
      dim {
        size: -1
      }
    }
  }
}
outputs {
  key: "outputs"
  value {
    name: "OUTPUT_TENSOR"
    dtype: DT_FLOAT
    tensor_shape {
      dim {
        size: -1
      }
    }
  }
}
method_name: "tensorflow/serving/regress"
"""


@pytest.fixture(scope="module")
def y1_output_tensor(trained) -> str:
    return trained[0].manager.servable("tasks").signature_def("y1").outputs["outputs"].name


def test_grpc_errors_are_tf_servings(stub, trained, y1_output_tensor):
    examples = trained[3][:2]
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    assert _error(stub.Classify, _classification("y1", examples)) == (
        invalid,
        'Expected classification signature outputs to contain at least one of "classes" or "scores". '
        f"Signature was: {REGRESS_SIGNATURE.replace('OUTPUT_TENSOR', y1_output_tensor)}",
    )
    assert _error(stub.Regress, _regression("kind", examples)) == (invalid, "Expected one output Tensor.")
    assert _error(stub.Classify, _classification("nope", examples)) == (
        invalid,
        "No signature was found with the name: nope",
    )
    assert _error(stub.Regress, _regression("", examples)) == (invalid, "Expected one output Tensor.")
    assert _error(stub.Classify, _classification("click")) == (invalid, "Input is empty.")
    assert _error(stub.Regress, _regression("y1")) == (invalid, "Input is empty.")
    assert _error(stub.MultiInference, _multi(("tasks", "predict", "tensorflow/serving/predict"))) == (
        grpc.StatusCode.UNIMPLEMENTED,
        "Unsupported signature method_name: tensorflow/serving/predict",
    )
    assert _error(stub.MultiInference, _multi(("tasks", "y1", REGRESS), ("other", "kind", CLASSIFY))) == (
        invalid,
        "All ModelSpecs in a MultiInferenceRequest must access the same model name.",
    )
    assert _error(stub.MultiInference, _multi(("tasks", "nope", REGRESS), examples=examples)) == (
        invalid,
        "Requested signature not found in model graph: nope",
    )
    assert _error(stub.MultiInference, _multi(("tasks", "y1", CLASSIFY), examples=examples))[0] == invalid
    assert _error(stub.MultiInference, _multi(("tasks", "y1", REGRESS))) == (invalid, "Input is empty.")
    separate = _multi(("keras_only", "y1", REGRESS), ("keras_only", "click", CLASSIFY), examples=examples)
    assert _error(stub.MultiInference, separate) == (
        invalid,
        "Input tensor must be the same for all Signatures.",
    )
    missing = _classification("click", examples)
    missing.model_spec.name = "nope"
    assert _error(stub.Classify, missing) == (
        grpc.StatusCode.NOT_FOUND,
        "Servable not found for request: Latest(nope)",
    )


@pytest.mark.parametrize(
    ("verb", "body", "message"),
    [
        (
            "classify",
            {"signature_name": "y1", "examples": [{"inputs": [0.5] * 100}]},
            'Expected classification signature outputs to contain at least one of "classes" or "scores". '
            f"Signature was: {REGRESS_SIGNATURE}",
        ),
        ("regress", {"signature_name": "kind", "examples": [{}]}, "Expected one output Tensor."),
        (
            "regress",
            {"signature_name": "nope", "examples": [{}]},
            "No signature was found with the name: nope",
        ),
        (
            "classify",
            {"signature_name": "click", "examples": []},
            "JSON Value: 'examples' value is an empty array",
        ),
        ("classify", {"signature_name": 3, "examples": [{}]}, "'signature_name' key must be a string value."),
        ("classify", b"", "JSON Parse error: The document is empty"),
    ],
)
def test_rest_errors_are_tf_servings(trained, y1_output_tensor, verb, body, message):
    url = f"http://127.0.0.1:{trained[0].rest_port}/v1/models/tasks:{verb}"
    response = requests.post(url, data=body if isinstance(body, bytes) else json.dumps(body), timeout=30)
    expected = message.replace("OUTPUT_TENSOR", y1_output_tensor)
    assert (response.status_code, response.json()) == (400, {"error": expected})


def test_client_errors_carry_the_code(address):
    with connect(address, "tasks", retries=0) as client, pytest.raises(PredictionError) as error:
        client.classify([example_pb2.Example()], "y1")
    assert error.value.code == "INVALID_ARGUMENT"


def test_requests_are_counted_as_predictions_are(trained, stub):
    server, _, _, examples = trained
    stub.Classify(_classification("click", examples), timeout=30)
    stub.MultiInference(_multi(("tasks", "y1", REGRESS), examples=examples), timeout=30)
    exposition = server.metrics.exposition().decode()
    for api in ("classify", "multi_inference"):
        assert f'request_latency_count{{API="{api}",entrypoint="GRPC",model_name="tasks"}}' in exposition


@pytest.mark.parametrize("scheme", ["rest", "grpc"])
def test_mtl_predict_on_task_signatures_sends_examples(trained, tmp_path, scheme):
    server, features, expected, _ = trained
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"inputs": row.tolist()}) + "\n" for row in features["inputs"]))
    address = f"http://127.0.0.1:{server.rest_port}" if scheme == "rest" else f"127.0.0.1:{server.grpc_port}"
    printed = {}
    for task in ("kind", "y1"):
        result = mtl(
            "predict",
            f"--server={address}",
            "--model_name=tasks",
            f"--signature_name={task}",
            f"--input={rows}",
        )
        assert result.returncode == 0, result.stderr
        printed[task] = [json.loads(line) for line in result.stdout.splitlines()]
    assert [list(line) for line in printed["kind"]] == [["kind"]] * ROWS
    _check_classes([[tuple(pair) for pair in line["kind"]] for line in printed["kind"]], expected, "kind")
    np.testing.assert_allclose([line["y1"] for line in printed["y1"]], expected["y1"], rtol=1e-5, atol=1e-7)


def test_the_method_check_refuses_a_signature_of_another_method():
    signature = meta_graph_pb2.SignatureDef(method_name="tensorflow/serving/predict")
    signature.inputs["inputs"].dtype = types_pb2.DT_STRING
    signature.outputs["scores"].dtype = types_pb2.DT_FLOAT
    assert inference_calls._checked_outputs(CLASSIFY, signature, method_check=False) == ("scores",)
    with pytest.raises(ServingError) as error:
        inference_calls._checked_outputs(CLASSIFY, signature, method_check=True)
    assert (error.value.code, error.value.message) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "Expected classification signature method_name to be tensorflow/serving/classify. "
        "Was: tensorflow/serving/predict",
    )
