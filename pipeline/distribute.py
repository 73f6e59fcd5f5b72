"""Picks the `tf.distribute` strategy from the environment, as launchers (Kubernetes TFJob, ...) set it.

`TF_CONFIG` with more than one task in its cluster means multi-worker training; several local GPUs mean
mirrored training; anything else runs on the default (single-device) strategy. An `evaluator` task (whose
`TF_CONFIG` names the trainers' cluster) evaluates on its own, on the default strategy.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import tensorflow as tf

from pipeline.errors import ConfigError

STRATEGIES = ("auto", "default", "mirrored", "multi_worker_mirrored")


def parse_tf_config(environ: Mapping[str, str] = os.environ) -> dict:
    raw = environ.get("TF_CONFIG", "").strip()
    if not raw:
        return {}
    try:
        tf_config = json.loads(raw)
    except json.JSONDecodeError as error:
        raise ConfigError(f"TF_CONFIG is not valid JSON: {error}") from None
    if not isinstance(tf_config, dict) or not isinstance(tf_config.get("cluster", {}), dict):
        raise ConfigError("TF_CONFIG must be a JSON object with a `cluster` object.")
    cluster = tf_config.get("cluster", {})
    if any(not isinstance(addresses, list) for addresses in cluster.values()):
        raise ConfigError("TF_CONFIG: each role of `cluster` must be a list of host:port addresses.")
    if cluster:
        _check_task(tf_config.get("task"), cluster)
    return tf_config


def _check_task(task: object, cluster: Mapping[str, list]) -> None:
    """The task a process of a cluster is must be one of the cluster's (an evaluator runs beside it)."""
    if not isinstance(task, dict) or "type" not in task:
        raise ConfigError(
            'TF_CONFIG has a cluster but no task: add "task": {"type": "worker", "index": N} for this '
            "process."
        )
    role, index = task["type"], task.get("index", 0)
    if role == "evaluator":
        return
    if role not in cluster:
        raise ConfigError(
            f"TF_CONFIG: task type {role!r} is not a role of the cluster ({', '.join(cluster)})."
        )
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(cluster[role]):
        raise ConfigError(
            f"TF_CONFIG: task index {index!r} is out of range: the cluster has {len(cluster[role])} "
            f"{role} address(es), indices 0 to {len(cluster[role]) - 1}."
        )


def cluster_size(tf_config: Mapping) -> int:
    """Number of training tasks (chief and workers) in the cluster."""
    cluster = tf_config.get("cluster", {})
    return sum(len(cluster.get(role, [])) for role in ("chief", "worker"))


def select_strategy(name: str = "auto", environ: Mapping[str, str] = os.environ) -> tf.distribute.Strategy:
    """The strategy called `name`; "auto" chooses from `TF_CONFIG` and the local GPUs."""
    if name not in STRATEGIES:
        raise ConfigError(
            f"`distribution_strategy` must be one of {', '.join(STRATEGIES)}. "
            f"Received: distribution_strategy={name!r}"
        )
    if name == "auto":
        tf_config = parse_tf_config(environ)
        if tf_config.get("task", {}).get("type") == "evaluator":
            name = "default"
        elif cluster_size(tf_config) > 1:
            name = "multi_worker_mirrored"
        elif len(tf.config.list_logical_devices("GPU")) > 1:
            name = "mirrored"
        else:
            name = "default"
    if name == "multi_worker_mirrored":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes checkpoints, summaries and results (the chief, or worker 0)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief
