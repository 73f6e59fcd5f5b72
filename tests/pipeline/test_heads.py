import numpy as np
import pytest
import tensorflow as tf

from pipeline.config import TaskConfig
from pipeline.errors import ConfigError
from pipeline.heads import Head, TaskLoss, funnel_logit

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


def _task_loss(tasks, weighting="fixed"):
    layer = TaskLoss(tasks, weighting)
    layer.build()
    return layer


def test_the_task_loss_is_each_tasks_weighted_mean_over_its_labelled_rows():
    tasks = [TaskConfig(name="a", label="a", weight=1.0), TaskConfig(name="b", label="b", weight=0.5)]
    labels = {"a": tf.constant([0.0, 0.0, 0.0]), "b": tf.constant([1.0, 1.0, 5.0])}
    logits = {"a": tf.constant([1.0, 3.0, 2.0]), "b": tf.constant([1.0, -1.0, 0.0])}
    # a: sample weights 1, 3 and 0; b: its third label is missing (weight 0).
    weights = {"a": tf.constant([1.0, 3.0, 0.0]), "b": tf.constant([1.0, 1.0, 0.0])}
    fixed = _task_loss(tasks)
    total, per_task = fixed(labels, weights, logits)
    assert float(per_task["a"]) == pytest.approx((1 * 1 + 3 * 9) / 4)
    assert float(per_task["b"]) == pytest.approx((0 + 4) / 2)
    assert float(total) == pytest.approx(7.0 + 0.5 * 2.0)
    # Evaluation combines the split's task losses the same way.
    assert fixed.combine({"a": 7.0, "b": 2.0}) == pytest.approx(8.0)
    assert fixed.weights_now() == {}

    # Learned uncertainty weights on top: sum_t w_t (exp(-s_t) L_t + s_t).
    learned = _task_loss(tasks, "uncertainty")
    learned.learned_weights.log_variances["a"].assign(0.5)
    learned.learned_weights.log_variances["b"].assign(-0.2)
    weighted, _ = learned(labels, weights, logits)
    expected = 1.0 * (np.exp(-0.5) * 7.0 + 0.5) + 0.5 * (np.exp(0.2) * 2.0 - 0.2)
    assert float(weighted) == pytest.approx(expected, rel=1e-6)
    # Evaluation's total keeps to the fixed weights, so that runs compare whatever their weighting.
    assert learned.combine({"a": 7.0, "b": 2.0}) == pytest.approx(8.0)
    assert learned.weights_now() == pytest.approx({"a": np.exp(-0.5), "b": np.exp(0.2)})


