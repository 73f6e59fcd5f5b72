"""Frozen, validated configuration: what the CLI builds from flags and what `model_dir` remembers.

Flags are read only in the CLI (`mtl`); everything else takes these objects. `ExperimentConfig` is saved as
`model_dir/config.json` so later stages (evaluate, export, resumed training) need no repeated model flags.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from typing import Any

from pipeline.checks import (
    check_choice,
    check_positive_int,
    check_rate,
    check_unique,
    check_units,
    invalid,
)
from pipeline.errors import ConfigError
from pipeline.optimizers import OPTIMIZERS, SCHEDULES
from pipeline.task_types import TASK_TYPES

HIDDEN_ACTIVATIONS = ("relu", "gelu", "silu", "tanh", "elu", "selu", "sigmoid", "linear")
FEATURE_KINDS = ("numeric", "categorical", "hashed")  # what `pipeline.features.Preprocessor` implements
SPLITS = ("train", "eval", "test")
METRIC_MODES = ("auto", "max", "min")
LOSS_WEIGHTINGS = ("fixed", "uncertainty")
# The export's signatures besides the tasks' own, which are named after the tasks (`pipeline.export`).
SIGNATURE_NAMES = ("serving_default", "gates", "predict")


@dataclasses.dataclass(frozen=True)
class FeatureConfig:
    """One raw input of the model, as named in the serving signature, and how the model preprocesses it.

    `numeric`: float `[batch]` (`dim` 1) or `[batch, dim]`, normalised with `mean` and `variance` when given.
    A missing number is NaN: it is imputed with `mean` and, with `missing_indicator`, flagged in an extra
    input.
    `categorical`: string `[batch]`, looked up in `vocabulary` (unseen values go to `oov_buckets`), embedded.
    `hashed`: string `[batch]`, hashed into `hash_buckets`, embedded. The statistics come from training data.
    """

    name: str
    kind: str = "numeric"
    dim: int = 1
    mean: float | None = None
    variance: float | None = None
    vocabulary: tuple[str, ...] = ()
    oov_buckets: int = 1
    hash_buckets: int = 0
    embedding_dim: int = 4
    missing_indicator: bool = False

    def validate(self) -> None:
        if not self.name:
            raise invalid("feature.name", self.name, "must be a non-empty string")
        where = f"features[{self.name}]"
        check_choice(f"{where}.kind", self.kind, FEATURE_KINDS)
        check_positive_int(f"{where}.dim", self.dim)
        if self.kind != "numeric":
            check_positive_int(f"{where}.embedding_dim", self.embedding_dim)
        if self.kind == "categorical":
            check_positive_int(f"{where}.oov_buckets", self.oov_buckets)
        if self.kind == "hashed":
            check_positive_int(f"{where}.hash_buckets", self.hash_buckets)
        if self.variance is not None and self.variance < 0:
            raise invalid(f"{where}.variance", self.variance, "must be >= 0")


@dataclasses.dataclass(frozen=True)
class TaskConfig:
    """One task: which label column it learns and how (the seeds' `model_fn` spread this around).

    `loss`, `output_activation` and `metrics` default to what the task type implies (`pipeline.task_types`):
    log-loss, sigmoid, AUC and log-loss for binary tasks; squared error, linear, RMSE and MAE for regression
    tasks; for count tasks (clicks, purchases, visits: whole numbers >= 0) the Poisson loss and the
    exponential, so the output is the expected count, with Poisson deviance and MAE; for multi-class tasks
    (labels are class ids 0 to `num_classes - 1`) cross-entropy and the softmax, so the output is each
    class's probability `[batch, num_classes]`, with accuracy and, with more than `top_k` classes, top-k
    accuracy.

    `classes` names a multi-class task's classes, in the order of its outputs (what TF Serving's Classify
    returns; default: their numbers).

    `after` makes the task a step of a funnel (ESMM, Ma et al., SIGIR 2018): a binary task whose event can
    only follow the `after` task's (a conversion follows a click). Its tower learns the probability given the
    earlier event, served as `conditional_output` (default `<name>_given_<after>`); the task's own output,
    loss and metrics are those of the product, the probability of both, over every example.
    """

    name: str
    label: str
    type: str = "regression"
    loss: str = ""
    weight: float = 1.0
    output_activation: str = ""
    metrics: tuple[str, ...] = ()
    num_classes: int = 0
    classes: tuple[str, ...] = ()
    top_k: int = 5
    after: str = ""
    conditional_output: str = ""

    def __post_init__(self) -> None:
        task_type = TASK_TYPES.get(self.type)
        if task_type is not None:
            if not self.loss:
                object.__setattr__(self, "loss", task_type.default_loss)
            if not self.output_activation:
                object.__setattr__(self, "output_activation", task_type.activation)
            if not self.metrics:
                defaults = task_type.default_metrics
                if self.type == "multiclass" and self.num_classes <= self.top_k:
                    defaults = tuple(m for m in defaults if m != "top_k_accuracy")  # would always be 1
                object.__setattr__(self, "metrics", defaults)
        if self.after and not self.conditional_output:
            object.__setattr__(self, "conditional_output", f"{self.name}_given_{self.after}")
        object.__setattr__(self, "metrics", tuple(self.metrics))

    @property
    def output_units(self) -> int:
        """Logits per example: one per class for a multi-class task, else one."""
        return self.num_classes if TASK_TYPES[self.type].per_class else 1

    def validate(self) -> None:
        prefix = f"tasks[{self.name}]"
        if not self.name:
            raise invalid("task.name", self.name, "must be a non-empty string")
        if not self.label:
            raise invalid(f"{prefix}.label", self.label, "must be a non-empty column name")
        task_type = TASK_TYPES[check_choice(f"{prefix}.type", self.type, tuple(TASK_TYPES))]
        check_choice(f"{prefix}.loss", self.loss, tuple(task_type.losses))
        if not isinstance(self.weight, (int, float)) or not math.isfinite(self.weight) or self.weight < 0:
            raise invalid(f"{prefix}.weight", self.weight, "must be a finite number >= 0")
        if self.output_activation not in task_type.activations:
            raise invalid(
                f"{prefix}.output_activation",
                self.output_activation,
                f"must be {' or '.join(task_type.activations)} for {self.type} tasks (the loss's link)",
            )
        for metric in self.metrics:
            check_choice(f"{prefix}.metrics", metric, tuple(task_type.metrics))
        if self.type == "multiclass":
            if (
                isinstance(self.num_classes, bool)
                or not isinstance(self.num_classes, int)
                or self.num_classes < 2
            ):
                raise invalid(f"{prefix}.num_classes", self.num_classes, "must be an integer >= 2")
            check_positive_int(f"{prefix}.top_k", self.top_k)
            if self.classes and len(self.classes) != self.num_classes:
                raise invalid(
                    f"{prefix}.classes", list(self.classes), f"must name the {self.num_classes} classes"
                )
        elif self.num_classes or self.classes:
            raise invalid(f"{prefix}.num_classes", self.num_classes, "is for multiclass tasks only")
        if self.after and self.type != "binary":
            raise invalid(f"{prefix}.after", self.after, "is for binary tasks only (an event after another)")
        if self.conditional_output and not self.after:
            raise invalid(
                f"{prefix}.conditional_output",
                self.conditional_output,
                "names the output of a task with after",
            )


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture and sizes. `bottom_units` is used by shared-bottom and single-task, `num_experts` by
    OMoE/MMoE, `num_levels`, `num_task_experts` and `num_shared_experts` by PLE, `expert_units` by all three.

    `param_budget`, when not 0, is the parameter count the widths were sized to (`pipeline.models.sizing`).
    `loss_weighting` is `fixed` (each task's `weight`) or `uncertainty` (weights learned on top of them; see
    `pipeline.layers.UncertaintyWeights`).

    `imports` names modules that register the architecture (see `pipeline.models.registry`); every stage
    imports them before building the model, so a plugin architecture needs naming once.
    """

    architecture: str = "mmoe"
    features: tuple[FeatureConfig, ...] = ()
    tasks: tuple[TaskConfig, ...] = ()
    num_experts: int = 8
    expert_units: tuple[int, ...] = (16,)
    bottom_units: tuple[int, ...] = (113,)
    tower_units: tuple[int, ...] = (8,)
    dropout: float = 0.0
    activation: str = "relu"
    imports: tuple[str, ...] = ()
    num_levels: int = 2
    num_task_experts: int = 2
    num_shared_experts: int = 2
    loss_weighting: str = "fixed"
    param_budget: int = 0

    def validate(self) -> None:
        if not self.features:
            raise invalid("features", [], "must name at least one input feature")
        if not self.tasks:
            raise invalid("tasks", [], "must name at least one task")
        for feature in self.features:
            feature.validate()
        for task in self.tasks:
            task.validate()
        check_unique("features", [f.name for f in self.features])
        check_unique("tasks", [t.name for t in self.tasks])
        for task in self.tasks:
            if task.name in SIGNATURE_NAMES:
                raise invalid(
                    "tasks",
                    [t.name for t in self.tasks],
                    f"must not name a task {task.name!r}: the export's signature of that name takes it",
                )
        self._validate_funnel()
        check_positive_int("num_experts", self.num_experts)
        check_positive_int("num_levels", self.num_levels)
        check_positive_int("num_task_experts", self.num_task_experts)
        check_positive_int("num_shared_experts", self.num_shared_experts)
        check_choice("loss_weighting", self.loss_weighting, LOSS_WEIGHTINGS)
        check_units("expert_units", self.expert_units)
        check_units("bottom_units", self.bottom_units)
        check_units("tower_units", self.tower_units, allow_empty=True)
        check_rate("dropout", self.dropout)
        check_choice("activation", self.activation, HIDDEN_ACTIVATIONS)

    def _validate_funnel(self) -> None:
        """A task `after` another follows it in the task order (so funnels have no cycles), the earlier one is
        binary, and every served output has a name of its own."""
        seen: dict[str, TaskConfig] = {}
        for task in self.tasks:
            if task.after:
                earlier = seen.get(task.after)
                if earlier is None:
                    raise invalid(
                        f"tasks[{task.name}].after",
                        task.after,
                        f"must name a task listed before it (tasks: {', '.join(t.name for t in self.tasks)})",
                    )
                if earlier.type != "binary":
                    raise invalid(f"tasks[{task.name}].after", task.after, "must name a binary task")
            seen[task.name] = task
        check_unique(
            "task outputs",
            [t.name for t in self.tasks] + [t.conditional_output for t in self.tasks if t.after],
        )

    def funnel_tasks(self) -> tuple[TaskConfig, ...]:
        """The tasks that follow another (see `TaskConfig.after`)."""
        return tuple(task for task in self.tasks if task.after)


