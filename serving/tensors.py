"""TensorProto <-> numpy for the gRPC hot path.

`tf.make_ndarray` and `tf.make_tensor_proto` are general (every dtype, every proto field) and spend most of
their time on that generality: on one-row requests they were about a quarter of the server's CPU. Numeric
tensors in `tensor_content` (what clients built with `tf.make_tensor_proto` send for more than one value)
convert here with one buffer copy; everything else goes to TensorFlow's functions.
A request's tensors are checked first (`declared_shape`, `request_dtype`): their shapes bound what
converting them allocates, and handles to server-side state (resources, variants) are no request's values.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

_NOT_VALUES = (tf.resource, tf.variant)

_NUMERIC = {
    types_pb2.DT_FLOAT: np.float32,
    types_pb2.DT_DOUBLE: np.float64,
    types_pb2.DT_INT32: np.int32,
    types_pb2.DT_INT64: np.int64,
}
_ENUMS = {np.dtype(numpy_type): enum for enum, numpy_type in _NUMERIC.items()}


def declared_shape(proto: tensor_pb2.TensorProto) -> list[int]:
    """The shape the tensor declares.

    Raises:
        ValueError: an unknown rank or a negative dimension.
    """
    if proto.tensor_shape.unknown_rank:
        raise ValueError("a request tensor needs a known shape")
    shape = [dim.size for dim in proto.tensor_shape.dim]
    if any(size < 0 for size in shape):
        raise ValueError(f"negative dimension in shape {shape}")
    return shape


def request_dtype(proto: tensor_pb2.TensorProto) -> tf.DType:
    """The tensor's dtype, one a request may carry values of.

    Raises:
        ValueError: not a DataType, a reference type, or a resource or variant handle.
    """
    try:
        dtype = tf.dtypes.as_dtype(proto.dtype)
    except TypeError:
        raise ValueError(f"{proto.dtype} is not a DataType") from None
    if dtype in _NOT_VALUES or dtype.base_dtype != dtype:
        raise ValueError(f"{types_pb2.DataType.Name(proto.dtype)} tensors cannot be sent in a request")
    return dtype


def to_ndarray(proto: tensor_pb2.TensorProto) -> np.ndarray:
    """The tensor as a numpy array (read-only when it comes straight from `tensor_content`).

    Raises:
        ValueError: the tensor's values do not fit its dtype and shape; see also `request_dtype`.
    """
    request_dtype(proto)
    numpy_type = _NUMERIC.get(proto.dtype)
    if numpy_type is None or not proto.tensor_content:
        try:
            return tf.make_ndarray(proto)
        except (OverflowError, TypeError) as error:  # a value outside the dtype's range, say
            raise ValueError(str(error)) from None
    shape = declared_shape(proto)
    values = np.frombuffer(proto.tensor_content, dtype=np.dtype(numpy_type).newbyteorder("<"))
    if values.size != np.prod(shape, dtype=object):
        raise ValueError(f"tensor_content holds {values.size} values for shape {shape}")
    return values.reshape(shape)


def to_tensor_proto(array: np.ndarray) -> tensor_pb2.TensorProto:
    """The array as a TensorProto, numeric values in `tensor_content` as TensorFlow's C++ writes them."""
    enum = _ENUMS.get(array.dtype)
    if enum is None:
        return tf.make_tensor_proto(array)
    return tensor_pb2.TensorProto(
        dtype=enum,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=size) for size in array.shape]
        ),
        tensor_content=np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes(),
    )
