import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow.python.saved_model import fingerprinting_utils
from tensorflow_serving.apis import prediction_log_pb2

from pipeline import data, export
from pipeline.config import TaskConfig
from pipeline.errors import ConfigError, ExportError
from pipeline.estimator import Estimator
from pipeline.features import to_examples
from serving import layout
from tests.conftest import small_experiment


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    config = small_experiment("mmoe")
    estimator = Estimator(config, tmp_path_factory.mktemp("model_dir"))
    estimator.train(data.input_fn(config, "train"), max_steps=50)
    return estimator


def test_export_round_trip_reproduces_the_model(trained, tmp_path):
    path = trained.export(tmp_path / "export")
    assert path.parent == tmp_path / "export" and path.name.isdigit()
    signature = tf.saved_model.load(str(path)).signatures["serving_default"]
    inputs = signature.structured_input_signature[1]
    assert {name: (spec.shape.as_list(), spec.dtype) for name, spec in inputs.items()} == {
        "inputs": ([None, 100], tf.float32)
    }
    assert {name: spec.shape.as_list() for name, spec in signature.structured_outputs.items()} == {
        "y1": [None],
        "y2": [None],
    }
    features, _ = data.synthetic.generate(trained.config.data.synthetic, "eval")
    served = signature(inputs=tf.constant(features["inputs"][:100]))
    expected = trained.model({"inputs": features["inputs"][:100]})
    for task in ("y1", "y2"):
        np.testing.assert_allclose(served[task], expected[task], rtol=1e-5, atol=1e-6)


def test_versions_increase_and_old_ones_are_pruned(trained, tmp_path):
    base = tmp_path / "export"
    (base / "9999999999").mkdir(parents=True)  # a version from the future
    first = trained.export(base)
    assert first.name == "10000000000"
    second = trained.export(base, exports_to_keep=2)
    assert layout.versions(base) == [int(first.name), int(second.name)]
    assert not [p for p in base.iterdir() if p.name.startswith(".tmp")]


def test_warmup_requests_match_the_signature(trained, tmp_path):
    path = trained.export(tmp_path)
    records = list(tf.data.TFRecordDataset(str(path / layout.WARMUP_FILE)))
    signatures = []
    for record in records:
        log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        request = log.predict_log.request
        signatures.append(request.model_spec.signature_name)
        if signatures[-1] == "predict":  # serialized tf.Examples of the same features
            examples = tf.make_ndarray(request.inputs["examples"])
            parsed = tf.io.parse_example(examples, {"inputs": tf.io.FixedLenFeature([100], tf.float32)})
            assert parsed["inputs"].shape[1:] == (100,)
        else:
            tensor = tf.make_ndarray(request.inputs["inputs"])
            assert tensor.dtype == np.float32 and tensor.shape[1:] == (100,)
    # Batches of 1, 4 and 32 for each predict signature (the tasks' classify and regress ones are not).
    assert signatures == ["serving_default"] * 3 + ["gates"] * 3 + ["predict"] * 3


def test_export_base_that_is_a_file(trained, tmp_path):
    (tmp_path / "base").write_text("not a directory")
    with pytest.raises(ExportError, match=r"--export_base=.*/base is a file"):
        trained.export(tmp_path / "base")


def test_a_failed_check_leaves_nothing_behind(trained, tmp_path, monkeypatch):
    def corrupt(model, path):
        raise ExportError("differs")

    monkeypatch.setattr(export, "_check_reload", corrupt)
    with pytest.raises(ExportError):
        trained.export(tmp_path / "export")
    assert list((tmp_path / "export").iterdir()) == []


def test_the_check_catches_an_export_that_differs(trained, tmp_path, monkeypatch):
    original = export._write_saved_model

    def write_then_perturb(model, path):
        original(model, path)
        trained.model.towers[0].logit.bias.assign_add([1.0])  # in-memory model drifts from export

    monkeypatch.setattr(export, "_write_saved_model", write_then_perturb)
    try:
        with pytest.raises(ExportError, match="output 'y1' differs"):
            trained.export(tmp_path / "export")
    finally:
        trained.model.towers[0].logit.bias.assign_add([-1.0])
    assert layout.versions(tmp_path / "export") == []


@pytest.mark.parametrize("architecture", ["ple", "single_task"])
def test_the_newer_architectures_export_and_reload(tmp_path, architecture):
    config = small_experiment(architecture)
    estimator = Estimator(config, tmp_path / "model_dir")
    estimator.train(data.input_fn(config, "train"), max_steps=10)
    path = estimator.export(tmp_path / "export")  # reloads it and compares predictions, or raises
    features = export.sample_features(estimator.model, 8)
    served = tf.saved_model.load(str(path)).signatures["serving_default"](**features)
    expected = estimator.model(features)
    for task in ("y1", "y2"):
        np.testing.assert_allclose(served[task].numpy(), np.asarray(expected[task]), rtol=1e-5, atol=1e-6)


