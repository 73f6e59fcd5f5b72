"""Every flag of `mtl`, and how flags become an `ExperimentConfig`.

This is the only module that reads `FLAGS`. With a `model_dir` that already holds a config, that config is
the starting point: model and data flags given explicitly must agree with it (a conflict is an error), and
training flags given explicitly replace the saved ones (a resumed run may, say, lower the learning rate).
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import textwrap
from collections.abc import Callable
from typing import Any

from absl import flags

from pipeline import data, warm_start
from pipeline import model_dir as model_dir_files
from pipeline.config import (
    LOSS_WEIGHTINGS,
    METRIC_MODES,
    DataConfig,
    ExperimentConfig,
    ModelConfig,
    SyntheticDataConfig,
    TabularDataConfig,
    TaskConfig,
    TrainConfig,
)
from pipeline.data import census, synthetic, tabular
from pipeline.distribute import STRATEGIES
from pipeline.errors import ConfigError
from pipeline.models import names as architectures
from pipeline.models import sizing
from pipeline.optimizers import OPTIMIZERS, SCHEDULES
from pipeline.task_types import TASK_TYPES
from serving import config as serving_config
from serving.server import ServerOptions

FLAGS = flags.FLAGS

# -- where and how long ---------------------------------------------------------------------------
flags.DEFINE_string("model_dir", None, "Directory of checkpoints, events, config.json and results.")
flags.DEFINE_integer("max_steps", 2000, "Total training steps; a resumed run continues up to it.")
flags.DEFINE_float(
    "num_epochs", None, "Train for this many passes over the training split instead of --max_steps."
)
flags.DEFINE_integer("eval_every_steps", 1000, "train_and_evaluate: steps between evaluations.")
flags.DEFINE_string("export_base", None, "Export base path (default: <model_dir>/export).")
flags.DEFINE_integer("exports_to_keep", 0, "Keep only this many newest exports (0 keeps all).")
flags.DEFINE_string(
    "checkpoint", "latest", "evaluate, export: the checkpoint to use: latest, best or a step number."
)
flags.DEFINE_boolean(
    "export_best", False, "train_and_evaluate: export each new best evaluation to --export_base."
)
flags.DEFINE_boolean(
    "report_experts",
    False,
    "evaluate: also report what the gates do (experts.json, experts.png in --model_dir).",
)
flags.DEFINE_boolean(
    "continuous", False, "evaluate: evaluate each new checkpoint once as it appears, until --max_steps."
)
flags.DEFINE_float(
    "timeout_secs", 600.0, "evaluate --continuous: stop after this many seconds without a new checkpoint."
)
flags.DEFINE_string(
    "warm_start_from",
    None,
    "A model_dir or checkpoint whose variables of equal name and shape initialise a new --model_dir.",
)
flags.DEFINE_boolean(
    "warm_start_optimizer", False, "With --warm_start_from: also carry the optimizer's step and slots."
)
flags.DEFINE_enum(
    "distribution_strategy", "auto", STRATEGIES, "tf.distribute strategy; auto reads TF_CONFIG."
)
flags.DEFINE_boolean(
    "verbose", False, "On an error, also print its traceback (a one-line message otherwise)."
)

# -- model ----------------------------------------------------------------------------------------
flags.DEFINE_string(
    "model", "mmoe", f"Architecture: {', '.join(architectures(plugins=False))}, or a plugin's (see --import)."
)
flags.DEFINE_integer("num_experts", 8, "OMoE/MMoE: number of experts.")
flags.DEFINE_list("expert_units", ["16"], "OMoE/MMoE/PLE: layer sizes of every expert.")
_MODEL = ModelConfig()
flags.DEFINE_integer("num_levels", _MODEL.num_levels, "PLE: extraction levels (1 is CGC).")
flags.DEFINE_integer("num_task_experts", _MODEL.num_task_experts, "PLE: experts of each task, per level.")
flags.DEFINE_integer(
    "num_shared_experts", _MODEL.num_shared_experts, "PLE: experts all tasks share, per level."
)
flags.DEFINE_list(
    "bottom_units", ["113"], "shared_bottom: layer sizes of the shared bottom; single_task: of each task's."
)
flags.DEFINE_list("tower_units", ["8"], "Hidden layer sizes of every task tower (may be empty).")
flags.DEFINE_float("dropout", 0.0, "Dropout rate after every hidden layer.")
flags.DEFINE_integer(
    "param_budget",
    None,
    "Scale --expert_units (mixtures, PLE) or --bottom_units (shared_bottom, single_task, esmm) so that the "
    "model has this many parameters, within 2%.",
)
flags.DEFINE_enum(
    "loss_weighting",
    _MODEL.loss_weighting,
    LOSS_WEIGHTINGS,
    "fixed: each task's loss times --task_weights; uncertainty: times a weight learned from the task's "
    "uncertainty too (Kendall et al., 2018).",
)
flags.DEFINE_string("activation", "relu", "Activation of every hidden layer.")
flags.DEFINE_multi_string(
    "import",
    [],
    "A module to import that registers an architecture for --model (repeatable); saved with the model, so "
    "later stages import it too.",
)
flags.DEFINE_list(
    "task_labels",
    [],
    "Label column of each task (default: the data's default tasks; synthetic: y1,y2, or for --model=esmm "
    "the click-then-conversion funnel).",
)
flags.DEFINE_list(
    "task_types",
    [],
    f"{', '.join(TASK_TYPES)}, one per task (default: implied by the loss, else the label's own type).",
)
flags.DEFINE_list(
    "task_losses",
    [],
    f"{', '.join(loss for t in TASK_TYPES.values() for loss in t.losses)}, one per task (default: implied "
    "by the type).",
)
flags.DEFINE_list(
    "task_after",
    [],
    "For a funnel (ESMM): the task each task's event follows, or empty, one per task (e.g. ,click: the "
    "second task converts after the first's click).",
)
flags.DEFINE_list("task_weights", [], "Loss weight of each task (default: 1 each).")

# -- data -----------------------------------------------------------------------------------------
flags.DEFINE_string("data", "synthetic", "Data source: synthetic, census, csv, tfrecord or parquet.")
flags.DEFINE_string("data_dir", None, "census: directory of the UCI files (census-income.test.gz, ...).")
flags.DEFINE_integer("census_group", 1, "census: task group 1 (income, marital) or 2 (education, marital).")
flags.DEFINE_boolean(
    "census_instance_weights", False, "census: weight every task's loss and metrics by instance_weight."
)
flags.DEFINE_list("train_files", [], "Tables: training file patterns (comma-separated globs).")
flags.DEFINE_list("eval_files", [], "Tables: evaluation file patterns (evaluate: evaluate on these files).")
flags.DEFINE_list("test_files", [], "Tables: test file patterns (evaluate --eval_split=test).")
flags.DEFINE_string(
    "split", "", "Tables: carve eval and test out of --train_files by row, e.g. 80/10/10 (percentages)."
)
flags.DEFINE_string("schema", None, "Tables: the feature schema JSON file (see README, Your own data).")
flags.DEFINE_boolean("skip_bad_rows", False, "Skip (and count) malformed CSV rows instead of stopping.")
flags.DEFINE_boolean(
    "reject_non_finite",
    False,
    "Stop on an infinite or out-of-range number (inf, 1e300) in a training row rather than read it as "
    "missing.",
)
flags.DEFINE_enum("eval_split", "eval", ["eval", "test"], "evaluate: the held-out split to evaluate on.")
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
flags.DEFINE_string("optimizer", _TRAIN.optimizer, f"{', '.join(OPTIMIZERS)}.")
flags.DEFINE_integer("seed", _TRAIN.seed, "Seed of initialisation, dropout and shuffling.")
flags.DEFINE_integer("save_checkpoints_steps", _TRAIN.save_checkpoints_steps, "Steps between checkpoints.")
flags.DEFINE_integer("keep_checkpoint_max", _TRAIN.keep_checkpoint_max, "Checkpoints to keep.")
flags.DEFINE_integer("log_every_steps", _TRAIN.log_every_steps, "Steps between progress reports.")
flags.DEFINE_integer(
    "shuffle_buffer",
    _TRAIN.shuffle_buffer,
    "Shuffle buffer of rows streamed from files (tables held in memory are reshuffled whole each epoch).",
)
flags.DEFINE_integer(
    "in_memory_max_mb",
    _TRAIN.in_memory_max_mb,
    "Tables whose files take at most this many MiB decoded (gzip and Parquet counted 4x, TFRecord 3x) are "
    "read and preprocessed once into memory; larger ones stream.",
)
flags.DEFINE_enum(
    "learning_rate_schedule",
    _TRAIN.learning_rate_schedule,
    list(SCHEDULES),
    f"How the learning rate moves: {', '.join(SCHEDULES)}.",
)
flags.DEFINE_integer(
    "warmup_steps", _TRAIN.warmup_steps, "Steps of linear warm-up to the schedule's first rate."
)
flags.DEFINE_integer(
    "decay_steps",
    _TRAIN.decay_steps,
    "exponential: steps per --decay_rate; cosine: steps to decay over. 0: the whole run, whatever "
    "--max_steps it is trained to (less the warm-up).",
)
flags.DEFINE_float("decay_rate", _TRAIN.decay_rate, "exponential: factor per --decay_steps.")
flags.DEFINE_float("cosine_alpha", _TRAIN.cosine_alpha, "cosine: final rate, as a fraction of the first.")
flags.DEFINE_list(
    "piecewise_boundaries",
    [],
    "piecewise: steps where the rate changes, e.g. 1000,2000 (counted after warm-up).",
)
flags.DEFINE_list(
    "piecewise_values", [], "piecewise: the rates, one more than boundaries, e.g. 0.01,0.001,0.0001."
)

# -- early stopping and the best checkpoint ---------------------------------------------------------
flags.DEFINE_string(
    "early_stopping_metric",
    "",
    "train_and_evaluate: stop when this metric stops improving: loss, <task>/loss, <task>/auc, ...",
)
flags.DEFINE_enum(
    "early_stopping_mode",
    _TRAIN.early_stopping_mode,
    METRIC_MODES,
    "Whether the metric should rise (max) or fall (min); auto: AUC, accuracy rise; losses, errors fall.",
)
flags.DEFINE_integer(
    "early_stopping_patience",
    _TRAIN.early_stopping_patience,
    "Evaluations without improvement to stop after.",
)
flags.DEFINE_float(
    "early_stopping_min_delta", _TRAIN.early_stopping_min_delta, "Smallest change that counts as improvement."
)
flags.DEFINE_string(
    "best_metric",
    "",
    "train_and_evaluate: the metric choosing the best checkpoint (default: the early-stopping metric, "
    "else loss).",
)


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
flags.DEFINE_integer(
    "rest_api_timeout_in_ms",
    30_000,
    "serve: REST requests running longer get a 504, bodies arriving slower a 408.",
)
flags.DEFINE_integer("max_request_bytes", 64 * 2**20, "serve: REST bodies larger than this get a 413.")
flags.DEFINE_integer(
    "max_request_elements",
    ServerOptions.max_request_elements,
    "serve: requests whose tensors hold or declare more values than this get a 413 / RESOURCE_EXHAUSTED.",
)
flags.DEFINE_integer(
    "max_num_load_retries",
    ServerOptions.max_num_load_retries,
    "serve: retries of a version that failed to load (0: load it once).",
)
flags.DEFINE_integer(
    "load_retry_interval_micros",
    ServerOptions.load_retry_interval_micros,
    "serve: microseconds between retries of a failed load.",
)
flags.DEFINE_float(
    "idle_timeout_seconds",
    ServerOptions.idle_timeout_seconds,
    "serve: connections with no request in progress (REST: or still sending headers) close after this.",
)
flags.DEFINE_integer(
    "max_connections",
    ServerOptions.max_connections,
    "serve: open connections per protocol (and gRPC calls in progress); further ones wait or are refused.",
)
flags.DEFINE_string(
    "monitoring_config_file",
    None,
    "serve: MonitoringConfig text proto (default: Prometheus at /monitoring/prometheus/metrics).",
)
flags.DEFINE_boolean(
    "enable_batching", False, "serve: merge concurrent requests to a model into batches (one model call)."
)
flags.DEFINE_string(
    "batching_parameters_file",
    None,
    "serve: BatchingParameters text proto for --enable_batching (default: TF Serving's defaults).",
)
flags.DEFINE_float(
    "model_config_file_poll_wait_seconds",
    0.0,
    "serve: seconds between looks for changes of --model_config_file, served when it changes (0: never).",
)
flags.DEFINE_boolean(
    "enable_signature_method_name_check",
    False,
    "serve: Classify and Regress need a signature of their method (Predict always does).",
)
flags.DEFINE_integer(
    "tensorflow_intra_op_parallelism", 0, "serve: threads within one TensorFlow op (0: TensorFlow picks)."
)
flags.DEFINE_integer(
    "tensorflow_inter_op_parallelism", 0, "serve: TensorFlow ops run at once (0: TensorFlow picks)."
)
flags.DEFINE_integer(
    "tensorflow_session_parallelism",
    0,
    "serve: threads of both TensorFlow pools when --tensorflow_intra_op_parallelism and "
    "--tensorflow_inter_op_parallelism are 0 (0: TensorFlow picks).",
)
# tensorflow_model_server flags a deployment passes that change nothing here, accepted with a warning, with
# tensorflow_model_server's defaults (its thread counts default to four per core).
_CORES = len(os.sched_getaffinity(0))
flags.DEFINE_integer("rest_api_num_threads", 4 * _CORES, "serve: accepted; REST runs in one event loop here.")
flags.DEFINE_integer("grpc_max_threads", 4 * _CORES, "serve: accepted; gRPC runs in one event loop here.")
flags.DEFINE_string(
    "grpc_channel_arguments", "", "serve: accepted; gRPC's channel arguments are this server's own here."
)
flags.DEFINE_integer("num_load_threads", 0, "serve: accepted; versions load one at a time here.")
flags.DEFINE_integer("num_unload_threads", 0, "serve: accepted; versions unload one at a time here.")
flags.DEFINE_boolean(
    "allow_version_labels_for_unavailable_models",
    False,
    "serve: accepted; labels may name any version here, one not available answers NOT_FOUND.",
)
flags.DEFINE_float("per_process_gpu_memory_fraction", 0.0, "serve: accepted; serving here runs on the CPU.")
flags.DEFINE_string("saved_model_tags", "serve", "serve: accepted; the MetaGraph tagged serve is loaded.")
NO_EFFECT_FLAGS = (
    "rest_api_num_threads",
    "grpc_max_threads",
    "grpc_channel_arguments",
    "num_load_threads",
    "num_unload_threads",
    "allow_version_labels_for_unavailable_models",
    "per_process_gpu_memory_fraction",
    "saved_model_tags",
)
flags.DEFINE_string(
    "server", "localhost:8500", "predict: grpc://host:port (or host:port) or http://host:port."
)
flags.DEFINE_string("input", None, "predict: rows as .jsonl (a JSON object per line) or .csv with a header.")
flags.DEFINE_string(
    "output",
    None,
    "predict: file of predictions, a JSON object per row (default: stdout); data: TFRecord dir.",
)
flags.DEFINE_integer("shards", 4, "data: TFRecord shards per split written to --output.")
flags.DEFINE_string(
    "signature_name",
    "",
    "predict: signature to run (default: serving_default); a task's classify or regress signature gets the "
    "rows as tf.Examples.",
)
flags.DEFINE_integer("model_version", None, "predict: a specific version (default: the newest).")
flags.DEFINE_string("version_label", None, "predict: a version label, such as stable.")
flags.DEFINE_float("timeout_seconds", 10.0, "predict: per request; UNAVAILABLE is retried.")
flags.DEFINE_integer("predict_batch_size", 256, "predict: rows per request.")


def _ints(flag: str, values: list[str]) -> tuple[int, ...]:
    return _numbers(flag, values, int, "integers")


def _numbers(flag: str, values: list[str], kind: Callable[[str], Any], plural: str) -> tuple[Any, ...]:
    try:
        return tuple(kind(v) for v in values)
    except ValueError:
        raise ConfigError(
            f"`{flag}` must be a comma-separated list of {plural}. Received: {flag}={','.join(values)}"
        ) from None


def _per_task(flag: str, values: list[str], tasks: list[str]) -> list[str]:
    if values and len(values) != len(tasks):
        raise ConfigError(
            f"--{flag} has {len(values)} entries ({','.join(values)}) but there are {len(tasks)} tasks "
            f"({','.join(tasks)}); give one per task."
        )
    return values or [""] * len(tasks)


def _tasks(data_config: DataConfig) -> tuple[TaskConfig, ...]:
    if data_config.source != "synthetic":
        return _schema_tasks(data_config)
    if FLAGS.model == "esmm" and not FLAGS.task_labels:
        return _funnel_tasks()
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
    weights = _task_weights(labels)
    afters = _per_task("task_after", FLAGS.task_after, labels)
    tasks = []
    for label, task_type, loss, weight, after in zip(labels, types, losses, weights, afters, strict=True):
        implied = [name for name, kind in TASK_TYPES.items() if loss in kind.losses]
        flag = "task_types" if task_type else "task_losses"  # where the type came from, for the errors
        task_type = task_type or (implied[0] if implied else synthetic.LABEL_TYPES[label])
        whole_numbers = [name for name, kind in synthetic.LABEL_TYPES.items() if kind == "binary"]
        if task_type == "count" and label not in whole_numbers:
            raise ConfigError(
                f"--{flag}: {label!r} is a real number, not a count; of the synthetic labels only "
                f"{', '.join(whole_numbers)} are whole numbers >= 0."
            )
        if task_type == "multiclass":
            raise ConfigError(
                f"--{flag}: the synthetic labels have no classes; multiclass tasks come from a table's "
                "schema."
            )
        tasks.append(
            TaskConfig(name=label, label=label, type=task_type, loss=loss, weight=weight, after=after)
        )
    return tuple(tasks)


def _task_weights(labels: list[str]) -> list[float]:
    weights = _per_task("task_weights", FLAGS.task_weights, labels)
    try:
        return [float(weight) if weight else 1.0 for weight in weights]
    except ValueError:
        raise ConfigError(
            f"`task_weights` must be numbers. Received: task_weights={','.join(FLAGS.task_weights)}"
        ) from None


def _funnel_tasks() -> tuple[TaskConfig, ...]:
    """ESMM's tasks on the synthetic funnel: `ctr` on clicks, `ctcvr` on conversions after them."""
    for flag in ("task_types", "task_losses", "task_after"):
        if FLAGS[flag].value:
            raise ConfigError(
                f"--{flag}: --model=esmm trains the synthetic funnel's tasks as they are; name "
                "--task_labels to choose others."
            )
    weights = _task_weights([task.name for task in synthetic.FUNNEL_TASKS])
    return tuple(
        dataclasses.replace(task, weight=weight)
        for task, weight in zip(synthetic.FUNNEL_TASKS, weights, strict=True)
    )


