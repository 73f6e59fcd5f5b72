import dataclasses

import pytest

from pipeline.config import (
    ExperimentConfig,
    ModelConfig,
    TabularDataConfig,
    TaskConfig,
    TrainConfig,
    split_proportions,
)
from pipeline.errors import ConfigError
from tests.conftest import small_experiment


def test_task_defaults_follow_the_type():
    binary = TaskConfig(name="click", label="click", type="binary", loss="log_loss")
    assert binary.output_activation == "sigmoid"
    assert binary.metrics == ("auc", "log_loss")
    regression = TaskConfig(name="y", label="y")
    assert (regression.output_activation, regression.metrics) == ("linear", ("rmse", "mae"))


def _model(**changes) -> ModelConfig:
    return dataclasses.replace(small_experiment().model, **changes)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"num_experts": 0}, "`num_experts` must be a positive integer. Received: num_experts=0"),
        (
            {"expert_units": (16, -1)},
            "`expert_units` must hold positive integers only. Received: expert_units=[16, -1]",
        ),
        ({"bottom_units": ()}, "`bottom_units` must list at least one layer size. Received: bottom_units=[]"),
        ({"dropout": 1.5}, "`dropout` must be in [0, 1). Received: dropout=1.5"),
        ({"activation": "swishy"}, "`activation` must be one of"),
        ({"tasks": ()}, "`tasks` must name at least one task. Received: tasks=[]"),
        (
            {"tasks": (TaskConfig("y1", "y1"), TaskConfig("y1", "y2"))},
            "`tasks` must not repeat a name ('y1' appears twice). Received: tasks=['y1', 'y1']",
        ),
        (
            {"tasks": (TaskConfig("y1", "y1", type="regression", loss="log_loss"),)},
            "`tasks[y1].loss` must be one of mse, huber. Received: tasks[y1].loss='log_loss'",
        ),
        (
            {"tasks": (TaskConfig("c", "c", type="binary", loss="mse"),)},
            "`tasks[c].loss` must be one of log_loss. Received: tasks[c].loss='mse'",
        ),
        (
            {"tasks": (TaskConfig("c", "c", "binary", "log_loss", output_activation="linear"),)},
            "`tasks[c].output_activation` must be sigmoid for binary tasks (the loss's link).",
        ),
        (
            {"tasks": (TaskConfig("y", "y", weight=-1.0),)},
            "`tasks[y].weight` must be a finite number >= 0. Received: tasks[y].weight=-1.0",
        ),
        (
            {"tasks": (TaskConfig("y", "y", metrics=("auc",)),)},
            "`tasks[y].metrics` must be one of rmse, mae. Received: tasks[y].metrics='auc'",
        ),
    ],
)
def test_invalid_model_config_names_the_field(changes, message):
    with pytest.raises(ConfigError) as error:
        _model(**changes).validate()
    assert str(error.value).startswith(message)


@pytest.mark.parametrize(
    "changes, received",
    [
        ({"batch_size": 0}, "batch_size=0"),
        ({"learning_rate": -0.1}, "learning_rate=-0.1"),
        ({"optimizer": "lbfgs"}, "optimizer='lbfgs'"),
        ({"keep_checkpoint_max": 0}, "keep_checkpoint_max=0"),
    ],
)
def test_invalid_train_config(changes, received):
    with pytest.raises(ConfigError) as error:
        dataclasses.replace(TrainConfig(), **changes).validate()
    assert str(error.value).endswith(f"Received: {received}")


def test_json_round_trip_is_exact():
    config = small_experiment("omoe")
    assert ExperimentConfig.from_json(config.to_json()) == config


def test_unknown_field_in_saved_json():
    with pytest.raises(ConfigError, match="Unknown TrainConfig field"):
        ExperimentConfig.from_json('{"train": {"epochs": 3}}')


def test_a_row_split_reduces_its_shares_and_refuses_an_empty_eval_share():
    assert split_proportions("80/10/10") == (8, 1, 1) and split_proportions("") is None
    for bad in ("80/20", "80/0/20", "0/50/50", "70/10/10", "a/b/c"):
        with pytest.raises(ConfigError, match=f"Received: split='{bad}'"):
            split_proportions(bad)
    carved = TabularDataConfig(train_files=("all.csv",), split="90/10/0")
    assert carved.files("eval") == ("all.csv",) and carved.files("test") == ()
    assert carved.carved("train") and carved.carved("eval")
    own = TabularDataConfig(train_files=("a.csv",), eval_files=("b.csv",))
    assert own.files("test") == () and not own.carved("eval")
