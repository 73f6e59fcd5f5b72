import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from pipeline import data, export
from pipeline.errors import ExportError
from pipeline.estimator import Estimator
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
        tensor = tf.make_ndarray(request.inputs["inputs"])
        assert tensor.dtype == np.float32 and tensor.shape[1:] == (100,)
    assert signatures == ["serving_default"] * 3 + ["gates"] * 3  # batches of 1, 4 and 32 for each


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
