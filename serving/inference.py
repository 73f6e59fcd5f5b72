"""TF Serving's inference APIs over `tf.Example`: Classify, Regress and MultiInference.

They take `Example`s (an `Input`: a list, or a list with a context merged into each) rather than tensors, run
a signature whose one input is the serialized examples (`inputs`) and turn its outputs into results:
classes and scores for Classify, one value per example for Regress. The checks and messages are TF Serving's
(servables/tensorflow/classifier.cc, regressor.cc, multi_inference.cc, util.cc; util/json_tensor.cc for REST),
with the signature method check off, as TF Serving's default is: a signature serves Classify when it has the
inputs and outputs a classifier needs, whatever its method.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Mapping
from typing import Any

import grpc
import numpy as np
from google.protobuf import text_format
from tensorflow.core.example import example_pb2, feature_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import classification_pb2, inference_pb2, input_pb2, regression_pb2

from serving.errors import ServingError, invalid_argument
from serving.rest_json import format_scalar

CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
INPUTS = "inputs"  # the one input of a classify or regress signature: serialized examples
CLASSES, SCORES, OUTPUTS = "classes", "scores", "outputs"
RESULTS_KEY = "results"  # of a REST answer (TF Serving's documentation says "result"; its code, this)

SignatureDef = meta_graph_pb2.SignatureDef


def serialized_examples(input_proto: input_pb2.Input) -> np.ndarray:
    """The examples of `input_proto`, serialized, `[n]`; with a context, the context's bytes before each
    example's, so that parsing merges them (an example's feature replaces the context's of the same name).

    Raises:
        ServingError: INVALID_ARGUMENT `Input is empty.` for no example.
    """
    kind = input_proto.WhichOneof("kind")
    if kind == "example_list":
        examples = [e.SerializeToString() for e in input_proto.example_list.examples]
    elif kind == "example_list_with_context":
        listed = input_proto.example_list_with_context
        context = listed.context.SerializeToString()
        examples = [context + e.SerializeToString() for e in listed.examples]
    else:
        examples = []
    if not examples:
        raise invalid_argument("Input is empty.")
    return np.array(examples, dtype=object)


def classification_outputs(signature: SignatureDef) -> tuple[str, ...]:
    """The outputs a classification reads from `signature` (`classes` and/or `scores`).

    Raises:
        ServingError: INVALID_ARGUMENT when it is not a classification signature, as TF Serving words it.
    """
    _check_one_input(signature, "classification")
    if len(signature.outputs) not in (1, 2):
        raise invalid_argument(f"Expected one or two output Tensors, found {len(signature.outputs)}")
    outputs = tuple(name for name in (CLASSES, SCORES) if name in signature.outputs)
    if not outputs:
        raise invalid_argument(
            f'Expected classification signature outputs to contain at least one of "{CLASSES}" or '
            f'"{SCORES}". Signature was: {_describe(signature)}'
        )
    return outputs


def regression_outputs(signature: SignatureDef) -> tuple[str, ...]:
    """The output a regression reads from `signature` (`outputs`).

    Raises:
        ServingError: INVALID_ARGUMENT when it is not a regression signature, as TF Serving words it.
    """
    _check_one_input(signature, "regression")
    if len(signature.outputs) != 1:
        raise invalid_argument("Expected one output Tensor.")
    if OUTPUTS not in signature.outputs:
        raise invalid_argument(f"No regression outputs found in SignatureDef: {_describe(signature)}")
    return (OUTPUTS,)


def _check_one_input(signature: SignatureDef, kind: str) -> None:
    if len(signature.inputs) != 1:
        raise invalid_argument("Expected one input Tensor.")
    if INPUTS not in signature.inputs:
        raise invalid_argument(f"No {kind} inputs found in SignatureDef: {_describe(signature)}")


def _describe(signature: SignatureDef) -> str:
    """The signature as TF Serving quotes it in errors: its `DebugString()`, the protobuf text format."""
    return text_format.MessageToString(signature)


def classification_result(
    outputs: Mapping[str, np.ndarray], num_examples: int
) -> classification_pb2.ClassificationResult:
    """Per example, each class's label and score, from `classes` `[n, k]` (strings) and `scores` `[n, k]`."""
    classes, scores = outputs.get(CLASSES), outputs.get(SCORES)
    for name, value, dtype in ((CLASSES, classes, "DT_STRING"), (SCORES, scores, "DT_FLOAT")):
        if value is None:
            continue
        if value.ndim != 2:
            raise invalid_argument(
                f"Expected Tensor shape: [batch_size num_classes] but got {list(value.shape)}"
            )
        if value.shape[0] != num_examples:
            raise invalid_argument(
                f"Expected {name} output batch size of {num_examples}. Got: {value.shape[0]}"
            )
        if (value.dtype.kind == "f") != (dtype == "DT_FLOAT"):
            raise invalid_argument(f"Expected {name} Tensor of {dtype}.")
    if classes is not None and scores is not None and classes.shape[1] != scores.shape[1]:
        raise invalid_argument(
            "Tensors class and score should match in dim_size(1). Got "
            f"{classes.shape[1]} vs. {scores.shape[1]}"
        )
    num_classes = (classes if classes is not None else scores).shape[1]
    result = classification_pb2.ClassificationResult()
    for i in range(num_examples):
        classifications = result.classifications.add()
        for c in range(num_classes):
            entry = classifications.classes.add()
            if classes is not None:
                label = classes[i, c]
                entry.label = label.decode("utf-8", "replace") if isinstance(label, bytes) else str(label)
            if scores is not None:
                entry.score = float(scores[i, c])
    return result


