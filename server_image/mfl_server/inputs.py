"""Pure request parsing for /predict: instances -> model input matrix + the feature records to log.

The hot path builds one Python list per row and converts the batch with a single ``np.array``.
Only when that fails (or a value has a non-numeric type) do we walk the batch again to name the
first offending row and feature, so clear error messages cost nothing on valid requests.

Every value is bounded: numbers finite and within float32's range (tree estimators cast to it; JSON
parsed by the standard library can carry NaN and Infinity), text at most ``MAX_TEXT_CHARS``. Only the
model's features are logged: fields a row carries beyond them (a client sending the union of the
stable and canary features, an id column) are accepted and dropped, so a row's log line is bounded
by the model, not by the client.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import RequestError, bad_request, too_large, unprocessable
from .limits import MAX_ABS_NUMBER, MAX_TEXT_CHARS

NUMERIC, CATEGORICAL = "numeric", "categorical"
_NUMERIC_TYPES = frozenset({int, float, bool, type(None)})  # None is a missing value (NaN)
_CATEGORICAL_TYPES = frozenset({str, int, float, bool, type(None)})


@dataclass(frozen=True)
class InputSchema:
    features: list[str]  # metadata order: positional rows use it
    columns: list[str]  # the estimator's column order
    feature_types: dict[str, str] = field(default_factory=dict)

    @property
    def all_numeric(self) -> bool:
        return all(self.feature_types.get(name, NUMERIC) == NUMERIC for name in self.columns)


@dataclass
class Batch:
    matrix: np.ndarray  # float64, or object when a feature is categorical
    records: list[dict[str, Any]]  # per row: the features to log, by name


def instances_of(body: Any, max_batch: int) -> list[Any]:
    if not isinstance(body, dict):
        raise bad_request('body must be a JSON object like {"instances": [...]}')
    instances = body.get("instances")
    if instances is None:
        raise unprocessable('missing "instances": expected {"instances": [{feature: value, ...}, ...]}')
    if not isinstance(instances, list):
        raise unprocessable(f'"instances" must be a list, got {_json_type(instances)}')
    if not instances:
        raise unprocessable('empty batch: "instances" has no rows')
    if len(instances) > max_batch:
        raise too_large(f"batch too large: {len(instances)} rows, at most {max_batch} per request")
    return instances


def build_batch(instances: list[Any], schema: InputSchema) -> Batch:
    if isinstance(instances[0], dict):
        records = _require_all(instances, dict, "an object of feature values")
        values = _named_values(records, schema.columns)
        records = _only_features(records, schema.features)
    elif isinstance(instances[0], list):
        rows = _require_all(instances, list, "a list of feature values")
        _check_row_lengths(rows, schema.features)
        records = [dict(zip(schema.features, row)) for row in rows]
        values = rows if schema.columns == schema.features else _named_values(records, schema.columns)
    else:
        raise unprocessable(f"row 0 must be an object of feature values or a list, got {_json_type(instances[0])}")
    return Batch(matrix=_matrix(values, schema), records=records)


def _require_all(instances: list[Any], kind: type, what: str) -> list[Any]:
    for index, row in enumerate(instances):
        if not isinstance(row, kind):
            raise unprocessable(f"row {index} must be {what} like row 0, got {_json_type(row)}")
    return instances


def _only_features(records: list[dict[str, Any]], features: list[str]) -> list[dict[str, Any]]:
    """Every feature is present (checked before), so a row of that many keys has no others."""
    size = len(features)
    return [record if len(record) == size else {name: record[name] for name in features} for record in records]


def _named_values(records: list[dict[str, Any]], columns: list[str]) -> list[list[Any]]:
    try:
        return [[record[name] for name in columns] for record in records]
    except KeyError:
        raise _missing_feature(records, columns) from None


def _missing_feature(records: list[dict[str, Any]], columns: list[str]) -> RequestError:
    for index, record in enumerate(records):
        missing = [name for name in columns if name not in record]
        if missing:
            return unprocessable(f"row {index}: missing feature {_names(missing)}")
    return unprocessable("missing feature")  # unreachable: a KeyError names a missing key


def _check_row_lengths(rows: list[list[Any]], features: list[str]) -> None:
    for index, row in enumerate(rows):
        if len(row) != len(features):
            raise unprocessable(
                f"row {index} has {len(row)} values, expected {len(features)} in this order: {features}"
            )


def _matrix(values: list[list[Any]], schema: InputSchema) -> np.ndarray:
    if schema.all_numeric:
        return _numeric_matrix(values, schema.columns)
    return _mixed_matrix(values, schema)


def _numeric_matrix(values: list[list[Any]], columns: list[str]) -> np.ndarray:
    types = {type(value) for row in values for value in row}
    if not types <= _NUMERIC_TYPES:
        raise _wrong_type(values, columns, lambda name: _NUMERIC_TYPES)
    try:
        matrix = np.array(values, dtype=np.float64)  # None -> NaN, bool -> 0/1
    except OverflowError:
        raise _out_of_range(values, columns) from None
    if not np.abs(matrix).max() <= MAX_ABS_NUMBER:  # NaN propagates: a null, NaN, an infinity or huge
        _check_out_of_range(values, columns, ~(np.abs(matrix) <= MAX_ABS_NUMBER))
    return matrix


def _check_out_of_range(values: list[list[Any]], columns: list[str], flagged: np.ndarray) -> None:
    """Raises for the first flagged value that is not a null (a null is a missing value: NaN)."""
    for row, column in zip(*np.nonzero(flagged)):
        value = values[row][column]
        if value is not None:
            raise _bad_number(int(row), columns[column], value)


def _out_of_range(values: list[list[Any]], columns: list[str]) -> RequestError:
    for index, row in enumerate(values):
        for name, value in zip(columns, row):
            if isinstance(value, int) and not _in_range(value):
                return _bad_number(index, name, value)
    return unprocessable("a feature value is too large for a 64-bit float")


def _in_range(value: int | float) -> bool:
    try:
        return abs(float(value)) <= MAX_ABS_NUMBER
    except OverflowError:
        return False


def _bad_number(index: int, name: str, value: Any) -> RequestError:
    shown = f"{value:.3g}" if isinstance(value, float) else f"an integer of {len(str(abs(value)))} digits"
    return unprocessable(
        f"row {index}: feature {name!r} must be a finite number of absolute value at most "
        f"{MAX_ABS_NUMBER:.3g} (null for a missing value), got {shown}"
    )


def _mixed_matrix(values: list[list[Any]], schema: InputSchema) -> np.ndarray:
    """Object matrix as the trainer builds it: numbers as float, categories as text ('' if missing)."""

    def allowed(name: str) -> frozenset[type]:
        return _CATEGORICAL_TYPES if schema.feature_types.get(name) == CATEGORICAL else _NUMERIC_TYPES

    kinds = [allowed(name) for name in schema.columns]
    if any(type(value) not in kind for row in values for value, kind in zip(row, kinds)):
        raise _wrong_type(values, schema.columns, allowed)
    categorical = [schema.feature_types.get(name) == CATEGORICAL for name in schema.columns]
    matrix = np.empty((len(values), len(schema.columns)), dtype=object)
    for index, row in enumerate(values):
        matrix[index] = [
            _mixed_value(index, name, value, is_text) for name, value, is_text in zip(schema.columns, row, categorical)
        ]
    return matrix


def _mixed_value(index: int, name: str, value: Any, is_text: bool) -> Any:
    if value is None:
        return "" if is_text else np.nan
    if is_text and isinstance(value, str):
        if len(value) > MAX_TEXT_CHARS:
            raise unprocessable(
                f"row {index}: feature {name!r} is {len(value)} characters long, at most {MAX_TEXT_CHARS}"
            )
        return value
    if not _in_range(value):
        raise _bad_number(index, name, value)
    return str(value) if is_text else float(value)


def _wrong_type(values: list[list[Any]], columns: list[str], allowed: Any) -> RequestError:
    for index, row in enumerate(values):
        for name, value in zip(columns, row):
            if type(value) not in allowed(name):
                expected = "a number or null" if allowed(name) is _NUMERIC_TYPES else "a string, number or null"
                return unprocessable(
                    f"row {index}: feature {name!r} has the wrong type: expected {expected}, got {_json_type(value)}"
                )
    return unprocessable("a feature value has the wrong type")


def _names(names: Sequence[str]) -> str:
    return ", ".join(repr(name) for name in names)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return f"string {value[:40]!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
