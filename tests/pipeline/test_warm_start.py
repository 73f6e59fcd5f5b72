"""Warm starting a new model_dir from another run's variables (adding a task, changing sizes)."""

import dataclasses
import json
import shutil

import numpy as np
import pytest

from pipeline import data
from pipeline.config import DataConfig, ExperimentConfig, ModelConfig, TaskConfig, TrainConfig
from pipeline.data.schema import schema_from_dict
from pipeline.errors import ModelDirError
from pipeline.estimator import Estimator
from pipeline.warm_start import with_source_features
from tests.conftest import TASKS, small_experiment

BINARY = TaskConfig(name="y1_binary", label="y1_binary", type="binary", loss="log_loss")


def _with_model(config, **model_overrides):
    return dataclasses.replace(config, model=dataclasses.replace(config.model, **model_overrides))


def _values(variables):
    return {v.path: np.asarray(v) for v in variables}


@pytest.fixture(scope="module")
def trained_source(tmp_path_factory):
    """A model_dir of tasks y1, y2 trained 20 steps, with checkpoints at 10 and 20."""
    model_dir = tmp_path_factory.mktemp("source")
    config = small_experiment(save_checkpoints_steps=10)
    estimator = Estimator(config, model_dir)
    estimator.train(data.input_fn(config, "train"), max_steps=20)
    return model_dir, estimator


def test_adding_a_task_loads_the_shared_model_and_the_old_towers(tmp_path, trained_source):
    source_dir, source = trained_source
    config = _with_model(small_experiment(), tasks=(*TASKS, BINARY))
    target = Estimator(config, tmp_path, warm_start_from=source_dir)
    report = target.warm_start_report

    assert report.checkpoint == str(source_dir / "ckpt-20")
    source_paths = [v.path for v in source.model.variables]
    assert sorted(report.loaded) == sorted(source_paths)
    new = sorted(v.path for v in target.model.variables if v.path not in source_paths)
    # The new task's tower and its gate (MMoE has a gate per task, named after it).
    assert new == [
        "mmoe/experts/gate_y1_binary/kernel",
        "mmoe/tower_y1_binary/hidden/dense_0/bias",
        "mmoe/tower_y1_binary/hidden/dense_0/kernel",
        "mmoe/tower_y1_binary/logit/bias",
        "mmoe/tower_y1_binary/logit/kernel",
    ]
    assert sorted(report.not_loaded) == [(path, "not in the source") for path in new]
    assert report.lines()[0] == f"Warm-started from {source_dir / 'ckpt-20'}: loaded 12 of 17 variables."
    assert "  not loaded mmoe/tower_y1_binary/logit/kernel: not in the source" in report.lines()

    source_values, target_values = _values(source.model.variables), _values(target.model.variables)
    for path in source_paths:
        np.testing.assert_array_equal(target_values[path], source_values[path], err_msg=path)
    # The old tasks predict as the source does, before any training.
    features, _ = data.synthetic.generate(config.data.synthetic, "eval")
    batch = {name: values[:256] for name, values in features.items()}
    source_predictions, target_predictions = source.model(batch), target.model(batch)
    for task in ("y1", "y2"):
        np.testing.assert_array_equal(
            np.asarray(target_predictions[task]), np.asarray(source_predictions[task])
        )

    # The optimizer starts afresh by default (the source's is at step 20, with non-zero slots).
    assert int(source.optimizer.iterations.numpy()) == 20
    assert int(target.optimizer.iterations.numpy()) == 0
    assert target.step == 0
    for variable in target.optimizer.variables:
        if variable.path.endswith("/learning_rate"):  # set from the schedule before every step
            continue
        assert not np.any(np.asarray(variable)), variable.path

    # And the warm-started model trains.
    results = target.train(data.input_fn(config, "train"), max_steps=5)
    assert results["global_step"] == 5 and np.isfinite(results["loss"])


