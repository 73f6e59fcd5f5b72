"""The gRPC frontend: TF Serving's PredictionService and ModelService, from `tensorflow-serving-api`.

The servicers run on a `grpc.aio` server in an event loop of their own: a request waiting for its batch, or
for its model call in the gRPC lane of the model threads, holds no thread, as it would with a thread per
request (dozens of threads contending for the GIL cost more CPU than the requests themselves).
The methods are registered from the services' descriptors with the request left as bytes, so that bytes
that are no request of the method get INVALID_ARGUMENT, not the UNKNOWN gRPC's own deserializer answers.
A request's tensors are checked (dtype, shape, how many values they declare) before their values are read.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from absl import logging
from google.protobuf import descriptor, message, message_factory
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    model_pb2,
    model_service_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from serving import inference_calls
from serving.config import model_sources
from serving.errors import ServingConfigError, ServingError, invalid_argument, shown
from serving.fair_executor import INLINE_BYTES, Lane
from serving.inference import CLASSIFY_METHOD, REGRESS_METHOD, check_multi_inference
from serving.limits import check_elements
from serving.manager import ModelManager
from serving.metrics import ServingMetrics
from serving.responses import SIGNATURE_DEF_FIELD, metadata_response, status_response
from serving.servable import DEFAULT_SIGNATURE, PREDICT_METHOD, Servable
from serving.tensors import declared_shape, request_dtype, to_ndarray, to_tensor_proto

PREDICTION_SERVICE = prediction_service_pb2.DESCRIPTOR.services_by_name["PredictionService"]
MODEL_SERVICE = model_service_pb2.DESCRIPTOR.services_by_name["ModelService"]


def _braces(names: set[str]) -> str:
    return "{" + ",".join(sorted(names)) + "}"


async def _call(context: grpc.aio.ServicerContext, answer: Awaitable[Any]) -> Any:
    try:
        return await answer
    except ServingError as error:
        failure = error
    except Exception as error:  # a bug must cost one request, never the server
        logging.exception("gRPC request failed")
        failure = ServingError(grpc.StatusCode.INTERNAL, f"Internal error: {error}")
    await context.abort(failure.code, failure.message)


async def _now(fn: Callable[[], Any]) -> Any:
    """`fn()` as an awaitable, for answers that need no waiting (status, metadata)."""
    return fn()


def _resolve(manager: ModelManager, spec: model_pb2.ModelSpec) -> Servable:
    version = spec.version.value if spec.HasField("version") else None
    return manager.servable(spec.name, version, spec.version_label or None)


def _tensor_error(alias: str, error: ValueError) -> ServingError:
    """TF Serving's message for a tensor it cannot read, with what was wrong."""
    return invalid_argument(f"tensor parsing error: {alias} ({shown(str(error), 300)})")


def _method_handler(
    method: descriptor.MethodDescriptor, implementation: Callable[..., Awaitable[Any]], lane: Lane
) -> grpc.RpcMethodHandler:
    request_class = message_factory.GetMessageClass(method.input_type)

    async def handle(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
        try:
            if len(raw) <= INLINE_BYTES:
                request = request_class.FromString(raw)
            else:  # parsing it would hold up every other request in the loop meanwhile
                request = await lane.run(request_class.FromString, raw)
        except message.DecodeError as error:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"Failed to parse the request as a {method.input_type.full_name}: {error}",
            )
        return await implementation(request, context)

    return grpc.unary_unary_rpc_method_handler(
        handle, request_deserializer=None, response_serializer=lambda response: response.SerializeToString()
    )


