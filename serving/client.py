"""Clients for a TF Serving endpoint (the container or the embedded server): `{task: numpy array}` out.

    client = connect("grpc://localhost:8500", "mmoe")     # or "http://localhost:8501"
    predictions = client.predict({"inputs": batch})       # {"y1": array([...]), "y2": array([...])}
    client.classify(rows, "ctr")                          # [[("0", 0.8), ("1", 0.2)], ...]
    client.regress(rows, "watch_time")                    # [12.5, ...]

Classify and Regress take serialized `tf.train.Example`s, `tf.train.Example`s, or rows (`{feature: value}`:
numbers become float features, strings and bytes bytes features).

Both retry UNAVAILABLE (a server still loading, restarting or swapping versions) with backoff, and time out.
"""

from __future__ import annotations

import abc
import base64
import dataclasses
import json
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import quote, urlparse

import grpc
import numpy as np
import requests
import tensorflow as tf
from tensorflow.core.example import example_pb2
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    input_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from serving.layout import MAX_GRPC_MESSAGE_BYTES

PREDICT_METHOD = "tensorflow/serving/predict"

_T = TypeVar("_T")
Examples = Sequence[bytes | example_pb2.Example | Mapping[str, Any]]
Classes = list[list[tuple[str, float]]]


@dataclasses.dataclass(frozen=True)
class Signature:
    """Input and output aliases of a signature, with their numpy dtypes, and its TF Serving method."""

    inputs: dict[str, np.dtype]
    outputs: dict[str, np.dtype]
    method: str = PREDICT_METHOD

    @classmethod
    def from_dtype_enums(
        cls, inputs: Mapping[str, int], outputs: Mapping[str, int], method: str = PREDICT_METHOD
    ) -> Signature:
        def numpy(dtypes: Mapping[str, int]) -> dict[str, np.dtype]:
            # DT_INVALID (0) marks tensors of no dtype, such as the outputs of `__saved_model_init_op`.
            return {
                alias: tf.dtypes.as_dtype(dtype).as_numpy_dtype for alias, dtype in dtypes.items() if dtype
            }

        return cls(numpy(inputs), numpy(outputs), method)