def _slot_name(path):
    """An optimizer variable's path without the optimizer's own name, which Keras numbers per process
    (`adam`, `adam_1`, ...)."""
    return path.partition("/")[2]


def test_warm_start_optimizer_carries_the_step_and_slots(tmp_path, trained_source):
    source_dir, source = trained_source
    config = _with_model(small_experiment(), tasks=(*TASKS, BINARY))
    target = Estimator(config, tmp_path, warm_start_from=source_dir, warm_start_optimizer=True)
    report = target.warm_start_report

    assert int(target.optimizer.iterations.numpy()) == 20
    source_slots = {_slot_name(v.path): np.asarray(v) for v in source.optimizer.variables}
    target_slots = {_slot_name(v.path): np.asarray(v) for v in target.optimizer.variables}
    shared = sorted(set(source_slots) & set(target_slots))
    assert len(shared) == len(source_slots) == 26  # the iteration, the rate and 2 Adam slots of 12 variables
    for name in shared:
        np.testing.assert_array_equal(target_slots[name], source_slots[name], err_msg=name)
    assert any(np.any(source_slots[name]) for name in shared if name.endswith("_momentum"))

    model_paths = [v.path for v in source.model.variables]
    optimizer_paths = {_slot_name(v.path): v.path for v in target.optimizer.variables}
    assert sorted(report.loaded) == sorted([*model_paths, *(optimizer_paths[name] for name in shared)])
    # Not loaded: the new variables and their slots.
    new_model_paths = [
        "mmoe/experts/gate_y1_binary/kernel",
        "mmoe/tower_y1_binary/hidden/dense_0/bias",
        "mmoe/tower_y1_binary/hidden/dense_0/kernel",
        "mmoe/tower_y1_binary/logit/bias",
        "mmoe/tower_y1_binary/logit/kernel",
    ]
    new_slots = sorted(optimizer_paths[name] for name in set(target_slots) - set(source_slots))
    assert len(new_slots) == 2 * 5
    assert sorted(report.not_loaded) == [(path, "not in the source") for path in new_slots + new_model_paths]


def test_warm_start_optimizer_reports_every_optimizer_variable(tmp_path, trained_source):
    """Every optimizer variable is loaded or accounted for."""
    source_dir, source = trained_source
    config = _with_model(small_experiment(), tasks=(*TASKS, BINARY))
    target = Estimator(config, tmp_path, warm_start_from=source_dir, warm_start_optimizer=True)
    report = target.warm_start_report
    accounted = sorted([*report.loaded, *(path for path, _ in report.not_loaded)])
    assert accounted == sorted(v.path for v in [*target.model.variables, *target.optimizer.variables])
    assert len(accounted) == 17 + 2 + 2 * 17  # the model's, the optimizer's iteration and rate, 2 slots each
    for path in (v.path for v in source.model.variables):
        assert path in report.loaded


def test_variables_of_another_shape_are_not_loaded(tmp_path, trained_source):
    source_dir, source = trained_source
    config = _with_model(small_experiment(), expert_units=(24,))
    target = Estimator(config, tmp_path, warm_start_from=source_dir)
    report = target.warm_start_report
    assert sorted(report.not_loaded) == [
        ("mmoe/experts/experts/bias_0", "shape (4, 16) in the source, (4, 24) here"),
        ("mmoe/experts/experts/kernel_0", "shape (4, 100, 16) in the source, (4, 100, 24) here"),
        ("mmoe/tower_y1/hidden/dense_0/kernel", "shape (16, 8) in the source, (24, 8) here"),
        ("mmoe/tower_y2/hidden/dense_0/kernel", "shape (16, 8) in the source, (24, 8) here"),
    ]
    assert len(report.loaded) == 8
    source_values, target_values = _values(source.model.variables), _values(target.model.variables)
    for path in report.loaded:
        np.testing.assert_array_equal(target_values[path], source_values[path], err_msg=path)
    assert target_values["mmoe/experts/experts/kernel_0"].shape == (4, 100, 24)


