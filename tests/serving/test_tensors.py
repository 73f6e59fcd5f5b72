import numpy as np
import pytest
import tensorflow as tf

from serving.tensors import to_ndarray, to_tensor_proto

ARRAYS = [
    np.arange(6, dtype=np.float32).reshape(2, 3) / 7,
    np.array([1.5], np.float64),
    np.array([[-3, 4]], np.int32),
    np.array([2**40, -1], np.int64),
    np.zeros((0, 4), np.float32),
    np.array([b"a", b"bc"], object),
    np.array([True, False]),
]


@pytest.mark.parametrize("array", ARRAYS, ids=lambda a: f"{a.dtype}{list(a.shape)}")
def test_round_trips_agree_with_tensorflow(array):
    proto = to_tensor_proto(array)
    np.testing.assert_array_equal(tf.make_ndarray(proto), array)
    assert tf.make_ndarray(proto).dtype == tf.make_ndarray(tf.make_tensor_proto(array)).dtype
    decoded = to_ndarray(tf.make_tensor_proto(array))
    np.testing.assert_array_equal(decoded, array)
    assert decoded.shape == array.shape


def test_values_outside_tensor_content_are_read_by_tensorflow():
    proto = tf.make_tensor_proto(np.array([0.25], np.float32))  # one value: TF writes float_val
    assert not proto.tensor_content
    np.testing.assert_array_equal(to_ndarray(proto), [0.25])


def test_content_that_does_not_fill_the_shape_is_refused():
    proto = tf.make_tensor_proto(np.ones((2, 3), np.float32))
    proto.tensor_shape.dim[1].size = 4
    with pytest.raises(ValueError, match=r"tensor_content holds 6 values for shape \[2, 4\]"):
        to_ndarray(proto)