@dataclasses.dataclass(frozen=True)
class SyntheticDataConfig:
    """The MMoE paper's synthetic two-task regression data (section 3.2), as generated by the seeds.

    `p` is the cosine similarity of the two tasks' weight vectors (task correlation), `c` scales them, `m` is
    the number of sine terms. Train and eval examples come from the same task parameters (the seeds drew new
    tasks on every call, so their eval data came from different tasks).
    """

    num_examples: int = 100_000
    eval_examples: int = 10_000
    dim: int = 100
    c: float = 0.3
    p: float = 0.8
    m: int = 5
    seed: int = 1

    def validate(self) -> None:
        check_positive_int("synthetic_examples", self.num_examples)
        check_positive_int("synthetic_eval_examples", self.eval_examples)
        check_positive_int("synthetic_dim", self.dim)
        check_positive_int("synthetic_m", self.m)
        if not -1.0 <= self.p <= 1.0:
            raise invalid("synthetic_p", self.p, "must be a correlation in [-1, 1]")
        if not self.c > 0:
            raise invalid("synthetic_c", self.c, "must be > 0")
        if self.dim < 2:
            raise invalid("synthetic_dim", self.dim, "must be at least 2 (two orthogonal directions)")


@dataclasses.dataclass(frozen=True)
class TabularDataConfig:
    """Rows of raw columns in CSV (plain or gzip), TFRecord or Parquet files, described by a schema.

    `format` names one of `pipeline.data.formats`, which checks it when the table is read.

    `schema` is the resolved schema as a JSON object (see `pipeline.data.schema`). File paths are absolute, so
    every stage works from any directory. `split` carves splits out of files by row position:
    "A/B/C" (percentages, e.g. "80/10/10") deals the rows of `train_files` to train, eval and test in that
    proportion (rows 1-8 of every 10 train, the 9th is eval, the 10th test); "halves" trains on `train_files`
    whole and gives the odd rows of `eval_files` to eval, the even ones to test.

    A number that is infinite or too large for float32 (`inf`, `1e300`) is missing, like NaN; with
    `reject_non_finite`, one in a training row stops training instead, naming the column.
    """

    format: str = "csv"
    train_files: tuple[str, ...] = ()
    eval_files: tuple[str, ...] = ()
    test_files: tuple[str, ...] = ()
    schema: dict = dataclasses.field(default_factory=dict)
    split: str = ""
    skip_bad_rows: bool = False
    reject_non_finite: bool = False

    def validate(self) -> None:
        split_proportions(self.split)
        if not self.train_files:
            raise invalid("train_files", [], "must name at least one file")
        if not self.eval_files and not self.split:
            raise invalid("eval_files", [], "must name at least one file (or give a split of train_files)")

    def files(self, split: str) -> tuple[str, ...]:
        """The files `split`'s rows come from: its own, else those a `split` carves it from (or none)."""
        check_choice("split", split, SPLITS)
        own = {"train": self.train_files, "eval": self.eval_files, "test": self.test_files}[split]
        if own or split == "train" or not self.split:
            return own
        if split == "test" and self.split != "halves" and self.split.endswith("/0"):
            return ()
        return self.eval_files if self.split == "halves" else self.train_files

    def carved(self, split: str) -> bool:
        """Whether `split` holds a share of its files' rows (by position) rather than all of them."""
        if self.split == "halves":
            return split != "train" and not self.test_files
        own = {"train": self.train_files, "eval": self.eval_files, "test": self.test_files}[split]
        return bool(self.split) and (split == "train" or not own)


