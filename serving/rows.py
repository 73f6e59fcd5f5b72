"""Rows a user wants predictions for, from JSON lines or CSV, as the typed columns a client sends."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np


class RowsError(ValueError):
    """An input file that cannot become a batch: unreadable, or a row missing or mistyping an input."""


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """`.jsonl`: one JSON object per line; `.csv`: a header naming the inputs, one row per line."""
    path = Path(path)
    if not path.is_file():
        raise RowsError(f"{path} does not exist.")
    if path.suffix == ".csv":
        with path.open(newline="") as f:
            return list(csv.DictReader(f))
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise RowsError(f"{path}:{number}: not a JSON object ({error.msg}).") from None
        if not isinstance(row, dict):
            raise RowsError(f"{path}:{number}: expected a JSON object of named inputs.")
        rows.append(row)
    return rows


def to_columns(
    rows: list[Mapping[str, Any]], dtypes: Mapping[str, np.dtype], source: str
) -> dict[str, np.ndarray]:
    """Stacks each input over the rows, converting CSV strings to the input's dtype.

    An empty cell of a float input is a missing number, NaN, which the exported model imputes as training did.
    """
    if not rows:
        raise RowsError(f"{source} holds no rows.")
    columns = {}
    for name, dtype in dtypes.items():
        values = []
        floating = np.dtype(dtype).kind == "f"
        for number, row in enumerate(rows, start=1):
            if name not in row:
                raise RowsError(
                    f"{source} row {number}: missing input {name!r} (inputs: {', '.join(dtypes)})."
                )
            value = row[name]
            if floating and isinstance(value, str) and not value.strip():
                value = "nan"
            values.append(value)
        try:
            columns[name] = np.asarray(values, dtype=object if dtype == np.object_ else dtype)
        except (TypeError, ValueError):
            number = _first_bad_row(values, dtype)
            raise RowsError(
                f"{source} row {number}: input {name!r} holds {values[number - 1]!r}, "
                f"not {np.dtype(dtype).name}."
            ) from None
    return columns


def _first_bad_row(values: list[Any], dtype: np.dtype) -> int:
    for number, value in enumerate(values, start=1):
        try:
            np.asarray(value, dtype=dtype)
        except (TypeError, ValueError):
            return number
    return 1


def batches(columns: Mapping[str, np.ndarray], batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    size = len(next(iter(columns.values())))
    for start in range(0, size, batch_size):
        yield {name: values[start : start + batch_size] for name, values in columns.items()}
