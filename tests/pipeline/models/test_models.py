import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipeline.config import FeatureConfig, ModelConfig, TaskConfig, metric_names
from pipeline.errors import ConfigError, UnknownNameError
from pipeline.layers import Gate
from pipeline.models import MultiTaskModel, model_fn, names

PAPER_TASKS = (TaskConfig("y1", "y1"), TaskConfig("y2", "y2"))
PAPER = ModelConfig(
    architecture="mmoe",
    features=(FeatureConfig("inputs", dim=100),),
    tasks=PAPER_TASKS,
    num_experts=8,
    expert_units=(16,),
    bottom_units=(113,),
    tower_units=(8,),
)
TOWERS = 2 * ((16 * 8 + 8) + (8 + 1))  # two towers: 16 -> 8 -> 1


def _inputs(batch: int = 4) -> dict:
    return {"inputs": np.random.default_rng(0).normal(size=(batch, 100)).astype(np.float32)}


@pytest.mark.parametrize(
    "architecture, expected",
    [
        ("mmoe", 8 * (100 * 16 + 16) + 2 * (100 * 8) + TOWERS),  # 14,818
        ("omoe", 8 * (100 * 16 + 16) + 1 * (100 * 8) + TOWERS),  # 14,018
        ("shared_bottom", (100 * 113 + 113) + 2 * ((113 * 8 + 8) + (8 + 1))),  # 13,255
        ("single_task", 2 * ((100 * 113 + 113) + (113 * 8 + 8) + (8 + 1))),  # 24,668: a bottom per task
    ],
)
def test_parameter_counts_of_the_papers_synthetic_sizes(architecture, expected):
    model = model_fn(dataclasses.replace(PAPER, architecture=architecture))
    assert model.count_params() == expected


def test_omoe_has_one_gate_for_all_tasks_and_mmoe_one_per_task():
    omoe = model_fn(dataclasses.replace(PAPER, architecture="omoe"))
    mmoe = model_fn(PAPER)
    assert len([layer for layer in omoe._flatten_layers() if isinstance(layer, Gate)]) == 1
    assert len([layer for layer in mmoe._flatten_layers() if isinstance(layer, Gate)]) == 2
    x = omoe.encoder(omoe.preprocessor(_inputs()))
    omoe_reps = omoe.bottom(x)
    assert len(omoe_reps) == 1  # the one mixture every task reads
    mmoe_reps = mmoe.bottom(x)
    assert len(mmoe_reps) == 2 and not np.allclose(mmoe_reps[0], mmoe_reps[1])


def test_each_tasks_gate_sums_to_one():
    model = model_fn(PAPER)
    weights = np.asarray(model.bottom.gate_weights(model.encoder(model.preprocessor(_inputs(16)))))
    assert weights.shape == (16, 2, 8)
    np.testing.assert_allclose(weights.sum(axis=-1), np.ones((16, 2)), rtol=1e-5)


@pytest.mark.parametrize("architecture", ["shared_bottom", "omoe", "mmoe", "ple", "single_task"])
def test_outputs_one_prediction_per_task_keeping_the_batch_rank(architecture):
    model = model_fn(dataclasses.replace(PAPER, architecture=architecture))
    for batch in (1, 5):
        outputs = model(_inputs(batch))
        assert sorted(outputs) == ["y1", "y2"]
        assert all(value.shape == (batch,) for value in outputs.values())


def test_binary_tasks_output_probabilities():
    config = dataclasses.replace(PAPER, tasks=(TaskConfig("click", "click", type="binary", loss="log_loss"),))
    predictions = np.asarray(model_fn(config)(_inputs(32))["click"])
    assert ((predictions > 0) & (predictions < 1)).all()


def test_get_config_round_trip():
    model = model_fn(PAPER)
    clone = MultiTaskModel.from_config(model.get_config())
    clone.build_variables()
    clone.set_weights(model.get_weights())
    assert clone.config == model.config
    for name, value in model(_inputs()).items():
        np.testing.assert_allclose(clone(_inputs())[name], value, rtol=1e-6)