def test_the_gates_signature_serves_each_tasks_mixture_weights(trained, tmp_path):
    path = trained.export(tmp_path)
    gates = tf.saved_model.load(str(path)).signatures["gates"]
    features = export.sample_features(trained.model, 16)
    served = {name: value.numpy() for name, value in gates(**features).items()}
    expected = trained.model.gate_weights(features)
    assert sorted(served) == ["y1", "y2"]  # MMoE: a gate per task, over its 4 experts
    for task, weights in served.items():
        assert weights.shape == (16, 4)
        np.testing.assert_allclose(weights.sum(axis=1), np.ones(16), rtol=1e-5)
        np.testing.assert_allclose(weights, np.asarray(expected[task]), rtol=1e-5, atol=1e-7)


def test_ple_gates_are_served_per_level_and_a_model_without_gates_has_no_such_signature(tmp_path):
    ple = Estimator(small_experiment("ple"), tmp_path / "ple")
    ple.train(data.input_fn(ple.config, "train"), max_steps=2)
    served = tf.saved_model.load(str(ple.export(tmp_path / "ple_export"))).signatures["gates"](
        **export.sample_features(ple.model, 3)
    )
    shapes = {name: tuple(value.shape) for name, value in served.items()}
    assert shapes == {  # 2 task experts each and 2 shared; the shared gate mixes all 6
        "y1_level_0": (3, 4),
        "y2_level_0": (3, 4),
        "shared_level_0": (3, 6),
        "y1_level_1": (3, 4),
        "y2_level_1": (3, 4),
    }
    bottom = Estimator(small_experiment("shared_bottom"), tmp_path / "sb")
    bottom.train(data.input_fn(bottom.config, "train"), max_steps=2)
    assert "gates" not in tf.saved_model.load(str(bottom.export(tmp_path / "sb_export"))).signatures


def test_every_signature_answers_as_the_in_memory_model_over_raw_features_and_tf_examples(trained, tmp_path):
    path = trained.export(tmp_path)
    loaded = tf.saved_model.load(str(path)).signatures
    methods = {
        name: definition.method_name
        for name, definition in saved_model_pb2.SavedModel.FromString((path / "saved_model.pb").read_bytes())
        .meta_graphs[0]
        .signature_def.items()
        if not name.startswith("__")
    }
    assert methods == {
        "serving_default": "tensorflow/serving/predict",
        "gates": "tensorflow/serving/predict",
        "predict": "tensorflow/serving/predict",
        "y1": "tensorflow/serving/regress",  # the tasks' own, as tf.estimator's heads exported them
        "y2": "tensorflow/serving/regress",
    }
    features = export.sample_features(trained.model, 8, seed=3)
    expected = {name: value.numpy() for name, value in trained.model(features).items()}
    examples = to_examples(trained.model.config.features, features)
    from_examples = loaded["predict"](examples=tf.constant(examples))
    for task in ("y1", "y2"):
        np.testing.assert_allclose(loaded["serving_default"](**features)[task], expected[task], rtol=1e-5)
        np.testing.assert_allclose(from_examples[task], expected[task], rtol=1e-5)
        regressed = loaded[task](inputs=tf.constant(examples))
        assert list(regressed) == ["outputs"]
        np.testing.assert_allclose(regressed["outputs"], expected[task], rtol=1e-5)


def test_classify_signatures_give_classes_and_scores_per_class(tmp_path):
    experiment = small_experiment("shared_bottom", save_checkpoints_steps=2)
    tasks = (
        TaskConfig("y1_binary", "y1_binary", "binary"),
        TaskConfig("kind", "y2_binary", "multiclass", num_classes=3, classes=("low", "mid", "high")),
    )
    experiment = dataclasses.replace(experiment, model=dataclasses.replace(experiment.model, tasks=tasks))
    estimator = Estimator(experiment, tmp_path / "run")
    estimator.train(data.input_fn(experiment, "train"), max_steps=2)
    loaded = tf.saved_model.load(str(estimator.export(tmp_path / "export"))).signatures
    features = export.sample_features(estimator.model, 5)
    expected = {name: value.numpy() for name, value in estimator.model(features).items()}
    examples = tf.constant(to_examples(estimator.model.config.features, features))
    binary = loaded["y1_binary"](inputs=examples)
    np.testing.assert_array_equal(binary["classes"], [[b"0", b"1"]] * 5)
    np.testing.assert_allclose(binary["scores"][:, 1], expected["y1_binary"], rtol=1e-5)
    np.testing.assert_allclose(binary["scores"][:, 0], 1 - expected["y1_binary"], rtol=1e-5)
    kind = loaded["kind"](inputs=examples)
    np.testing.assert_array_equal(kind["classes"], [[b"low", b"mid", b"high"]] * 5)
    np.testing.assert_allclose(kind["scores"], expected["kind"], rtol=1e-5)


