"""The gRPC frontend: TF Serving's PredictionService and ModelService, from `tensorflow-serving-api`.

The servicers run on a `grpc.aio` server, in the event loop the REST frontend shares: a request waiting for
its batch, or for a large unbatched call in the thread pool, holds no thread, as it would with a thread per
request (dozens of threads contending for the GIL cost more CPU than the requests themselves).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from typing import Any

import grpc
from absl import logging
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from serving.errors import ServingError, invalid_argument
from serving.manager import ModelManager
from serving.metrics import ServingMetrics
from serving.responses import SIGNATURE_DEF_FIELD, metadata_response, status_response
from serving.servable import DEFAULT_SIGNATURE, PREDICT_METHOD, Servable
from serving.tensors import to_ndarray, to_tensor_proto

MAX_MESSAGE_CHARS = 1024  # TF Serving truncates longer error messages


def _braces(names: set[str]) -> str:
    return "{" + ",".join(sorted(names)) + "}"


async def _call(context: grpc.aio.ServicerContext, answer: Awaitable[Any]) -> Any:
    try:
        return await answer
    except ServingError as error:
        await context.abort(error.code, error.message[:MAX_MESSAGE_CHARS])
    except Exception as error:  # a bug must cost one request, never the server
        logging.exception("gRPC request failed")
        await context.abort(grpc.StatusCode.INTERNAL, f"Internal error: {error}"[:MAX_MESSAGE_CHARS])


async def _unimplemented(request: Any, context: grpc.aio.ServicerContext) -> None:
    """What gRPC answers for a method a server lacks; these exports have only predict signatures."""
    await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not implemented!")


async def _now(fn: Callable[[], Any]) -> Any:
    """`fn()` as an awaitable, for answers that need no waiting (status, metadata)."""
    return fn()


def _resolve(manager: ModelManager, spec: model_pb2.ModelSpec) -> Servable:
    version = spec.version.value if spec.HasField("version") else None
    return manager.servable(spec.name, version, spec.version_label or None)


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Predict and GetModelMetadata; Classify, Regress and MultiInference answer UNIMPLEMENTED."""

    def __init__(self, manager: ModelManager, metrics: ServingMetrics, executor: Executor) -> None:
        self.manager = manager
        self.metrics = metrics
        self.executor = executor

    async def Predict(  # noqa: N802
        self, request: predict_pb2.PredictRequest, context: grpc.aio.ServicerContext
    ) -> predict_pb2.PredictResponse:
        return await _call(context, self._predict(request))

    async def _predict(self, request: predict_pb2.PredictRequest) -> predict_pb2.PredictResponse:
        if not request.HasField("model_spec"):
            raise invalid_argument("Missing ModelSpec")
        spec = request.model_spec
        with self.metrics.observe(spec.name, "predict", "GRPC"):
            servable = _resolve(self.manager, spec)
            signature_name = spec.signature_name or DEFAULT_SIGNATURE
            signature = servable.signature_def(signature_name)
            if signature is None:
                raise ServingError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f'Serving signature key "{signature_name}" not found.',
                )
            if signature.method_name != PREDICT_METHOD:
                raise invalid_argument(
                    f"Expected prediction signature method_name to be {PREDICT_METHOD}. "
                    f"Was: {signature.method_name}"
                )
            sent, expected = set(request.inputs), set(signature.inputs)
            if sent != expected:
                extra, missing = _braces(sent - expected), _braces(expected - sent)
                raise invalid_argument(
                    f"input size does not match signature: {len(sent)}!={len(expected)} "
                    f"len({_braces(sent)}) != len({_braces(expected)}). "
                    f"Sent extra: {extra}. Missing but required: {missing}."
                )
            for alias in request.output_filter:
                if alias not in signature.outputs:
                    raise invalid_argument(
                        f"output tensor alias not found in signature: {alias} Outputs expected to be in "
                        f"the set {_braces(set(signature.outputs))}."
                    )
            try:
                inputs = {alias: to_ndarray(proto) for alias, proto in request.inputs.items()}
            except (TypeError, ValueError) as error:
                raise invalid_argument(f"Invalid input tensor: {error}") from None
            outputs = await servable.run_async(
                signature_name, inputs, tuple(request.output_filter), self.executor
            )
            response = predict_pb2.PredictResponse()
            response.model_spec.name = servable.name
            response.model_spec.version.value = servable.version
            response.model_spec.signature_name = signature_name
            for alias, value in outputs.items():
                response.outputs[alias].CopyFrom(to_tensor_proto(value))
            return response

    Classify = Regress = MultiInference = staticmethod(_unimplemented)  # noqa: N815

    async def GetModelMetadata(  # noqa: N802
        self, request: get_model_metadata_pb2.GetModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        return await _call(context, _now(lambda: self._metadata(request)))

    def _metadata(
        self, request: get_model_metadata_pb2.GetModelMetadataRequest
    ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        if not request.HasField("model_spec"):
            raise invalid_argument("Missing ModelSpec")
        if not request.metadata_field:
            raise invalid_argument("GetModelMetadataRequest must specify at least one metadata_field")
        for field in request.metadata_field:
            if field != SIGNATURE_DEF_FIELD:
                raise invalid_argument(f"Metadata field {field} is not supported")
        with self.metrics.observe(request.model_spec.name, "metadata", "GRPC"):
            return metadata_response(_resolve(self.manager, request.model_spec))


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    """GetModelStatus; HandleReloadConfigRequest answers UNIMPLEMENTED."""

    def __init__(self, manager: ModelManager) -> None:
        self.manager = manager

    HandleReloadConfigRequest = staticmethod(_unimplemented)  # noqa: N815

    async def GetModelStatus(  # noqa: N802
        self, request: get_model_status_pb2.GetModelStatusRequest, context: grpc.aio.ServicerContext
    ) -> get_model_status_pb2.GetModelStatusResponse:
        return await _call(context, _now(lambda: self._status(request)))

    def _status(
        self, request: get_model_status_pb2.GetModelStatusRequest
    ) -> get_model_status_pb2.GetModelStatusResponse:
        if not request.HasField("model_spec"):
            raise invalid_argument("Missing ModelSpec")
        spec = request.model_spec
        version = spec.version.value if spec.HasField("version") else None
        return status_response(self.manager.statuses(spec.name, version, spec.version_label or None))
