"""Results tables for the scaling law and the frontier: reading and checking.

A table is rows of `(N, V, score)` given as a list of tuples, a numpy array `[n, >=3]` (first
three columns N, V, score; further columns ignored), a list of dicts, or a path to a CSV file
with a header naming the columns (any order, extra columns kept but unused; names match
case-insensitively). The numeric columns asked for come back as floats in `Table.rows` too.
Bad input raises `TableError` naming the file, row and column at fault.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

LAW_COLUMNS = ("N", "V", "score")


class TableError(ValueError):
    """A malformed results table (the message names the file / row / column at fault)."""


@dataclasses.dataclass(frozen=True)
class Table:
    """Numeric `columns` (name -> float array `[n]`), the original `rows` and row `labels`."""

    columns: dict[str, np.ndarray]
    rows: list[dict[str, Any]]
    labels: list[str]
    source: str

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, name: str) -> np.ndarray:
        return self.columns[name]


def _number(value: Any, where: str) -> float:
    if isinstance(value, str):
        value = value.strip()
        if value == "":
            return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TableError(f"{where}: {value!r} is not a number") from None


def _find(names: Sequence[str], want: str) -> str | None:
    """The column among `names` called `want` (exact first, then case-insensitive)."""
    if want in names:
        return want
    for n in names:
        if n.strip().lower() == want.lower():
            return n
    return None


def _columns(rows: list[Mapping[str, Any]], names: list[str], required: Sequence[str],
             optional: Sequence[str], source: str, lines: list[int] | None = None) -> Table:
    """Numeric columns from dict rows whose keys are `names` (`lines`: CSV line numbers)."""
    found = {c: _find(names, c) for c in (*required, *optional)}
    missing = [c for c in required if found[c] is None]
    if missing:
        raise TableError(f"{source}: missing column(s) {missing}; found columns {names}")
    labels = [f"row {i}" + (f" (line {lines[i]})" if lines else "") for i in range(len(rows))]
    cols, out_rows = {}, [dict(r) for r in rows]
    for c, key in found.items():
        if key is not None:
            cols[c] = np.array([_number(r.get(key), f"{source}: {labels[i]}, column {key!r}")
                                for i, r in enumerate(rows)], dtype=np.float64).reshape(-1)
            for r, value in zip(out_rows, cols[c]):
                r[key] = float(value)
    return Table(cols, out_rows, labels, source)


def _read_csv(path: str, required: Sequence[str], optional: Sequence[str]) -> Table:
    if not os.path.isfile(path):
        raise TableError(f"{path}: no such file")
    with open(path, newline="") as f:
        reader = csv.reader(f)
        lines = [(reader.line_num, r) for r in reader if any(cell.strip() for cell in r)]
    if not lines:
        raise TableError(f"{path}: empty file; expected a CSV header naming {list(required)}")
    names = [n.strip() for n in lines[0][1]]
    rows = []
    for i, (line, r) in enumerate(lines[1:]):
        if len(r) != len(names):
            raise TableError(f"{path}: row {i} (line {line}) has {len(r)} fields but the header "
                             f"{names} has {len(names)}")
        rows.append(dict(zip(names, r)))
    return _columns(rows, names, required, optional, path, [line for line, _ in lines[1:]])


def read_table(table: Any, required: Sequence[str] = LAW_COLUMNS,
               optional: Sequence[str] = ()) -> Table:
    """Reads `table` (see module docstring) into a `Table`; values are checked later."""
    if isinstance(table, Table):
        return table
    if isinstance(table, (str, os.PathLike)):
        return _read_csv(os.fspath(table), required, optional)
    if isinstance(table, Sequence) and table and isinstance(table[0], Mapping):
        for i, r in enumerate(table):
            if not isinstance(r, Mapping):
                raise TableError(f"table: row {i} is a {type(r).__name__}, expected a mapping "
                                 "like row 0")
        return _columns(list(table), list(table[0]), required, optional, "table")
    try:
        arr = np.asarray(table, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise TableError(f"table: cannot read rows of numbers ({e}); pass (N, V, score) rows, "
                         "an array [n, 3], a list of dicts or a CSV path") from None
    if arr.size == 0:
        arr = arr.reshape(0, len(required))
    if arr.ndim != 2 or arr.shape[1] < len(required):
        raise TableError(f"table: expected rows of {list(required)} (an array [n, "
                         f"{len(required)}]), got shape {arr.shape}")
    rows = [dict(zip(required, map(float, r))) for r in arr[:, :len(required)]]
    return _columns(rows, list(required), required, optional, "table")


def check_law_table(t: Table, min_points: int = 4) -> None:
    """Values a law fit can use: no NaN, N > 0, V > 0, score in [0, 1], >= `min_points` rows."""
    if len(t) < min_points:
        raise TableError(f"{t.source}: {len(t)} row(s), but fitting the 4-parameter law needs at "
                         f"least {min_points}")
    for c in LAW_COLUMNS:
        v = t[c]
        bad = np.flatnonzero(~np.isfinite(v))
        if bad.size:
            raise TableError(f"{t.source}: {t.labels[bad[0]]} has a missing / NaN / infinite "
                             f"{c} ({v[bad[0]]})")
    for c in ("N", "V"):
        bad = np.flatnonzero(t[c] <= 0)
        if bad.size:
            raise TableError(f"{t.source}: {t.labels[bad[0]]} has {c} = {t[c][bad[0]]:g}; "
                             f"{c} must be positive")
    s = t["score"]
    bad = np.flatnonzero((s < 0) | (s > 1))
    if bad.size:
        raise TableError(f"{t.source}: {t.labels[bad[0]]} has score = {s[bad[0]]:g}, outside "
                         "[0, 1] (scores are fractions; divide percentages by 100)")