def regression_result(
    outputs: Mapping[str, np.ndarray], num_examples: int
) -> regression_pb2.RegressionResult:
    """One value per example, from `outputs` `[n]` or `[n, 1]`."""
    values = outputs[OUTPUTS]
    if not (values.ndim == 1 or (values.ndim == 2 and values.shape[1] == 1)):
        raise invalid_argument(
            f"Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but got "
            f"{list(values.shape)}"
        )
    if values.shape[0] != num_examples:
        raise invalid_argument(
            f"Input batch size did not match output batch size: {num_examples} vs. {values.shape[0]}"
        )
    if values.dtype.kind != "f":
        raise invalid_argument("Expected output Tensor of DT_FLOAT.")
    result = regression_pb2.RegressionResult()
    for value in values.reshape(-1):
        result.regressions.add().value = float(value)
    return result


def check_multi_inference(request: inference_pb2.MultiInferenceRequest) -> str:
    """The model every task of a MultiInference names; its tasks must be distinct classify or regress
    signatures of that one model.

    Raises:
        ServingError: INVALID_ARGUMENT (no task, an empty or differing model name, a signature twice) or
            UNIMPLEMENTED (a method other than classify or regress), as TF Serving words them.
    """
    if not request.tasks:
        raise invalid_argument("Expected at least one task.")
    model_name, seen = "", set()
    for task in request.tasks:
        if not task.model_spec.name:
            raise invalid_argument("Found ModelSpec with an empty model name.")
        if model_name and task.model_spec.name != model_name:
            raise invalid_argument(
                "All ModelSpecs in a MultiInferenceRequest must access the same model name."
            )
        model_name = task.model_spec.name
        signature_name = task.model_spec.signature_name or "serving_default"
        if signature_name in seen:
            raise invalid_argument(f"Duplicate evaluation of signature: {signature_name}")
        seen.add(signature_name)
        if task.method_name not in (CLASSIFY_METHOD, REGRESS_METHOD):
            raise ServingError(
                grpc.StatusCode.UNIMPLEMENTED, f"Unsupported signature method_name: {task.method_name}"
            )
    return model_name


# -- REST ----------------------------------------------------------------------------------------------