def test_warm_start_from_a_checkpoint_prefix_loads_that_checkpoint(tmp_path, trained_source):
    source_dir, _ = trained_source
    config = small_experiment(save_checkpoints_steps=10)
    at_10 = Estimator(config, source_dir)
    at_10.restore("10")
    target = Estimator(config, tmp_path, warm_start_from=source_dir / "ckpt-10")
    assert target.warm_start_report.checkpoint == str(source_dir / "ckpt-10")
    assert target.warm_start_report.not_loaded == ()
    older, latest = _values(at_10.model.variables), _values(Estimator(config, source_dir).model.variables)
    for path, value in _values(target.model.variables).items():
        np.testing.assert_array_equal(value, older[path], err_msg=path)
    assert any(not np.array_equal(older[path], latest[path]) for path in older)


def test_warm_start_from_a_path_without_a_checkpoint(tmp_path):
    (tmp_path / "empty").mkdir()
    for path in (tmp_path / "empty", tmp_path / "missing", tmp_path / "empty" / "ckpt-10"):
        with pytest.raises(ModelDirError) as error:
            Estimator(small_experiment(), tmp_path / "target", warm_start_from=path)
        assert str(error.value) == f"{path} is neither a model_dir with a checkpoint nor a checkpoint."


def test_warm_start_from_a_checkpoint_without_its_config(tmp_path, trained_source):
    source_dir, _ = trained_source
    (tmp_path / "copied").mkdir()
    for file in source_dir.glob("ckpt-20.*"):
        shutil.copy(file, tmp_path / "copied" / file.name)
    with pytest.raises(ModelDirError) as error:
        Estimator(small_experiment(), tmp_path / "target", warm_start_from=tmp_path / "copied" / "ckpt-20")
    assert str(error.value) == (
        f"{tmp_path / 'copied' / 'ckpt-20'}: no config.json beside the checkpoint "
        f"{tmp_path / 'copied' / 'ckpt-20'}."
    )


def test_resuming_wins_over_warm_start(tmp_path, trained_source):
    source_dir, source = trained_source
    config = small_experiment(seed=7)
    own = Estimator(config, tmp_path)
    own.train(data.input_fn(config, "train"), max_steps=5)
    own_values = _values(own.model.variables)

    resumed = Estimator(config, tmp_path, warm_start_from=source_dir, warm_start_optimizer=True)
    assert resumed.warm_start_report is None
    assert resumed.step == 5 and int(resumed.optimizer.iterations.numpy()) == 5
    source_values = _values(source.model.variables)
    for path, value in _values(resumed.model.variables).items():
        np.testing.assert_array_equal(value, own_values[path], err_msg=path)
        assert not np.array_equal(value, source_values[path]), path


def test_reordered_tasks_do_not_take_another_tasks_gate(tmp_path, trained_source):
    source_dir, source = trained_source
    config = _with_model(small_experiment(), tasks=tuple(reversed(TASKS)))  # y2, y1
    target = Estimator(config, tmp_path, warm_start_from=source_dir)
    assert [gate.name for gate in target.model.bottom.gates] == ["gate_y2", "gate_y1"]
    assert target.warm_start_report.not_loaded == ()
    for task, here, there in (("y2", 0, 1), ("y1", 1, 0)):  # each task takes its own gate from the source
        np.testing.assert_array_equal(
            np.asarray(target.model.bottom.gates[here].kernel),
            np.asarray(source.model.bottom.gates[there].kernel),
            err_msg=task,
        )


def test_another_architecture_takes_what_it_shares(tmp_path, trained_source):
    source_dir, source = trained_source
    target = Estimator(small_experiment("omoe"), tmp_path, warm_start_from=source_dir)
    report = target.warm_start_report
    assert sorted(report.not_loaded) == [("omoe/experts/gate/kernel", "not in the source")]
    source_values = {path.split("/", 1)[1]: value for path, value in _values(source.model.variables).items()}
    for path in report.loaded:
        np.testing.assert_array_equal(
            np.asarray(_values(target.model.variables)[path]),
            source_values[path.split("/", 1)[1]],
            err_msg=path,
        )
    assert len(report.loaded) == 10  # experts, towers: all but MMoE's two gates


