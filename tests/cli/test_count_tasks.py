"""A count label (visits per user) from a CSV, through `mtl` training, export and both serving protocols."""

from __future__ import annotations

import json

import numpy as np
import tensorflow as tf

from serving.client import connect
from serving.config import single_model
from serving.server import ModelServer, ServerOptions
from tests.cli.commands import mtl, mtl_on_csv
from tests.cli.test_real_data_cli import assert_one_line_error

SCHEMA = {
    "features": [{"name": "x", "type": "numeric"}, {"name": "k", "type": "categorical"}],
    "tasks": [
        {"name": "visits", "column": "visits", "type": "count"},
        {"name": "bought", "column": "bought", "positive_values": ["yes"]},
    ],
}


def _table(path, rows: int, seed: int, visits=None):
    """Visits ~ Poisson(exp(0.5 + 0.8 x)): the expected count grows with x."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=rows)
    counts = rng.poisson(np.exp(0.5 + 0.8 * x)) if visits is None else visits
    lines = ["x,k,visits,bought"] + [
        f"{x[i]:.3f},{rng.choice(['a', 'b'])},{counts[i]},{rng.choice(['yes', 'no'])}" for i in range(rows)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path, x, counts


def test_a_count_task_trains_and_serves_expected_counts(tmp_path):
    table, _, counts = _table(tmp_path / "visits.csv", 2000, seed=0)
    model_dir = tmp_path / "run"
    trained = mtl_on_csv(
        "train_and_evaluate",
        model_dir,
        SCHEMA,
        table,
        "--model=shared_bottom",
        "--bottom_units=16",
        "--tower_units=8",
        "--batch_size=64",
        "--learning_rate=0.01",
        "--max_steps=400",
        "--eval_every_steps=400",
    )
    assert trained.returncode == 0, trained.stderr
    results = json.loads((model_dir / "eval_results.json").read_text())
    assert list(results["tasks"]["visits"]) == ["loss", "poisson_deviance", "mae", "examples"]
    # Better than the best constant prediction, the mean count: its deviance on the same rows.
    mean = counts.mean()
    eval_counts = counts[np.arange(len(counts)) % 5 == 4]  # 80/20/0: every fifth row is eval
    y_log_ratio = eval_counts * np.log(np.maximum(eval_counts, 1) / mean)  # 0 where the count is 0
    constant = np.mean(2 * (y_log_ratio - (eval_counts - mean)))
    assert results["tasks"]["visits"]["poisson_deviance"] < 0.8 * constant, (results, constant)

    assert mtl("export", f"--model_dir={model_dir}", f"--export_base={tmp_path / 'export'}").returncode == 0
    (version,) = list((tmp_path / "export").iterdir())
    features = {"x": [-1.5, 0.0, 1.5], "k": ["a", "b", "a"]}
    expected = tf.saved_model.load(str(version)).signatures["serving_default"](
        x=tf.constant(features["x"]), k=tf.constant(features["k"])
    )
    options = ServerOptions(grpc_port=0, rest_port=0, poll_seconds=0)
    with ModelServer(single_model("visits", tmp_path / "export"), options) as server:
        for address in (f"http://127.0.0.1:{server.rest_port}", f"grpc://127.0.0.1:{server.grpc_port}"):
            with connect(address, "visits") as client:
                predictions = client.predict(features)
            np.testing.assert_allclose(predictions["visits"], expected["visits"].numpy(), rtol=1e-6)
            # Expected counts: positive, rising with x, near exp(0.5 + 0.8 x) = 0.50, 1.65, 5.47.
            assert (predictions["visits"] > 0).all() and np.all(np.diff(predictions["visits"]) > 0)
            np.testing.assert_allclose(
                predictions["visits"], np.exp(0.5 + 0.8 * np.array(features["x"])), rtol=0.35
            )


def test_a_count_column_with_a_negative_or_fractional_value_is_refused(tmp_path):
    visits = np.array([1, 0, 2, -1, 3, 1.5] * 10)
    table, _, _ = _table(tmp_path / "bad.csv", 60, seed=1, visits=visits)
    result = mtl_on_csv("train", tmp_path / "run", SCHEMA, table)
    assert_one_line_error(
        result,
        "train",
        "schema.tasks[0] ('visits') is a count task, but 16 training rows of column 'visits' are not whole "
        "numbers >= 0.",
    )
