import numpy as np

from pipeline.layers import Tower


def test_golden_logit():
    tower = Tower([2], kernel_initializer="ones", bias_initializer="zeros")
    # [1, 1] -> hidden relu(2), relu(2) -> logit 4.
    np.testing.assert_allclose(tower(np.array([[1.0, 1.0]], np.float32)), [4.0])


def test_keeps_the_batch_rank_for_a_batch_of_one():
    out = Tower([8])(np.zeros((1, 16), np.float32))
    assert out.shape == (1,)


def test_empty_units_is_a_linear_read_out():
    tower = Tower([], kernel_initializer="ones", bias_initializer="ones")
    np.testing.assert_allclose(tower(np.array([[1.0, -3.0]], np.float32)), [-1.0])
    assert tower.count_params() == 3


def test_get_config_round_trip():
    tower = Tower([4], activation="gelu", dropout=0.2)
    x = np.random.default_rng(0).normal(size=(3, 6)).astype(np.float32)
    expected = tower(x)
    clone = Tower.from_config(tower.get_config())
    clone(x)
    clone.set_weights(tower.get_weights())
    np.testing.assert_allclose(clone(x), expected, rtol=1e-6)