def add_servicer(
    server: grpc.aio.Server, servicer: Any, service: descriptor.ServiceDescriptor, lane: Lane
) -> None:
    """Serves every method of `service` with `servicer`'s method of the same name."""
    handlers = {
        method.name: _method_handler(method, getattr(servicer, method.name), lane)
        for method in service.methods
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Predict, Classify, Regress, MultiInference and GetModelMetadata.

    Args:
        manager: the served models.
        metrics: where request counts and latencies go.
        lane: the gRPC lane of the model threads.
        max_request_elements: requests whose tensors declare more values than this get RESOURCE_EXHAUSTED.
        method_check: Classify and Regress need a signature of their method, as with TF Serving's
            `--enable_signature_method_name_check`.
    """

    def __init__(
        self,
        manager: ModelManager,
        metrics: ServingMetrics,
        lane: Lane,
        max_request_elements: int,
        method_check: bool = False,
    ) -> None:
        self.manager = manager
        self.metrics = metrics
        self.lane = lane
        self.max_request_elements = max_request_elements
        self.method_check = method_check

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
                    f'Serving signature key "{shown(signature_name)}" not found.',
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
                        f"output tensor alias not found in signature: {shown(alias)} Outputs expected to be "
                        f"in the set {_braces(set(signature.outputs))}."
                    )
            inputs = self._inputs(servable, signature_name, request)
            outputs = await servable.run_async(
                signature_name, inputs, tuple(request.output_filter), self.lane
            )
            response = predict_pb2.PredictResponse()
            response.model_spec.name = servable.name
            response.model_spec.version.value = servable.version
            response.model_spec.signature_name = signature_name
            for alias, value in outputs.items():
                response.outputs[alias].CopyFrom(to_tensor_proto(value))
            return response

    def _inputs(
        self, servable: Servable, signature_name: str, request: predict_pb2.PredictRequest
    ) -> dict[str, Any]:
        """The request's tensors as arrays, once their dtypes, shapes and sizes are known to be fine."""
        elements = 0
        for alias, proto in sorted(request.inputs.items()):
            try:
                dtype, shape = request_dtype(proto), declared_shape(proto)
            except ValueError as error:
                raise _tensor_error(alias, error) from None
            servable.check_input(signature_name, alias, dtype, shape)
            elements += math.prod(shape)
        check_elements(elements, self.max_request_elements)
        inputs = {}
        for alias, proto in request.inputs.items():
            try:
                inputs[alias] = to_ndarray(proto)
            except ValueError as error:
                raise _tensor_error(alias, error) from None
        return inputs

    async def Classify(  # noqa: N802
        self, request: classification_pb2.ClassificationRequest, context: grpc.aio.ServicerContext
    ) -> classification_pb2.ClassificationResponse:
        return await _call(context, self._on_examples(request, "classify", CLASSIFY_METHOD))

    async def Regress(  # noqa: N802
        self, request: regression_pb2.RegressionRequest, context: grpc.aio.ServicerContext
    ) -> regression_pb2.RegressionResponse:
        return await _call(context, self._on_examples(request, "regress", REGRESS_METHOD))

    async def _on_examples(self, request: Any, api: str, method: str) -> Any:
        if not request.HasField("model_spec"):
            raise invalid_argument("Missing ModelSpec")
        spec = request.model_spec
        with self.metrics.observe(spec.name, api, "GRPC"):
            servable = _resolve(self.manager, spec)
            return await inference_calls.run(
                method,
                servable,
                spec.signature_name,
                request.input,
                self.lane,
                self.max_request_elements,
                self.method_check,
            )

    async def MultiInference(  # noqa: N802
        self, request: inference_pb2.MultiInferenceRequest, context: grpc.aio.ServicerContext
    ) -> inference_pb2.MultiInferenceResponse:
        return await _call(context, self._multi_inference(request))

    async def _multi_inference(
        self, request: inference_pb2.MultiInferenceRequest
    ) -> inference_pb2.MultiInferenceResponse:
        name = request.tasks[0].model_spec.name if request.tasks else ""
        with self.metrics.observe(name, "multi_inference", "GRPC"):
            check_multi_inference(request)
            # Every task names the same model; the first task's version or label chooses the servable.
            servable = _resolve(self.manager, request.tasks[0].model_spec)
            return await inference_calls.multi_inference(
                servable, request, self.lane, self.max_request_elements, self.method_check
            )

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
                raise invalid_argument(f"Metadata field {shown(field)} is not supported")
        with self.metrics.observe(request.model_spec.name, "metadata", "GRPC"):
            return metadata_response(_resolve(self.manager, request.model_spec))


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    """GetModelStatus and HandleReloadConfigRequest."""

    def __init__(self, manager: ModelManager, metrics: ServingMetrics) -> None:
        self.manager = manager
        self.metrics = metrics

    async def HandleReloadConfigRequest(  # noqa: N802
        self, request: model_management_pb2.ReloadConfigRequest, context: grpc.aio.ServicerContext
    ) -> model_management_pb2.ReloadConfigResponse:
        return await _call(context, self._reload(request))

    async def _reload(
        self, request: model_management_pb2.ReloadConfigRequest
    ) -> model_management_pb2.ReloadConfigResponse:
        """Answers once the new models are loaded (in a thread: loading takes seconds, and the loop keeps
        answering the models that stay meanwhile); a failure is the call's status, as TF Serving's is."""
        if request.config.WhichOneof("config") != "model_config_list":
            raise invalid_argument(
                "ServerModelConfig type not supported by HandleReloadConfigRequest. "
                "Only ModelConfigList is currently supported"
            )
        try:
            sources = model_sources(request.config, "The ReloadConfigRequest")
            unavailable = await asyncio.to_thread(self.manager.reload_config, sources)
        except ServingConfigError as error:
            raise invalid_argument(str(error)) from None
        self.metrics.set_model_names(self.manager.model_names)
        if unavailable:
            raise ServingError(
                grpc.StatusCode.UNKNOWN,
                f"Some models did not become available: {{{', '.join(unavailable)}}}",
            )
        response = model_management_pb2.ReloadConfigResponse()
        response.status.error_code = 0  # OK
        return response

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
