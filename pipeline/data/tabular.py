"""A table of raw columns in files (CSV, TFRecord, Parquet) described by a schema: splits, labels, batches.

A table whose files fit the memory budget is read once (a C++ reader per format), preprocessed once into
integer and float tensors, and batched by permutation and gather. A larger one streams: files interleaved in
parallel, records shuffled, then batched, decoded and preprocessed a whole batch at a time. Both give each
batch as `(inputs, labels, weights)`: the model's preprocessed inputs, each task's label, and each task's
example weights (the sample weight, 0 where the label is missing).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import tensorflow as tf
from absl import logging

from pipeline.config import FeatureConfig, TabularDataConfig, split_proportions
from pipeline.data import formats, in_memory
from pipeline.data.formats import DataError, FileChunk, csv_files
from pipeline.data.schema import Schema, schema_from_dict
from pipeline.data.statistics import Statistics
from pipeline.errors import ConfigError
from pipeline.progress import PassProgress

__all__ = ["DataError", "TabularData", "expand_patterns", "resolve_columns"]


def matches(pattern: str) -> bool:
    return bool(tf.io.gfile.glob(pattern))


def expand_patterns(field: str, patterns: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """The absolute paths of the files matching glob patterns, sorted; an error names a pattern matching
    none."""
    files: list[str] = []
    for pattern in patterns:
        matched = sorted(tf.io.gfile.glob(pattern))
        if not matched:
            raise DataError(f"`{field}` pattern {pattern!r} matches no file.")
        files.extend(os.path.abspath(path) if "://" not in path else path for path in matched)
    return tuple(files)


def resolve_columns(schema: Schema, files: tuple[str, ...], file_format: str) -> Schema:
    """The schema with its column order: as given, or from the first CSV file's header; then validated."""
    if not schema.columns and file_format == "csv":
        if not schema.csv.header:
            raise ConfigError("schema.columns is required when schema.csv.header is false.")
        schema = schema.with_columns(csv_files.read_header(files[0], schema))
    elif not schema.columns:
        schema = schema.with_columns(schema.used_columns + tuple(schema.drop))
    return schema.validate()


