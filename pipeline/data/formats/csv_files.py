"""CSV files, plain or gzip: pyarrow reads them into memory, `tf.data` streams them line by line."""

from __future__ import annotations

import gzip
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import tensorflow as tf

from pipeline.data.formats import DataError, FileChunk, TableFormat, register, strings_to_numbers
from pipeline.data.schema import Schema


def _read_csv(path: str, schema: Schema, threads: bool) -> tuple[pa.Table, list[pa_csv.InvalidRow]]:
    """The used columns as strings, and the rows with a wrong number of fields, left out."""
    invalid: list[pa_csv.InvalidRow] = []

    def keep_aside(row: pa_csv.InvalidRow) -> str:
        invalid.append(row)
        return "skip"

    try:
        table = pa_csv.read_csv(
            path,
            read_options=pa_csv.ReadOptions(
                use_threads=threads, column_names=list(schema.columns), skip_rows=int(schema.csv.header)
            ),
            parse_options=pa_csv.ParseOptions(delimiter=schema.csv.delimiter, invalid_row_handler=keep_aside),
            convert_options=pa_csv.ConvertOptions(
                column_types={name: pa.string() for name in schema.columns},
                include_columns=list(schema.used_columns),
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
    except pa.ArrowInvalid as error:
        raise DataError(f"{path}: not a CSV file the schema describes: {error}") from None
    return table, invalid


def _parses(value: str, schema: Schema) -> bool:
    if value in schema.csv.missing_values:
        return True
    try:
        float(value)
    except ValueError:
        return False
    return True


def read_header(path: str, schema: Schema) -> tuple[str, ...]:
    """The fields of a CSV file's first line (plain or gzip, any file system TensorFlow reads)."""
    with tf.io.gfile.GFile(path, "rb") as raw:
        first = (gzip.GzipFile(fileobj=raw) if path.endswith(".gz") else raw).readline()
    fields = first.decode("utf-8").rstrip("\r\n").split(schema.csv.delimiter)
    return tuple(h.strip() if schema.csv.strip else h for h in fields)


def _check_header(path: str, schema: Schema) -> None:
    header = read_header(path, schema)
    if header != schema.columns:
        raise DataError(f"{path}:1: header {list(header)} differs from the schema's columns.")


@register
class CsvFormat(TableFormat):
    name = "csv"
    expansion = 4.0

    def read(self, path: str, schema: Schema) -> Iterator[FileChunk]:
        if schema.csv.header:
            _check_header(path, schema)
        table, invalid = _read_csv(path, schema, threads=True)
        if invalid:  # parallel parsing does not know the bad rows' line numbers; a serial pass does
            table, invalid = _read_csv(path, schema, threads=False)
        first_line = 2 if schema.csv.header else 1
        bad = [
            (row.number, f"expected {row.expected_columns} fields, found {row.actual_columns}")
            for row in invalid
        ]
        bad_positions = [line - first_line for line, _ in bad]
        positions = np.setdiff1d(np.arange(table.num_rows + len(bad), dtype=np.int64), bad_positions)
        strings = {}
        for name in schema.used_columns:
            values = table.column(name)
            strings[name] = pc.utf8_trim_whitespace(values) if schema.csv.strip else values
        numeric = [name for name in schema.used_columns if name in schema.numeric_columns()]
        na_values = pa.array(list(schema.csv.missing_values))

        def to_numbers(values: pa.ChunkedArray) -> np.ndarray:
            numbers = pc.cast(pc.if_else(pc.is_in(values, value_set=na_values), "nan", values), pa.float32())
            return numbers.to_numpy().astype(np.float32)

        try:
            numbers = {name: to_numbers(strings[name]) for name in numeric}
        except pa.ArrowInvalid:
            # Some cell is not a number: find every such row (row by row, but only for a file that has one).
            keep = np.ones(table.num_rows, dtype=bool)
            for name in numeric:
                for index, value in enumerate(strings[name].to_pylist()):
                    if keep[index] and not _parses(value, schema):
                        keep[index] = False
                        line = int(positions[index]) + first_line
                        bad.append((line, f"column {name!r} holds {value!r}, not a number"))
            mask = pa.array(keep)
            strings = {name: pc.filter(values, mask) for name, values in strings.items()}
            positions = positions[keep]
            try:
                numbers = {name: to_numbers(strings[name]) for name in numeric}
            except pa.ArrowInvalid as error:
                raise DataError(f"{path}: a numeric column holds a non-number: {error}") from None
        columns = {
            name: numbers[name] if name in numbers else np.asarray(strings[name].to_pylist(), dtype=object)
            for name in schema.used_columns
        }
        yield FileChunk(columns, positions, sorted(bad))

    def records(self, path: tf.Tensor, schema: Schema) -> tf.data.Dataset:
        compression = tf.where(tf.strings.regex_full_match(path, r".*\.gz"), "GZIP", "")
        lines = tf.data.TextLineDataset(path, compression_type=compression)
        lines = lines.skip(1 if schema.csv.header else 0)
        # pyarrow skips empty lines too, so both count rows alike.
        return lines.filter(lambda line: tf.strings.length(line) > 0).enumerate()

    def decode(self, records: tf.Tensor, schema: Schema) -> dict[str, tf.Tensor]:
        fields = tf.io.decode_csv(
            records, record_defaults=[[""]] * len(schema.columns), field_delim=schema.csv.delimiter
        )
        raw = dict(zip(schema.columns, fields, strict=True))
        numeric = schema.numeric_columns()
        typed = {}
        for name in schema.used_columns:
            value = tf.strings.strip(raw[name]) if schema.csv.strip else raw[name]
            typed[name] = strings_to_numbers(value, schema) if name in numeric else value
        return typed
