import numpy as np
import pytest

from pipeline.errors import ConfigError
from pipeline.layers import Gate
from pipeline.layers.gate import softmax


def test_golden_softmax_of_projection():
    gate = Gate(3)
    gate.build((None, 2))
    gate.kernel.assign(np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]], np.float32))
    weights = gate(np.array([[1.0, 5.0]], np.float32))
    expected = np.exp([1.0, 2.0, 3.0]) / np.exp([1.0, 2.0, 3.0]).sum()  # [0.0900, 0.2447, 0.6652]
    np.testing.assert_allclose(weights, [expected], rtol=1e-6)


def test_softmax_is_stable_for_large_logits():
    weights = np.asarray(softmax(np.array([[1000.0, 1000.0, -1000.0], [-1e4, -1e4, -1e4]], np.float32)))
    np.testing.assert_allclose(weights, [[0.5, 0.5, 0.0], [1 / 3, 1 / 3, 1 / 3]], rtol=1e-6)


def test_ones_kernel_gives_uniform_weights():
    weights = Gate(4, kernel_initializer="ones")(np.array([[0.3, -2.0]], np.float32))
    np.testing.assert_allclose(weights, [[0.25] * 4], rtol=1e-6)


def test_rows_sum_to_one_and_no_bias():
    gate = Gate(8)
    x = np.random.default_rng(1).normal(size=(64, 10)).astype(np.float32)
    weights = np.asarray(gate(x))
    assert weights.shape == (64, 8)
    np.testing.assert_allclose(weights.sum(axis=1), np.ones(64), rtol=1e-5)
    assert (weights > 0).all()
    assert gate.count_params() == 10 * 8


def test_bad_num_experts():
    with pytest.raises(ConfigError, match=r"Received: num_experts=0"):
        Gate(0)
