"""The REST API over a real socket: URLs, formats, status and metadata documents, and every error."""

import gzip
import json

import numpy as np
import pytest
import requests
import tensorflow as tf

ROW = [0.25] * 100


def post(url: str, body, **kwargs) -> requests.Response:
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return requests.post(url, data=data, timeout=30, **kwargs)


def in_process(exports, model: str, version: int, rows: np.ndarray) -> dict[str, np.ndarray]:
    signature = tf.saved_model.load(str(exports[model] / str(version))).signatures["serving_default"]
    return {k: v.numpy() for k, v in signature(inputs=tf.constant(rows, tf.float32)).items()}


def test_row_format_with_several_outputs_equals_the_exported_model(rest_url, exports):
    rows = np.random.default_rng(0).normal(size=(3, 100)).astype(np.float32)
    response = post(f"{rest_url}/v1/models/mmoe:predict", {"instances": rows.tolist()})
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    predictions = response.json()["predictions"]
    expected = in_process(exports, "two_tasks", 2, rows)  # the newest version
    assert [sorted(p) for p in predictions] == [["y1", "y2"]] * 3
    for task in ("y1", "y2"):
        np.testing.assert_array_equal(np.float32([p[task] for p in predictions]), expected[task])


def test_columnar_format(rest_url, exports):
    rows = np.random.default_rng(1).normal(size=(2, 100)).astype(np.float32)
    response = post(f"{rest_url}/v1/models/mmoe:predict", {"inputs": {"inputs": rows.tolist()}})
    outputs = response.json()["outputs"]
    expected = in_process(exports, "two_tasks", 2, rows)
    assert sorted(outputs) == ["y1", "y2"]
    np.testing.assert_array_equal(np.float32(outputs["y1"]), expected["y1"])


def test_a_single_output_is_unnamed_in_both_formats(rest_url, exports):
    expected = in_process(exports, "one_task", 1, np.float32([ROW]))["y1"]
    rows = post(f"{rest_url}/v1/models/single:predict", {"instances": [ROW]}).json()
    assert rows == {"predictions": [pytest.approx(float(expected[0]))]}
    columns = post(f"{rest_url}/v1/models/single:predict", {"inputs": [ROW]}).json()
    assert columns == {"outputs": [pytest.approx(float(expected[0]))]}


def test_floats_print_in_shortest_round_trip_form(rest_url, exports):
    text = post(f"{rest_url}/v1/models/single:predict", {"instances": [ROW]}).text
    value = np.float32(in_process(exports, "one_task", 1, np.float32([ROW]))["y1"][0])
    assert text == '{"predictions":[' + np.format_float_positional(value, unique=True, trim="0") + "]}"


def test_versions_and_labels_pick_the_version(rest_url, exports):
    rows = np.float32([ROW])
    v1 = in_process(exports, "two_tasks", 1, rows)["y1"][0]
    v2 = in_process(exports, "two_tasks", 2, rows)["y1"][0]
    assert v1 != v2
    for path, expected in (
        ("/versions/1", v1),
        ("/versions/2", v2),
        ("/labels/stable", v1),
        ("/labels/canary", v2),
        ("/LABELS/canary", v2),  # case-insensitive
    ):
        answer = post(f"{rest_url}/v1/models/mmoe{path}:predict", {"instances": [ROW]}).json()
        assert np.float32(answer["predictions"][0]["y1"]) == expected, path


def test_gzip_request_bodies(rest_url):
    body = gzip.compress(json.dumps({"instances": [ROW]}).encode())
    response = post(f"{rest_url}/v1/models/single:predict", body, headers={"Content-Encoding": "gzip"})
    assert response.status_code == 200 and len(response.json()["predictions"]) == 1


def test_status_document(rest_url):
    status = requests.get(f"{rest_url}/v1/models/mmoe", timeout=10).json()
    assert status == {
        "model_version_status": [
            {"version": "2", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}},
            {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}},
        ]
    }
    one = requests.get(f"{rest_url}/v1/models/mmoe/versions/1", timeout=10).json()
    assert [s["version"] for s in one["model_version_status"]] == ["1"]
    labelled = requests.get(f"{rest_url}/v1/models/mmoe/labels/canary", timeout=10).json()
    assert [s["version"] for s in labelled["model_version_status"]] == ["2"]