def test_keras_save_and_load_round_trip(tmp_path):
    model = model_fn(dataclasses.replace(PAPER, architecture="omoe"))
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)  # safe mode: no Lambda layers anywhere
    for name, value in model(_inputs()).items():
        np.testing.assert_allclose(loaded(_inputs())[name], value, rtol=1e-6)


def test_unknown_architecture_lists_the_valid_ones():
    assert names() == ["esmm", "mmoe", "omoe", "ple", "shared_bottom", "single_task"]
    with pytest.raises(UnknownNameError) as error:
        model_fn(dataclasses.replace(PAPER, architecture="ple2"))
    assert (
        str(error.value)
        == "Unknown model 'ple2'. Valid models: esmm, mmoe, omoe, ple, shared_bottom, single_task."
    )


def test_single_task_shares_no_variable_between_tasks_not_even_embeddings():
    city = FeatureConfig("city", kind="categorical", vocabulary=("paris", "rome"), embedding_dim=3)
    model = model_fn(dataclasses.replace(PAPER, architecture="single_task", features=(*PAPER.features, city)))
    owners = {}
    for variable in model.trainable_variables:
        parts = variable.path.split("/")
        owner = next((part for part in parts if part.startswith(("features_", "bottom_", "tower_"))), None)
        assert owner is not None, variable.path  # a task's embeddings, bottom or tower
        owners.setdefault(owner.split("_", 1)[1], []).append(variable.path)
    assert sorted(owners) == ["y1", "y2"]
    assert [v.path for v in model.trainable_variables if "embedding" in v.path] == [
        "single_task/features/features_y1/embedding_3/embeddings",
        "single_task/features/features_y2/embedding_3/embeddings",
    ]
    # The gradient of one task's output reaches only that task's variables.
    inputs = {**_inputs(), "city": np.array(["paris", "rome", "oslo", ""], object)}
    with tf.GradientTape() as tape:
        y1 = model(inputs)["y1"]
    gradients = tape.gradient(y1, model.trainable_variables)
    touched = {v.path for v, g in zip(model.trainable_variables, gradients, strict=True) if g is not None}
    assert touched == set(owners["y1"])


def test_model_fn_validates_first():
    with pytest.raises(ConfigError, match="num_experts=0"):
        model_fn(dataclasses.replace(PAPER, num_experts=0))


def _ple(levels: int, task_experts: int = 2, shared_experts: int = 1) -> ModelConfig:
    return dataclasses.replace(
        PAPER,
        architecture="ple",
        num_levels=levels,
        num_task_experts=task_experts,
        num_shared_experts=shared_experts,
    )


@pytest.mark.parametrize("levels", [1, 2, 3])
def test_ple_parameter_count_follows_its_levels(levels):
    tasks, task_experts, shared_experts, units = 2, 2, 1, 16
    experts = tasks * task_experts + shared_experts

    def level(fan_in: int, last: bool) -> int:
        count = experts * (fan_in * units + units)  # every expert: fan_in -> 16
        count += tasks * fan_in * (task_experts + shared_experts)  # a gate per task over its own and shared
        return count + (0 if last else fan_in * experts)  # below the top, a shared gate over all

    expected = sum(level(100 if i == 0 else units, i == levels - 1) for i in range(levels)) + TOWERS
    # 1 level (CGC): 5 * 1616 + 2 * 100 * 3 + 290 = 8,970; 2 levels: + 500 + 5 * 272 + 2 * 16 * 3 + ...
    assert model_fn(_ple(levels)).count_params() == expected