def _schema_tasks(data_config: DataConfig) -> tuple[TaskConfig, ...]:
    for flag in ("task_types", "task_losses", "task_weights", "task_after"):
        if FLAGS[flag].value:
            raise ConfigError(f"--{flag}: with --data={data_config.source} the tasks are set in the schema.")
    tasks = data.tasks(data_config)
    if not FLAGS.task_labels:
        return tasks
    by_name = {task.name: task for task in tasks}
    for label in FLAGS.task_labels:
        if label not in by_name:
            raise ConfigError(f"--task_labels: {label!r} is not a task of the schema ({', '.join(by_name)}).")
    return tuple(by_name[label] for label in FLAGS.task_labels)


def _tabular_config() -> TabularDataConfig:
    if FLAGS.data == "census":
        if not FLAGS.data_dir:
            raise ConfigError("--data=census needs --data_dir, the directory of the UCI files.")
        return census.data_config(
            FLAGS.data_dir, FLAGS.census_group, FLAGS.skip_bad_rows, FLAGS.census_instance_weights
        )
    if not FLAGS.schema:
        raise ConfigError(f"--data={FLAGS.data} needs --schema, a feature schema JSON file.")
    if not FLAGS.train_files:
        raise ConfigError(f"--data={FLAGS.data} needs --train_files.")
    if FLAGS.split and (FLAGS.eval_files or FLAGS.test_files):
        raise ConfigError(
            "Give --eval_files and --test_files, or --split (which carves them out of --train_files), "
            "not both."
        )
    if FLAGS.split == "halves":
        raise ConfigError("--split takes train/eval/test percentages, such as 80/10/10.")
    if not FLAGS.split and not FLAGS.eval_files:
        raise ConfigError(f"--data={FLAGS.data} needs --eval_files, or --split=80/10/10 to carve them out.")
    for flag in ("train_files", "eval_files", "test_files"):
        _files(flag)
    return data.table_config(
        FLAGS.data,
        FLAGS.schema,
        FLAGS.train_files,
        FLAGS.eval_files,
        FLAGS.test_files,
        split=FLAGS.split,
        skip_bad_rows=FLAGS.skip_bad_rows,
        reject_non_finite=FLAGS.reject_non_finite,
    )


