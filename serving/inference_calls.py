"""Classify, Regress and MultiInference on a loaded servable, for both front ends.

A signature is found and checked as TF Serving does (serving/inference.py), and its serialized examples run
through `Servable.run_async`: the same batching and fair model lanes as Predict, so these calls cannot starve
predictions or be starved by them.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from tensorflow_serving.apis import (
    classification_pb2,
    inference_pb2,
    input_pb2,
    model_pb2,
    regression_pb2,
)

from serving import inference
from serving.errors import invalid_argument, shown
from serving.fair_executor import Lane
from serving.limits import check_elements
from serving.servable import DEFAULT_SIGNATURE, Servable


def _examples(input_proto: input_pb2.Input, max_elements: int) -> np.ndarray:
    """The serialized examples; more examples than `max_elements` is RESOURCE_EXHAUSTED, as for tensors."""
    examples = inference.serialized_examples(input_proto)
    check_elements(len(examples), max_elements)
    return examples


def _fill_spec(spec: model_pb2.ModelSpec, servable: Servable, signature_name: str) -> None:
    """The model spec TF Serving answers with: the name, the version that ran and the resolved signature."""
    spec.name = servable.name
    spec.version.value = servable.version
    spec.signature_name = signature_name


@dataclasses.dataclass(frozen=True)
class _Api:
    """What differs between Classify and Regress: the signature check, the result and the response."""

    kind: str  # as TF Serving's messages name it
    outputs: Callable[[inference.SignatureDef], tuple[str, ...]]
    result: Callable[[Mapping[str, np.ndarray], int], Any]
    response: Callable[[], Any]


_APIS = {
    inference.CLASSIFY_METHOD: _Api(
        "classification",
        inference.classification_outputs,
        inference.classification_result,
        classification_pb2.ClassificationResponse,
    ),
    inference.REGRESS_METHOD: _Api(
        "regression",
        inference.regression_outputs,
        inference.regression_result,
        regression_pb2.RegressionResponse,
    ),
}


def _checked_outputs(method: str, signature: inference.SignatureDef, method_check: bool) -> tuple[str, ...]:
    """The outputs `method` reads from `signature`; with `method_check` (TF Serving's
    `--enable_signature_method_name_check`) the signature's method must be `method` too."""
    api = _APIS[method]
    if method_check and signature.method_name != method:
        raise invalid_argument(
            f"Expected {api.kind} signature method_name to be {method}. Was: {signature.method_name}"
        )
    return api.outputs(signature)


async def run(
    method: str,
    servable: Servable,
    signature_name: str,
    input_proto: input_pb2.Input,
    lane: Lane,
    max_elements: int,
    method_check: bool = False,
) -> classification_pb2.ClassificationResponse | regression_pb2.RegressionResponse:
    """Classify (`inference.CLASSIFY_METHOD`: classes and scores per example) or Regress (one value per
    example) with a signature ("" is `serving_default`); `method_check` as `_checked_outputs`.

    Raises:
        ServingError: INVALID_ARGUMENT for a missing or unsuitable signature or an empty input.
    """
    api = _APIS[method]
    name = signature_name or DEFAULT_SIGNATURE
    signature = servable.signature_def(name)
    if signature is None:
        raise invalid_argument(f"No signature was found with the name: {shown(name)}")
    outputs = _checked_outputs(method, signature, method_check)
    examples = _examples(input_proto, max_elements)
    values = await servable.run_async(name, {inference.INPUTS: examples}, outputs, lane)
    response = api.response()
    response.result.CopyFrom(api.result(values, len(examples)))
    _fill_spec(response.model_spec, servable, name)
    return response


async def multi_inference(
    servable: Servable,
    request: inference_pb2.MultiInferenceRequest,
    lane: Lane,
    max_elements: int,
    method_check: bool = False,
) -> inference_pb2.MultiInferenceResponse:
    """Every task of `request` (already checked by `inference.check_multi_inference`) on its one input, with
    the results in task order; `method_check` as `_checked_outputs`.

    Raises:
        ServingError: INVALID_ARGUMENT for a missing or unsuitable signature, signatures taking different
            inputs, or an empty input.
    """
    plans: list[tuple[str, _Api, tuple[str, ...]]] = []
    input_name: str | None = None
    for task in request.tasks:
        name = task.model_spec.signature_name or DEFAULT_SIGNATURE
        signature = servable.signature_def(name)
        if signature is None:
            raise invalid_argument(f"Requested signature not found in model graph: {shown(name)}")
        api = _APIS[task.method_name]
        outputs = _checked_outputs(task.method_name, signature, method_check)
        # As TF Serving: the signatures must read one tensor of the graph, which this project's exports
        # share (a SavedModel written by Keras alone gives each signature a placeholder of its own).
        tensor = signature.inputs[inference.INPUTS].name
        if input_name is not None and tensor != input_name:
            raise invalid_argument("Input tensor must be the same for all Signatures.")
        input_name = tensor
        plans.append((name, api, outputs))
    examples = _examples(request.input, max_elements)
    values = await asyncio.gather(
        *(servable.run_async(name, {inference.INPUTS: examples}, outputs, lane) for name, _, outputs in plans)
    )
    response = inference_pb2.MultiInferenceResponse()
    for (name, api, _), outputs in zip(plans, values, strict=True):
        result = response.results.add()
        _fill_spec(result.model_spec, servable, name)
        field = "classification_result" if api is _APIS[inference.CLASSIFY_METHOD] else "regression_result"
        getattr(result, field).CopyFrom(api.result(outputs, len(examples)))
    return response
