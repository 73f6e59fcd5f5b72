import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, types_pb2

from serving.tensors import declared_shape, request_dtype, to_ndarray, to_tensor_proto

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


def test_what_no_request_may_carry_is_refused_before_conversion():
    out_of_range = tensor_pb2.TensorProto(dtype=types_pb2.DT_UINT8, int_val=[300])
    out_of_range.tensor_shape.dim.add(size=1)
    with pytest.raises(ValueError, match="300 out of bounds for uint8"):
        to_ndarray(out_of_range)
    for dtype in (types_pb2.DT_RESOURCE, types_pb2.DT_VARIANT, types_pb2.DT_FLOAT_REF):
        with pytest.raises(ValueError, match="tensors cannot be sent in a request"):
            request_dtype(tensor_pb2.TensorProto(dtype=dtype))
    negative = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT)
    negative.tensor_shape.dim.add(size=-1)
    with pytest.raises(ValueError, match=r"negative dimension in shape \[-1\]"):
        declared_shape(negative)