def _files(flag: str) -> tuple[str, ...]:
    """A file flag's matching files, as absolute paths; a pattern matching none names the flag."""
    for pattern in FLAGS[flag].value:
        if not tabular.matches(pattern):
            raise ConfigError(f"--{flag}={pattern} matches no file.")
    return tabular.expand_patterns(flag, FLAGS[flag].value)


def _data_config() -> DataConfig:
    if FLAGS.data not in data.SOURCES:
        raise ConfigError(f"Unknown data source {FLAGS.data!r}. Valid sources: {', '.join(data.SOURCES)}.")
    if FLAGS.data != "synthetic":
        return DataConfig(source=FLAGS.data, tabular=_tabular_config())
    if not FLAGS.train_files and not FLAGS.eval_files and FLAGS.data_dir:
        raise ConfigError("--data_dir is for --data=census.")
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


def config_from_flags(with_features: bool = True) -> ExperimentConfig:
    """The experiment the flags describe, ignoring anything saved.

    `with_features=False` skips the model's input features, which for tables means a pass over the
    training data to learn vocabularies and statistics.
    """
    data_config = _data_config()
    data_config.validate()
    train = TrainConfig(**{field.name: _train_flag(field.name) for field in _TRAIN_FIELDS})
    model = ModelConfig(
        architecture=FLAGS.model,
        features=data.features(data_config, train) if with_features else (),
        tasks=_tasks(data_config),
        num_experts=FLAGS.num_experts,
        expert_units=_ints("expert_units", FLAGS.expert_units),
        bottom_units=_ints("bottom_units", FLAGS.bottom_units),
        tower_units=_ints("tower_units", FLAGS.tower_units),
        dropout=FLAGS.dropout,
        activation=FLAGS.activation,
        imports=tuple(FLAGS["import"].value),
        num_levels=FLAGS.num_levels,
        num_task_experts=FLAGS.num_task_experts,
        num_shared_experts=FLAGS.num_shared_experts,
        loss_weighting=FLAGS.loss_weighting,
    )
    if FLAGS.param_budget is not None and with_features:
        model = sizing.fit_to_budget(model, FLAGS.param_budget)
    elif FLAGS.param_budget is not None:  # no inputs to size with: what a saved model is checked against
        model = dataclasses.replace(model, param_budget=FLAGS.param_budget)
    return ExperimentConfig(model=model, data=data_config, train=train)


