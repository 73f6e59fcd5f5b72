"""TF Serving's REST JSON encoding of tensors (util/json_tensor.cc): request parsing, response writing.

Row format (`instances`) lists one entry per example; columnar format (`inputs`) gives whole tensors. Floats
accept any JSON number, integer types only JSON integers in the type's range, booleans only true/false;
strings may be given as `{"b64": ...}`. Responses print floats in their shortest round-trip form.
A body is checked against the limits of `serving.limits` before it is parsed.
"""

from __future__ import annotations

import base64
import json
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import tensorflow as tf

from serving.errors import ServingError, invalid_argument, shown
from serving.limits import DEFAULT_MAX_REQUEST_ELEMENTS, MAX_JSON_DEPTH, MAX_NUMBER_CHARS, check_elements
from serving.servable import type_name

_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_LONG_NUMBER = re.compile(rb"[-+.0-9eE]{%d,}" % (MAX_NUMBER_CHARS + 1))
# A \u escape of half a surrogate pair without its other half (the backslash not itself escaped).
_LONE_SURROGATE = re.compile(
    rb"(?<!\\)(?:\\\\)*(\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})"
    rb"|(?<!\\u[dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2})"
)
_NOT_BRACKETS = bytes(c for c in range(256) if c not in b"[]{}")
_DEPTH_CHUNK = 2**20

_JSON_TYPES = {type(None): "Null", bool: "Bool", dict: "Object", list: "Array", str: "String"}


def _json_type(value: Any) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return "Number"
    return _JSON_TYPES.get(type(value), "Unknown")


def _type_error(value: Any, dtype: tf.DType) -> ServingError:
    if isinstance(value, (list, dict)):
        text = f"<{_json_type(value)} of {len(value)} elements>"
    elif isinstance(value, float) and not math.isfinite(value):
        text = str(value)
    else:
        text = json.dumps(value)
    return invalid_argument(
        f"JSON Value: {shown(text)} Type: {_json_type(value)} is not of expected type: {type_name(dtype)}"
    )


def _max_depth(brackets: bytes) -> int:
    """The deepest nesting of a string of brackets, in chunks so a huge one needs little memory."""
    deepest = depth = 0
    for start in range(0, len(brackets), _DEPTH_CHUNK):
        codes = np.frombuffer(
            brackets, np.uint8, count=min(_DEPTH_CHUNK, len(brackets) - start), offset=start
        )
        steps = np.cumsum(np.where((codes == ord("[")) | (codes == ord("{")), 1, -1), dtype=np.int64) + depth
        deepest, depth = max(deepest, int(steps.max())), int(steps[-1])
    return deepest


def check_limits(body: bytes, max_elements: int) -> None:
    """Refuses, before parsing, a body nested deeper than `MAX_JSON_DEPTH`, with a number literal longer
    than `MAX_NUMBER_CHARS`, or holding more than `max_elements` values (it has at most one more value than
    commas). Counts over the whole body settle most bodies; only one they do not is scanned without its
    strings."""
    brackets = body.count(b"[") + body.count(b"{")
    commas = body.count(b",")
    if brackets <= MAX_JSON_DEPTH and commas < max_elements and not _LONG_NUMBER.search(body):
        return
    structure = _STRING.sub(b'""', body)
    if number := _LONG_NUMBER.search(structure):
        literal = number.group().decode("ascii")
        raise invalid_argument(
            f"JSON Parse error: Number literal longer than {MAX_NUMBER_CHARS} characters: {shown(literal)}"
        )
    if _max_depth(structure.translate(None, delete=_NOT_BRACKETS)) > MAX_JSON_DEPTH:
        raise invalid_argument(f"JSON Parse error: Nesting deeper than {MAX_JSON_DEPTH} levels")
    check_elements(structure.count(b",") + 1, max_elements)


def parse_body(body: bytes, max_elements: int = DEFAULT_MAX_REQUEST_ELEMENTS) -> Any:
    """The request document, with rapidjson's error wording for bad JSON; see `check_limits`."""
    check_limits(body, max_elements)
    if b"\\u" in body and (surrogate := _LONE_SURROGATE.search(body)):
        raise invalid_argument(
            f"JSON Parse error: The surrogate pair in string is invalid at offset: {surrogate.start(1)}"
        )
    text = body.decode("utf-8", errors="replace")
    if not text.strip():
        raise invalid_argument("JSON Parse error: The document is empty")
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise invalid_argument(f"JSON Parse error: Invalid value at offset: {error.pos}") from None


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and "b64" in value


