"""Parquet files, through pyarrow: read whole into memory, or streamed one row group at a time.

Numeric columns may be stored as integers or floats, the others as strings; a null is a missing value.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import tensorflow as tf

from pipeline.data.formats import DataError, FileChunk, TableFormat, register
from pipeline.data.schema import Schema


def _typed(batch: pa.RecordBatch, schema: Schema) -> dict[str, np.ndarray]:
    numeric = schema.numeric_columns()
    missing_string = schema.csv.missing_values[0]
    columns = {}
    for name in schema.used_columns:
        values = batch.column(name)
        if name in numeric:
            try:
                values = pc.cast(values, pa.float64())
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                raise DataError(f"Parquet column {name!r} is {values.type}, not a number.") from None
            columns[name] = values.to_numpy(zero_copy_only=False).astype(np.float32)  # null -> NaN
        else:
            values = pc.fill_null(pc.cast(values, pa.string()), missing_string)
            if schema.csv.strip:
                values = pc.utf8_trim_whitespace(values)
            columns[name] = np.asarray(values.to_pylist(), dtype=object)
    return columns


@register
class ParquetFormat(TableFormat):
    name = "parquet"
    expansion = 4.0

    def _row_groups(self, path: str, schema: Schema) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
        try:
            file = pq.ParquetFile(path)
        except (OSError, pa.ArrowInvalid) as error:
            raise DataError(f"{path}: not a Parquet file: {error}") from None
        absent = [name for name in schema.used_columns if name not in file.schema_arrow.names]
        if absent:
            raise DataError(f"{path} has no column(s) {', '.join(map(repr, absent))}.")
        position = 0
        for index in range(file.num_row_groups):
            batch = file.read_row_group(index, columns=list(schema.used_columns))
            count = batch.num_rows
            yield np.arange(position, position + count, dtype=np.int64), _typed(batch, schema)
            position += count

    def read(self, path: str, schema: Schema) -> Iterator[FileChunk]:
        for positions, columns in self._row_groups(path, schema):
            yield FileChunk(columns, positions)

    def records(self, path: tf.Tensor, schema: Schema) -> tf.data.Dataset:
        numeric = schema.numeric_columns()
        signature = (
            tf.TensorSpec([None], tf.int64),
            {
                name: tf.TensorSpec([None], tf.float32 if name in numeric else tf.string)
                for name in schema.used_columns
            },
        )
        row_groups = tf.data.Dataset.from_generator(
            lambda file: self._row_groups(file.decode("utf-8"), schema),
            output_signature=signature,
            args=(path,),
        )
        return row_groups.unbatch()

    def decode(self, records: dict[str, tf.Tensor], schema: Schema) -> dict[str, tf.Tensor]:
        return records