_TRAIN_FIELDS = dataclasses.fields(TrainConfig)


def _train_flag(name: str) -> Any:
    """A training flag's value as its `TrainConfig` field holds it."""
    value = FLAGS[name].value
    if name == "piecewise_boundaries":
        return _ints(name, value)
    if name == "piecewise_values":
        return _numbers(name, value, float, "numbers")
    return value


# Model and data flags, and where each one's value sits in the config.
_FIXED_FLAGS: dict[str, Callable[[ExperimentConfig], Any]] = {
    "model": lambda c: c.model.architecture,
    "num_experts": lambda c: c.model.num_experts,
    "expert_units": lambda c: c.model.expert_units,
    "bottom_units": lambda c: c.model.bottom_units,
    "tower_units": lambda c: c.model.tower_units,
    "dropout": lambda c: c.model.dropout,
    "activation": lambda c: c.model.activation,
    "import": lambda c: c.model.imports,
    "num_levels": lambda c: c.model.num_levels,
    "num_task_experts": lambda c: c.model.num_task_experts,
    "num_shared_experts": lambda c: c.model.num_shared_experts,
    "loss_weighting": lambda c: c.model.loss_weighting,
    "param_budget": lambda c: c.model.param_budget or None,
    "task_labels": lambda c: [t.label for t in c.model.tasks],
    "task_types": lambda c: [t.type for t in c.model.tasks],
    "task_losses": lambda c: [t.loss for t in c.model.tasks],
    "task_weights": lambda c: [t.weight for t in c.model.tasks],
    "task_after": lambda c: [t.after for t in c.model.tasks],
    "data": lambda c: c.data.source,
    "synthetic_examples": lambda c: c.data.synthetic.num_examples,
    "synthetic_eval_examples": lambda c: c.data.synthetic.eval_examples,
    "synthetic_dim": lambda c: c.data.synthetic.dim,
    "synthetic_p": lambda c: c.data.synthetic.p,
    "synthetic_c": lambda c: c.data.synthetic.c,
    "synthetic_m": lambda c: c.data.synthetic.m,
    "synthetic_seed": lambda c: c.data.synthetic.seed,
    "census_group": lambda c: c.data.tabular.schema.get("tasks") if c.data.source == "census" else None,
    "census_instance_weights": lambda c: (
        c.data.tabular.schema.get("weight_column") if c.data.source == "census" else None
    ),
    "schema": lambda c: c.data.tabular.schema if c.data.source not in ("synthetic", "census") else None,
    "split": lambda c: c.data.tabular.split,
}


