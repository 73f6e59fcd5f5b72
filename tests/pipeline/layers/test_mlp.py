import keras
import numpy as np
import pytest

from pipeline.errors import ConfigError
from pipeline.layers import MLP


def test_golden_values_with_ones_kernels():
    layer = MLP([2, 1], kernel_initializer="ones", bias_initializer="zeros")
    # [1, 2, 3] -> relu(6), relu(6) -> relu(12); negative sums are cut by the ReLU.
    out = layer(np.array([[1.0, 2.0, 3.0], [-1.0, -2.0, 0.0]], np.float32))
    np.testing.assert_allclose(out, [[12.0], [0.0]])


def test_bias_is_added_before_activation():
    layer = MLP([3], activation="linear", kernel_initializer="ones", bias_initializer="ones")
    np.testing.assert_allclose(layer(np.array([[2.0, -5.0]], np.float32)), [[-2.0, -2.0, -2.0]])


def test_shapes_and_weight_count():
    layer = MLP([32, 16])
    out = layer(np.zeros((5, 10), np.float32))
    assert out.shape == (5, 16)
    assert layer.count_params() == (10 * 32 + 32) + (32 * 16 + 16)


def test_dropout_only_while_training():
    layer = MLP([64], activation="linear", dropout=0.5, kernel_initializer="ones")
    x = np.ones((4, 3), np.float32)
    np.testing.assert_allclose(layer(x, training=False), np.full((4, 64), 3.0))
    assert np.any(np.asarray(layer(x, training=True)) == 0.0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"units": []}, "`units` must list at least one layer size. Received: units=[]"),
        ({"units": [4, 0]}, "`units` must hold positive integers only. Received: units=[4, 0]"),
        ({"units": [4], "dropout": 1.0}, "`dropout` must be in [0, 1). Received: dropout=1.0"),
    ],
)
def test_bad_arguments_name_the_value(kwargs, message):
    with pytest.raises(ConfigError) as error:
        MLP(**kwargs)
    assert str(error.value) == message


def test_get_config_round_trip():
    layer = MLP([4, 2], activation="tanh", dropout=0.1, name="m")
    x = np.random.default_rng(0).normal(size=(3, 5)).astype(np.float32)
    expected = layer(x)
    clone = MLP.from_config(layer.get_config())
    clone(x)
    clone.set_weights(layer.get_weights())
    assert clone.get_config() == layer.get_config()
    np.testing.assert_allclose(clone(x), expected)
    assert keras.saving.get_registered_object("mtl>MLP") is MLP


def test_equal_sized_layers_start_from_different_weights():
    layer = MLP([8, 8, 8])
    layer(np.zeros((1, 8), np.float32))
    kernels = [np.asarray(dense.kernel) for dense in layer.dense_layers]
    assert not np.allclose(kernels[1], kernels[2])