def split_proportions(split: str) -> tuple[int, int, int] | None:
    """The train/eval/test shares of a row-position split "A/B/C", reduced ("80/10/10" -> (8, 1, 1)).

    None for no split or "halves"; an invalid split raises `ConfigError` naming it.
    """
    if split in ("", "halves"):
        return None
    parts = split.split("/")
    try:
        shares = tuple(int(part) for part in parts)
    except ValueError:
        shares = ()
    if len(shares) != 3 or min(shares) < 0 or 0 in shares[:2] or sum(shares) != 100:
        raise invalid(
            "split", split, "must be three whole percentages train/eval/test summing to 100, e.g. 80/10/10"
        )
    divisor = math.gcd(*shares)
    return tuple(share // divisor for share in shares)  # type: ignore[return-value]


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Which data source feeds the model, and its settings."""

    source: str = "synthetic"
    synthetic: SyntheticDataConfig = SyntheticDataConfig()
    tabular: TabularDataConfig = TabularDataConfig()

    def validate(self) -> None:
        if self.source == "synthetic":
            self.synthetic.validate()
        else:
            self.tabular.validate()


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation and bookkeeping of the training loop.

    The learning rate follows `learning_rate_schedule` (see `pipeline.optimizers`): `constant`; `exponential`
    (times `decay_rate` every `decay_steps`); `cosine` (from `learning_rate` down to `cosine_alpha` times it
    over `decay_steps`); `piecewise` (`piecewise_values[i]` through step `piecewise_boundaries[i]`). A
    `decay_steps` of 0 decays over the whole run, whatever `max_steps` it is trained to. With `warmup_steps`
    it first rises linearly to the schedule's starting rate, and the schedule's steps count from there.

    `train_and_evaluate` stops once `early_stopping_metric` (e.g. `income/auc`, `loss`) has not improved by
    more than `early_stopping_min_delta` for `early_stopping_patience` evaluations, and keeps the checkpoint
    of the best evaluation by `best_metric` (default: the early-stopping metric, else `loss`). A mode of
    `auto` infers the direction from the metric's task type: AUC and accuracy up, losses and errors down.
    """

    batch_size: int = 256
    learning_rate: float = 1e-3
    optimizer: str = "adam"
    seed: int = 42
    save_checkpoints_steps: int = 500
    keep_checkpoint_max: int = 5
    log_every_steps: int = 100
    shuffle_buffer: int = 10_000
    in_memory_max_mb: int = 2048
    learning_rate_schedule: str = "constant"
    warmup_steps: int = 0
    decay_steps: int = 0
    decay_rate: float = 0.5
    cosine_alpha: float = 0.0
    piecewise_boundaries: tuple[int, ...] = ()
    piecewise_values: tuple[float, ...] = ()
    early_stopping_metric: str = ""
    early_stopping_mode: str = "auto"
    early_stopping_patience: int = 5
    early_stopping_min_delta: float = 0.0
    best_metric: str = ""

    def validate(self) -> None:
        check_positive_int("batch_size", self.batch_size)
        _check_positive_number("learning_rate", self.learning_rate)
        check_choice("optimizer", self.optimizer, tuple(OPTIMIZERS))
        check_positive_int("save_checkpoints_steps", self.save_checkpoints_steps)
        check_positive_int("keep_checkpoint_max", self.keep_checkpoint_max)
        check_positive_int("log_every_steps", self.log_every_steps)
        check_positive_int("shuffle_buffer", self.shuffle_buffer)
        _check_count("in_memory_max_mb", self.in_memory_max_mb)
        self._validate_schedule()
        check_choice("early_stopping_mode", self.early_stopping_mode, METRIC_MODES)
        check_positive_int("early_stopping_patience", self.early_stopping_patience)
        if not isinstance(self.early_stopping_min_delta, (int, float)) or self.early_stopping_min_delta < 0:
            raise invalid("early_stopping_min_delta", self.early_stopping_min_delta, "must be a number >= 0")

    def _validate_schedule(self) -> None:
        schedule = check_choice("learning_rate_schedule", self.learning_rate_schedule, tuple(SCHEDULES))
        _check_count("warmup_steps", self.warmup_steps)
        _check_count("decay_steps", self.decay_steps)
        if schedule == "exponential":
            _check_positive_number("decay_rate", self.decay_rate)
        if schedule == "cosine" and not (
            isinstance(self.cosine_alpha, (int, float)) and 0.0 <= self.cosine_alpha <= 1.0
        ):
            raise invalid("cosine_alpha", self.cosine_alpha, "must be in [0, 1]")
        if schedule != "piecewise":
            for field in ("piecewise_boundaries", "piecewise_values"):
                if getattr(self, field):
                    raise invalid(field, list(getattr(self, field)), "is for the piecewise schedule only")
            return
        boundaries, values = list(self.piecewise_boundaries), list(self.piecewise_values)
        if (
            not boundaries
            or boundaries != sorted(set(boundaries))
            or not all(isinstance(b, int) and b > 0 for b in boundaries)
        ):
            raise invalid("piecewise_boundaries", boundaries, "must be increasing positive step numbers")
        if len(values) != len(boundaries) + 1:
            raise invalid(
                "piecewise_values",
                values,
                f"must hold one learning rate more than piecewise_boundaries ({len(boundaries) + 1})",
            )
        for value in values:
            _check_positive_number("piecewise_values", value)


def _check_positive_number(field: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise invalid(field, value, "must be > 0")


def _check_count(field: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise invalid(field, value, "must be an integer >= 0")


def conditional_task(task: TaskConfig) -> TaskConfig:
    """What a funnel task's tower learns, as a task of its own: its event given the earlier one (ESMM's CVR),
    named `conditional_output`. Evaluation reports it on the rows where the earlier event happened."""
    return TaskConfig(name=task.conditional_output, label=task.label, type="binary")


def metric_names(model: ModelConfig) -> tuple[str, ...]:
    """What evaluation reports and early stopping can watch: `loss` and `<task>/<metric>`, also for the
    conditional outputs of funnel tasks."""
    tasks = (*model.tasks, *map(conditional_task, model.funnel_tasks()))
    return ("loss", *(f"{task.name}/{name}" for task in tasks for name in ("loss", *task.metrics)))


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """Everything a `model_dir` was trained with."""

    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()

    def validate(self) -> ExperimentConfig:
        self.model.validate()
        self.data.validate()
        self.train.validate()
        known = metric_names(self.model)
        for field in ("early_stopping_metric", "best_metric"):
            name = getattr(self.train, field)
            if name and name not in known:
                raise invalid(field, name, f"must be one of the evaluation's metrics: {', '.join(known)}")
        return self

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> ExperimentConfig:
        return _from_dict(cls, json.loads(text))


_NESTED = {
    ("ModelConfig", "features"): FeatureConfig,
    ("ModelConfig", "tasks"): TaskConfig,
    ("DataConfig", "synthetic"): SyntheticDataConfig,
    ("DataConfig", "tabular"): TabularDataConfig,
    ("ExperimentConfig", "model"): ModelConfig,
    ("ExperimentConfig", "data"): DataConfig,
    ("ExperimentConfig", "train"): TrainConfig,
}


def _from_dict(cls: type, values: Mapping[str, Any]) -> Any:
    """Rebuilds a config dataclass from `dataclasses.asdict` output (lists become tuples)."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"Unknown {cls.__name__} field(s): {', '.join(unknown)}")
    kwargs = {}
    for name, value in values.items():
        nested = _NESTED.get((cls.__name__, name))
        if nested is not None and isinstance(value, list):
            value = tuple(_from_dict(nested, item) for item in value)
        elif nested is not None:
            value = _from_dict(nested, value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)
