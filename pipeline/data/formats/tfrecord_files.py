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
                columns[name] = array.astype(str).astype(object) if array.dtype.kind == "S" else array
            count = len(next(iter(columns.values())))
            yield FileChunk(columns, np.arange(position, position + count, dtype=np.int64))
            position += count

    def records(self, path: tf.Tensor, schema: Schema) -> tf.data.Dataset:
        return _dataset(path).enumerate()

    def decode(self, records: tf.Tensor, schema: Schema) -> dict[str, tf.Tensor]:
        numeric = schema.numeric_columns()
        spec = {
            name: tf.io.FixedLenFeature([], tf.float32 if name in numeric else tf.string)
            for name in schema.used_columns
        }
        return tf.io.parse_example(records, spec)
