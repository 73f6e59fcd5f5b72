"""What one pass over the training rows learns: vocabularies, means and variances, missing and label counts.

The same pass checks for mistakes that would otherwise train silently wrong, and stops before training
with a one-line message naming the field: a binary task whose `positive_values` match no training row, a task
with no labelled row, a weight that is missing or negative. Its results become the model's `FeatureConfig`s,
which `model_dir/config.json` keeps, so later stages and resumed runs do not read the data again.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator, Mapping

import numpy as np
from absl import logging

from pipeline.config import FeatureConfig
from pipeline.data.formats import DataError
from pipeline.data.schema import Schema


class Statistics:
    """Running statistics of a table's columns, fed chunk by chunk (`add`)."""

    def __init__(self, schema: Schema) -> None:
        self.schema = schema
        self.rows = 0
        self.missing: collections.Counter[str] = collections.Counter()
        self.non_finite: collections.Counter[str] = collections.Counter()  # counted as missing too
        self._numeric = schema.numeric_columns()
        self._sums: dict[str, np.ndarray] = {
            name: np.zeros(5) for name in self._numeric
        }  # n, sum, sum², min, max
        for moments in self._sums.values():
            moments[3], moments[4] = np.inf, -np.inf
        hashed = {f.name for f in schema.features if f.type == "hashed"}
        self._counted = [
            name for name in schema.used_columns if name not in self._numeric and name not in hashed
        ]
        self.counts: dict[str, collections.Counter] = {name: collections.Counter() for name in self._counted}
        self.labelled: collections.Counter[str] = collections.Counter()
        self.positives: collections.Counter[str] = collections.Counter()
        self.negative_weights: collections.Counter[str] = collections.Counter()
        self.bad_counts: collections.Counter[str] = collections.Counter()
        self.events_without_earlier: collections.Counter[str] = collections.Counter()  # funnel tasks
        self.unknown_classes: dict[str, collections.Counter] = {
            task.name: collections.Counter() for task in schema.tasks if task.type == "multiclass"
        }

    def add(self, columns: Mapping[str, np.ndarray]) -> None:
        na_values = set(self.schema.csv.missing_values)
        self.rows += len(next(iter(columns.values())))
        for name in self.schema.used_columns:
            values = columns[name]
            if name in self._numeric:
                finite = np.isfinite(values)
                self.non_finite[name] += int((~finite & ~np.isnan(values)).sum())
                present = values[finite].astype(np.float64)
                self.missing[name] += len(values) - len(present)
                moments = self._sums[name]
                moments[:3] += (len(present), present.sum(), np.square(present).sum())
                if len(present):
                    moments[3], moments[4] = min(moments[3], present.min()), max(moments[4], present.max())
                if name in self.schema.weight_columns:
                    self.negative_weights[name] += int((present < 0).sum())
            else:
                if name in self.counts:
                    chunk = collections.Counter(values.tolist())
                    self.counts[name].update(chunk)
                    self.missing[name] += sum(chunk[value] for value in na_values)
                else:
                    self.missing[name] += int(_is_in(values, na_values).sum())
        positive_rows, labelled_rows = {}, {}  # of the binary tasks, for the funnel tasks after them
        for task in self.schema.tasks:
            labels = columns[task.column]
            if task.type in ("regression", "count"):
                labelled = np.isfinite(labels)
                if task.type == "count":
                    counts = labels[labelled]
                    self.bad_counts[task.name] += int(((counts < 0) | (counts != np.round(counts))).sum())
            else:
                labelled = ~_is_in(labels, na_values)
            if task.type == "binary":
                positive = labelled & _is_in(labels, set(task.positive_values))
                self.positives[task.name] += int(positive.sum())
                if task.after:  # an event where the earlier one did not happen; a missing label is a 0 there
                    earlier_negative = labelled_rows[task.after] & ~positive_rows[task.after]
                    self.events_without_earlier[task.name] += int((positive & earlier_negative).sum())
                    labelled |= earlier_negative
                positive_rows[task.name], labelled_rows[task.name] = positive, labelled
            if task.type == "multiclass":
                values = labels[labelled]
                unknown = values[~_is_in(values, set(task.classes))]
                self.unknown_classes[task.name].update(unknown.tolist())
            self.labelled[task.name] += int(labelled.sum())

    def mean_and_variance(self, name: str) -> tuple[float, float]:
        count, total, squares = self._sums[name][:3]
        if count == 0:
            return 0.0, 1.0
        mean = total / count
        return float(mean), float(max(squares / count - mean**2, 0.0))

    def vocabulary(self, name: str, min_count: int, max_tokens: int) -> tuple[str, ...]:
        """Values seen at least `min_count` times, most frequent first `max_tokens` at most."""
        ranked = sorted(self.counts[name].items(), key=lambda kv: (-kv[1], kv[0]))
        kept = [value for value, count in ranked if count >= min_count]
        return tuple(kept[:max_tokens] if max_tokens else kept)

    def check(self, files: tuple[str, ...], reject_non_finite: bool = False) -> None:
        """Stops on a mistake that would train silently wrong; warns about a constant categorical feature and
        about infinite numbers (missing values), or with `reject_non_finite` stops on them."""
        where = ", ".join(files)
        if self.rows == 0:
            raise DataError(f"The train split of {where} holds no rows.")
        for name, count in self.non_finite.items():
            if count and reject_non_finite:
                raise DataError(
                    f"Column {name!r} holds {count} infinite or out-of-range numbers in the train split of "
                    f"{where}; fix them, or leave out --reject_non_finite to read them as missing."
                )
            if count:
                logging.warning(
                    "Column %r holds %d infinite or out-of-range numbers in the train split: read as "
                    "missing.",
                    name,
                    count,
                )
        for i, task in enumerate(self.schema.tasks):
            if self.labelled[task.name] == 0:
                raise DataError(
                    f"schema.tasks[{i}] ({task.name!r}): column {task.column!r} has no labelled training row "
                    f"(every value is missing: {', '.join(map(repr, self.schema.csv.missing_values))})."
                )
            if self.bad_counts[task.name]:
                raise DataError(
                    f"schema.tasks[{i}] ({task.name!r}) is a count task, but {self.bad_counts[task.name]} "
                    f"training rows of column {task.column!r} are not whole numbers >= 0."
                )
            unknown = self.unknown_classes.get(task.name)
            if unknown:
                values = ", ".join(f"{v!r} ({n})" for v, n in unknown.most_common(5))
                raise DataError(
                    f"schema.tasks[{i}] ({task.name!r}): {sum(unknown.values())} training rows of column "
                    f"{task.column!r} hold values that are not among its classes: {values}; add them to "
                    "classes, or to csv.na_values if they mean a missing label."
                )
            if self.events_without_earlier[task.name]:
                earlier = next(t for t in self.schema.tasks if t.name == task.after)
                raise DataError(
                    f"schema.tasks[{i}].after: {self.events_without_earlier[task.name]} training rows have "
                    f"{task.name!r} positive where {task.after!r} is negative (columns {task.column!r}, "
                    f"{earlier.column!r}); a task after another can only happen where the earlier one did."
                )
            if task.type == "binary" and self.positives[task.name] == 0:
                frequent = ", ".join(f"{v!r} ({n})" for v, n in self.counts[task.column].most_common(5))
                raise DataError(
                    f"schema.tasks[{i}].positive_values {list(task.positive_values)} match no training row "
                    "of "
                    f"column {task.column!r}; its most frequent values: {frequent}."
                )
        for name in self.schema.weight_columns:
            if self.missing[name] or self.negative_weights[name]:
                raise DataError(
                    f"Weight column {name!r} has {self.missing[name]} missing and "
                    f"{self.negative_weights[name]} "
                    "negative values in the train split; weights must be numbers >= 0."
                )
        for i, feature in enumerate(self.schema.features):
            if feature.type == "categorical" and not self.vocabulary(
                feature.name, feature.min_count, feature.max_tokens
            ):
                raise DataError(
                    f"schema.features[{i}] ({feature.name!r}): no value is seen "
                    f"min_count={feature.min_count} "
                    "times in the train split, so its vocabulary would be empty; lower min_count."
                )
            if feature.type == "categorical" and len(self.counts[feature.name]) == 1:
                (value,) = self.counts[feature.name]
                logging.warning(
                    "Categorical feature %r holds one value (%r) in every training row: it cannot help.",
                    feature.name,
                    value,
                )

    def feature_configs(self) -> tuple[FeatureConfig, ...]:
        """The model's inputs, with this table's vocabularies and normalisation statistics."""
        configs = []
        for feature in self.schema.features:
            if feature.type == "numeric":
                mean, variance = self.mean_and_variance(feature.name)
                configs.append(
                    FeatureConfig(
                        feature.name,
                        "numeric",
                        mean=mean,
                        variance=variance,
                        missing_indicator=feature.missing_indicator,
                    )
                )
            elif feature.type == "categorical":
                configs.append(
                    FeatureConfig(
                        feature.name,
                        "categorical",
                        vocabulary=self.vocabulary(feature.name, feature.min_count, feature.max_tokens),
                        oov_buckets=feature.oov_buckets,
                        embedding_dim=feature.embedding_dim,
                    )
                )
            else:
                configs.append(
                    FeatureConfig(
                        feature.name,
                        "hashed",
                        hash_buckets=feature.hash_buckets,
                        embedding_dim=feature.embedding_dim,
                    )
                )
        return tuple(configs)

    def summary(self) -> Iterator[str]:
        """Each used column's missing count and summary, and each task's labelled count and positive rate."""
        for name in self.schema.used_columns:
            missing = f"{self.missing[name]} missing"
            if self.non_finite[name]:
                missing += f" ({self.non_finite[name]} infinite)"
            if name in self._numeric:
                count, _, _, low, high = self._sums[name]
                mean, variance = self.mean_and_variance(name)
                values = (
                    f"min {low:g}  max {high:g}  mean {mean:g}  std {variance**0.5:g}"
                    if count
                    else "no values"
                )
                yield f"  {name:<20} number  {missing:<12} {values}"
            elif name in self.counts:
                top = ", ".join(str(v) for v, _ in self.counts[name].most_common(4))
                distinct = len(self.counts[name])
                yield f"  {name:<20} string  {missing:<12} {distinct} distinct, most frequent: {top}"
            else:
                yield f"  {name:<20} string  {missing:<12} (hashed)"
        for task in self.schema.tasks:
            labelled = self.labelled[task.name]
            line = f"  task {task.name:<15} {labelled} labelled ({labelled / max(self.rows, 1):.1%})"
            if task.type == "binary":
                line += f", positive rate {self.positives[task.name] / max(labelled, 1):.4f}"
            yield line


def _is_in(values: np.ndarray, members: set[str]) -> np.ndarray:
    return np.fromiter((value in members for value in values), dtype=bool, count=len(values))
