"""Exports a trained model as a TF Serving servable: `<export_base>/<integer version>/`.

The version is written under a temporary name (TF Serving ignores names that are not integers) and renamed
into place only once complete and checked, so a server polling `export_base` never sees half a model.
The signatures:
- `serving_default` takes the raw features by name and returns one output per task (`[batch]`, or
  `[batch, num_classes]` for a multi-class task; a funnel task's conditional probability as well).
- `gates`, for a model whose experts are mixed by gates (OMoE, MMoE, PLE): the same inputs, and each gate's
  weights over its experts (see `MultiTaskModel.gate_weights`), to see what the gates do in serving.
- `predict` takes serialized `tf.train.Example`s (`examples`) and returns what `serving_default` does.
- One per task, named after it, over serialized `tf.train.Example`s (`inputs`), as `tf.estimator`'s
  multi-head export gave each head: a classify signature (`classes`, `scores`) for a binary or multi-class
  task, a regress signature (`outputs`) for a regression or count task, so TF Serving's Classify and Regress
  APIs serve them.

The signatures over `tf.train.Example`s read one input tensor, `input_example_tensor`, as the Estimator's
export did: TF Serving's MultiInference runs several of them on one batch only when their input tensor is
the same. The export is checked twice: reloaded with `tf.saved_model.load`, and run in a session from its
graph and signature definitions, as TF Serving's C++ loader runs it.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
from absl import logging
from keras.export import ExportArchive
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow.python.saved_model import fingerprinting_utils, loader_impl
from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

from pipeline.config import SIGNATURE_NAMES, TaskConfig
from pipeline.errors import ExportError
from pipeline.features import feature_spec, feature_specs, parse_examples, to_examples
from pipeline.models import MultiTaskModel
from serving.layout import EXPORT_TEMP_PREFIX, WARMUP_FILE, is_stale_export, versions

SIGNATURE, GATES_SIGNATURE, EXAMPLES_SIGNATURE = SIGNATURE_NAMES
EXAMPLE_INPUT_TENSOR = "input_example_tensor"  # the name the Estimator's parsing receiver gave it
_WARMUP_BATCH_SIZES = (1, 4, 32)
_CHECK_BATCH_SIZE = 16
_RTOL, _ATOL = 1e-5, 1e-6


def _check_export_base(export_base: str | os.PathLike) -> Path:
    base = Path(export_base)
    if base.exists() and not base.is_dir():
        raise ExportError(
            f"--export_base={base} is a file; it must be a directory that will hold <version>/ folders."
        )
    base.mkdir(parents=True, exist_ok=True)
    return base


def sample_features(model: MultiTaskModel, batch_size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A deterministic batch of raw inputs shaped like the serving signature's."""
    rng = np.random.default_rng(seed)
    samples = {}
    for feature in model.config.features:
        spec = feature_spec(feature)
        if spec.dtype == tf.string:
            # Known values, an unseen one (the out-of-vocabulary path) and the empty string.
            known = list(feature.vocabulary) or ["a", "b"]
            choices = np.array([*known, "<unseen>", ""], dtype=object)
            samples[feature.name] = choices[rng.integers(0, len(choices), size=batch_size)]
        else:
            values = rng.normal(size=(batch_size, *spec.shape[1:])).astype(np.float32)
            values[rng.random(values.shape) < 0.1] = np.nan  # missing numbers: the imputation path
            samples[feature.name] = values
    return samples


@dataclasses.dataclass(frozen=True)
class Signature:
    """One exported signature: its TF Serving method, its inputs by name, and what it computes from them
    (on the in-memory model as in the export)."""

    method: str
    inputs: dict[str, tf.TensorSpec]
    compute: Callable[[dict[str, Any]], dict[str, Any]]
    takes_examples: bool = False  # its one input is serialized `tf.train.Example`s, not the raw features


def _examples_input(name: str) -> dict[str, tf.TensorSpec]:
    return {name: tf.TensorSpec([None], tf.string, name=name)}


def _task_outputs(model: MultiTaskModel, task: TaskConfig, features: dict[str, Any]) -> dict[str, Any]:
    """A task's outputs as TF Serving's Classify (`classes` and `scores`, one column per class) or Regress
    (`outputs`) expects them, as `tf.estimator`'s heads exported them."""
    prediction = model(features, training=False)[task.name]
    if task.type not in ("binary", "multiclass"):
        return {tf.saved_model.REGRESS_OUTPUTS: prediction}
    scores = tf.stack([1.0 - prediction, prediction], axis=1) if task.type == "binary" else prediction
    names = task.classes or tuple(str(i) for i in range(scores.shape[-1]))
    classes = tf.tile(tf.constant([list(names)]), [tf.shape(scores)[0], 1])
    return {tf.saved_model.CLASSIFY_OUTPUT_CLASSES: classes, tf.saved_model.CLASSIFY_OUTPUT_SCORES: scores}


