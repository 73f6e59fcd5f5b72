"""TensorProto <-> numpy for the gRPC hot path.

`tf.make_ndarray` and `tf.make_tensor_proto` are general (every dtype, every proto field) and spend most of
their time on that generality: on one-row requests they were about a quarter of the server's CPU. Numeric
tensors in `tensor_content` (what clients built with `tf.make_tensor_proto` send for more than one value)
convert here with one buffer copy; everything else goes to TensorFlow's functions.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

_NUMERIC = {
    types_pb2.DT_FLOAT: np.float32,
    types_pb2.DT_DOUBLE: np.float64,
    types_pb2.DT_INT32: np.int32,
    types_pb2.DT_INT64: np.int64,
}
_ENUMS = {np.dtype(numpy_type): enum for enum, numpy_type in _NUMERIC.items()}


def to_ndarray(proto: tensor_pb2.TensorProto) -> np.ndarray:
    """The tensor as a numpy array (read-only when it comes straight from `tensor_content`)."""
    numpy_type = _NUMERIC.get(proto.dtype)
    if numpy_type is None or not proto.tensor_content:
        return tf.make_ndarray(proto)
    shape = [dim.size for dim in proto.tensor_shape.dim]
    values = np.frombuffer(proto.tensor_content, dtype=np.dtype(numpy_type).newbyteorder("<"))
    if values.size != int(np.prod(shape, dtype=np.int64)):
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