def _leaf_parser(dtype: tf.DType) -> Callable[[Any], Any]:
    """The check and conversion of one JSON value of a `dtype` tensor, chosen once per tensor: comparing
    `tf.DType`s per value cost more than the rest of a one-row request."""
    if dtype == tf.string:

        def string(value: Any) -> bytes:
            if isinstance(value, str):
                try:
                    return value.encode("utf-8")
                except UnicodeEncodeError:  # a lone surrogate `parse_body` let through
                    raise invalid_argument(
                        "JSON Parse error: The surrogate pair in string is invalid"
                    ) from None
            if _is_b64(value) and isinstance(value["b64"], str):
                try:
                    return base64.b64decode(value["b64"], validate=True)
                except ValueError:
                    raise invalid_argument(f"Unable to base64 decode: {shown(value['b64'])}") from None
            raise _type_error(value, dtype)

        return string
    if dtype == tf.bool:

        def boolean(value: Any) -> bool:
            if isinstance(value, bool):
                return value
            raise _type_error(value, dtype)

        return boolean
    accepted = (int,) if dtype.is_integer else (int, float)

    def number(value: Any) -> int | float:
        if isinstance(value, bool) or not isinstance(value, accepted):
            raise _type_error(value, dtype)
        return value

    number.plain_types = frozenset(accepted)  # lists of only these need no check per value
    return number


def _to_array(value: Any, dtype: tf.DType) -> np.ndarray:
    """A nested JSON list as an array of `dtype`, checking every element's type and the shape."""
    leaves: list[Any] = []
    leaf = _leaf_parser(dtype)
    plain_types = getattr(leaf, "plain_types", frozenset())
    leaf_depths: set[int] = set()

    def walk(node: Any, depth: int, shape: list[int]) -> None:
        if isinstance(node, list):
            if len(shape) == depth:
                shape.append(len(node))
            elif len(shape) < depth or shape[depth] != len(node):
                raise invalid_argument("Expecting tensor of consistent shape, got ragged nested lists")
            if node and len(shape) == depth + 1 and set(map(type, node)) <= plain_types:
                leaves.extend(node)  # a row of plain numbers, checked in one pass
                leaf_depths.add(depth + 1)
                return
            for child in node:
                walk(child, depth + 1, shape)
        else:
            if len(shape) != depth and not (depth == 0 and not shape):
                raise invalid_argument("Expecting tensor of consistent shape, got ragged nested lists")
            leaves.append(leaf(node))
            leaf_depths.add(depth)

    shape: list[int] = []
    walk(value, 0, shape)
    if len(leaf_depths) > 1 or leaf_depths - {len(shape)}:  # values above the deepest list
        raise invalid_argument("Expecting tensor of consistent shape, got ragged nested lists")
    if dtype == tf.string:
        return np.array(leaves, dtype=object).reshape(shape)
    try:
        return np.array(leaves, dtype=dtype.as_numpy_dtype).reshape(shape)
    except (OverflowError, ValueError):  # an integer outside the type's range: name the first
        for value in leaves:
            try:
                np.array(value, dtype=dtype.as_numpy_dtype)
            except (OverflowError, ValueError):
                raise _type_error(value, dtype) from None
        raise


def _parse_instances(instances: Any, dtypes: Mapping[str, tf.DType]) -> dict[str, np.ndarray]:
    if not isinstance(instances, list) or not instances:
        raise invalid_argument("'instances' must be a non-empty JSON array")
    names = sorted(dtypes)
    columns: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for index, instance in enumerate(instances):
        if isinstance(instance, dict) and not _is_b64(instance):
            if sorted(instance) != names:
                missing = [n for n in names if n not in instance]
                extra = [k for k in instance if k not in dtypes]
                detail = f"missing input(s): {missing}" if missing else f"unknown input(s): {extra}"
                raise invalid_argument(
                    f"Failed to process element: {index} of 'instances' list. JSON object keys must "
                    f"equal the signature's inputs {names}; {detail}"
                )
            values = instance
        elif len(names) == 1:
            values = {names[0]: instance}
        else:
            raise invalid_argument(
                f"Failed to process element: {index} of 'instances' list. With {len(names)} inputs "
                f"each instance must be a JSON object keyed by input name {names}"
            )
        for name in names:
            columns[name].append(_to_array(values[name], dtypes[name]))
    stacked = {}
    for name, arrays in columns.items():
        first = arrays[0].shape
        for index, array in enumerate(arrays):
            if array.shape != first:
                raise invalid_argument(
                    f"Failed to process element: {index} of 'instances' list. Error: Invalid argument: "
                    f"Expecting shape [{','.join(map(str, first))}] for input '{name}' but got "
                    f"[{','.join(map(str, array.shape))}]"
                )
        stacked[name] = np.stack(arrays)
    return stacked