def signatures(model: MultiTaskModel) -> dict[str, Signature]:
    """Every signature the export of `model` has (see the module's docstring)."""
    features = model.config.features
    predict, raw = tf.saved_model.PREDICT_METHOD_NAME, feature_specs(features)
    result = {SIGNATURE: Signature(predict, raw, lambda x: model(x, training=False))}
    if model.has_gates:
        result[GATES_SIGNATURE] = Signature(predict, raw, model.gate_weights)
    result[EXAMPLES_SIGNATURE] = Signature(
        predict,
        _examples_input("examples"),
        lambda x: model(parse_examples(features, x["examples"])),
        takes_examples=True,
    )
    result.update({task.name: _task_signature(model, task) for task in model.config.tasks})
    return result


def _task_signature(model: MultiTaskModel, task: TaskConfig) -> Signature:
    """A task's classify (binary, multi-class) or regress signature over serialized `tf.Example`s."""
    classifies = task.type in ("binary", "multiclass")
    key = tf.saved_model.CLASSIFY_INPUTS  # "inputs", Regress's key too

    def compute(inputs: dict[str, Any]) -> dict[str, Any]:
        return _task_outputs(model, task, parse_examples(model.config.features, inputs[key]))

    method = tf.saved_model.CLASSIFY_METHOD_NAME if classifies else tf.saved_model.REGRESS_METHOD_NAME
    return Signature(method, _examples_input(key), compute, takes_examples=True)


def sample_inputs(model: MultiTaskModel, signature: Signature, batch_size: int, seed: int = 0) -> dict:
    """A deterministic batch of what `signature` takes: `sample_features`, serialized as `tf.Example`s for
    a signature over them."""
    features = sample_features(model, batch_size, seed)
    if not signature.takes_examples:
        return features
    (name,) = signature.inputs
    return {name: to_examples(model.config.features, features)}


def _write_saved_model(model: MultiTaskModel, path: Path) -> None:
    archive = ExportArchive()
    archive.track(model)
    # Vocabulary lookup tables are TF resources, not variables: Keras does not reach them through the model.
    for layer in model.preprocessor.lookup_layers():
        archive.track(layer)
    exported = signatures(model)
    for name, signature in exported.items():
        archive.add_endpoint(name, tf.function(signature.compute), input_signature=[signature.inputs])
    archive.write_out(str(path), verbose=False)
    _as_tf_serving_reads_it(path, exported)


def _as_tf_serving_reads_it(path: Path, exported: dict[str, Signature]) -> None:
    """Gives each signature its TF Serving method (Keras writes every one as predict; TF Serving serves a
    signature to Classify or Regress only when its method says so), and makes the signatures over
    `tf.train.Example`s read one input tensor, `EXAMPLE_INPUT_TENSOR` (Keras gives each a placeholder of its
    own). Only the graph and signature definitions change, which TF Serving reads; `tf.saved_model.load`
    restores the signatures from the saved functions and is unaffected."""
    file = path / "saved_model.pb"
    saved_model = saved_model_pb2.SavedModel.FromString(file.read_bytes())
    for meta_graph in saved_model.meta_graphs:
        definitions = meta_graph.signature_def
        placeholders = []
        for name, signature in exported.items():
            if name not in definitions:
                raise ExportError(f"The SavedModel written has no {name} signature.")
            definitions[name].method_name = signature.method
            if signature.takes_examples:
                (info,) = definitions[name].inputs.values()
                placeholders.append(info.name.split(":")[0])
                info.name = f"{EXAMPLE_INPUT_TENSOR}:0"
        if placeholders:
            _merge_placeholders(meta_graph.graph_def, placeholders, EXAMPLE_INPUT_TENSOR)
    file.write_bytes(saved_model.SerializeToString())
    fingerprinting_utils.write_fingerprint(str(path))  # of the saved_model.pb just written


def _merge_placeholders(graph: Any, names: list[str], merged: str) -> None:
    """Replaces the placeholders `names` of `graph` (a GraphDef) by one named `merged`: the first, renamed,
    the others removed, and every input of a node that read one of them (`name`, `name:0`, `^name`) reading
    `merged` instead."""
    by_name = {node.name: node for node in graph.node}
    kept = by_name[names[0]]
    for name in names:
        node = by_name.get(name)
        if node is None or node.op != "Placeholder" or node.attr["dtype"] != kept.attr["dtype"]:
            raise ExportError(f"Cannot share the input {name!r} of the export's signatures over tf.Example.")
    kept.name = merged
    removed = set(names[1:])
    for index in reversed([i for i, node in enumerate(graph.node) if node.name in removed]):
        del graph.node[index]
    replaced = set(names)
    for node in graph.node:
        node.input[:] = [_renamed_input(reference, replaced, merged) for reference in node.input]


def _renamed_input(reference: str, names: set[str], merged: str) -> str:
    """`reference` (`name`, `name:1` or `^name`) to `merged` when its node is one of `names`."""
    control = reference.startswith("^")
    node, colon, output = reference.lstrip("^").partition(":")
    if node not in names:
        return reference
    return f"{'^' if control else ''}{merged}{colon}{output}"