def test_ple_gates_mix_own_and_shared_experts_and_sum_to_one():
    model = model_fn(_ple(2))
    x = model.encoder(model.preprocessor(_inputs(8)))
    weights = model.bottom.gate_weights(x)
    assert [[tuple(w.shape) for w in level] for level in weights] == [
        [(8, 3), (8, 3), (8, 5)],  # each task: its 2 experts and the shared one; shared gate: all 5
        [(8, 3), (8, 3)],  # the top level has no shared gate
    ]
    for level in weights:
        for w in level:
            np.testing.assert_allclose(np.asarray(w).sum(axis=-1), np.ones(8), rtol=1e-5)
    outputs = model.bottom(x)
    assert len(outputs) == 2 and all(tuple(o.shape) == (8, 16) for o in outputs)
    names = sorted(
        {
            v.path.split("/level_0/")[1].split("/")[0]
            for v in model.trainable_variables
            if "/level_0/" in v.path
        }
    )
    assert names == ["experts_shared", "experts_y1", "experts_y2", "gate_shared", "gate_y1", "gate_y2"]


def test_a_ple_task_output_is_its_gate_mixture_of_its_own_and_the_shared_experts():
    level = model_fn(_ple(1)).bottom.levels[0]
    x = np.random.default_rng(1).normal(size=(4, 100)).astype(np.float32)
    weights = [np.asarray(w) for w in level.gate_weights([x, x, x])]
    own = [np.asarray(experts(x)) for experts in level.task_experts]
    shared = np.asarray(level.shared_experts(x))
    outputs = level([x, x, x])
    for task in range(2):
        candidates = np.concatenate([own[task], shared], axis=1)  # [4, 3, 16]
        expected = np.einsum("be,beu->bu", weights[task], candidates)
        np.testing.assert_allclose(np.asarray(outputs[task]), expected, rtol=1e-5, atol=1e-6)


FUNNEL = dataclasses.replace(
    PAPER,
    architecture="esmm",
    tasks=(
        TaskConfig("ctr", "click", "binary"),
        TaskConfig("ctcvr", "conversion", "binary", after="ctr", conditional_output="cvr"),
    ),
)


def test_esmm_serves_ctr_cvr_and_their_product_ctcvr():
    model = model_fn(FUNNEL)
    # A network per task over the inputs (ESMM's CTR and CVR towers): 100 -> 113 -> 8 -> 1 each.
    assert model.count_params() == 2 * ((100 * 113 + 113) + (113 * 8 + 8) + (8 + 1))
    outputs = {name: value.numpy() for name, value in model(_inputs(32)).items()}
    assert sorted(outputs) == ["ctcvr", "ctr", "cvr"]
    np.testing.assert_allclose(outputs["ctcvr"], outputs["ctr"] * outputs["cvr"], rtol=1e-5)
    assert np.all(outputs["ctcvr"] <= outputs["ctr"])


def test_esmms_losses_are_over_the_whole_space_and_train_both_towers():
    model = model_fn(FUNNEL)
    inputs = model.preprocessor(_inputs(6))
    click = tf.constant([1.0, 1.0, 0.0, 0.0, 1.0, 0.0])
    conversion = tf.constant([1.0, 0.0, 0.0, 0.0, 1.0, 0.0])  # only after a click
    labels, weights = (
        {"click": click, "conversion": conversion},
        {"click": tf.ones(6), "conversion": tf.ones(6)},
    )
    with tf.GradientTape() as tape:
        logits = model.task_logits(inputs)
        total, per_task = model.task_loss(labels, weights, logits)
    outputs = model(_inputs(6))
    ctr, ctcvr = outputs["ctr"].numpy().astype(np.float64), outputs["ctcvr"].numpy().astype(np.float64)

    def log_loss(y, p):
        return -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))

    # Both losses are means over all six impressions, clicked or not; ctcvr's is on the product.
    assert float(per_task["ctr"]) == pytest.approx(log_loss(click.numpy(), ctr), rel=1e-5)
    assert float(per_task["ctcvr"]) == pytest.approx(log_loss(conversion.numpy(), ctcvr), rel=1e-5)
    assert float(total) == pytest.approx(float(per_task["ctr"]) + float(per_task["ctcvr"]), rel=1e-6)
    gradients = tape.gradient(per_task["ctcvr"], model.trainable_variables)
    touched = {
        v.path.split("/")[1]
        for v, g in zip(model.trainable_variables, gradients, strict=True)
        if g is not None
    }
    assert touched == {"bottoms", "tower_ctr", "tower_ctcvr"}  # the product trains the CTR side too


def test_esmm_needs_a_funnel():
    with pytest.raises(ConfigError) as error:
        model_fn(dataclasses.replace(PAPER, architecture="esmm"))
    assert str(error.value).startswith(
        "`tasks` must hold a funnel for esmm: a binary task `after` another "
        "(e.g. a conversion after a click)."
    )


@pytest.mark.parametrize(
    "tasks, message",
    [
        (
            (TaskConfig("ctcvr", "conversion", "binary", after="ctr"), TaskConfig("ctr", "click", "binary")),
            "`tasks[ctcvr].after` must name a task listed before it (tasks: ctcvr, ctr). "
            "Received: tasks[ctcvr].after='ctr'",
        ),
        (
            (TaskConfig("ctr", "click"), TaskConfig("ctcvr", "conversion", "binary", after="ctr")),
            "`tasks[ctcvr].after` must name a binary task. Received: tasks[ctcvr].after='ctr'",
        ),
        (
            (
                TaskConfig("ctr", "click", "binary"),
                TaskConfig("ctcvr", "conversion", "binary", after="ctr", conditional_output="ctr"),
            ),
            "`task outputs` must not repeat a name ('ctr' appears twice).",
        ),
        (
            (TaskConfig("ctr", "click", "binary"), TaskConfig("visits", "visits", "count", after="ctr")),
            "`tasks[visits].after` is for binary tasks only (an event after another). "
            "Received: tasks[visits].after='ctr'",
        ),
    ],
)
def test_a_funnel_is_checked(tasks, message):
    with pytest.raises(ConfigError) as error:
        dataclasses.replace(FUNNEL, tasks=tasks).validate()
    assert str(error.value).startswith(message)


def test_a_funnel_tasks_conditional_output_is_named_after_both_steps_by_default():
    task = TaskConfig("conversion", "conversion", "binary", after="click")
    assert task.conditional_output == "conversion_given_click"


def test_a_multiclass_task_gets_a_probability_per_class():
    config = dataclasses.replace(
        PAPER, tasks=(TaskConfig("y1", "y1"), TaskConfig("kind", "kind", "multiclass", num_classes=4))
    )
    model = model_fn(config)
    outputs = model(_inputs(8))
    assert outputs["y1"].shape == (8,) and outputs["kind"].shape == (8, 4)
    np.testing.assert_allclose(outputs["kind"].numpy().sum(axis=1), np.ones(8), rtol=1e-5)
    assert model.count_params() == 8 * (100 * 16 + 16) + 2 * (100 * 8) + (16 * 8 + 8) + (8 + 1) + (
        16 * 8 + 8
    ) + (8 * 4 + 4)


def test_the_conditional_output_is_a_metric_early_stopping_can_watch():
    names = metric_names(FUNNEL)
    assert {"ctr/auc", "ctcvr/auc", "cvr/auc", "cvr/loss"} <= set(names)


def test_the_variable_order_checkpoints_rely_on_is_kept():
    """Checkpoints hold the model's variables in the order the model lists them (as the optimizer's), so an
    earlier version's checkpoint loads only while this order stays."""
    city = FeatureConfig("k", kind="categorical", vocabulary=("a",))
    config = ModelConfig(
        architecture="mmoe",
        features=(FeatureConfig("x", dim=3), city),
        tasks=(TaskConfig("y1", "y1"), TaskConfig("y2", "y2")),
        num_experts=2,
        expert_units=(4,),
        tower_units=(2,),
        loss_weighting="uncertainty",
    )
    shapes = [tuple(v.shape) for v in model_fn(config).trainable_variables]
    assert shapes == [
        (2, 4),  # the embeddings
        (2, 7, 4),  # the experts' kernel and bias
        (2, 4),
        (7, 2),  # the gates
        (7, 2),
        (4, 2),  # the towers
        (2,),
        (2, 1),
        (1,),
        (4, 2),
        (2,),
        (2, 1),
        (1,),
        (),  # the learned loss weights
        (),
    ]
