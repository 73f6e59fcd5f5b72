"""The feature schema: how a table of raw columns becomes the model's features and tasks.

A schema is a JSON file (the one format; see README "Your own data"):

    {
      "columns": ["age", "education", "income"],           // CSV column order; omit when the CSV has a header
      "csv": {"header": false, "delimiter": ",", "strip": true, "na_values": ["?"]},
      "features": [
        {"name": "age", "type": "numeric", "missing_indicator": true},  // normalised; missing: the mean
        {"name": "education", "type": "categorical", "embedding_dim": 4,    // learned vocabulary + 1 OOV
         "min_count": 2, "max_tokens": 1000},
        {"name": "occupation", "type": "hashed", "hash_buckets": 64, "embedding_dim": 4}
      ],
      "weight_column": "instance_weight",                   // optional: weights every task's loss and metrics
      "drop": [],
      "tasks": [
        {"name": "high_income", "column": "income", "positive_values": ["50000+."],
         "type": "binary", "loss": "log_loss", "weight": 1.0, "weight_column": ""},
        {"name": "employment", "column": "class of worker", "type": "multiclass",
         "classes": ["Private", "Self-employed", "Government", "Not in universe"]}
      ]
    }

Every column is a feature, a task's label column, a weight column or dropped, so nothing is used (or leaked)
by accident. A binary task's label is 1 where the column's value is one of `positive_values`; a regression
task's label is the column's number, and a count task's (`"type": "count"`: clicks, visits) a whole number
>= 0. A multi-class task's label is the position of the column's value in `classes` (the order of the served
probabilities); training stops on a training row whose value is not a class, and an eval or test row's
such value is a missing label. A label cell that is empty or in `na_values` is missing: that row contributes
nothing to that task's loss and metrics, and still trains the other tasks. A binary task may follow another
in a funnel (`"after": "click"`, and optionally `"conditional_output"`; see `TaskConfig`).

A categorical value seen fewer than `min_count` times in training, or beyond the `max_tokens` most frequent,
is out of vocabulary, so the OOV buckets are trained too.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from pipeline.checks import check_choice, check_positive_int, check_unique, invalid
from pipeline.config import FEATURE_KINDS, TaskConfig
from pipeline.errors import ConfigError
from pipeline.task_types import TASK_TYPES


@dataclasses.dataclass(frozen=True)
class CsvFormat:
    """How CSV lines split into fields. `strip` removes spaces around fields (census uses `", "`)."""

    header: bool = True
    delimiter: str = ","
    strip: bool = True
    na_values: tuple[str, ...] = ("",)

    @property
    def missing_values(self) -> tuple[str, ...]:
        """What a missing cell holds: an empty cell, or one of `na_values`."""
        return tuple(dict.fromkeys(("", *self.na_values)))


@dataclasses.dataclass(frozen=True)
class SchemaFeature:
    name: str
    type: str = "numeric"
    embedding_dim: int = 4
    hash_buckets: int = 0
    oov_buckets: int = 1
    min_count: int = 1
    max_tokens: int = 0
    missing_indicator: bool = False


@dataclasses.dataclass(frozen=True)
class SchemaTask:
    name: str
    column: str
    type: str = "binary"
    loss: str = ""
    weight: float = 1.0
    positive_values: tuple[str, ...] = ()
    weight_column: str = ""
    classes: tuple[str, ...] = ()
    metrics: tuple[str, ...] = ()
    top_k: int = TaskConfig.top_k
    after: str = ""
    conditional_output: str = ""

    def task_config(self) -> TaskConfig:
        """The model's view of this task; its label is the derived label, keyed by the task's name."""
        return TaskConfig(
            name=self.name,
            label=self.name,
            type=self.type,
            loss=self.loss,
            weight=self.weight,
            metrics=self.metrics,
            num_classes=len(self.classes) if self.type == "multiclass" else 0,
            classes=self.classes if self.type == "multiclass" else (),
            top_k=self.top_k,
            after=self.after,
            conditional_output=self.conditional_output,
        )


@dataclasses.dataclass(frozen=True)
class Schema:
    columns: tuple[str, ...] = ()
    csv: CsvFormat = CsvFormat()
    features: tuple[SchemaFeature, ...] = ()
    drop: tuple[str, ...] = ()
    tasks: tuple[SchemaTask, ...] = ()
    weight_column: str = ""

    @property
    def label_columns(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(task.column for task in self.tasks))

    def task_weight_column(self, task: SchemaTask) -> str:
        """The column weighting `task` ("" for none): its own, else the schema's."""
        return task.weight_column or self.weight_column

    @property
    def weight_columns(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(c for c in map(self.task_weight_column, self.tasks) if c))

    @property
    def used_columns(self) -> tuple[str, ...]:
        """Feature, label and weight columns, in schema order."""
        names = [f.name for f in self.features] + list(self.label_columns) + list(self.weight_columns)
        return tuple(dict.fromkeys(names))

    def numeric_columns(self) -> set[str]:
        """Columns parsed as numbers: numeric features, regression and count labels, and weights (binary and
        multi-class labels are strings, matched against `positive_values` and `classes`)."""
        numeric = {f.name for f in self.features if f.type == "numeric"}
        numeric_labels = {t.column for t in self.tasks if t.type in ("regression", "count")}
        return numeric | numeric_labels | set(self.weight_columns)

    def with_columns(self, columns: tuple[str, ...]) -> Schema:
        return dataclasses.replace(self, columns=tuple(columns))

    def validate(self) -> Schema:
        """Checks the schema on its own and against its columns; errors name the field and the value."""
        if not self.features:
            raise invalid("schema.features", [], "must name at least one feature")
        if not self.tasks:
            raise invalid("schema.tasks", [], "must name at least one task")
        check_unique("schema.features", [f.name for f in self.features])
        check_unique("schema.tasks", [t.name for t in self.tasks])
        for i, feature in enumerate(self.features):
            where = f"schema.features[{i}]"
            if not feature.name:
                raise invalid(f"{where}.name", feature.name, "must be a column name")
            check_choice(f"{where}.type", feature.type, FEATURE_KINDS)
            check_positive_int(f"{where}.embedding_dim", feature.embedding_dim)
            if feature.type == "hashed":
                check_positive_int(f"{where}.hash_buckets", feature.hash_buckets)
            if feature.type == "categorical":
                check_positive_int(f"{where}.oov_buckets", feature.oov_buckets)
                check_positive_int(f"{where}.min_count", feature.min_count)
                if not isinstance(feature.max_tokens, int) or feature.max_tokens < 0:
                    raise invalid(
                        f"{where}.max_tokens", feature.max_tokens, "must be an integer >= 0 (0: no limit)"
                    )
            if feature.missing_indicator and feature.type != "numeric":
                raise invalid(
                    f"{where}.missing_indicator",
                    True,
                    "is for numeric features (a missing category is a value)",
                )
        for i, task in enumerate(self.tasks):
            where = f"schema.tasks[{i}]"
            check_choice(f"{where}.type", task.type, tuple(TASK_TYPES))
            if task.type == "binary" and not task.positive_values:
                raise invalid(f"{where}.positive_values", [], "must list the values that make the label 1")
            if task.type == "multiclass":
                if len(task.classes) < 2:
                    raise invalid(
                        f"{where}.classes", list(task.classes), "must list the column's classes (2 or more)"
                    )
                check_unique(f"{where}.classes", list(task.classes))
            elif task.classes:
                raise invalid(f"{where}.classes", list(task.classes), "is for multiclass tasks only")
            if not all(isinstance(value, str) for value in (*task.classes, *task.positive_values)):
                raise invalid(
                    f"{where}.classes" if task.type == "multiclass" else f"{where}.positive_values",
                    list(task.classes or task.positive_values),
                    'must be a list of strings, the column\'s values as the file holds them ("1", not 1)',
                )
            earlier = [t for t in self.tasks[:i] if t.type == "binary"]
            if task.after and task.after not in [t.name for t in earlier]:
                raise invalid(
                    f"{where}.after", task.after, "must name a binary task listed before it in schema.tasks"
                )
            if task.conditional_output and not task.after:
                raise invalid(
                    f"{where}.conditional_output", task.conditional_output, "is for a task with after"
                )
            task.task_config().validate()
        features = {f.name for f in self.features}
        for column in self.label_columns:
            if column in features:
                raise ConfigError(
                    f"Column {column!r} is a task's label column and a feature: it would leak the label."
                )
        for column in self.weight_columns:
            if column in features or column in self.label_columns:
                raise ConfigError(f"Weight column {column!r} is also a feature or a label column.")
        if self.columns:
            check_unique("schema.columns", list(self.columns))
            known = set(self.columns)
            for field, names in (
                ("features", [f.name for f in self.features]),
                ("tasks.column", list(self.label_columns)),
                ("weight_column", list(self.weight_columns)),
                ("drop", list(self.drop)),
            ):
                missing = [n for n in names if n not in known]
                if missing:
                    raise ConfigError(
                        f"schema.{field} names {', '.join(map(repr, missing))}, not among the data's columns "
                        f"({', '.join(self.columns)})."
                    )
            unused = [c for c in self.columns if c not in set(self.used_columns) | set(self.drop)]
            if unused:
                raise ConfigError(
                    f"Columns {', '.join(map(repr, unused))} are neither features, task columns nor in "
                    "schema.drop; say what they are."
                )
        return self