class PredictionError(Exception):
    """The server refused a request; `code` is the gRPC status code name, `message` the server's words."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class PredictClient(abc.ABC):
    """Predictions of one served model, by task name.

    Args:
        model_name: the served model's name.
        version: a specific version (default: the newest available).
        version_label: a version label such as "stable" (instead of `version`).
        signature_name: the signature to run (default: `serving_default`).
        timeout_seconds: per attempt.
        retries: further attempts after UNAVAILABLE.
    """

    def __init__(
        self,
        model_name: str,
        version: int | None = None,
        version_label: str | None = None,
        signature_name: str = "",
        timeout_seconds: float = 10.0,
        retries: int = 3,
    ) -> None:
        if version is not None and version_label:
            raise ValueError("Give a version or a version label, not both.")
        self.model_name = model_name
        self.version = version
        self.version_label = version_label
        self.signature_name = signature_name
        self.timeout_seconds = timeout_seconds
        self.retries = retries
        self._signatures: dict[str, Signature] | None = None

    @abc.abstractmethod
    def predict(self, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Runs the signature on a batch of named inputs; returns every output by name."""

    @abc.abstractmethod
    def classify(self, examples: Examples, signature_name: str = "") -> Classes:
        """Per example, each class's (label, score), from a classify signature (default: the client's)."""

    @abc.abstractmethod
    def regress(self, examples: Examples, signature_name: str = "") -> list[float]:
        """One value per example, from a regress signature (default: the client's)."""

    def signature(self, signature_name: str | None = None) -> Signature:
        """A signature's (default: the client's) inputs, outputs and method, read once from the model's
        metadata."""
        name = (self.signature_name if signature_name is None else signature_name) or "serving_default"
        if self._signatures is None:
            self._signatures = self._read_signatures()
        if name not in self._signatures:
            raise PredictionError("INVALID_ARGUMENT", f"The model has no signature {name!r}.")
        return self._signatures[name]

    @abc.abstractmethod
    def _read_signatures(self) -> dict[str, Signature]:
        """Every signature of the model, from its metadata."""

    def _with_retries(self, attempt: Callable[[], _T]) -> _T:
        for remaining in range(self.retries, -1, -1):
            try:
                return attempt()
            except PredictionError as error:
                if error.code != "UNAVAILABLE" or remaining == 0:
                    raise
                time.sleep(0.1 * 2 ** (self.retries - remaining))
        raise AssertionError("unreachable")

    @abc.abstractmethod
    def close(self) -> None:
        """Releases the connection."""

    def __enter__(self) -> PredictClient:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class GrpcClient(PredictClient):
    """PredictionService over gRPC, with `tensorflow-serving-api`'s protos. `target` is `host:port`."""

    def __init__(self, target: str, model_name: str, **kwargs: Any) -> None:
        super().__init__(model_name, **kwargs)
        self._channel = grpc.insecure_channel(
            target,
            options=[
                ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_BYTES),
            ],
        )
        self._stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)

    def _fill_spec(self, spec, signature_name: str | None = None) -> None:
        spec.name = self.model_name
        spec.signature_name = self.signature_name if signature_name is None else signature_name
        if self.version is not None:
            spec.version.value = self.version
        elif self.version_label:
            spec.version_label = self.version_label

    def _rpc(self, method: Callable, request: Any) -> Any:
        def attempt() -> Any:
            try:
                return method(request, timeout=self.timeout_seconds)
            except grpc.RpcError as error:
                raise PredictionError(error.code().name, error.details() or "") from None

        return self._with_retries(attempt)

    def _read_signatures(self) -> dict[str, Signature]:
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        self._fill_spec(request.model_spec, "")
        response = self._rpc(self._stub.GetModelMetadata, request)
        signatures = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signatures)
        return {
            name: Signature.from_dtype_enums(
                {alias: info.dtype for alias, info in signature.inputs.items()},
                {alias: info.dtype for alias, info in signature.outputs.items()},
                signature.method_name,
            )
            for name, signature in signatures.signature_def.items()
        }

    def classify(self, examples: Examples, signature_name: str = "") -> Classes:
        request = classification_pb2.ClassificationRequest()
        self._fill_spec(request.model_spec, signature_name or None)
        request.input.CopyFrom(_input(examples))
        response = self._rpc(self._stub.Classify, request)
        return [[(c.label, c.score) for c in item.classes] for item in response.result.classifications]

    def regress(self, examples: Examples, signature_name: str = "") -> list[float]:
        request = regression_pb2.RegressionRequest()
        self._fill_spec(request.model_spec, signature_name or None)
        request.input.CopyFrom(_input(examples))
        response = self._rpc(self._stub.Regress, request)
        return [r.value for r in response.result.regressions]

    def predict(self, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        dtypes = self.signature().inputs
        request = predict_pb2.PredictRequest()
        self._fill_spec(request.model_spec)
        for alias, value in inputs.items():
            array = np.asarray(value, dtype=dtypes.get(alias))
            request.inputs[alias].CopyFrom(tf.make_tensor_proto(array))
        response = self._rpc(self._stub.Predict, request)
        return {alias: tf.make_ndarray(proto) for alias, proto in response.outputs.items()}

    def close(self) -> None:
        self._channel.close()


class RestClient(PredictClient):
    """The REST API, sending the columnar `inputs` format. `base_url` is `http://host:port`."""

    def __init__(self, base_url: str, model_name: str, **kwargs: Any) -> None:
        super().__init__(model_name, **kwargs)
        self._session = requests.Session()
        path = f"{base_url.rstrip('/')}/v1/models/{quote(model_name, safe='')}"
        if self.version is not None:
            path += f"/versions/{self.version}"
        elif self.version_label:
            path += f"/labels/{quote(self.version_label, safe='')}"
        self._model_url = path

    def _request(self, method: str, url: str, body: str | None = None) -> Any:
        def attempt() -> Any:
            try:
                response = self._session.request(
                    method,
                    url,
                    data=body,
                    headers={"Content-Type": "application/json"},
                    timeout=self.timeout_seconds,
                )
            except requests.ConnectionError as error:
                raise PredictionError("UNAVAILABLE", str(error)) from None
            except requests.Timeout:
                raise PredictionError("DEADLINE_EXCEEDED", f"No answer in {self.timeout_seconds}s") from None
            if response.status_code != 200:
                raise PredictionError(_code_of_http_status(response.status_code), _error_text(response))
            return response.json()

        return self._with_retries(attempt)

    def _read_signatures(self) -> dict[str, Signature]:
        metadata = self._request("GET", f"{self._model_url}/metadata")
        return {
            name: Signature.from_dtype_enums(
                _dtype_enums(signature["inputs"]),
                _dtype_enums(signature["outputs"]),
                signature.get("method_name", PREDICT_METHOD),
            )
            for name, signature in metadata["metadata"]["signature_def"]["signature_def"].items()
        }

    def _examples_call(self, verb: str, examples: Examples, signature_name: str) -> list[Any]:
        payload: dict[str, Any] = {"examples": [_example_json(example) for example in _to_examples(examples)]}
        if signature_name or self.signature_name:
            payload["signature_name"] = signature_name or self.signature_name
        return self._request("POST", f"{self._model_url}:{verb}", json.dumps(payload))["results"]

    def classify(self, examples: Examples, signature_name: str = "") -> Classes:
        results = self._examples_call("classify", examples, signature_name)
        return [[(str(label), float(score)) for label, score in item] for item in results]

    def regress(self, examples: Examples, signature_name: str = "") -> list[float]:
        return [float(value) for value in self._examples_call("regress", examples, signature_name)]

    def predict(self, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        signature = self.signature()
        dtypes = signature.inputs
        payload = {
            "inputs": {
                alias: _jsonable(np.asarray(value, dtype=dtypes.get(alias)))
                for alias, value in inputs.items()
            }
        }
        if self.signature_name:
            payload["signature_name"] = self.signature_name
        outputs = self._request("POST", f"{self._model_url}:predict", json.dumps(payload))["outputs"]
        if len(signature.outputs) == 1:  # one output comes back as the bare tensor, without its alias
            outputs = {next(iter(signature.outputs)): outputs}
        return {alias: np.asarray(value, dtype=signature.outputs[alias]) for alias, value in outputs.items()}

    def close(self) -> None:
        self._session.close()


def _dtype_enums(infos: Mapping[str, Any]) -> dict[str, int]:
    return {alias: types_pb2.DataType.Value(info["dtype"]) for alias, info in infos.items()}


_HTTP_CODES = {
    400: "INVALID_ARGUMENT",
    404: "NOT_FOUND",
    413: "RESOURCE_EXHAUSTED",
    429: "RESOURCE_EXHAUSTED",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def _code_of_http_status(status: int) -> str:
    return _HTTP_CODES.get(status, "INTERNAL" if status >= 500 else "UNKNOWN")


def _error_text(response: requests.Response) -> str:
    try:
        return response.json()["error"]
    except (ValueError, KeyError, TypeError):
        return response.text


def _jsonable(array: np.ndarray) -> Any:
    """Strings as JSON strings; bytes that are not UTF-8 (serialized examples) as `{"b64": ...}`."""
    if array.dtype.kind in "SO":
        return np.vectorize(lambda v: _bytes_json(v) if isinstance(v, bytes) else v, otypes=[object])(
            array
        ).tolist()
    return array.tolist()


def _to_examples(examples: Examples) -> list[example_pb2.Example]:
    """Serialized examples, examples or rows, as examples: a row's numbers become float features (how the
    exported models parse numeric features), its strings and bytes bytes features."""
    if isinstance(examples, (bytes, str, Mapping)):
        raise TypeError("Give a sequence of examples, serialized examples or rows, not one of them.")
    result = []
    for item in examples:
        if isinstance(item, example_pb2.Example):
            result.append(item)
        elif isinstance(item, (bytes, np.bytes_)):
            result.append(example_pb2.Example.FromString(bytes(item)))
        else:
            result.append(_row_example(item))
    return result


def _row_example(row: Mapping[str, Any]) -> example_pb2.Example:
    example = example_pb2.Example()
    for name, value in row.items():
        feature = example.features.feature[name]
        for item in np.ravel(np.asarray(value, dtype=object)):
            if isinstance(item, str):
                feature.bytes_list.value.append(item.encode("utf-8"))
            elif isinstance(item, (bytes, np.bytes_)):
                feature.bytes_list.value.append(bytes(item))
            else:
                feature.float_list.value.append(float(item))
    return example


def _input(examples: Examples) -> input_pb2.Input:
    input_proto = input_pb2.Input()
    input_proto.example_list.examples.extend(_to_examples(examples))
    return input_proto


def _example_json(example: example_pb2.Example) -> dict[str, Any]:
    """An example as TF Serving's REST `examples` element: floats as JSON numbers with a fraction (so they
    stay floats), int64s as integers, bytes as strings or, when not UTF-8, `{"b64": ...}`."""
    row: dict[str, Any] = {}
    for name, feature in example.features.feature.items():
        kind = feature.WhichOneof("kind")
        if kind == "float_list":
            row[name] = [float(value) for value in feature.float_list.value]
        elif kind == "int64_list":
            row[name] = list(feature.int64_list.value)
        elif kind == "bytes_list":
            row[name] = [_bytes_json(value) for value in feature.bytes_list.value]
    return row


def _bytes_json(value: bytes) -> Any:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return {"b64": base64.b64encode(value).decode("ascii")}


def connect(server: str, model_name: str, **kwargs: Any) -> PredictClient:
    """A client for `server`: `grpc://host:port` or `host:port` for gRPC, `http(s)://host:port` for REST."""
    parsed = urlparse(server if "://" in server else f"grpc://{server}")
    if parsed.scheme == "grpc":
        return GrpcClient(parsed.netloc, model_name, **kwargs)
    if parsed.scheme in ("http", "https"):
        return RestClient(f"{parsed.scheme}://{parsed.netloc}", model_name, **kwargs)
    raise ValueError(f"Unknown scheme in --server={server}; use grpc://host:port or http://host:port.")
