import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from pipeline import data, export
from pipeline.errors import ExportError
from pipeline.estimator import Estimator
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
    assert export.versions(base) == [int(first.name), int(second.name)]
    assert not [p for p in base.iterdir() if p.name.startswith(".tmp")]


def test_warmup_requests_match_the_signature(trained, tmp_path):
    path = trained.export(tmp_path)
    records = list(tf.data.TFRecordDataset(str(path / export.WARMUP_FILE)))
    assert len(records) == 3
    for record in records:
        log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        request = log.predict_log.request
        assert request.model_spec.signature_name == "serving_default"
        tensor = tf.make_ndarray(request.inputs["inputs"])
        assert tensor.dtype == np.float32 and tensor.shape[1:] == (100,)


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
    assert export.versions(tmp_path / "export") == []


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