def _build(cls: type, values: Any, where: str) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"{where} must be a JSON object. Received: {values!r}")
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ConfigError(
            f"{where} has unknown field(s) {', '.join(unknown)}; "
            f"expected some of {', '.join(sorted(fields))}."
        )
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def schema_to_dict(schema: Schema) -> dict[str, Any]:
    """The schema as a config stores it: JSON lists, not tuples, so saved and fresh ones compare equal."""
    return json.loads(json.dumps(dataclasses.asdict(schema)))


def schema_from_dict(values: dict[str, Any]) -> Schema:
    if not isinstance(values, dict):
        raise ConfigError("A schema must be a JSON object.")
    values = dict(values)
    unknown = sorted(set(values) - {f.name for f in dataclasses.fields(Schema)})
    if unknown:
        raise ConfigError(f"schema has unknown field(s) {', '.join(unknown)}.")
    return Schema(
        columns=tuple(values.get("columns", ())),
        csv=_build(CsvFormat, values.get("csv", {}), "schema.csv"),
        features=tuple(
            _build(SchemaFeature, f, f"schema.features[{i}]")
            for i, f in enumerate(values.get("features", ()))
        ),
        drop=tuple(values.get("drop", ())),
        weight_column=values.get("weight_column", ""),
        tasks=tuple(
            _build(SchemaTask, t, f"schema.tasks[{i}]") for i, t in enumerate(values.get("tasks", ()))
        ),
    )


def load_schema(path: str | Path) -> Schema:
    """Reads and validates a schema file."""
    path = Path(path)
    try:
        values = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"--schema={path} does not exist.") from None
    except json.JSONDecodeError as error:
        raise ConfigError(f"--schema={path} is not valid JSON: {error}") from None
    return schema_from_dict(values).validate()