def test_a_task_with_no_labelled_row_in_the_batch_adds_nothing():
    total, per_task = _task_loss([TaskConfig(name="a", label="a")])(
        {"a": tf.constant([7.0, 7.0])}, {"a": tf.constant([0.0, 0.0])}, {"a": tf.constant([0.0, 1.0])}
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


COUNT = TaskConfig(name="visits", label="visits", type="count", loss="poisson")


def test_a_count_task_predicts_the_expected_count_and_learns_by_the_poisson_loss():
    head = Head(COUNT)
    assert (COUNT.output_activation, COUNT.metrics) == ("exponential", ("poisson_deviance", "mae"))
    logits = np.array([0.0, np.log(2.0), 1.0], np.float32)  # log of the expected counts 1, 2, e
    np.testing.assert_allclose(head.predictions(logits), [1.0, 2.0, np.e], rtol=1e-6)
    # The negative log-likelihood exp(z) - y z + log(y!): 1 - 0 + 0;  2 - 2 log 2 + log 2;  e - 5 + log 120
    expected = [1.0, 2.0 - np.log(2.0), np.e - 5.0 + np.log(120.0)]
    np.testing.assert_allclose(
        head.per_example_loss(np.array([0.0, 2.0, 5.0], np.float32), logits), expected, rtol=1e-6
    )


def test_poisson_deviance_and_mae_of_counts():
    head = Head(COUNT)
    metrics = head.create_metrics()
    labels = np.array([0.0, 2.0, 5.0], np.float32)
    head.update_metrics(
        metrics, labels, np.array([0.0, np.log(2.0), 1.0], np.float32), np.ones(3, np.float32)
    )
    # 2 (y log(y / mu) - (y - mu)):  y 0, mu 1: 2;  y 2, mu 2: 0;  y 5, mu e: 2 (5 (log 5 - 1) - (5 - e))
    deviances = [2.0, 0.0, 2.0 * (5.0 * (np.log(5.0) - 1.0) - (5.0 - np.e))]
    assert float(metrics["poisson_deviance"].result()) == pytest.approx(np.mean(deviances), rel=1e-5)
    assert float(metrics["mae"].result()) == pytest.approx(np.mean([1.0, 0.0, 5.0 - np.e]), rel=1e-5)


def test_a_count_task_refuses_another_link():
    with pytest.raises(ConfigError) as error:
        TaskConfig(
            name="visits", label="visits", type="count", loss="poisson", output_activation="relu"
        ).validate()
    assert str(error.value) == (
        "`tasks[visits].output_activation` must be exponential for count tasks (the loss's link). "
        "Received: tasks[visits].output_activation='relu'"
    )


def test_uncertainty_leaves_out_the_term_of_a_task_without_labels_in_the_batch():
    learned = _task_loss([TaskConfig(name="a", label="a"), TaskConfig(name="b", label="b")], "uncertainty")
    labels = {"a": tf.constant([1.0, 2.0]), "b": tf.constant([0.0, 0.0])}
    logits = {"a": tf.constant([0.0, 0.0]), "b": tf.constant([3.0, 3.0])}
    weights = {"a": tf.constant([1.0, 1.0]), "b": tf.constant([0.0, 0.0])}  # b: no label in this batch
    learned.learned_weights.log_variances["a"].assign(0.3)
    learned.learned_weights.log_variances["b"].assign(0.7)
    total, _ = learned(labels, weights, logits)
    # a: mse (1 + 4) / 2 = 2.5, weighted exp(-0.3), plus 0.3; b: nothing, not even its 0.7
    assert float(total) == pytest.approx(np.exp(-0.3) * 2.5 + 0.3, rel=1e-6)


def test_the_poisson_loss_is_never_negative():
    head = Head(COUNT)
    counts = np.arange(0.0, 40.0, dtype=np.float32)
    for rate in (0.5, 5.0, 30.0):  # the best fit, log(rate), for large counts is where log(y!) matters
        losses = head.per_example_loss(counts, np.full(40, np.log(rate), np.float32))
        assert float(tf.reduce_min(losses)) >= 0.0


MULTICLASS = TaskConfig(name="kind", label="kind", type="multiclass", num_classes=3, top_k=2)


def test_a_multiclass_task_serves_class_probabilities_and_learns_by_cross_entropy():
    head = Head(MULTICLASS)
    assert (MULTICLASS.loss, MULTICLASS.output_activation) == ("cross_entropy", "softmax")
    assert MULTICLASS.metrics == ("accuracy", "top_k_accuracy") and MULTICLASS.output_units == 3
    logits = np.array([[0.0, 0.0, 0.0], [np.log(1.0), np.log(2.0), np.log(7.0)]], np.float32)
    np.testing.assert_allclose(head.predictions(logits), [[1 / 3] * 3, [0.1, 0.2, 0.7]], rtol=1e-6)
    losses = head.per_example_loss(np.array([2.0, 1.0], np.float32), logits)
    np.testing.assert_allclose(losses, [np.log(3.0), -np.log(0.2)], rtol=1e-6)


def test_multiclass_accuracy_and_top_k_accuracy_are_weighted():
    head = Head(MULTICLASS)
    metrics = head.create_metrics()
    # Probabilities ranked: row 0 -> 2, 1, 0; row 1 -> 0, 2, 1; row 2 -> 1, 0, 2; row 3 (weight 0).
    logits = tf.constant([[0.0, 1.0, 2.0], [2.0, 0.0, 1.0], [1.0, 2.0, 0.0], [0.0, 0.0, 9.0]])
    labels = tf.constant([2.0, 2.0, 2.0, 0.0])
    head.update_metrics(metrics, labels, logits, tf.constant([1.0, 1.0, 2.0, 0.0]))
    assert float(metrics["accuracy"].result()) == pytest.approx(1 / 4)  # row 0 only, of weight 4
    assert float(metrics["top_k_accuracy"].result()) == pytest.approx(2 / 4)  # rows 0 and 1 in the top 2
    assert float(metrics["examples"].result()) == 3


def test_top_k_accuracy_is_left_out_when_every_class_is_in_the_top_k():
    assert TaskConfig(name="k", label="k", type="multiclass", num_classes=5).metrics == ("accuracy",)
    assert "top_k_accuracy" in TaskConfig(name="k", label="k", type="multiclass", num_classes=6).metrics


@pytest.mark.parametrize(
    "fields, message",
    [
        (
            {"type": "multiclass", "num_classes": 1},
            "`tasks[t].num_classes` must be an integer >= 2. Received: tasks[t].num_classes=1",
        ),
        (
            {"type": "binary", "num_classes": 3},
            "`tasks[t].num_classes` is for multiclass tasks only. Received: tasks[t].num_classes=3",
        ),
        (
            {"type": "multiclass", "num_classes": 3, "loss": "log_loss"},
            "`tasks[t].loss` must be one of cross_entropy. Received: tasks[t].loss='log_loss'",
        ),
        (
            {"type": "multiclass", "num_classes": 3, "metrics": ("auc",)},
            "`tasks[t].metrics` must be one of accuracy, top_k_accuracy, cross_entropy. "
            "Received: tasks[t].metrics='auc'",
        ),
        (
            {"type": "ordinal"},
            "`tasks[t].type` must be one of binary, regression, count, multiclass. "
            "Received: tasks[t].type='ordinal'",
        ),
    ],
)
def test_task_names_come_from_the_task_types(fields, message):
    with pytest.raises(ConfigError) as error:
        TaskConfig(name="t", label="t", **fields).validate()
    assert str(error.value) == message


def test_the_funnel_logit_is_the_logit_of_the_product_of_probabilities():
    earlier = np.array([0.0, 2.0, -3.0, 40.0, -40.0, 120.0], np.float32)
    conditional = np.array([0.0, -1.0, 1.5, 40.0, 2.0, 120.0], np.float32)
    product = tf.sigmoid(funnel_logit(earlier, conditional)).numpy()
    expected = 1 / (1 + np.exp(-earlier.astype(np.float64))) / (1 + np.exp(-conditional.astype(np.float64)))
    np.testing.assert_allclose(product, expected, rtol=1e-5)
    # Where the product rounds to 1 the logit stays finite, and so do the loss and its gradient.
    logits = tf.constant(earlier)
    with tf.GradientTape() as tape:
        tape.watch(logits)
        z = funnel_logit(logits, tf.constant(conditional))
        loss = tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.zeros(6), logits=z)
    assert np.all(np.isfinite(z.numpy())) and np.all(np.isfinite(tape.gradient(loss, logits).numpy()))


