"""Tables of raw columns from CSV (plain or gzip) or TFRecord `tf.train.Example` files, through `tf.data`.

CSV files are first checked row by row in Python, so a bad row (wrong number of fields, a number that does not
parse) stops training with its file and line, or with `skip_bad_rows` is counted and left out. The `tf.data`
pipeline then reads files in parallel, decodes whole batches at once and yields `(features, labels)`: raw
feature columns (preprocessing is inside the model) and the tasks' derived labels. Both formats go through
the same column-to-example step, so the same rows give the same batches.
"""

from __future__ import annotations

import collections
import csv
import gzip
import io
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tensorflow as tf
from absl import logging

from pipeline.config import FeatureConfig, TabularDataConfig
from pipeline.data.schema import Schema, schema_from_dict
from pipeline.errors import ConfigError, UserError

_STATS_BATCH = 4096


class DataError(UserError):
    """A data file that does not match its schema: a bad row, a missing column, no file at all."""


def expand_patterns(flag: str, patterns: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """The files matching comma-separated glob patterns, sorted; an error names a pattern matching none."""
    files: list[str] = []
    for pattern in patterns:
        matched = sorted(tf.io.gfile.glob(pattern))
        if not matched:
            raise DataError(f"--{flag}={pattern} matches no file.")
        files.extend(matched)
    return tuple(files)


def _open_text(path: str) -> io.TextIOBase:
    if path.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")  # noqa: SIM115  (closed by the caller's with)


def read_header(path: str, schema: Schema) -> tuple[str, ...]:
    with _open_text(path) as f:
        row = next(csv.reader(f, delimiter=schema.csv.delimiter), [])
    return tuple(field.strip() if schema.csv.strip else field for field in row)


def resolve_columns(schema: Schema, files: tuple[str, ...], file_format: str) -> Schema:
    """The schema with its column order: as given, or from the first CSV file's header; then validated."""
    if not schema.columns and file_format == "csv":
        if not schema.csv.header:
            raise ConfigError("schema.columns is required when schema.csv.header is false.")
        schema = schema.with_columns(read_header(files[0], schema))
    return schema.validate()


def check_csv_files(schema: Schema, files: tuple[str, ...], skip_bad_rows: bool) -> dict[str, list[int]]:
    """The bad line numbers of every file (1-based); without `skip_bad_rows` the first one is an error."""
    numeric = [schema.columns.index(c) for c in schema.numeric_columns()]
    bad: dict[str, list[int]] = {}
    for path in files:
        with _open_text(path) as f:
            reader = csv.reader(f, delimiter=schema.csv.delimiter)
            if schema.csv.header:
                header = tuple(h.strip() if schema.csv.strip else h for h in next(reader, []))
                if header != schema.columns:
                    raise DataError(f"{path}:1: header {list(header)} differs from the schema's columns.")
            for row in reader:
                problem = _row_problem(row, schema, numeric)
                if problem is None:
                    continue
                line = reader.line_num
                if not skip_bad_rows:
                    raise DataError(
                        f"{path}:{line}: {problem}. Fix the row, or pass --skip_bad_rows to skip such rows."
                    )
                bad.setdefault(path, []).append(line)
    total = sum(len(lines) for lines in bad.values())
    if total:
        logging.warning("Skipping %d bad rows: %s", total, {p: lines[:5] for p, lines in bad.items()})
    return bad


def _row_problem(row: list[str], schema: Schema, numeric: list[int]) -> str | None:
    if len(row) != len(schema.columns):
        return f"expected {len(schema.columns)} fields, found {len(row)}"
    for index in numeric:
        value = row[index].strip() if schema.csv.strip else row[index]
        if value in schema.csv.na_values:
            continue
        try:
            float(value)
        except ValueError:
            return f"column {schema.columns[index]!r} holds {value!r}, not a number"
    return None


def _line_filter(line_split: str, split: str):
    """Keeps the lines of `split` given 1-based line numbers, or None to keep every line."""
    if line_split == "80/10/10":
        wanted = {"train": (0, 8), "eval": (8, 9), "test": (9, 10)}[split]
        return lambda n: tf.logical_and((n - 1) % 10 >= wanted[0], (n - 1) % 10 < wanted[1])
    if line_split == "halves" and split != "train":
        return lambda n: tf.equal(n % 2, 1 if split == "eval" else 0)
    return None


class TabularData:
    """A table's `tf.data` pipelines and training statistics.

    Args:
        config: files, format, resolved schema, line split and bad-row policy.
    """

    def __init__(self, config: TabularDataConfig) -> None:
        self.config = config
        self.schema = schema_from_dict(config.schema).validate()
        self._bad_rows: dict[str, dict[str, list[int]]] = {}

    def files(self, split: str) -> tuple[str, ...]:
        return self.config.train_files if split == "train" else self.config.eval_files

    def bad_rows(self, split: str) -> dict[str, list[int]]:
        files = self.files(split)
        if self.config.format != "csv":
            return {}
        if files not in self._bad_rows:
            self._bad_rows[files] = check_csv_files(self.schema, files, self.config.skip_bad_rows)
        return self._bad_rows[files]

    # -- raw columns ------------------------------------------------------------------------------

    def _csv_lines(self, split: str, input_context: tf.distribute.InputContext | None) -> tf.data.Dataset:
        files = self.files(split)
        bad = self.bad_rows(split)
        keys = [f"{path}:{line}" for path, lines in bad.items() for line in lines]
        bad_table = None
        if keys:
            bad_table = tf.lookup.StaticHashTable(
                tf.lookup.KeyValueTensorInitializer(keys, tf.ones(len(keys), tf.int64)), default_value=0
            )
        keep_line = _line_filter(self.config.line_split, split)
        skip = 1 if self.schema.csv.header else 0

        def lines_of(path: tf.Tensor) -> tf.data.Dataset:
            compression = tf.where(tf.strings.regex_full_match(path, r".*\.gz"), "GZIP", "")
            lines = tf.data.TextLineDataset(path, compression_type=compression).enumerate(start=1).skip(skip)
            if bad_table is not None:
                lines = lines.filter(
                    lambda n, line: tf.equal(bad_table.lookup(path + ":" + tf.strings.as_string(n)), 0)
                )
            if keep_line is not None:
                lines = lines.filter(lambda n, line: keep_line(n))
            return lines.map(lambda n, line: line)

        paths = tf.data.Dataset.from_tensor_slices(list(files))
        shard_files = input_context is not None and len(files) >= input_context.num_input_pipelines > 1
        if shard_files:
            paths = paths.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
        lines = paths.interleave(
            lines_of, cycle_length=min(len(files), 4), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
        )
        if input_context is not None and input_context.num_input_pipelines > 1 and not shard_files:
            lines = lines.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
        return lines

    def _decode_csv(self, lines: tf.Tensor) -> dict[str, tf.Tensor]:
        columns = self.schema.columns
        fields = tf.io.decode_csv(
            lines, record_defaults=[[""]] * len(columns), field_delim=self.schema.csv.delimiter
        )
        return self._typed_columns(dict(zip(columns, fields, strict=True)))

    def _typed_columns(self, raw: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        """The used columns: strings stripped, numbers parsed (missing values become 0)."""
        numeric = self.schema.numeric_columns()
        typed = {}
        for name in self.schema.used_columns:
            value = raw[name]
            if value.dtype == tf.string:
                if self.schema.csv.strip:
                    value = tf.strings.strip(value)
                if name in numeric:
                    missing = tf.reduce_any(
                        tf.equal(
                            value[:, None], tf.constant(list(self.schema.csv.na_values) or [""])[None, :]
                        ),
                        axis=1,
                    )
                    value = tf.strings.to_number(tf.where(missing, "0", value), tf.float32)
            typed[name] = value
        return typed

    def _tfrecord_columns(self, serialized: tf.Tensor) -> dict[str, tf.Tensor]:
        numeric = self.schema.numeric_columns()
        spec = {
            name: tf.io.FixedLenFeature([], tf.float32 if name in numeric else tf.string)
            for name in self.schema.used_columns
        }
        return tf.io.parse_example(serialized, spec)

    def _records(self, split: str, input_context: tf.distribute.InputContext | None) -> tf.data.Dataset:
        if self.config.format == "csv":
            return self._csv_lines(split, input_context)
        files = tf.data.Dataset.from_tensor_slices(list(self.files(split)))
        if input_context is not None and input_context.num_input_pipelines > 1:
            files = files.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
        return files.interleave(
            lambda path: tf.data.TFRecordDataset(
                path, compression_type=tf.where(tf.strings.regex_full_match(path, r".*\.gz"), "GZIP", "")
            ),
            cycle_length=4,
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )

    def columns(self, split: str, batch_size: int) -> tf.data.Dataset:
        """One pass over `split` as batches of typed raw columns (no shuffling)."""
        records = self._records(split, None).batch(batch_size)
        decode = self._decode_csv if self.config.format == "csv" else self._tfrecord_columns
        return records.map(decode, num_parallel_calls=tf.data.AUTOTUNE)

    # -- examples ---------------------------------------------------------------------------------

    def features_and_labels(self, columns: dict[str, tf.Tensor]) -> tuple[dict, dict]:
        """Raw feature columns, and each task's label derived from its column."""
        features = {feature.name: columns[feature.name] for feature in self.schema.features}
        labels = {}
        for task in self.schema.tasks:
            value = columns[task.column]
            if task.type == "binary":
                positive = tf.constant(list(task.positive_values))
                value = tf.cast(
                    tf.reduce_any(tf.equal(value[:, None], positive[None, :]), axis=1), tf.float32
                )
            labels[task.name] = value
        return features, labels

    def make_dataset(
        self,
        split: str,
        batch_size: int,
        shuffle_seed: int,
        shuffle_buffer: int,
        input_context: tf.distribute.InputContext | None = None,
    ) -> tf.data.Dataset:
        """Batches of `(features, labels)`; the train split is shuffled and repeated forever."""
        records = self._records(split, input_context)
        if split == "train":
            records = records.shuffle(
                shuffle_buffer, seed=shuffle_seed, reshuffle_each_iteration=True
            ).repeat()
        records = records.batch(batch_size, drop_remainder=split == "train")
        decode = self._decode_csv if self.config.format == "csv" else self._tfrecord_columns
        return records.map(
            lambda batch: self.features_and_labels(decode(batch)), num_parallel_calls=tf.data.AUTOTUNE
        ).prefetch(tf.data.AUTOTUNE)

    # -- statistics -------------------------------------------------------------------------------

    def feature_configs(self) -> tuple[FeatureConfig, ...]:
        """Model inputs with vocabularies and normalisation statistics computed from the train split only."""
        sums = collections.defaultdict(float)
        squares = collections.defaultdict(float)
        counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        rows = 0
        for batch in self.columns("train", _STATS_BATCH):
            rows += int(next(iter(batch.values())).shape[0])
            for feature in self.schema.features:
                values = batch[feature.name].numpy()
                if feature.type == "numeric":
                    values = values.astype(np.float64)
                    sums[feature.name] += float(values.sum())
                    squares[feature.name] += float((values**2).sum())
                elif feature.type == "categorical":
                    counts[feature.name].update(values.tolist())
        if rows == 0:
            raise DataError(f"The train split of {', '.join(self.config.train_files)} holds no rows.")
        logging.info("Computed vocabularies and statistics from %d training rows", rows)
        configs = []
        for feature in self.schema.features:
            if feature.type == "numeric":
                mean = sums[feature.name] / rows
                variance = max(squares[feature.name] / rows - mean**2, 0.0)
                configs.append(FeatureConfig(feature.name, "numeric", mean=mean, variance=variance))
            elif feature.type == "categorical":
                ranked = sorted(counts[feature.name].items(), key=lambda kv: (-kv[1], kv[0]))
                configs.append(
                    FeatureConfig(
                        feature.name,
                        "categorical",
                        vocabulary=tuple(value.decode("utf-8") for value, _ in ranked),
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

    # -- conversion -------------------------------------------------------------------------------

    def write_tfrecords(self, split: str, output_dir: str | Path, shards: int) -> list[Path]:
        """Writes `split`'s rows (used columns, typed) as `tf.train.Example` shards, dealt round robin."""
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        paths = [output_dir / f"{split}-{i:05d}-of-{shards:05d}.tfrecord.gz" for i in range(shards)]
        options = tf.io.TFRecordOptions(compression_type="GZIP")
        writers = [tf.io.TFRecordWriter(str(p), options) for p in paths]
        row = 0
        try:
            for batch in self.columns(split, _STATS_BATCH):
                arrays = {name: value.numpy() for name, value in batch.items()}
                for index in range(len(next(iter(arrays.values())))):
                    writers[row % shards].write(_example(arrays, index).SerializeToString())
                    row += 1
        finally:
            for writer in writers:
                writer.close()
        logging.info("Wrote %d rows to %d shards in %s", row, shards, output_dir)
        return paths


def _example(arrays: dict[str, np.ndarray], index: int) -> tf.train.Example:
    feature = {}
    for name, values in arrays.items():
        value = values[index]
        if isinstance(value, bytes):
            feature[name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))
        else:
            feature[name] = tf.train.Feature(float_list=tf.train.FloatList(value=[float(value)]))
    return tf.train.Example(features=tf.train.Features(feature=feature))


def summarize(data: TabularData, split: str) -> Iterator[str]:
    """Lines describing `split`: rows, bad rows skipped, and each used column."""
    bad = data.bad_rows(split)
    rows = 0
    numeric: dict[str, list[float]] = collections.defaultdict(lambda: [math.inf, -math.inf, 0.0])
    distinct: dict[str, set] = collections.defaultdict(set)
    for batch in data.columns(split, _STATS_BATCH):
        rows += int(next(iter(batch.values())).shape[0])
        for name, value in batch.items():
            values = value.numpy()
            if value.dtype == tf.string:
                distinct[name].update(values.tolist())
            else:
                low, high, total = numeric[name]
                numeric[name] = [min(low, values.min()), max(high, values.max()), total + float(values.sum())]
    skipped = sum(map(len, bad.values()))
    yield f"{split}: {rows} rows from {len(data.files(split))} file(s), {skipped} bad rows skipped"
    for name in data.schema.used_columns:
        if name in numeric:
            low, high, total = numeric[name]
            yield f"  {name:<20} number  min {low:g}  max {high:g}  mean {total / max(rows, 1):g}"
        else:
            examples = ", ".join(sorted(v.decode("utf-8") for v in distinct[name])[:4])
            yield f"  {name:<20} string  {len(distinct[name])} distinct: {examples}, ..."
