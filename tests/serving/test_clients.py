"""One client interface, the same assertions, over REST and gRPC."""

import numpy as np
import pytest
import tensorflow as tf

from serving.client import GrpcClient, PredictionError, RestClient, connect

ROWS = np.random.default_rng(9).normal(size=(6, 100)).astype(np.float32)


@pytest.fixture(params=["rest", "grpc"])
def server_address(request, rest_url, grpc_target):
    return rest_url if request.param == "rest" else f"grpc://{grpc_target}"


def test_connect_picks_the_protocol(rest_url, grpc_target):
    assert isinstance(connect(rest_url, "mmoe"), RestClient)
    assert isinstance(connect(grpc_target, "mmoe"), GrpcClient)
    assert isinstance(connect(f"grpc://{grpc_target}", "mmoe"), GrpcClient)
    with pytest.raises(ValueError, match="Unknown scheme"):
        connect("ftp://host:1", "mmoe")


def test_predictions_by_task_equal_the_exported_model(server_address, exports):
    expected = tf.saved_model.load(str(exports["two_tasks"] / "1")).signatures["serving_default"](
        inputs=tf.constant(ROWS)
    )
    with connect(server_address, "mmoe", version_label="stable") as client:
        assert client.signature().inputs == {"inputs": np.float32}
        predictions = client.predict({"inputs": ROWS})
    assert sorted(predictions) == ["y1", "y2"]
    for task in ("y1", "y2"):
        assert predictions[task].dtype == np.float32 and predictions[task].shape == (6,)
        np.testing.assert_array_equal(predictions[task], expected[task].numpy())


def test_a_single_output_model(server_address):
    with connect(server_address, "single") as client:
        predictions = client.predict({"inputs": ROWS[:2].tolist()})  # lists are converted too
    assert list(predictions) == ["y1"] and predictions["y1"].shape == (2,)


def test_errors_carry_the_servers_code_and_message(server_address):
    with connect(server_address, "nope", retries=0) as client, pytest.raises(PredictionError) as error:
        client.predict({"inputs": ROWS})
    assert (error.value.code, error.value.message) == (
        "NOT_FOUND",
        "Servable not found for request: Latest(nope)",
    )


def test_unavailable_is_retried_then_reported():
    client = connect("http://127.0.0.1:9", "mmoe", retries=2, timeout_seconds=1)  # nothing listens on port 9
    with pytest.raises(PredictionError) as error:
        client.predict({"inputs": ROWS})
    assert error.value.code == "UNAVAILABLE"
