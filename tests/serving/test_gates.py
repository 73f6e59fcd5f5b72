"""The `gates` signature of an MMoE export, served over REST and gRPC like any other signature."""

import numpy as np
import tensorflow as tf

from serving.client import connect


def test_gate_weights_over_rest_and_grpc_equal_the_exports_and_sum_to_one(exports, rest_url, grpc_target):
    inputs = {"inputs": np.random.default_rng(5).normal(size=(6, 100)).astype(np.float32)}
    signature = tf.saved_model.load(str(exports["two_tasks"] / "2")).signatures["gates"]
    expected = {name: value.numpy() for name, value in signature(**inputs).items()}
    for address in (rest_url, f"grpc://{grpc_target}"):
        with connect(address, "mmoe", signature_name="gates") as client:
            weights = client.predict(inputs)
        assert sorted(weights) == ["y1", "y2"], address
        for task, value in weights.items():
            assert value.shape == (6, 4)  # 4 experts
            np.testing.assert_allclose(value.sum(axis=1), np.ones(6), rtol=1e-5)
            np.testing.assert_allclose(value, expected[task], rtol=1e-6)
        assert not np.allclose(weights["y1"], weights["y2"])  # each task its own gate