def test_a_model_sharing_nothing_is_refused(tmp_path, trained_source):
    source_dir, _ = trained_source
    config = _with_model(small_experiment("shared_bottom"), tasks=(BINARY,))
    with pytest.raises(ModelDirError) as error:
        Estimator(config, tmp_path, warm_start_from=source_dir)
    assert str(error.value) == f"Nothing in {source_dir / 'ckpt-20'} matches this model by name and shape."


# -- categorical inputs -------------------------------------------------------------------------------


def _table(path, categories, seed):
    rng = np.random.default_rng(seed)
    rows = ["x,k,y"] + [f"{rng.normal():.3f},{rng.choice(categories)},{rng.normal():.3f}" for _ in range(200)]
    path.write_text("\n".join(rows) + "\n")
    return path


def _table_experiment(path, architecture="shared_bottom"):
    schema = schema_from_dict(
        {
            "features": [{"name": "x", "type": "numeric"}, {"name": "k", "type": "categorical"}],
            "tasks": [{"name": "y", "column": "y", "type": "regression"}],
        }
    )
    tabular = data.table_config("csv", schema, [str(path)], split="80/20/0")
    data_config = DataConfig(source="csv", tabular=tabular)
    model = ModelConfig(
        architecture=architecture,
        features=data.features(data_config),
        tasks=data.tasks(data_config),
        bottom_units=(8,),
        tower_units=(4,),
    )
    return ExperimentConfig(
        model=model, data=data_config, train=TrainConfig(batch_size=32, save_checkpoints_steps=5)
    )


@pytest.mark.parametrize(
    "architecture, table",
    [
        ("shared_bottom", "shared_bottom/features/embedding_4/embeddings"),
        ("single_task", "single_task/features/features_y/embedding_4/embeddings"),  # the task's own table
    ],
)
def test_an_embedding_table_loads_only_for_the_same_categories(tmp_path, architecture, table):
    source_config = _table_experiment(_table(tmp_path / "a.csv", ["a", "b", "c"], seed=0), architecture)
    Estimator(source_config, tmp_path / "source").train(data.input_fn(source_config, "train"), max_steps=5)
    # New data in which the categories are as frequent in another order: another vocabulary order.
    other = _table_experiment(_table(tmp_path / "b.csv", ["c"] * 3 + ["b"] * 2 + ["a"], seed=1), architecture)
    assert other.model.features != source_config.model.features
    report = Estimator(other, tmp_path / "other", warm_start_from=tmp_path / "source").warm_start_report
    assert report.not_loaded == ((table, "the source's categorical inputs or vocabularies differ"),)
    # Taking the source's inputs, the table loads: every category keeps its row.
    reused = with_source_features(other, tmp_path / "source")
    assert reused.model.features == source_config.model.features and reused.data == other.data
    report = Estimator(reused, tmp_path / "reused", warm_start_from=tmp_path / "source").warm_start_report
    assert report.not_loaded == () and table in report.loaded


def test_a_source_checkpoint_that_does_not_match_its_config_is_one_line(tmp_path):
    source_config = _table_experiment(_table(tmp_path / "a.csv", ["a", "b", "c"], seed=0))
    Estimator(source_config, tmp_path / "source").train(data.input_fn(source_config, "train"), max_steps=5)
    # The source's config now describes another model than its checkpoint holds.
    saved = json.loads((tmp_path / "source" / "config.json").read_text())
    saved["model"]["bottom_units"] = [16]
    (tmp_path / "source" / "config.json").write_text(json.dumps(saved))
    with pytest.raises(ModelDirError, match=r"ckpt-5 does not hold this model \(another architecture"):
        Estimator(source_config, tmp_path / "target", warm_start_from=tmp_path / "source")
