"""File formats of tables, behind one small interface and a registry: adding a format is one new file.

A format reads a file two ways. `read` gives typed numpy columns for the table held in memory and for the
statistics pass (C++ readers: pyarrow for CSV and Parquet, TensorFlow for TFRecord). `records` and `decode`
give a `tf.data` pipeline that streams a table too large for memory: records are shuffled one by one, then
decoded a whole batch at a time.

Typed columns: numeric columns are float32 with NaN for a missing value; the others are strings (numpy
object arrays of `str` in memory, `tf.string` when streaming), stripped when the schema says so.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf

from pipeline.data.schema import Schema
from pipeline.errors import UnknownNameError, UserError


class DataError(UserError):
    """A data file that does not match its schema: a bad row, a missing column, no file at all."""


@dataclass
class FileChunk:
    """Part of one file read into memory: typed columns, each row's 0-based position among the file's rows,
    and the rows left out as bad, as `(line, problem)`."""

    columns: dict[str, np.ndarray]
    positions: np.ndarray
    bad_rows: list[tuple[int, str]] = field(default_factory=list)


class TableFormat:
    """How one file format is read; subclasses register themselves under `name`."""

    name = ""
    # How many times its size on disk a file of this format takes once decoded (for the in-memory rule).
    expansion = 1.0

    def read(self, path: str, schema: Schema) -> Iterator[FileChunk]:
        """The file's rows, in chunks, with bad rows reported rather than raised."""
        raise NotImplementedError

    def records(self, path: tf.Tensor, schema: Schema) -> tf.data.Dataset:
        """The file's rows as `(position, record)`, undecoded, for streaming."""
        raise NotImplementedError

    def decode(self, records: tf.Tensor, schema: Schema) -> dict[str, tf.Tensor]:
        """A batch of records as typed columns (the schema's used columns)."""
        raise NotImplementedError


_FORMATS: dict[str, TableFormat] = {}


def register(format_class: type[TableFormat]) -> type[TableFormat]:
    _FORMATS[format_class.name] = format_class()
    return format_class


def names() -> tuple[str, ...]:
    return tuple(_FORMATS)


def get(name: str) -> TableFormat:
    try:
        return _FORMATS[name]
    except KeyError:
        raise UnknownNameError(
            f"Unknown file format {name!r}. Valid formats: {', '.join(_FORMATS)}."
        ) from None


def strings_to_numbers(values: tf.Tensor, schema: Schema) -> tf.Tensor:
    """Parsed numbers of a string column; `na_values` become NaN."""
    missing = tf.reduce_any(
        tf.equal(values[:, None], tf.constant(list(schema.csv.missing_values))[None, :]), axis=1
    )
    return tf.where(missing, np.float32(np.nan), tf.strings.to_number(tf.where(missing, "0", values)))


from pipeline.data.formats import csv_files, parquet_files, tfrecord_files  # noqa: E402,F401  (registration)
