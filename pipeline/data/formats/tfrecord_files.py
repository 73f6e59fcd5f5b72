"""TFRecord files of `tf.train.Example` (plain or gzip), as `mtl data --output` writes them.

Numbers are float features (NaN for a missing value), every other column a bytes feature.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import tensorflow as tf

from pipeline.data.formats import FileChunk, TableFormat, register
from pipeline.data.schema import Schema

_READ_BATCH = 8192


def _dataset(path: str | tf.Tensor) -> tf.data.TFRecordDataset:
    compression = tf.where(tf.strings.regex_full_match(path, r".*\.gz"), "GZIP", "")
    return tf.data.TFRecordDataset(path, compression_type=compression)


@register
class TfRecordFormat(TableFormat):
    name = "tfrecord"
    expansion = 3.0

    def read(self, path: str, schema: Schema) -> Iterator[FileChunk]:
        position = 0
        batches = _dataset(path).batch(_READ_BATCH).map(lambda records: self.decode(records, schema))
        for batch in batches.prefetch(2):
            columns = {}
            for name, value in batch.items():
                array = value.numpy()
                if array.dtype.kind == "S":
                    array = np.array([value.decode("utf-8") for value in array], dtype=object)
                columns[name] = array
            count = len(next(iter(columns.values())))
            yield FileChunk(columns, np.arange(position, position + count, dtype=np.int64))
            position += count

    def records(self, path: tf.Tensor, schema: Schema) -> tf.data.Dataset:
        return _dataset(path).enumerate()

    def decode(self, records: tf.Tensor, schema: Schema) -> dict[str, tf.Tensor]:
        numeric = schema.numeric_columns()
        # An absent feature is a missing value.
        spec = {
            name: tf.io.FixedLenFeature([], tf.float32, default_value=np.nan)
            if name in numeric
            else tf.io.FixedLenFeature([], tf.string, default_value=schema.csv.missing_values[0])
            for name in schema.used_columns
        }
        return tf.io.parse_example(records, spec)