def test_evaluation_counts_each_task_on_its_rows_and_a_conditional_output_on_the_earlier_events():
    tasks = (
        TaskConfig("ctr", "click", "binary"),
        TaskConfig("ctcvr", "conversion", "binary", after="ctr", conditional_output="cvr"),
    )
    task_loss = TaskLoss(tasks)
    metrics = task_loss.create_metrics()
    assert sorted(metrics) == ["ctcvr", "ctr", "cvr"]
    labels = {"click": tf.constant([1.0, 0.0, 1.0, 0.0, 1.0]), "conversion": tf.constant([1.0, 0, 0, 0, 1])}
    weights = {"click": tf.constant([1.0, 1, 1, 1, 0]), "conversion": tf.constant([1.0, 1, 1, 0, 1])}
    logits = {"ctr": tf.zeros(5), "ctcvr": tf.zeros(5)}
    towers = {"ctr": tf.zeros(5), "ctcvr": tf.constant([2.0, 0.0, -2.0, 0.0, 0.0])}
    task_loss.update_metrics(metrics, labels, weights, logits, towers)
    assert metrics["ctr"]["examples"].result() == 4 and metrics["ctcvr"]["examples"].result() == 4
    # cvr: rows 1 and 3 were clicked (row 5 was, with no weight); its loss is the towers' log-loss there.
    assert metrics["cvr"]["examples"].result() == 2
    expected = np.mean([np.log1p(np.exp(-2.0)), np.log1p(np.exp(-2.0))])
    np.testing.assert_allclose(metrics["cvr"]["loss"].result(), expected, rtol=1e-5)
