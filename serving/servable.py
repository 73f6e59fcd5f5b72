"""One loaded version of a model: its signatures, and running one of them on numpy inputs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2

from serving.batching import BatchScheduler
from serving.config import BatchingOptions
from serving.errors import ServingError, invalid_argument
from serving.fair_executor import Lane

DEFAULT_SIGNATURE = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"
_GRPC_CODES = {code.value[0]: code for code in grpc.StatusCode}  # TF error codes are gRPC's


def _read_signature_defs(path: Path) -> dict[str, meta_graph_pb2.SignatureDef]:
    saved_model = saved_model_pb2.SavedModel.FromString((path / "saved_model.pb").read_bytes())
    for meta_graph in saved_model.meta_graphs:
        if "serve" in meta_graph.meta_info_def.tags:
            return dict(meta_graph.signature_def)
    raise ValueError(f"{path} has no MetaGraph tagged 'serve'")


_CPP_TYPE_NAMES = {"float32": "float", "float64": "double", "float16": "half"}


def type_name(dtype: tf.DType) -> str:
    """The type's name as TensorFlow's C++ `DataTypeString` prints it in TF Serving's messages."""
    return _CPP_TYPE_NAMES.get(dtype.name, dtype.name)


def signature_dtype(info: meta_graph_pb2.TensorInfo) -> tf.DType:
    return tf.dtypes.as_dtype(info.dtype)


def signature_shape(info: meta_graph_pb2.TensorInfo) -> list[int] | None:
    """The declared shape, -1 for unknown dimensions; None for unknown rank."""
    if info.tensor_shape.unknown_rank:
        return None
    return [dim.size for dim in info.tensor_shape.dim]


class Servable:
    """A SavedModel version loaded for serving.

    Args:
        name: the model name it is served under.
        version: its integer version.
        path: the version directory (`<base_path>/<version>`).
        batching: merge concurrent requests into batches with these parameters (None: one call each).
    """

    def __init__(self, name: str, version: int, path: Path, batching: BatchingOptions | None = None) -> None:
        self.name = name
        self.version = version
        self.path = path
        self.signature_defs = _read_signature_defs(path)
        # What every request is checked against, read from the protos once.
        self._input_specs = {
            signature_name: [
                (alias, signature_dtype(info), signature_shape(info))
                for alias, info in sorted(signature.inputs.items())
            ]
            for signature_name, signature in self.signature_defs.items()
        }
        self._input_dtypes = {
            signature_name: {alias: dtype for alias, dtype, _ in specs}
            for signature_name, specs in self._input_specs.items()
        }
        self._input_positions = {
            signature_name: {alias: position for position, (alias, _, _) in enumerate(specs)}
            for signature_name, specs in self._input_specs.items()
        }
        self._loaded = tf.saved_model.load(str(path), tags=["serve"])
        self._functions = dict(self._loaded.signatures)
        self.batcher = (
            None if batching is None else BatchScheduler(self._call, batching, name=f"batch-{name}-{version}")
        )

    def close(self) -> None:
        """Stops batching once the queued requests have run (requests still arriving run unbatched)."""
        if self.batcher is not None:
            self.batcher.close()

    def input_dtypes(self, signature_name: str) -> dict[str, tf.DType]:
        """The input aliases of a signature this servable has ("" means `serving_default`), with dtypes."""
        return self._input_dtypes[signature_name or DEFAULT_SIGNATURE]

    def signature_def(self, signature_name: str) -> meta_graph_pb2.SignatureDef | None:
        """The named signature ("" means `serving_default`), or None if the model has no such one."""
        return self.signature_defs.get(signature_name or DEFAULT_SIGNATURE)

    def run(
        self,
        signature_name: str,
        inputs: Mapping[str, np.ndarray],
        output_filter: Sequence[str] = (),
    ) -> dict[str, np.ndarray]:
        """Runs a predict signature on inputs already checked to be exactly its inputs.

        Raises:
            ServingError: INVALID_ARGUMENT for a dtype or shape the signature does not take.
        """
        name, arrays = self._checked(signature_name, inputs)
        outputs = self._call(name, arrays) if self.batcher is None else self.batcher.submit(name, arrays)
        return _filtered(outputs, output_filter)

    async def run_async(
        self,
        signature_name: str,
        inputs: Mapping[str, np.ndarray],
        output_filter: Sequence[str],
        lane: Lane,
    ) -> dict[str, np.ndarray]:
        """`run` for an event loop: the model call runs in a batch thread, or unbatched in the front end's
        `lane` of the model threads, so the loop goes on answering meanwhile."""
        name, arrays = self._checked(signature_name, inputs)
        if self.batcher is not None:
            outputs = await self.batcher.submit_async(name, arrays)
        else:
            outputs = await lane.run(self._call, name, arrays)
        return _filtered(outputs, output_filter)

    def check_input(self, signature_name: str, alias: str, dtype: tf.DType, shape: Sequence[int]) -> None:
        """Refuses an input the signature does not take with this dtype and shape, as TensorFlow would
        when running it; a request's tensors are checked so before their values are read.

        Raises:
            ServingError: INVALID_ARGUMENT.
        """
        name = signature_name or DEFAULT_SIGNATURE
        position = self._input_positions[name][alias]
        _, expected, expected_shape = self._input_specs[name][position]
        if dtype != expected:
            raise invalid_argument(
                f"Expects arg[{position}] to be {type_name(expected)} but {type_name(dtype)} is provided"
            )
        _check_shape(alias, tuple(shape), expected_shape)

    def _checked(
        self, signature_name: str, inputs: Mapping[str, np.ndarray]
    ) -> tuple[str, dict[str, np.ndarray]]:
        """The signature's name and the inputs as arrays of its dtypes and shapes."""
        name = signature_name or DEFAULT_SIGNATURE
        arrays = {}
        for alias, expected, _ in self._input_specs[name]:
            value = np.asarray(inputs[alias])
            dtype = tf.string if value.dtype.kind in "SUO" else tf.dtypes.as_dtype(value.dtype)
            self.check_input(name, alias, dtype, value.shape)
            arrays[alias] = value.astype(object) if expected == tf.string else value
        return name, arrays

    def _call(self, signature_name: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One call of the signature's function; every output, as numpy."""
        dtypes = self._input_dtypes[signature_name]
        tensors = {alias: tf.constant(value, dtype=dtypes[alias]) for alias, value in inputs.items()}
        try:
            outputs = self._functions[signature_name](**tensors)
        except tf.errors.InvalidArgumentError as error:
            raise invalid_argument(error.message) from None
        except tf.errors.OpError as error:
            code = _GRPC_CODES.get(error.error_code, grpc.StatusCode.INTERNAL)
            raise ServingError(code, error.message) from None
        return {alias: value.numpy() for alias, value in outputs.items()}


def _filtered(outputs: dict[str, np.ndarray], output_filter: Sequence[str]) -> dict[str, np.ndarray]:
    return {alias: outputs[alias] for alias in output_filter or sorted(outputs)}


def _check_shape(alias: str, shape: tuple[int, ...], expected: list[int] | None) -> None:
    if expected is None:
        return
    if len(shape) != len(expected) or any(e not in (-1, s) for s, e in zip(shape, expected, strict=True)):
        raise invalid_argument(
            f"input '{alias}' has shape [{','.join(map(str, shape))}] but the signature expects "
            f"[{','.join(map(str, expected))}]"
        )
