"""Every flag of `mtl`, and how flags become an `ExperimentConfig`.

This is the only module that reads `FLAGS`. With a `model_dir` that already holds a config, that config is
the starting point: model and data flags given explicitly must agree with it (a conflict is an error), and
training flags given explicitly replace the saved ones (a resumed run may, say, lower the learning rate).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from absl import flags

from pipeline import data
from pipeline.config import (
    LOSSES_BY_TYPE,
    DataConfig,
    ExperimentConfig,
    ModelConfig,
    SyntheticDataConfig,
    TaskConfig,
    TrainConfig,
)
from pipeline.distribute import STRATEGIES
from pipeline.errors import ConfigError
from serving import config as serving_config
from serving.server import ServerOptions

FLAGS = flags.FLAGS

# -- where and how long ---------------------------------------------------------------------------
flags.DEFINE_string("model_dir", None, "Directory of checkpoints, events, config.json and results.")
flags.DEFINE_integer("max_steps", 2000, "Total training steps; a resumed run continues up to it.")
flags.DEFINE_integer("eval_every_steps", 1000, "train_and_evaluate: steps between evaluations.")
flags.DEFINE_string("export_base", None, "Export base path (default: <model_dir>/export).")
flags.DEFINE_integer("exports_to_keep", 0, "Keep only this many newest exports (0 keeps all).")
flags.DEFINE_enum(
    "distribution_strategy", "auto", STRATEGIES, "tf.distribute strategy; auto reads TF_CONFIG."
)

# -- model ----------------------------------------------------------------------------------------
flags.DEFINE_string("model", "mmoe", "Architecture: shared_bottom, omoe, mmoe.")
flags.DEFINE_integer("num_experts", 8, "OMoE/MMoE: number of experts.")
flags.DEFINE_list("expert_units", ["16"], "OMoE/MMoE: layer sizes of every expert.")
flags.DEFINE_list("bottom_units", ["113"], "shared_bottom: layer sizes of the shared bottom.")
flags.DEFINE_list("tower_units", ["8"], "Hidden layer sizes of every task tower (may be empty).")
flags.DEFINE_float("dropout", 0.0, "Dropout rate after every hidden layer.")
flags.DEFINE_string("activation", "relu", "Activation of every hidden layer.")
flags.DEFINE_list(
    "task_labels", [], "Label column of each task (default: the data's default tasks; synthetic: y1,y2)."
)
flags.DEFINE_list("task_types", [], "binary or regression, one per task (default: implied by the loss).")
flags.DEFINE_list("task_losses", [], "log_loss, mse or huber, one per task (default: implied by the type).")
flags.DEFINE_list("task_weights", [], "Loss weight of each task (default: 1 each).")

# -- data -----------------------------------------------------------------------------------------
flags.DEFINE_string("data", "synthetic", "Data source: synthetic.")
_SYNTHETIC = SyntheticDataConfig()
flags.DEFINE_integer("synthetic_examples", _SYNTHETIC.num_examples, "Synthetic training examples.")
flags.DEFINE_integer("synthetic_eval_examples", _SYNTHETIC.eval_examples, "Synthetic evaluation examples.")
flags.DEFINE_integer("synthetic_dim", _SYNTHETIC.dim, "Synthetic input dimension.")
flags.DEFINE_float("synthetic_p", _SYNTHETIC.p, "Synthetic task correlation p (cosine of w1, w2).")
flags.DEFINE_float("synthetic_c", _SYNTHETIC.c, "Synthetic weight scale c.")
flags.DEFINE_integer("synthetic_m", _SYNTHETIC.m, "Synthetic number of sine terms m.")
flags.DEFINE_integer("synthetic_seed", _SYNTHETIC.seed, "Seed of the synthetic tasks and examples.")

# -- training -------------------------------------------------------------------------------------
_TRAIN = TrainConfig()
flags.DEFINE_integer("batch_size", _TRAIN.batch_size, "Global batch size.")
flags.DEFINE_float("learning_rate", _TRAIN.learning_rate, "Learning rate.")
flags.DEFINE_string("optimizer", _TRAIN.optimizer, "adam, adagrad, sgd or rmsprop.")
flags.DEFINE_integer("seed", _TRAIN.seed, "Seed of initialisation, dropout and shuffling.")
flags.DEFINE_integer("save_checkpoints_steps", _TRAIN.save_checkpoints_steps, "Steps between checkpoints.")
flags.DEFINE_integer("keep_checkpoint_max", _TRAIN.keep_checkpoint_max, "Checkpoints to keep.")
flags.DEFINE_integer("log_every_steps", _TRAIN.log_every_steps, "Steps between progress reports.")
flags.DEFINE_integer("shuffle_buffer", _TRAIN.shuffle_buffer, "Shuffle buffer of the training data.")


# -- serve (names as tensorflow_model_server's) and predict -----------------------------------------
flags.DEFINE_string("host", "127.0.0.1", "serve: address to listen on; 0.0.0.0 listens on every interface.")
flags.DEFINE_integer("port", 8500, "serve: gRPC port (0 picks a free one).")
flags.DEFINE_integer("rest_api_port", 8501, "serve: REST port (0 picks a free one).")
flags.DEFINE_string(
    "model_name", None, "serve: name to serve --model_base_path under; predict: model to query."
)
flags.DEFINE_string("model_base_path", None, "serve: directory of integer versions (an --export_base).")
flags.DEFINE_string(
    "model_config_file", None, "serve: models.config text proto: several models, version policies, labels."
)
flags.DEFINE_float(
    "file_system_poll_wait_seconds", 1.0, "serve: seconds between looks for new versions (0: never)."
)
flags.DEFINE_boolean("enable_model_warmup", True, "serve: replay assets.extra warmup requests on load.")
flags.DEFINE_integer("rest_api_timeout_in_ms", 30_000, "serve: REST requests running longer get a 504.")
flags.DEFINE_integer("max_request_bytes", 64 * 2**20, "serve: REST bodies larger than this get a 413.")
flags.DEFINE_string(
    "monitoring_config_file",
    None,
    "serve: MonitoringConfig text proto (default: Prometheus at /monitoring/prometheus/metrics).",
)
flags.DEFINE_string(
    "server", "localhost:8500", "predict: grpc://host:port (or host:port) or http://host:port."
)
flags.DEFINE_string("input", None, "predict: rows as .jsonl (a JSON object per line) or .csv with a header.")
flags.DEFINE_string(
    "output", None, "predict: file for the predictions, a JSON object per row (default: stdout)."
)
flags.DEFINE_string("signature_name", "", "predict: signature to run (default: serving_default).")
flags.DEFINE_integer("model_version", None, "predict: a specific version (default: the newest).")
flags.DEFINE_string("version_label", None, "predict: a version label, such as stable.")
flags.DEFINE_float("timeout_seconds", 10.0, "predict: per request; UNAVAILABLE is retried.")
flags.DEFINE_integer("predict_batch_size", 256, "predict: rows per request.")


def _ints(flag: str, values: list[str]) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in values)
    except ValueError:
        raise ConfigError(
            f"`{flag}` must be a comma-separated list of integers. Received: {flag}={','.join(values)}"
        ) from None


def _per_task(flag: str, values: list[str], labels: list[str]) -> list[str]:
    if values and len(values) != len(labels):
        raise ConfigError(
            f"--{flag} has {len(values)} entries ({','.join(values)}) but --task_labels has "
            f"{len(labels)} ({','.join(labels)}); give one per task."
        )
    return values or [""] * len(labels)


def _tasks(data_config: DataConfig) -> tuple[TaskConfig, ...]:
    available = data.label_columns(data_config)
    labels = FLAGS.task_labels or list(data.default_task_labels(data_config))
    for label in labels:
        if label not in available:
            raise ConfigError(
                f"--task_labels: {label!r} is not a label of the {data_config.source} data "
                f"(labels: {', '.join(available)})."
            )
    types = _per_task("task_types", FLAGS.task_types, labels)
    losses = _per_task("task_losses", FLAGS.task_losses, labels)
    weights = _per_task("task_weights", FLAGS.task_weights, labels)
    tasks = []
    for label, task_type, loss, weight in zip(labels, types, losses, weights, strict=True):
        task_type = task_type or ("binary" if loss == "log_loss" else "regression")
        loss = loss or LOSSES_BY_TYPE.get(task_type, ("",))[0]
        try:
            weight_value = float(weight) if weight else 1.0
        except ValueError:
            raise ConfigError(
                f"`task_weights` must be numbers. Received: task_weights={','.join(FLAGS.task_weights)}"
            ) from None
        tasks.append(TaskConfig(name=label, label=label, type=task_type, loss=loss, weight=weight_value))
    return tuple(tasks)


def _data_config() -> DataConfig:
    return DataConfig(
        source=FLAGS.data,
        synthetic=SyntheticDataConfig(
            num_examples=FLAGS.synthetic_examples,
            eval_examples=FLAGS.synthetic_eval_examples,
            dim=FLAGS.synthetic_dim,
            c=FLAGS.synthetic_c,
            p=FLAGS.synthetic_p,
            m=FLAGS.synthetic_m,
            seed=FLAGS.synthetic_seed,
        ),
    )


def config_from_flags() -> ExperimentConfig:
    """The experiment the flags describe, ignoring anything saved."""
    data_config = _data_config()
    data_config.validate()
    model = ModelConfig(
        architecture=FLAGS.model,
        features=data.features(data_config),
        tasks=_tasks(data_config),
        num_experts=FLAGS.num_experts,
        expert_units=_ints("expert_units", FLAGS.expert_units),
        bottom_units=_ints("bottom_units", FLAGS.bottom_units),
        tower_units=_ints("tower_units", FLAGS.tower_units),
        dropout=FLAGS.dropout,
        activation=FLAGS.activation,
    )
    train = TrainConfig(**{field.name: FLAGS[field.name].value for field in _TRAIN_FIELDS})
    return ExperimentConfig(model=model, data=data_config, train=train)


_TRAIN_FIELDS = dataclasses.fields(TrainConfig)

# Model and data flags, and where each one's value sits in the config.
_FIXED_FLAGS: dict[str, Callable[[ExperimentConfig], Any]] = {
    "model": lambda c: c.model.architecture,
    "num_experts": lambda c: c.model.num_experts,
    "expert_units": lambda c: c.model.expert_units,
    "bottom_units": lambda c: c.model.bottom_units,
    "tower_units": lambda c: c.model.tower_units,
    "dropout": lambda c: c.model.dropout,
    "activation": lambda c: c.model.activation,
    "task_labels": lambda c: [t.label for t in c.model.tasks],
    "task_types": lambda c: [t.type for t in c.model.tasks],
    "task_losses": lambda c: [t.loss for t in c.model.tasks],
    "task_weights": lambda c: [t.weight for t in c.model.tasks],
    "data": lambda c: c.data.source,
    "synthetic_examples": lambda c: c.data.synthetic.num_examples,
    "synthetic_eval_examples": lambda c: c.data.synthetic.eval_examples,
    "synthetic_dim": lambda c: c.data.synthetic.dim,
    "synthetic_p": lambda c: c.data.synthetic.p,
    "synthetic_c": lambda c: c.data.synthetic.c,
    "synthetic_m": lambda c: c.data.synthetic.m,
    "synthetic_seed": lambda c: c.data.synthetic.seed,
}


def _format(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(_format(v) for v in value)
    return str(value)


def resolve_config(saved: ExperimentConfig | None, config_path: str) -> ExperimentConfig:
    """The config a stage runs with: the flags' own, or the saved one merged with explicit flags.

    Raises:
        ConfigError: an explicit model or data flag disagrees with the saved config, or a value is bad.
    """
    requested = config_from_flags()
    if saved is None:
        return requested.validate()
    for flag, value_of in _FIXED_FLAGS.items():
        if FLAGS[flag].present and value_of(requested) != value_of(saved):
            raise ConfigError(
                f"--{flag}={_format(value_of(requested))} conflicts with {config_path} "
                f"({flag}={_format(value_of(saved))}). Use a new --model_dir, or drop the flag."
            )
    train_overrides = {
        field.name: getattr(requested.train, field.name)
        for field in _TRAIN_FIELDS
        if FLAGS[field.name].present
    }
    return dataclasses.replace(saved, train=dataclasses.replace(saved.train, **train_overrides)).validate()


def model_sources() -> list[serving_config.ModelSource]:
    """The models `mtl serve` serves: --model_config_file, or --model_name with --model_base_path."""
    if FLAGS.model_config_file:
        if FLAGS.model_base_path:
            raise ConfigError("Give --model_config_file or --model_base_path, not both.")
        return serving_config.read_model_config_file(FLAGS.model_config_file)
    if not FLAGS.model_base_path:
        raise ConfigError("--model_base_path (with --model_name) or --model_config_file is required.")
    return serving_config.single_model(FLAGS.model_name or "default", FLAGS.model_base_path)


def server_options() -> ServerOptions:
    """`mtl serve`'s listening and behaviour options."""
    metrics_path = serving_config.DEFAULT_METRICS_PATH
    if FLAGS.monitoring_config_file:
        metrics_path = serving_config.read_monitoring_config(FLAGS.monitoring_config_file)
    return ServerOptions(
        host=FLAGS.host,
        grpc_port=FLAGS.port,
        rest_port=FLAGS.rest_api_port,
        poll_seconds=FLAGS.file_system_poll_wait_seconds,
        warmup=FLAGS.enable_model_warmup,
        max_request_bytes=FLAGS.max_request_bytes,
        rest_timeout_ms=FLAGS.rest_api_timeout_in_ms,
        metrics_path=metrics_path,
    )