def input_from_json(document: Any) -> input_pb2.Input:
    """The `Input` of a REST `:classify` or `:regress` body: `examples`, a list of objects mapping feature
    names to a value or a list of values, and an optional `context` object merged into each.

    Raises:
        ServingError: INVALID_ARGUMENT naming what is wrong, as TF Serving words it.
    """
    if not isinstance(document, dict):
        raise invalid_argument(
            "JSON Value: not formatted correctly: a classify or regress request is an object"
        )
    input_proto = input_pb2.Input()
    context = document.get("context")
    if context is not None:
        _fill_example(context, input_proto.example_list_with_context.context)
    examples = document.get("examples")
    if examples is None:
        raise invalid_argument(
            "JSON Value: When method is classify, key 'examples' is expected and was not found"
        )
    if not isinstance(examples, list):
        raise invalid_argument("JSON Value: Expecting 'examples' value to be an list/array")
    if not examples:
        raise invalid_argument("JSON Value: 'examples' value is an empty array")
    target = (
        input_proto.example_list_with_context.examples
        if context is not None
        else input_proto.example_list.examples
    )
    for example in examples:
        _fill_example(example, target.add())
    return input_proto


def _fill_example(value: Any, example: example_pb2.Example) -> None:
    if not isinstance(value, dict):
        raise invalid_argument(f"Example must be JSON object but got JSON {_json_type(value)}")
    for name, content in value.items():
        feature = feature_pb2.Feature()
        for item in content if isinstance(content, list) else [content]:
            _add_value(item, name, feature)
        example.features.feature[name].CopyFrom(feature)


def _add_value(value: Any, name: str, feature: feature_pb2.Feature) -> None:
    """One JSON value into `feature`: a string or `{"b64": ...}` into bytes, a number with a fraction or an
    exponent into floats, a whole number or a boolean into int64s; every value of a feature of one kind."""
    if isinstance(value, bool) or (isinstance(value, int) and not isinstance(value, bool)):
        kind = "int64_list"
        if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**63:
            raise invalid_argument(f"Feature: {name} has uint64 element. Only int64 is supported.")
        item: Any = int(value)
    elif isinstance(value, float):
        kind = "float_list"
        if math.isfinite(value) and abs(value) > np.finfo(np.float32).max:
            raise invalid_argument(
                f"Cannot convert JSON value: {value!r} to float without loss of precision."
            )
        item = value
    elif isinstance(value, str):
        kind, item = "bytes_list", value.encode("utf-8", "surrogatepass")
    elif isinstance(value, dict) and set(value) == {"b64"} and isinstance(value["b64"], str):
        kind = "bytes_list"
        try:
            item = base64.b64decode(value["b64"], validate=True)
        except (binascii.Error, ValueError):
            raise invalid_argument("Unable to base64 decode") from None
    else:
        raise invalid_argument(f"Feature: {name} has element with unexpected JSON type: {_json_type(value)}")
    current = feature.WhichOneof("kind")
    if current not in (None, kind):
        expected = {"bytes_list": "bytes", "float_list": "float", "int64_list": "int64"}[current]
        raise invalid_argument(f"Unexpected element type in feature: {name} expecting type: {expected}")
    getattr(feature, kind).value.append(item)


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "True" if value else "False"
    names = {type(None): "Null", dict: "Object", list: "Array", str: "String", int: "Number", float: "Number"}
    return names.get(type(value), "Unknown")


def classification_json(result: classification_pb2.ClassificationResult) -> str:
    """`{"results":[[[label,score],...],...]}`: per example, each class's label and score; scores are
    float32 in their shortest round-trip form, as every float TF Serving writes."""
    items = (
        "[" + ",".join(f"[{json.dumps(c.label)},{_float(c.score)}]" for c in item.classes) + "]"
        for item in result.classifications
    )
    return f'{{"{RESULTS_KEY}":[{",".join(items)}]}}'


def regression_json(result: regression_pb2.RegressionResult) -> str:
    """`{"results":[value,...]}`: one value per example."""
    return f'{{"{RESULTS_KEY}":[{",".join(_float(r.value) for r in result.regressions)}]}}'


def _float(value: float) -> str:
    return format_scalar(np.float32(value), "")