# The widths --param_budget scales: given with it, they give proportions, not the saved widths.
_WIDTH_FLAGS = ("expert_units", "bottom_units")


def _format(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(_format(v) for v in value)
    return str(value)


def resolve_config(saved: ExperimentConfig | None, config_path: str) -> ExperimentConfig:
    """The config a stage runs with: the flags' own, or the saved one merged with explicit flags.

    Raises:
        ConfigError: an explicit model or data flag disagrees with the saved config, or a value is bad.
    """
    if saved is None:
        config = config_from_flags()
        if FLAGS.warm_start_from:
            config = warm_start.with_source_features(config, FLAGS.warm_start_from)
        return config.validate()
    requested = config_from_flags(with_features=False)
    sized = _WIDTH_FLAGS if saved.model.param_budget else ()
    for flag, value_of in _FIXED_FLAGS.items():
        old, new = value_of(saved), value_of(requested)
        if not FLAGS[flag].present or flag in sized or model_dir_files.differences(old, new) == []:
            continue
        if not isinstance(old, (dict, list)) or not isinstance(new, (dict, list)):
            raise ConfigError(
                f"--{flag}={_format(new)} conflicts with {config_path} ({flag}={_format(old)}). "
                "Use a new --model_dir, or drop the flag."
            )
        raise ConfigError(
            f"--{flag} conflicts with {config_path}. Use a new --model_dir, or drop the flag. "
            "What differs:\n  " + "\n  ".join(model_dir_files.differences(old, new, flag))
        )
    train_overrides = {
        field.name: getattr(requested.train, field.name)
        for field in _TRAIN_FIELDS
        if FLAGS[field.name].present
    }
    resolved = dataclasses.replace(saved, train=dataclasses.replace(saved.train, **train_overrides))
    if saved.data.source != "synthetic":
        resolved = dataclasses.replace(
            resolved, data=dataclasses.replace(saved.data, tabular=_moved_files(saved.data))
        )
    return resolved.validate()


def max_steps(config: ExperimentConfig) -> int:
    """The step training ends at: --max_steps, or the steps --num_epochs passes over the data take.

    Both on the command line is an error; a --max_steps from a --flagfile (a named experiment) gives way to
    a --num_epochs on the command line.
    """
    if FLAGS.num_epochs is None:
        return FLAGS.max_steps
    if any(arg.split("=", 1)[0] in ("--max_steps", "-max_steps") for arg in sys.argv[1:]):
        raise ConfigError("Give --max_steps or --num_epochs, not both.")
    if not (math.isfinite(FLAGS.num_epochs) and FLAGS.num_epochs > 0):
        raise ConfigError(f"--num_epochs must be a number > 0. Received: --num_epochs={FLAGS.num_epochs}")
    return data.steps_for_epochs(config.data, FLAGS.num_epochs, config.train.batch_size)


def _moved_files(saved: DataConfig) -> TabularDataConfig:
    """The saved table with the files and bad-row policy given by flags: files may move between runs, and
    `evaluate --eval_files=...` (or `--test_files`) evaluates a trained model on other files."""
    tabular_config = saved.tabular
    if FLAGS["data_dir"].present and saved.source == "census":
        located = census.data_config(FLAGS.data_dir, FLAGS.census_group)
        if located.split != tabular_config.split:
            raise ConfigError(
                f"--data_dir={FLAGS.data_dir} splits census differently ({located.split!r}) from "
                f"the saved config ({tabular_config.split!r}). Use a new --model_dir."
            )
        tabular_config = dataclasses.replace(
            tabular_config, train_files=located.train_files, eval_files=located.eval_files
        )
    moved = {
        flag: _files(flag) for flag in ("train_files", "eval_files", "test_files") if FLAGS[flag].present
    }
    for policy in ("skip_bad_rows", "reject_non_finite"):
        if FLAGS[policy].present:
            moved[policy] = FLAGS[policy].value
    return dataclasses.replace(tabular_config, **moved)


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
    batching = None
    if FLAGS.enable_batching:
        batching = serving_config.BatchingOptions()
        if FLAGS.batching_parameters_file:
            batching = serving_config.read_batching_parameters(FLAGS.batching_parameters_file)
    elif FLAGS.batching_parameters_file:
        raise ConfigError("--batching_parameters_file is used only with --enable_batching.")
    return ServerOptions(
        host=FLAGS.host,
        grpc_port=FLAGS.port,
        rest_port=FLAGS.rest_api_port,
        poll_seconds=FLAGS.file_system_poll_wait_seconds,
        warmup=FLAGS.enable_model_warmup,
        max_request_bytes=FLAGS.max_request_bytes,
        max_request_elements=FLAGS.max_request_elements,
        rest_timeout_ms=FLAGS.rest_api_timeout_in_ms,
        idle_timeout_seconds=FLAGS.idle_timeout_seconds,
        max_connections=FLAGS.max_connections,
        metrics_path=metrics_path,
        batching=batching,
        max_num_load_retries=FLAGS.max_num_load_retries,
        load_retry_interval_micros=FLAGS.load_retry_interval_micros,
        model_config_file=FLAGS.model_config_file,
        model_config_file_poll_wait_seconds=FLAGS.model_config_file_poll_wait_seconds,
        enable_signature_method_name_check=FLAGS.enable_signature_method_name_check,
    )


def ignored_serve_flags() -> list[str]:
    """The flags of `NO_EFFECT_FLAGS` given on the command line, which `mtl serve` warns about once."""
    return [name for name in NO_EFFECT_FLAGS if FLAGS[name].present]


# -- help -------------------------------------------------------------------------------------------
# `mtl --help` lists these groups; `mtl STAGE --help` those of the stage. Each flag sits in one group.
HELP_GROUPS: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    (
        "Errors",
        ("train", "evaluate", "export", "train_and_evaluate", "serve", "predict", "demo", "data"),
        ("verbose",),
    ),
    (
        "Where and how long",
        ("train", "evaluate", "export", "train_and_evaluate", "demo"),
        ("model_dir", "max_steps", "num_epochs", "distribution_strategy"),
    ),
    (
        "Model",
        ("train", "train_and_evaluate", "demo"),
        (
            "model",
            "import",
            "num_experts",
            "expert_units",
            "num_levels",
            "num_task_experts",
            "num_shared_experts",
            "bottom_units",
            "tower_units",
            "dropout",
            "activation",
            "task_labels",
            "task_types",
            "task_losses",
            "task_weights",
            "task_after",
            "loss_weighting",
            "param_budget",
        ),
    ),
    (
        "Data",
        ("train", "evaluate", "train_and_evaluate", "demo", "data"),
        (
            "data",
            "data_dir",
            "census_group",
            "census_instance_weights",
            "schema",
            "train_files",
            "eval_files",
            "test_files",
            "split",
            "skip_bad_rows",
            "reject_non_finite",
            "in_memory_max_mb",
            "shuffle_buffer",
            "synthetic_examples",
            "synthetic_eval_examples",
            "synthetic_dim",
            "synthetic_p",
            "synthetic_c",
            "synthetic_m",
            "synthetic_seed",
        ),
    ),
    (
        "Optimisation and learning-rate schedule",
        ("train", "train_and_evaluate", "demo"),
        (
            "batch_size",
            "optimizer",
            "learning_rate",
            "learning_rate_schedule",
            "warmup_steps",
            "decay_steps",
            "decay_rate",
            "cosine_alpha",
            "piecewise_boundaries",
            "piecewise_values",
            "seed",
        ),
    ),
    (
        "Checkpoints, logs and warm start",
        ("train", "train_and_evaluate", "demo"),
        (
            "save_checkpoints_steps",
            "keep_checkpoint_max",
            "log_every_steps",
            "warm_start_from",
            "warm_start_optimizer",
        ),
    ),
    (
        "Evaluation, early stopping and the best checkpoint",
        ("train_and_evaluate", "demo"),
        (
            "eval_every_steps",
            "early_stopping_metric",
            "early_stopping_mode",
            "early_stopping_patience",
            "early_stopping_min_delta",
            "best_metric",
            "export_best",
        ),
    ),
    ("Evaluation", ("evaluate",), ("eval_split", "report_experts", "continuous", "timeout_secs")),
    ("Which checkpoint", ("evaluate", "export"), ("checkpoint",)),
    ("Export", ("export", "train_and_evaluate", "demo"), ("export_base", "exports_to_keep")),
    ("Data conversion", ("data",), ("shards",)),
    ("Output", ("predict", "data"), ("output",)),
    ("The model to serve or query", ("serve", "predict"), ("model_name",)),
    (
        "Serving",
        ("serve", "demo"),
        (
            "host",
            "port",
            "rest_api_port",
            "model_base_path",
            "model_config_file",
            "file_system_poll_wait_seconds",
            "enable_model_warmup",
            "rest_api_timeout_in_ms",
            "max_request_bytes",
            "max_request_elements",
            "idle_timeout_seconds",
            "max_connections",
            "max_num_load_retries",
            "load_retry_interval_micros",
            "monitoring_config_file",
            "enable_batching",
            "batching_parameters_file",
            "model_config_file_poll_wait_seconds",
            "enable_signature_method_name_check",
            "tensorflow_intra_op_parallelism",
            "tensorflow_inter_op_parallelism",
            "tensorflow_session_parallelism",
            *NO_EFFECT_FLAGS,
        ),
    ),
    (
        "Prediction",
        ("predict",),
        (
            "server",
            "input",
            "signature_name",
            "model_version",
            "version_label",
            "timeout_seconds",
            "predict_batch_size",
        ),
    ),
)


def help_text(stage: str | None = None, width: int = 100) -> str:
    """The flags of `mtl` (or of one stage), grouped, each with its default and help."""
    lines = []
    for title, stages, names in HELP_GROUPS:
        if stage is not None and stage not in stages:
            continue
        lines.append(f"\n{title} ({', '.join(stages)}):")
        for name in names:
            flag = FLAGS[name]
            default = (flag.default_as_str or "").strip("'")
            lines.append(
                textwrap.fill(
                    flag.help,
                    width=width,
                    initial_indent=f"  --{name}={default}  " if default else f"  --{name}  ",
                    subsequent_indent="      ",
                    break_on_hyphens=False,
                )
            )
    return "\n".join(lines)
