"""Exports a trained model as a TF Serving servable: `<export_base>/<integer version>/`.

The version is written under a temporary name (TF Serving ignores names that are not integers) and renamed
into place only once complete and checked, so a server polling `export_base` never sees half a model.
The `serving_default` signature takes the raw features by name and returns one output per task (`[batch]`,
or `[batch, num_classes]` for a multi-class task; a funnel task's conditional probability as well). A
model whose experts are mixed by gates (OMoE, MMoE, PLE) also has a `gates` signature: the same inputs, and
each gate's weights over its experts (see `MultiTaskModel.gate_weights`), to see what the gates do in serving.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
from absl import logging
from keras.export import ExportArchive
from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

from pipeline.errors import ExportError
from pipeline.features import feature_spec, feature_specs
from pipeline.models import MultiTaskModel
from serving.layout import WARMUP_FILE, versions

SIGNATURE = "serving_default"
GATES_SIGNATURE = "gates"
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


def _write_saved_model(model: MultiTaskModel, path: Path) -> None:
    archive = ExportArchive()
    archive.track(model)
    # Vocabulary lookup tables are TF resources, not variables: Keras does not reach them through the model.
    for layer in model.preprocessor.lookup_layers():
        archive.track(layer)
    for name, function in _signature_functions(model).items():
        archive.add_endpoint(
            name, tf.function(function), input_signature=[feature_specs(model.config.features)]
        )
    archive.write_out(str(path), verbose=False)


def _signature_functions(model: MultiTaskModel) -> dict[str, Any]:
    """What each exported signature computes from the raw features."""
    functions = {SIGNATURE: lambda features: model(features, training=False)}
    if model.has_gates:
        functions[GATES_SIGNATURE] = model.gate_weights
    return functions


def _write_warmup_requests(model: MultiTaskModel, path: Path) -> None:
    """Real predict requests that TF Serving replays on load, so the first user request is not slow."""
    target = path / WARMUP_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(target)) as writer:
        for signature_name in _signature_functions(model):
            for batch_size in _WARMUP_BATCH_SIZES:
                spec = model_pb2.ModelSpec(signature_name=signature_name)
                request = predict_pb2.PredictRequest(model_spec=spec)
                for name, values in sample_features(model, batch_size, seed=batch_size).items():
                    request.inputs[name].CopyFrom(tf.make_tensor_proto(values))
                log = prediction_log_pb2.PredictionLog(
                    predict_log=prediction_log_pb2.PredictLog(request=request)
                )
                writer.write(log.SerializeToString())


def _check_reload(model: MultiTaskModel, path: Path) -> None:
    """Reloads the export and checks every signature's outputs against the in-memory model's."""
    signatures = tf.saved_model.load(str(path)).signatures
    features = sample_features(model, _CHECK_BATCH_SIZE)
    for signature_name, function in _signature_functions(model).items():
        expected = {name: np.asarray(value) for name, value in function(features).items()}
        served = {name: value.numpy() for name, value in signatures[signature_name](**features).items()}
        if sorted(served) != sorted(expected):
            raise ExportError(
                f"The exported {signature_name} outputs {sorted(served)} differ from {sorted(expected)}."
            )
        for name, value in expected.items():
            if served[name].shape != value.shape or not np.allclose(
                served[name], value, rtol=_RTOL, atol=_ATOL
            ):
                raise ExportError(
                    f"The exported model's {signature_name} output {name!r} differs from the in-memory "
                    f"model's (max |diff| {np.max(np.abs(served[name] - value)):.3g}); the export was "
                    "discarded."
                )


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
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=base))
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
