"""A multi-class label (a device type) from a CSV, through `mtl` training, export and both serving
protocols."""

from __future__ import annotations

import json

import numpy as np
import tensorflow as tf

from serving.client import connect
from serving.config import single_model
from serving.server import ModelServer, ServerOptions
from tests.cli.commands import assert_one_line_error, mtl, mtl_on_csv

CLASSES = ["phone", "tablet", "desktop"]
SCHEMA = {
    "features": [{"name": "x", "type": "numeric"}, {"name": "k", "type": "categorical"}],
    "tasks": [
        {"name": "device", "column": "device", "type": "multiclass", "classes": CLASSES},
        {"name": "bought", "column": "bought", "positive_values": ["yes"]},
    ],
}


def _table(path, rows: int, seed: int, devices=None):
    """The device is mostly set by x: phone below -0.5, desktop above 0.5, tablet between."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=rows)
    if devices is None:
        devices = np.where(x < -0.5, "phone", np.where(x > 0.5, "desktop", "tablet"))
        noisy = rng.random(rows) < 0.1
        devices[noisy] = rng.choice(CLASSES, size=noisy.sum())
    lines = ["x,k,device,bought"] + [
        f"{x[i]:.3f},{rng.choice(['a', 'b'])},{devices[i]},{rng.choice(['yes', 'no'])}" for i in range(rows)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_multiclass_task_trains_and_serves_a_probability_per_class(tmp_path):
    table = _table(tmp_path / "devices.csv", 2000, seed=0)
    model_dir = tmp_path / "run"
    trained = mtl_on_csv(
        "train_and_evaluate",
        model_dir,
        SCHEMA,
        table,
        "--model=mmoe",
        "--num_experts=2",
        "--expert_units=16",
        "--tower_units=8",
        "--batch_size=64",
        "--learning_rate=0.01",
        "--max_steps=300",
        "--eval_every_steps=300",
        "--early_stopping_metric=device/accuracy",
    )
    assert trained.returncode == 0, trained.stderr
    results = json.loads((model_dir / "eval_results.json").read_text())
    device = results["tasks"]["device"]
    assert list(device) == ["loss", "accuracy", "examples"]  # 3 classes: top-5 accuracy would always be 1
    assert device["accuracy"] > 0.8, results  # the majority class alone is about 0.38
    assert device["examples"] == 400

    assert mtl("export", f"--model_dir={model_dir}", f"--export_base={tmp_path / 'export'}").returncode == 0
    (version,) = list((tmp_path / "export").iterdir())
    features = {"x": [-2.0, 0.0, 2.0], "k": ["a", "b", "a"]}
    expected = tf.saved_model.load(str(version)).signatures["serving_default"](
        x=tf.constant(features["x"]), k=tf.constant(features["k"])
    )
    assert expected["device"].shape == (3, 3) and expected["bought"].shape == (3,)
    options = ServerOptions(grpc_port=0, rest_port=0, poll_seconds=0)
    with ModelServer(single_model("devices", tmp_path / "export"), options) as server:
        for address in (f"http://127.0.0.1:{server.rest_port}", f"grpc://127.0.0.1:{server.grpc_port}"):
            with connect(address, "devices") as client:
                predictions = client.predict(features)
            assert predictions["device"].shape == (3, 3)
            np.testing.assert_allclose(predictions["device"], expected["device"].numpy(), rtol=1e-6)
            np.testing.assert_allclose(predictions["device"].sum(axis=1), np.ones(3), rtol=1e-5)
            # In the order of `classes`: phone for x = -2, tablet for 0, desktop for 2.
            assert list(predictions["device"].argmax(axis=1)) == [0, 1, 2]

    # `mtl predict` prints each row's probabilities.
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"x": -2.0, "k": "a"}\n')
    with ModelServer(single_model("devices", tmp_path / "export"), options) as server:
        printed = mtl(
            "predict",
            f"--server=http://127.0.0.1:{server.rest_port}",
            "--model_name=devices",
            f"--input={rows}",
        )
    assert printed.returncode == 0, printed.stderr
    (line,) = printed.stdout.strip().splitlines()
    np.testing.assert_allclose(json.loads(line)["device"], expected["device"].numpy()[0], rtol=1e-6)


def test_a_value_that_is_not_a_class_is_refused_with_the_values(tmp_path):
    devices = np.array(["phone", "tablet", "Phone", "desktop", "tv", "phone"] * 10)
    table = _table(tmp_path / "bad.csv", 60, seed=1, devices=devices)
    result = mtl_on_csv("train", tmp_path / "run", SCHEMA, table)
    assert_one_line_error(
        result,
        "train",
        "schema.tasks[0] ('device'): 16 training rows of column 'device' hold values that are not among its "
        "classes: 'Phone' (8), 'tv' (8); add them to classes, or to csv.na_values if they mean a missing "
        "label.",
    )


def test_a_multiclass_task_without_classes_is_refused(tmp_path):
    schema = {**SCHEMA, "tasks": [{"name": "device", "column": "device", "type": "multiclass"}]}
    table = _table(tmp_path / "devices.csv", 20, seed=2)
    result = mtl_on_csv("train", tmp_path / "run", schema, table)
    assert_one_line_error(
        result,
        "train",
        "`schema.tasks[0].classes` must list the column's classes (2 or more). Received: "
        "schema.tasks[0].classes=[]",
    )
