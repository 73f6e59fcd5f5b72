import numpy as np
import pytest
import tensorflow as tf

from pipeline.config import TaskConfig
from pipeline.heads import Head, total_loss

BINARY = TaskConfig(name="click", label="click_label", type="binary", loss="log_loss")


def test_log_loss_is_computed_from_logits():
    labels = np.array([1.0, 0.0, 1.0], np.float32)
    logits = np.array([2.0, -1.0, -30.0], np.float32)
    p = 1 / (1 + np.exp(-logits.astype(np.float64)))
    expected = -(labels * np.log(p) + (1 - labels) * np.log(1 - p))
    np.testing.assert_allclose(Head(BINARY).per_example_loss(labels, logits), expected, rtol=1e-5)


@pytest.mark.parametrize(
    "loss, expected",
    [("mse", [0.25, 9.0, 0.0]), ("huber", [0.125, 2.5, 0.0])],  # huber delta 1: 0.5e² or |e| - 0.5
)
def test_regression_losses(loss, expected):
    head = Head(TaskConfig(name="y", label="y", loss=loss))
    per_example = head.per_example_loss(np.zeros(3, np.float32), np.array([0.5, -3.0, 0.0], np.float32))
    np.testing.assert_allclose(per_example, expected, rtol=1e-6)


def test_binary_predictions_are_probabilities():
    np.testing.assert_allclose(Head(BINARY).predictions(tf.constant([0.0])), [0.5])


def test_total_loss_is_each_tasks_weighted_mean_over_its_labelled_rows():
    heads = [
        Head(TaskConfig(name="a", label="a", weight=1.0)),
        Head(TaskConfig(name="b", label="b", weight=0.5)),
    ]
    labels = {"a": tf.constant([0.0, 0.0, 0.0]), "b": tf.constant([1.0, 1.0, 5.0])}
    logits = {"a": tf.constant([1.0, 3.0, 2.0]), "b": tf.constant([1.0, -1.0, 0.0])}
    # a: sample weights 1, 3 and 0; b: its third label is missing (weight 0).
    weights = {"a": tf.constant([1.0, 3.0, 0.0]), "b": tf.constant([1.0, 1.0, 0.0])}
    total, per_task = total_loss(heads, labels, weights, logits)
    assert float(per_task["a"]) == pytest.approx((1 * 1 + 3 * 9) / 4)
    assert float(per_task["b"]) == pytest.approx((0 + 4) / 2)
    assert float(total) == pytest.approx(7.0 + 0.5 * 2.0)


def test_a_task_with_no_labelled_row_in_the_batch_adds_nothing():
    head = Head(TaskConfig(name="a", label="a"))
    total, per_task = total_loss(
        [head], {"a": tf.constant([7.0, 7.0])}, {"a": tf.constant([0.0, 0.0])}, {"a": tf.constant([0.0, 1.0])}
    )
    assert float(total) == float(per_task["a"]) == 0.0


def test_metrics_use_the_tasks_own_labels():
    head = Head(BINARY)
    metrics = head.create_metrics()
    assert sorted(metrics) == ["auc", "examples", "log_loss", "loss"]
    logits = tf.constant([3.0, 1.0, -1.0, -3.0])
    ones = tf.ones(4)
    head.update_metrics(metrics, tf.constant([1.0, 1.0, 0.0, 0.0]), logits, ones)
    assert float(metrics["auc"].result()) == pytest.approx(1.0)
    metrics = head.create_metrics()
    head.update_metrics(metrics, tf.constant([0.0, 0.0, 1.0, 1.0]), logits, ones)
    assert float(metrics["auc"].result()) == pytest.approx(0.0, abs=1e-3)


def test_regression_metrics_weight_examples_and_count_the_labelled_ones():
    head = Head(TaskConfig(name="y", label="y"))
    metrics = head.create_metrics()
    head.update_metrics(metrics, tf.constant([0.0, 0.0]), tf.constant([3.0, -1.0]), tf.ones(2))
    assert float(metrics["rmse"].result()) == pytest.approx(np.sqrt(5.0))
    assert float(metrics["mae"].result()) == pytest.approx(2.0)
    assert float(metrics["loss"].result()) == pytest.approx(5.0)
    assert float(metrics["examples"].result()) == 2
    metrics = head.create_metrics()
    labels, logits = tf.constant([0.0, 0.0, 9.0]), tf.constant([3.0, -1.0, 0.0])
    head.update_metrics(metrics, labels, logits, tf.constant([1.0, 3.0, 0.0]))
    assert float(metrics["rmse"].result()) == pytest.approx(np.sqrt((9 + 3 * 1) / 4))
    assert float(metrics["mae"].result()) == pytest.approx((3 + 3 * 1) / 4)
    assert float(metrics["loss"].result()) == pytest.approx((9 + 3 * 1) / 4)
    assert float(metrics["examples"].result()) == 2