class TabularData:
    """A table's splits, statistics and `tf.data` pipelines.

    Args:
        config: files, format, resolved schema, split and bad-row policy.
    """

    def __init__(self, config: TabularDataConfig) -> None:
        self.config = config
        self.schema = schema_from_dict(config.schema).validate()
        self.format = formats.get(config.format)
        self._proportions = split_proportions(config.split)
        self._chunks: dict[tuple[str, ...], list[tuple[str, FileChunk]]] = {}
        self._columns: dict[str, dict[str, np.ndarray]] = {}
        self._bad_rows: dict[tuple[str, ...], dict[str, list[int]]] = {}
        self._encoded: dict[tuple[str, tuple[FeatureConfig, ...]], tuple] = {}
        self._rows: dict[str, int] = {}

    def files(self, split: str) -> tuple[str, ...]:
        files = self.config.files(split)
        if not files:
            raise ConfigError(
                f"There is no {split} split: give its files (`{split}_files`) or a split of train_files."
            )
        return files

    # -- which rows belong to a split -----------------------------------------------------------------

    def _keep(self, split: str, positions: np.ndarray | tf.Tensor) -> np.ndarray | tf.Tensor:
        """Whether the rows at these 0-based positions of their file belong to `split`."""
        if not self.config.carved(split):
            return positions >= 0
        if self._proportions is not None:
            train, eval_, test = self._proportions
            low, high = {"train": (0, train), "eval": (train, train + eval_), "test": (train + eval_, None)}[
                split
            ]
            slot = positions % (train + eval_ + test)
            return (slot >= low) & (slot < high) if high is not None else slot >= low
        return positions % 2 == (0 if split == "eval" else 1)  # "halves": odd rows eval, even rows test

    # -- reading into memory ----------------------------------------------------------------------------

    def _file_chunks(self, files: tuple[str, ...]) -> Iterator[tuple[str, FileChunk]]:
        """Every chunk of `files` with bad rows raised, or counted and left out (`skip_bad_rows`)."""
        if files in self._chunks:
            yield from self._chunks[files]
            return
        bad: dict[str, list[int]] = {}
        rows = 0
        progress = PassProgress(f"Reading {', '.join(files)}", "rows")
        for path in files:
            for chunk in self.format.read(path, self.schema):
                if chunk.bad_rows:
                    line, problem = chunk.bad_rows[0]
                    if not self.config.skip_bad_rows:
                        raise DataError(
                            f"{path}:{line}: {problem}. "
                            "Fix the row, or pass --skip_bad_rows to skip such rows."
                        )
                    bad.setdefault(path, []).extend(line for line, _ in chunk.bad_rows)
                rows += len(chunk.positions)
                progress.update(rows)
                yield path, chunk
        self._bad_rows[files] = bad
        total = sum(map(len, bad.values()))
        if total:
            logging.warning("Skipped %d bad rows: %s", total, {p: lines[:5] for p, lines in bad.items()})

    def _split_chunks(self, split: str) -> Iterator[dict[str, np.ndarray]]:
        for _, chunk in self._file_chunks(self.files(split)):
            keep = self._keep(split, chunk.positions)
            yield {name: values[keep] for name, values in chunk.columns.items()}

    def read(self, split: str) -> dict[str, np.ndarray]:
        """The split's rows as typed numpy columns, read once and kept."""
        if split not in self._columns:
            started = time.perf_counter()
            files = self.files(split)
            chunks = list(self._file_chunks(files))
            self._chunks[files] = chunks  # the other splits of the same files are read from memory
            parts = list(self._split_chunks(split))
            if not parts:
                raise DataError(f"The {split} split of {', '.join(files)} holds no rows.")
            self._columns[split] = {
                name: np.concatenate([part[name] for part in parts]) for name in self.schema.used_columns
            }
            rows = len(self._columns[split][self.schema.used_columns[0]])
            logging.info("Read %d %s rows in %.1fs", rows, split, time.perf_counter() - started)
        return self._columns[split]

    def bad_rows(self, split: str) -> dict[str, list[int]]:
        """The split's files' bad rows (file -> lines) left out under `skip_bad_rows`; read if needed."""
        files = self.files(split)
        if files not in self._bad_rows:
            for _ in self._file_chunks(files):
                pass
        return self._bad_rows[files]

    def fits_in_memory(self, split: str, max_mb: int) -> bool:
        """Whether `split`'s files, at their format's decoded size, fit `max_mb` mebibytes."""
        size = sum(tf.io.gfile.stat(path).length for path in self.files(split)) * self.format.expansion
        return size <= max_mb * 2**20

    def first_rows(self, split: str, count: int) -> dict[str, np.ndarray]:
        """The first `count` rows of `split`, reading no further than needed."""
        parts, rows = [], 0
        for part in self._split_chunks(split):
            parts.append(part)
            rows += len(part[self.schema.used_columns[0]])
            if rows >= count:
                break
        return {name: np.concatenate([p[name] for p in parts])[:count] for name in self.schema.used_columns}

    # -- statistics -------------------------------------------------------------------------------------

    def statistics(self, split: str = "train", in_memory: bool = True) -> Statistics:
        """One pass over `split`: from memory when it is held there, else chunk by chunk."""
        stats = Statistics(self.schema)
        progress = PassProgress(f"Statistics of the {split} split", "rows")
        for part in [self.read(split)] if in_memory else self._split_chunks(split):
            stats.add(part)
            progress.update(stats.rows)
        self._rows[split] = stats.rows
        return stats

    def rows(self, split: str) -> int:
        """How many rows `split` holds (a pass over its files unless read or counted before)."""
        if split in self._columns:
            return len(self._columns[split][self.schema.used_columns[0]])
        if split not in self._rows:
            self._rows[split] = sum(
                len(part[self.schema.used_columns[0]]) for part in self._split_chunks(split)
            )
        return self._rows[split]

    def feature_configs(self, in_memory: bool = True) -> tuple[FeatureConfig, ...]:
        """Model inputs with vocabularies and statistics of the train split, after the checks that stop a
        silent mistake."""
        stats = self.statistics("train", in_memory)
        stats.check(self.files("train"), self.config.reject_non_finite)
        logging.info("Computed vocabularies and statistics from %d training rows", stats.rows)
        return stats.feature_configs()

    # -- labels and weights -----------------------------------------------------------------------------

    def features_labels_weights(self, columns: dict[str, tf.Tensor]) -> tuple[dict, dict, dict]:
        """Raw feature columns; each task's label (0 where missing) and weight (0 where it is missing).

        A funnel task's event cannot happen where the earlier one did not: there its missing label is a 0
        (a conversion column filled only for clicked rows), so that it learns from every row, as ESMM must.
        """
        features = {feature.name: columns[feature.name] for feature in self.schema.features}
        na_values = tf.constant(list(self.schema.csv.missing_values))
        labels, weights, present = {}, {}, {}
        for task in self.schema.tasks:
            value = columns[task.column]
            if task.type == "binary":
                missing = tf.reduce_any(tf.equal(value[:, None], na_values[None, :]), axis=1)
                positive = tf.constant(list(task.positive_values))
                label = tf.cast(
                    tf.reduce_any(tf.equal(value[:, None], positive[None, :]), axis=1), tf.float32
                )
            elif task.type == "multiclass":
                # The class's position; a value that is no class is missing (training refuses such rows).
                matches = tf.equal(value[:, None], tf.constant(list(task.classes))[None, :])
                missing = ~tf.reduce_any(matches, axis=1)
                label = tf.cast(tf.argmax(tf.cast(matches, tf.int32), axis=1), tf.float32)
            else:
                missing = ~tf.math.is_finite(value)
                label = tf.where(missing, 0.0, value)
            if task.after:
                missing &= ~(present[task.after] & tf.equal(labels[task.after], 0.0))
            weight_column = self.schema.task_weight_column(task)
            weight = columns[weight_column] if weight_column else tf.ones_like(label)
            labels[task.name] = label
            weights[task.name] = tf.where(missing, 0.0, weight)
            present[task.name] = ~missing
        return features, labels, weights

    # -- batches ----------------------------------------------------------------------------------------

    def in_memory_dataset(
        self,
        split: str,
        preprocess: Callable[[dict], dict],
        batch_size: int,
        seed: int,
        input_context: tf.distribute.InputContext | None,
        start_step: int,
    ) -> tf.data.Dataset:
        """Batches gathered from the split, read and preprocessed once (kept for later calls)."""
        key = (split, getattr(preprocess, "features", ()))
        if key not in self._encoded:
            columns = {name: tf.constant(values) for name, values in self.read(split).items()}
            features, labels, weights = self.features_labels_weights(columns)
            self._encoded[key] = (preprocess(features), labels, weights)
        return in_memory.batches(
            self._encoded[key], batch_size, seed, split == "train", input_context, start_step
        )

    def streaming_dataset(
        self,
        split: str,
        preprocess: Callable[[dict], dict],
        batch_size: int,
        seed: int,
        shuffle_buffer: int,
        input_context: tf.distribute.InputContext | None,
        start_step: int,
    ) -> tf.data.Dataset:
        """Batches streamed from the files; a resumed run skips trained rows before decoding them."""
        files = self.files(split)
        bad = self.bad_rows(split) if self.config.format == "csv" else {}
        keys = [f"{path}:{line}" for path, lines in bad.items() for line in lines]
        first_line = 2 if self.schema.csv.header else 1
        bad_table = None
        if keys:
            bad_table = tf.lookup.StaticHashTable(
                tf.lookup.KeyValueTensorInitializer(keys, tf.ones(len(keys), tf.int64)), default_value=0
            )

        def records_of(path: tf.Tensor) -> tf.data.Dataset:
            records = self.format.records(path, self.schema).filter(lambda n, _: self._keep(split, n))
            if bad_table is not None:
                records = records.filter(
                    lambda n, _: tf.equal(
                        bad_table.lookup(path + ":" + tf.strings.as_string(n + first_line)), 0
                    )
                )
            return records.map(lambda _, record: record)

        pipelines = input_context.num_input_pipelines if input_context is not None else 1
        paths = tf.data.Dataset.from_tensor_slices(list(files))
        shard_files = len(files) >= pipelines > 1
        if shard_files:
            paths = paths.shard(pipelines, input_context.input_pipeline_id)
        records = paths.interleave(
            records_of,
            cycle_length=min(len(files), 4),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
        if pipelines > 1 and not shard_files:
            records = records.shard(pipelines, input_context.input_pipeline_id)
        train = split == "train"
        if train:
            records = records.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True).repeat()
            replicas_per_pipeline = input_context.num_replicas_in_sync // pipelines if input_context else 1
            records = records.skip(start_step * replicas_per_pipeline * batch_size)
        records = records.batch(batch_size, drop_remainder=train)

        def decode(batch: tf.Tensor) -> tuple[dict, dict, dict]:
            features, labels, weights = self.features_labels_weights(self.format.decode(batch, self.schema))
            return preprocess(features), labels, weights

        return records.map(decode, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)

    # -- conversion -------------------------------------------------------------------------------------

    def write_tfrecords(self, split: str, output_dir: str | Path, shards: int) -> list[Path]:
        """Writes `split`'s rows (used columns, typed) as `tf.train.Example` shards, dealt round robin."""
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        paths = [output_dir / f"{split}-{i:05d}-of-{shards:05d}.tfrecord.gz" for i in range(shards)]
        options = tf.io.TFRecordOptions(compression_type="GZIP")
        writers = [tf.io.TFRecordWriter(str(p), options) for p in paths]
        row = 0
        progress = PassProgress(f"Writing the {split} split to {output_dir}", "rows")
        try:
            for columns in self._split_chunks(split):
                for index in range(len(columns[self.schema.used_columns[0]])):
                    writers[row % shards].write(_example(columns, index).SerializeToString())
                    row += 1
                progress.update(row)
        finally:
            for writer in writers:
                writer.close()
        logging.info("Wrote %d rows to %d shards in %s", row, shards, output_dir)
        return paths


def _example(columns: dict[str, np.ndarray], index: int) -> tf.train.Example:
    feature = {}
    for name, values in columns.items():
        value = values[index]
        if isinstance(value, str):
            feature[name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[value.encode("utf-8")]))
        else:
            feature[name] = tf.train.Feature(float_list=tf.train.FloatList(value=[float(value)]))
    return tf.train.Example(features=tf.train.Features(feature=feature))


def summarize(data: TabularData, split: str) -> Iterator[str]:
    """Lines describing `split`: rows, bad rows left out, each used column and each task."""
    stats = data.statistics(split, in_memory=False)
    skipped = sum(map(len, data.bad_rows(split).values()))
    yield f"{split}: {stats.rows} rows from {len(data.files(split))} file(s), {skipped} bad rows skipped"
    yield from stats.summary()