def _parse_inputs(inputs: Any, dtypes: Mapping[str, tf.DType]) -> dict[str, np.ndarray]:
    names = sorted(dtypes)
    if isinstance(inputs, dict) and not _is_b64(inputs):
        for name in names:
            if name not in inputs:
                raise invalid_argument(f"Missing named input: {name} in 'inputs' object.")
        return {name: _to_array(inputs[name], dtypes[name]) for name in names}
    if len(names) != 1:
        raise invalid_argument(
            f"'inputs' must be a JSON object keyed by input name when the signature has {len(names)} inputs"
        )
    return {names[0]: _to_array(inputs, dtypes[names[0]])}


def parse_predict_request(document: Any) -> tuple[str, Any, bool]:
    """(signature name, instances or inputs, whether the row format was used) of a predict body."""
    if not isinstance(document, dict):
        raise invalid_argument("Request body must be a JSON object")
    signature_name = document.get("signature_name", "")
    if not isinstance(signature_name, str):
        raise invalid_argument("'signature_name' key must be a string value.")
    has_instances, has_inputs = "instances" in document, "inputs" in document
    if has_instances == has_inputs:
        if has_instances:
            raise invalid_argument(
                "Not a valid JSON request: expecting only one of 'inputs' or 'instances' keys to exist"
            )
        raise invalid_argument("Missing 'inputs' or 'instances' key")
    return signature_name, document["instances" if has_instances else "inputs"], has_instances


def tensors_from_json(
    payload: Any, row_format: bool, dtypes: Mapping[str, tf.DType]
) -> dict[str, np.ndarray]:
    """The request's tensors; `dtypes` are the signature's inputs (`Servable.input_dtypes`)."""
    return _parse_instances(payload, dtypes) if row_format else _parse_inputs(payload, dtypes)


# -- responses ------------------------------------------------------------------------------------


def format_scalar(value: Any, alias: str) -> str:
    """One value as TF Serving writes it: floats in shortest round-trip form, `NaN`, `Infinity`; bytes as a
    string, or `{"b64": ...}` for an output alias ending in `_bytes`."""
    if isinstance(value, (bytes, np.bytes_)):
        if alias.endswith("_bytes"):
            return json.dumps({"b64": base64.b64encode(value).decode("ascii")}, separators=(",", ":"))
        return json.dumps(value.decode("utf-8", errors="replace"))
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (np.integer, int)):
        return str(int(value))
    value = value if isinstance(value, np.floating) else np.float64(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    text = np.format_float_positional(value, unique=True, trim="0")
    if len(text.replace("-", "").replace(".", "").lstrip("0")) > 17:  # very large or small: exponent
        text = np.format_float_scientific(value, unique=True, trim="0")
    return text


def _format(array: Any, alias: str) -> str:
    if not isinstance(array, np.ndarray):  # an element of an object (string) array
        return format_scalar(array, alias)
    if array.ndim == 0:
        return format_scalar(array[()], alias)
    return "[" + ",".join(_format(item, alias) for item in array) + "]"


def format_response(outputs: Mapping[str, np.ndarray], row_format: bool) -> str:
    """`{"predictions": [...]}` for a row request, `{"outputs": ...}` for a columnar one."""
    aliases = sorted(outputs)
    if not row_format:
        if len(aliases) == 1:
            return '{"outputs":' + _format(outputs[aliases[0]], aliases[0]) + "}"
        body = ",".join(f"{json.dumps(a)}:{_format(outputs[a], a)}" for a in aliases)
        return '{"outputs":{' + body + "}}"
    sizes = {np.asarray(outputs[a]).shape[0] if np.ndim(outputs[a]) else -1 for a in aliases}
    if len(sizes) != 1 or -1 in sizes:
        raise invalid_argument(
            "Tensors in the output have inconsistent batch size. Cannot respond in row format; "
            "use the columnar 'inputs' format"
        )
    (batch,) = sizes
    rows = []
    for index in range(batch):
        if len(aliases) == 1:
            rows.append(_format(outputs[aliases[0]][index], aliases[0]))
        else:
            rows.append(
                "{" + ",".join(f"{json.dumps(a)}:{_format(outputs[a][index], a)}" for a in aliases) + "}"
            )
    return '{"predictions":[' + ",".join(rows) + "]}"