def test_a_task_may_not_take_a_signatures_name():
    experiment = small_experiment()
    tasks = (TaskConfig("predict", "y1"), TaskConfig("y2", "y2"))
    with pytest.raises(ConfigError, match="must not name a task 'predict': the export's signature"):
        dataclasses.replace(experiment.model, tasks=tasks).validate()


def test_an_export_removes_what_a_killed_export_left_behind(trained, tmp_path):
    base = tmp_path / "export"
    stale, fresh = base / ".tmp-123-killed", base / ".tmp-124-running"
    for folder in (stale, fresh):
        (folder / "saved_model").mkdir(parents=True)
        (folder / "saved_model" / "saved_model.pb").write_bytes(b"partial")
    old = time.time() - 3600
    for path in (stale, stale / "saved_model", stale / "saved_model" / "saved_model.pb"):
        os.utime(path, (old, old))
    trained.export(base)
    assert not stale.exists() and fresh.exists()  # a recent one may be another export still writing


def test_saved_model_cli_shows_every_signature_as_tf_serving_reads_them(trained, tmp_path):
    """What `saved_model_cli show --all` (the tool TF Serving users inspect exports with) reports."""
    path = trained.export(tmp_path)
    shown = subprocess.run(
        [str(Path(sys.executable).parent / "saved_model_cli"), "show", "--all", "--dir", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    blocks = {block.split("']", 1)[0]: block for block in shown.split("signature_def['")[1:] if "']" in block}
    methods = {
        name: block.split("Method name is: ")[1].split()[0]
        for name, block in blocks.items()
        if not name.startswith("__")
    }
    assert methods == {
        "gates": "tensorflow/serving/predict",
        "predict": "tensorflow/serving/predict",
        "serving_default": "tensorflow/serving/predict",
        "y1": "tensorflow/serving/regress",
        "y2": "tensorflow/serving/regress",
    }
    assert "inputs['examples'] tensor_info:\n        dtype: DT_STRING" in blocks["predict"]
    assert "inputs['inputs'] tensor_info:\n        dtype: DT_STRING" in blocks["y1"]
    assert "outputs['outputs'] tensor_info:\n        dtype: DT_FLOAT\n        shape: (-1)" in blocks["y1"]


def test_the_export_runs_in_a_session_as_tf_serving_runs_it(trained, tmp_path):
    """TF Serving feeds and fetches a SavedModel's graph by its signature definitions' tensor names; its
    MultiInference feeds one input tensor and fetches every task's outputs in one run."""
    path = trained.export(tmp_path)
    features = export.sample_features(trained.model, 6, seed=4)
    expected = {name: value.numpy() for name, value in trained.model(features).items()}
    examples = to_examples(trained.model.config.features, features)
    inputs = {
        "serving_default": features,
        "predict": {"examples": examples},
        "y1": {"inputs": examples},
        "y2": {"inputs": examples},
    }
    outputs = export.run_in_session(path, inputs)
    for task in ("y1", "y2"):
        np.testing.assert_allclose(outputs["serving_default"][task], expected[task], rtol=1e-5)
        np.testing.assert_allclose(outputs["predict"][task], expected[task], rtol=1e-5)
        np.testing.assert_allclose(outputs[task]["outputs"], expected[task], rtol=1e-5)

    definitions = saved_model_pb2.SavedModel.FromString((path / "saved_model.pb").read_bytes()).meta_graphs[0]
    shared = {name: definitions.signature_def[name].inputs for name in ("predict", "y1", "y2")}
    assert {name: [info.name for info in inputs.values()] for name, inputs in shared.items()} == {
        name: ["input_example_tensor:0"] for name in shared
    }
    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as session:
        tf.compat.v1.saved_model.load(session, [tf.saved_model.SERVING], str(path))
        fetches = {task: definitions.signature_def[task].outputs["outputs"].name for task in ("y1", "y2")}
        together = session.run(fetches, {"input_example_tensor:0": examples})
    for task in ("y1", "y2"):
        np.testing.assert_allclose(together[task], expected[task], rtol=1e-5)


def test_the_fingerprint_is_of_the_saved_model_as_written(trained, tmp_path):
    """The export rewrites saved_model.pb after Keras wrote it; fingerprint.pb must describe the final one."""
    path = trained.export(tmp_path)
    recorded = tf.saved_model.experimental.read_fingerprint(str(path))
    (path / "fingerprint.pb").unlink()
    fingerprinting_utils.write_fingerprint(str(path))  # computed afresh from saved_model.pb
    assert tf.saved_model.experimental.read_fingerprint(str(path)) == recorded


def test_every_form_of_reference_to_a_shared_placeholder_is_renamed():
    names = {"y1_inputs", "y2_inputs"}
    renamed = [
        export._renamed_input(reference, names, "input_example_tensor")
        for reference in ("y1_inputs", "y2_inputs:0", "^y1_inputs", "y1_inputs_other", "Const:1")
    ]
    assert renamed == [
        "input_example_tensor",
        "input_example_tensor:0",
        "^input_example_tensor",
        "y1_inputs_other",
        "Const:1",
    ]