def test_metadata_document(rest_url):
    metadata = requests.get(f"{rest_url}/v1/models/mmoe/versions/1/metadata", timeout=10).json()
    assert metadata["model_spec"] == {"name": "mmoe", "signature_name": "", "version": "1"}
    signature = metadata["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["method_name"] == "tensorflow/serving/predict"
    assert signature["inputs"]["inputs"] == {
        "dtype": "DT_FLOAT",
        "tensor_shape": {
            "dim": [{"size": "-1", "name": ""}, {"size": "100", "name": ""}],
            "unknown_rank": False,
        },
        "name": "serving_default_inputs:0",
    }
    assert sorted(signature["outputs"]) == ["y1", "y2"]
    assert signature["outputs"]["y1"]["tensor_shape"]["dim"] == [{"size": "-1", "name": ""}]


@pytest.mark.parametrize(
    "method, path, body, status, message",
    [
        (
            "POST",
            "/v1/models/nope:predict",
            {"instances": [ROW]},
            404,
            "Servable not found for request: Latest(nope)",
        ),
        (
            "POST",
            "/v1/models/mmoe/versions/7:predict",
            {"instances": [ROW]},
            404,
            "Servable not found for request: Specific(mmoe, 7)",
        ),
        (
            "POST",
            "/v1/models/mmoe/labels/beta:predict",
            {"instances": [ROW]},
            400,
            "Unrecognized servable version label: beta",
        ),
        ("GET", "/v1/models/nope", None, 404, "Could not find any versions of model nope"),
        ("GET", "/v1/models/mmoe/versions/7", None, 404, "Could not find version 7 of model mmoe"),
        ("GET", "/v1/models/nope/metadata", None, 404, "Servable not found for request: Latest(nope)"),
        ("GET", "/v1/models", None, 400, "Missing model name in request."),
        ("GET", "/v1/foo", None, 400, "Malformed request: GET /v1/foo"),
        ("GET", "/v1/models/mmoe:predict", None, 400, "Malformed request: GET /v1/models/mmoe:predict"),
        (
            "POST",
            "/v1/models/mmoe/versions/1/labels/stable:predict",
            {},
            400,
            "Malformed request: POST /v1/models/mmoe/versions/1/labels/stable:predict",
        ),
        (
            "POST",
            "/v1/models/mmoe:predict",
            {"signature_name": "nope", "instances": [ROW]},
            400,
            'Serving signature name: "nope" not found in signature def',
        ),
        ("POST", "/v1/models/mmoe:predict", b"", 400, "JSON Parse error: The document is empty"),
        (
            "POST",
            "/v1/models/mmoe:predict",
            b'{"instances": [1,]}',
            400,
            "JSON Parse error: Invalid value at offset: 17",
        ),
        ("POST", "/v1/models/mmoe:predict", {"rows": [ROW]}, 400, "Missing 'inputs' or 'instances' key"),
        (
            "POST",
            "/v1/models/mmoe:predict",
            {"instances": [ROW], "inputs": [ROW]},
            400,
            "Not a valid JSON request: expecting only one of 'inputs' or 'instances' keys to exist",
        ),
        (
            "POST",
            "/v1/models/mmoe:predict",
            {"inputs": {"x": [ROW]}},
            400,
            "Missing named input: inputs in 'inputs' object.",
        ),
        (
            "POST",
            "/v1/models/mmoe:predict",
            {"instances": [["a"] * 100]},
            400,
            'JSON Value: "a" Type: String is not of expected type: float',
        ),
        (
            "POST",
            "/v1/models/mmoe:predict",
            {"instances": [[0.5] * 99]},
            400,
            "input 'inputs' has shape [1,99] but the signature expects [-1,100]",
        ),
        (
            "POST",
            "/v1/models/mmoe:classify",
            {"instances": [ROW]},
            400,
            "JSON Value: When method is classify, key 'examples' is expected and was not found",
        ),
    ],
)
def test_error_cases(rest_url, method, path, body, status, message):
    data = None if body is None else body if isinstance(body, bytes) else json.dumps(body)
    response = requests.request(method, f"{rest_url}{path}", data=data, timeout=10)
    assert (response.status_code, response.json()) == (status, {"error": message})
    assert response.headers["Content-Type"].startswith("application/json")


def test_an_oversize_body_is_refused_without_harm(rest_url):
    huge = json.dumps({"instances": [ROW] * 2000})  # about 1 MB, over the fixture's 200 kB limit
    response = post(f"{rest_url}/v1/models/mmoe:predict", huge)
    assert response.status_code == 413
    assert response.json() == {"error": "Request body exceeds the limit of 200000 bytes."}
    gzipped = gzip.compress(huge.encode())  # small on the wire, too large once decoded
    response = post(f"{rest_url}/v1/models/mmoe:predict", gzipped, headers={"Content-Encoding": "gzip"})
    assert response.status_code == 413
    assert post(f"{rest_url}/v1/models/mmoe:predict", {"instances": [ROW]}).status_code == 200


def test_no_client_mistake_gets_a_5xx(rest_url):
    bodies = [
        b"null",
        b"[]",
        b"{}",
        b'{"instances": []}',
        b'{"instances": [[]]}',
        b'{"instances": [[1,[2]]]}',
        b'{"inputs": {"inputs": [[true]]}}',
        b'{"instances": [{"b64": "!!"}]}',
        b'{"signature_name": 3}',
        b"\xff\xfe",
        b'{"instances": [[NaN]]}',
        '{"instances": "' + "x" * 1000 + '"}',
    ]
    for body in bodies:
        response = post(f"{rest_url}/v1/models/mmoe:predict", body)
        assert 400 <= response.status_code < 500, (body, response.status_code, response.text)
        assert "error" in response.json()
    assert post(f"{rest_url}/v1/models/mmoe:predict", {"instances": [ROW]}).status_code == 200


def test_prometheus_metrics_use_tf_servings_names(rest_url):
    post(f"{rest_url}/v1/models/single:predict", {"instances": [ROW]})
    post(f"{rest_url}/v1/models/nope:predict", {"instances": [ROW]})
    text = requests.get(f"{rest_url}/monitoring/prometheus/metrics", timeout=10).text
    assert "# TYPE :tensorflow:serving:request_count untyped" in text
    assert ':tensorflow:serving:request_count{model_name="single",status="OK"}' in text
    assert ':tensorflow:serving:request_count{model_name="__unknown__",status="NOT_FOUND"}' in text
    assert 'model_name="nope"' not in text
    assert "# TYPE :tensorflow:serving:request_latency histogram" in text
    assert (
        ':tensorflow:serving:request_latency_count{API="predict",entrypoint="REST",model_name="single"}'
        in text
    )
