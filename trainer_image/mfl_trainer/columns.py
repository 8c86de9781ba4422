"""Feature values of logged predictions, stored column-wise.

A Python dict per logged row (features as keys) cost ~2.9 GiB for a million rows of ten features; here a
feature is one float64 array (the value where it is a JSON number), one int8 array (what the JSON value
was) and a dict of the few values that are not numbers: ~9 bytes a cell. The original JSON value of every
cell can still be recovered (``FeatureColumn.value``), so typing and text conversion behave as on dicts.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import chain
from operator import itemgetter
from typing import Any

import numpy as np

# What a cell held: no such key in the row, a JSON float, a JSON integer, anything else (text, null, bool...).
ABSENT, FLOAT, INT, OTHER = 0, 1, 2, 3
# Integers beyond 2**53 do not survive a float64 round trip: they are kept as OTHER values.
_MAX_EXACT_INT = float(2**53)
# Rows converted per batch: few enough that their dicts are still in the CPU cache when converted (measured on
# 1M rows: 8192 -> 256 made the join ~25 % faster), enough for numpy's bulk conversion to pay.
CHUNK_ROWS = 256


class _Absent:
    """The value of a key a row does not have (distinct from JSON null)."""


_NO_KEY = _Absent()


@dataclass
class FeatureColumn:
    numbers: np.ndarray  # float64: the value where kinds is FLOAT or INT, else NaN
    kinds: np.ndarray  # int8: ABSENT, FLOAT, INT or OTHER per row
    others: dict[int, Any] = field(default_factory=dict)  # row -> value, for the OTHER rows

    def __len__(self) -> int:
        return len(self.kinds)

    def present(self) -> np.ndarray:
        return self.kinds != ABSENT

    def value(self, row: int) -> Any:
        """The JSON value of one cell as ``json.loads`` gave it; None where the row has no such key."""
        kind = self.kinds[row]
        if kind == OTHER:
            return self.others[row]
        if kind == ABSENT:
            return None
        number = float(self.numbers[row])
        return int(number) if kind == INT else number

    def take(self, rows: np.ndarray) -> FeatureColumn:
        """The cells of ``rows`` (integer positions), in that order."""
        position = np.full(len(self), -1, dtype=np.int64)
        position[rows] = np.arange(len(rows))
        others = {int(position[row]): value for row, value in self.others.items() if position[row] >= 0}
        return FeatureColumn(self.numbers[rows], self.kinds[rows], others)


class ColumnBuilder:
    """Collects feature dicts row by row into columns of at most ``capacity`` rows, converting them in batches
    of ``CHUNK_ROWS``.

    ``features`` names the columns to keep; None keeps the features every row has (what the trainer infers
    its features from), dropping a name as soon as a row lacks it. Either way a client that sends a new key
    with every request costs nothing: a column is never made for a name nobody asked for.
    """

    def __init__(self, capacity: int, features: Collection[str] | None = None) -> None:
        self.rows = 0
        self.capacity = capacity
        self.common_only = features is None
        self._columns: dict[str, FeatureColumn] = {}
        for name in features or ():
            self._add_column(name)
        self._pending: list[dict[str, Any]] = []

    def add(self, features: dict[str, Any]) -> None:
        self._pending.append(features)
        if len(self._pending) >= CHUNK_ROWS:
            self._flush()

    def finish(self) -> dict[str, FeatureColumn]:
        """The columns, cut to the rows added (a copy only when fewer rows than ``capacity`` came)."""
        self._flush()
        columns, self._columns = self._columns, {}
        for name, column in columns.items():
            if self.rows < self.capacity:
                columns[name] = FeatureColumn(
                    column.numbers[: self.rows].copy(), column.kinds[: self.rows].copy(), column.others
                )
        return columns

    def _add_column(self, name: str) -> None:
        self._columns[name] = FeatureColumn(np.full(self.capacity, np.nan), np.zeros(self.capacity, dtype=np.int8))

    def _flush(self) -> None:
        chunk, self._pending = self._pending, []
        if not chunk:
            return
        if self.common_only and self.rows == 0:
            for name in chunk[0]:  # the first row's names: the only candidates for "every row has it"
                self._add_column(name)
        start, end = self.rows, self.rows + len(chunk)
        if end > self.capacity:
            raise ValueError(f"more than {self.capacity} rows")
        if not self._flush_block(chunk, start, end):
            self._flush_columns(chunk, start, end)
        self.rows = end

    def _flush_block(self, chunk: list[dict[str, Any]], start: int, end: int) -> bool:
        """The common case in one go: every row has every column, and every cell is a number."""
        names = list(self._columns)
        if not names:
            return True
        try:
            rows = list(map(itemgetter(*names), chunk)) if len(names) > 1 else [(f[names[0]],) for f in chunk]
        except KeyError:
            return False
        block = convert_block(rows)
        if block is None:
            return False
        numbers, kinds = block
        for index, name in enumerate(names):
            column = self._columns[name]
            column.numbers[start:end] = numbers[:, index]
            column.kinds[start:end] = kinds[:, index] if kinds.ndim == 2 else kinds
        return True

    def _flush_columns(self, chunk: list[dict[str, Any]], start: int, end: int) -> None:
        """Column by column, cell by cell where needed: missing keys, text, null, booleans, huge integers."""
        for name in list(self._columns):
            numbers, kinds, others = convert([features.get(name, _NO_KEY) for features in chunk])
            if self.common_only and (kinds == ABSENT).any():
                del self._columns[name]
                continue
            column = self._columns[name]
            column.numbers[start:end] = numbers
            column.kinds[start:end] = kinds
            column.others.update((start + row, value) for row, value in others.items())


def convert_block(rows: list[tuple[Any, ...]]) -> tuple[np.ndarray, np.ndarray] | None:
    """Rows of cells that are all JSON numbers: numbers (rows x columns) and kinds (the same shape, or one
    kind for all); None when some cell is not a number or an integer does not fit a float exactly."""
    types = set(map(type, chain.from_iterable(rows)))
    if not types <= {float, int}:
        return None
    try:
        numbers = np.array(rows, dtype=np.float64)
    except OverflowError:  # an integer beyond float range
        return None
    if int not in types:
        return numbers, np.array(FLOAT, dtype=np.int8)
    if (np.abs(numbers) > _MAX_EXACT_INT).any():
        return None
    is_int = np.fromiter((t is int for t in map(type, chain.from_iterable(rows))), dtype=bool, count=numbers.size)
    return numbers, np.where(is_int.reshape(numbers.shape), INT, FLOAT).astype(np.int8)


def convert(values: list[Any]) -> tuple[np.ndarray, np.ndarray, dict[int, Any]]:
    """One batch of cells: numbers, kinds and the OTHER values (by position in the batch)."""
    block = convert_block([(value,) for value in values]) if values else None
    if block is None:
        return _convert_cells(values)
    numbers, kinds = block
    return numbers[:, 0], np.broadcast_to(kinds, numbers.shape)[:, 0].copy(), {}


def _convert_cells(values: Iterable[Any]) -> tuple[np.ndarray, np.ndarray, dict[int, Any]]:
    """The general case, cell by cell: missing keys, text, null, booleans, huge integers."""
    numbers, kinds, others = [], [], {}
    for row, value in enumerate(values):
        kind = type(value)
        if kind is float:
            numbers.append(value)
            kinds.append(FLOAT)
        elif kind is int and abs(value) <= _MAX_EXACT_INT:
            numbers.append(float(value))
            kinds.append(INT)
        else:
            numbers.append(np.nan)
            if value is _NO_KEY:
                kinds.append(ABSENT)
            else:
                kinds.append(OTHER)
                others[row] = value
    return np.array(numbers, dtype=np.float64), np.array(kinds, dtype=np.int8), others


def columns_from_dicts(rows: Sequence[dict[str, Any]]) -> dict[str, FeatureColumn]:
    """Every feature any of ``rows`` has, as columns."""
    names: dict[str, None] = {}
    for features in rows:
        names.update(dict.fromkeys(features))
    builder = ColumnBuilder(len(rows), list(names))
    for features in rows:
        builder.add(features)
    return builder.finish()
