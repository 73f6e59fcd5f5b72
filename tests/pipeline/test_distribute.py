import json

import pytest
import tensorflow as tf

from pipeline import distribute
from pipeline.errors import ConfigError

TWO_WORKERS = {
    "cluster": {"worker": ["localhost:12345", "localhost:12346"]},
    "task": {"type": "worker", "index": 0},
}


def test_no_tf_config_means_the_default_strategy():
    strategy = distribute.select_strategy("auto", environ={})
    assert strategy is tf.distribute.get_strategy()
    assert distribute.is_chief(strategy)


def test_cluster_size_counts_chief_and_workers_only():
    assert distribute.cluster_size(distribute.parse_tf_config({})) == 0
    assert distribute.cluster_size(TWO_WORKERS) == 2
    with_chief = {"cluster": {"chief": ["a:1"], "worker": ["b:1"], "ps": ["c:1"], "evaluator": ["d:1"]}}
    assert distribute.cluster_size(with_chief) == 2


def test_a_single_task_tf_config_stays_single_process():
    single = json.dumps({"cluster": {"worker": ["localhost:1"]}, "task": {"type": "worker", "index": 0}})
    assert distribute.select_strategy("auto", environ={"TF_CONFIG": single}) is tf.distribute.get_strategy()


def test_an_evaluator_beside_a_cluster_evaluates_on_its_own():
    evaluator = json.dumps({**TWO_WORKERS, "task": {"type": "evaluator", "index": 0}})
    strategy = distribute.select_strategy("auto", environ={"TF_CONFIG": evaluator})
    assert strategy is tf.distribute.get_strategy() and distribute.is_chief(strategy)


@pytest.mark.parametrize(
    "raw, message",
    [
        ("{not json", "TF_CONFIG is not valid JSON: Expecting property name"),
        ('["worker"]', "TF_CONFIG must be a JSON object with a `cluster` object."),
    ],
)
def test_bad_tf_config(raw, message):
    with pytest.raises(ConfigError) as error:
        distribute.parse_tf_config({"TF_CONFIG": raw})
    assert str(error.value).startswith(message)


def test_unknown_strategy_name():
    with pytest.raises(ConfigError, match="Received: distribution_strategy='horovod'"):
        distribute.select_strategy("horovod", environ={})


class _Resolver:
    def __init__(self, task_type, task_id, roles):
        self.task_type, self.task_id, self._roles = task_type, task_id, roles

    def cluster_spec(self):
        return tf.train.ClusterSpec({role: ["localhost:1"] for role in self._roles})


class _Strategy:
    def __init__(self, resolver):
        self.cluster_resolver = resolver


@pytest.mark.parametrize(
    "task_type, task_id, roles, chief",
    [
        ("worker", 0, ["worker"], True),
        ("worker", 1, ["worker"], False),
        ("chief", 0, ["chief", "worker"], True),
        ("worker", 0, ["chief", "worker"], False),
    ],
)
def test_only_the_chief_writes(task_type, task_id, roles, chief):
    assert distribute.is_chief(_Strategy(_Resolver(task_type, task_id, roles))) is chief
