import numpy as np
import pytest

from pipeline.errors import ConfigError
from pipeline.layers import Experts
from pipeline.layers.experts import mix


def test_golden_outputs_of_two_experts_of_two_layers():
    experts = Experts(2, units=(2, 1), activation="relu")
    experts.build((None, 2))
    experts.kernels[0].assign(np.array([[[1, 0], [0, 1]], [[1, 1], [-1, 1]]], np.float32))  # identity; mixing
    experts.biases[0].assign(np.array([[0, 0], [0.5, -0.5]], np.float32))
    experts.kernels[1].assign(np.array([[[1], [1]], [[2], [-1]]], np.float32))
    experts.biases[1].assign(np.array([[0], [1]], np.float32))
    x = np.array([[1.0, 2.0], [3.0, -1.0]], np.float32)
    # Expert 0: relu(x) -> relu(sum):  [1, 2] -> 3;  [3, 0] -> 3
    # Expert 1: relu([x1 - x2 + 0.5, x1 + x2 - 0.5]) -> relu(2 h1 - h2 + 1):
    #   [1, 2]: h = [0, 2.5] -> relu(0 - 2.5 + 1) = 0;  [3, -1]: h = [4.5, 1.5] -> relu(9 - 1.5 + 1) = 8.5
    np.testing.assert_allclose(np.asarray(experts(x)), [[[3.0], [0.0]], [[3.0], [8.5]]])


def test_mix_weights_the_experts_outputs():
    outputs = np.array([[[1.0, 2.0], [3.0, 4.0]]], np.float32)  # one example, two experts of two units
    np.testing.assert_allclose(np.asarray(mix(np.array([[0.25, 0.75]], np.float32), outputs)), [[2.5, 3.5]])


def test_weight_count_and_bad_arguments():
    experts = Experts(3, units=(16, 8))
    experts.build((None, 100))
    assert experts.count_params() == 3 * (100 * 16 + 16) + 3 * (16 * 8 + 8)
    with pytest.raises(
        ConfigError, match="`num_experts` must be a positive integer. Received: num_experts=0"
    ):
        Experts(0, units=(4,))