def _write_warmup_requests(model: MultiTaskModel, path: Path) -> None:
    """Real predict requests that TF Serving replays on load, so the first user request is not slow (one
    per batch size, for each predict signature)."""
    target = path / WARMUP_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(target)) as writer:
        for signature_name, signature in signatures(model).items():
            if signature.method != tf.saved_model.PREDICT_METHOD_NAME:
                continue
            for batch_size in _WARMUP_BATCH_SIZES:
                spec = model_pb2.ModelSpec(signature_name=signature_name)
                request = predict_pb2.PredictRequest(model_spec=spec)
                for name, values in sample_inputs(model, signature, batch_size, seed=batch_size).items():
                    request.inputs[name].CopyFrom(tf.make_tensor_proto(values))
                log = prediction_log_pb2.PredictionLog(
                    predict_log=prediction_log_pb2.PredictLog(request=request)
                )
                writer.write(log.SerializeToString())


def _check_reload(model: MultiTaskModel, path: Path) -> None:
    """Reloads the export, with `tf.saved_model.load` and as TF Serving does (`run_in_session`), and checks
    every signature's outputs against the in-memory model's."""
    exported = signatures(model)
    inputs = {name: sample_inputs(model, each, _CHECK_BATCH_SIZE) for name, each in exported.items()}
    loaded = tf.saved_model.load(str(path)).signatures
    in_session = run_in_session(path, inputs)
    for signature_name, signature in exported.items():
        expected = {
            name: np.asarray(value) for name, value in signature.compute(inputs[signature_name]).items()
        }
        served = {name: v.numpy() for name, v in loaded[signature_name](**inputs[signature_name]).items()}
        for how, outputs in (("reloaded", served), ("run in a session", in_session[signature_name])):
            _check_outputs(signature_name, how, outputs, expected)


def run_in_session(path: str | os.PathLike, inputs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each signature's outputs for its `inputs` (signature -> input name -> values), from a TF1 session
    of the export's graph, fed and fetched by the tensor names of its signature definitions: how TF Serving
    runs a SavedModel."""
    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as session:
        # tf.compat.v1.saved_model.load less its deprecation warning.
        loaded = loader_impl.SavedModelLoader(str(path)).load(session, [tf.saved_model.SERVING])
        definitions = loaded.signature_def
        return {
            name: session.run(
                {output: info.name for output, info in definitions[name].outputs.items()},
                {definitions[name].inputs[key].name: value for key, value in values.items()},
            )
            for name, values in inputs.items()
        }


def _check_outputs(signature_name: str, how: str, served: dict[str, Any], expected: dict[str, Any]) -> None:
    if sorted(served) != sorted(expected):
        raise ExportError(
            f"The exported {signature_name} outputs {sorted(served)} differ from {sorted(expected)}."
        )
    for name, value in expected.items():
        got = np.asarray(served[name])
        same = got.shape == value.shape and (
            np.allclose(got, value, rtol=_RTOL, atol=_ATOL)
            if value.dtype.kind == "f"
            else np.array_equal(got, value)
        )
        if not same:
            raise ExportError(
                f"The exported model's {signature_name} output {name!r} differs from the in-memory model's "
                f"({how}); the export was discarded."
            )


def _remove_stale_exports(base: Path) -> None:
    """Removes what killed exports left in `base` (their temporary folders, unchanged for a while)."""
    for folder in base.glob(f"{EXPORT_TEMP_PREFIX}*"):
        try:
            if folder.is_dir() and is_stale_export(folder):
                shutil.rmtree(folder)
                logging.info("Removed %s, left by an export that did not finish", folder)
        except OSError as error:  # another process may be removing it too
            logging.warning("Could not remove %s: %s", folder, error)


def _remove_old_versions(base: Path, exports_to_keep: int | None) -> None:
    if not exports_to_keep:
        return
    for version in versions(base)[:-exports_to_keep]:
        shutil.rmtree(base / str(version))
        logging.info("Removed old export %s", base / str(version))


def export_saved_model(
    model: MultiTaskModel, export_base: str | os.PathLike, exports_to_keep: int | None = None
) -> Path:
    """Writes `model` as a new version under `export_base` and returns its path.

    The version is the current Unix time, or one more than the newest existing version if that is
    later. The export is reloaded and its predictions compared with the model's before it is renamed into
    place.

    Args:
        model: the trained model.
        export_base: the model's base path, as TF Serving's `--model_base_path`.
        exports_to_keep: keep only this many newest versions (None or 0 keeps all).

    Raises:
        ExportError: `export_base` is a file, or the reloaded export does not reproduce the model.
    """
    base = _check_export_base(export_base)
    existing = versions(base)
    version = max(int(time.time()), existing[-1] + 1 if existing else 0)
    _remove_stale_exports(base)
    staging = Path(tempfile.mkdtemp(prefix=f"{EXPORT_TEMP_PREFIX}{version}-", dir=base))
    try:
        saved_model = staging / "saved_model"
        _write_saved_model(model, saved_model)
        _write_warmup_requests(model, saved_model)
        _check_reload(model, saved_model)
        final = base / str(version)
        os.rename(saved_model, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logging.info("Exported %s", final)
    _remove_old_versions(base, exports_to_keep)
    return final
