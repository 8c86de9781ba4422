"""Pure assembly of base rows and feedback rows into one typed, labelled table."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mfl_contracts.classes import class_key

from .columns import FLOAT, INT, FeatureColumn
from .datasource import MISSING_TEXT, BaseData, FeedbackData
from .errors import TrainerError

NUMERIC, CATEGORICAL = "numeric", "categorical"


@dataclass
class LabelledTable:
    features: list[str]
    feature_types: dict[str, str]
    columns: dict[str, np.ndarray]  # float64 (numeric, NaN = missing) or object of str (categorical)
    y: np.ndarray  # int64 or object of str (classification), float64 (regression)
    ts: np.ndarray  # prediction time; NaN for base rows
    is_feedback: np.ndarray  # bool
    served_error: np.ndarray | None = None  # float64: the served prediction's error; NaN where unknown
    missing_features: dict[str, int] = field(default_factory=dict)  # feature -> feedback rows left out lacking it
    unknown_classes: dict[str, int] = field(default_factory=dict)  # label -> feedback rows left out: not a class

    def __len__(self) -> int:
        return len(self.y)

    def matrix(
        self,
        rows: np.ndarray | None = None,
        features: Sequence[str] | None = None,
        feature_types: dict[str, str] | None = None,
    ) -> np.ndarray:
        """Model input: one column per feature in order; float64, or object if any is categorical."""
        features = list(features or self.features)
        types = feature_types or self.feature_types
        picked = [self.columns[name] if rows is None else self.columns[name][rows] for name in features]
        if all(types.get(name, NUMERIC) == NUMERIC for name in features):
            return np.column_stack(picked).astype(np.float64, copy=False)
        return np.column_stack([column.astype(object) for column in picked])

    @property
    def classes(self) -> list[Any]:
        return sorted(set(self.y.tolist()))


def feature_types_of(features: list[str], base: BaseData | None, feedback: FeedbackData) -> dict[str, str]:
    """Base data decides the type when present (every value a number: numeric); else the feedback."""
    if base is not None:
        return {name: NUMERIC if base.columns[name].dtype == np.float64 else CATEGORICAL for name in features}
    return {name: NUMERIC if _numeric_feedback(feedback.features.get(name)) else CATEGORICAL for name in features}


def _numeric_feedback(column: FeatureColumn | None) -> bool:
    """Every cell a number, null, "" or numeric text (a row without the key counts as null)."""
    if column is None:
        return True
    if np.isnan(column.numbers[column.kinds == FLOAT]).any():  # a JSON NaN literal is not a usable number
        return False
    return all(_is_numeric_value(value) for value in column.others.values())


def build_table(
    features: list[str],
    target: str,
    task: str,
    base: BaseData | None,
    feedback: FeedbackData,
    stats: Counter,
    extra_columns: Sequence[str] = (),
    classes: Collection[str] | None = None,
) -> LabelledTable:
    """Base rows first (file order), then feedback rows (time order). Unusable rows are counted.

    ``extra_columns`` (e.g. features only the champion uses) are kept as columns, not as features.
    ``classes`` (classification; ``class_key``s): a feedback row whose label is another value is left out and
    counted in ``feedbackRowsWithUnknownClass``, as the server refuses such a label; None keeps every label.
    """
    names = [*features, *(name for name in extra_columns if name not in features)]
    types = feature_types_of(names, base, feedback)
    usable, missing_features = _usable_feedback(feedback, names, stats)
    unknown_classes: Counter[str] = Counter()
    if classes is not None and task == "classification":
        unknown_classes = _leave_out_unknown_classes(feedback.labels, usable, frozenset(classes))
        stats["feedbackRowsWithUnknownClass"] += sum(unknown_classes.values())
    rows = np.flatnonzero(usable).tolist()
    base_target = base.columns[target] if base is not None else np.array([], dtype=np.float64)
    y, keep = label_column(base_target, [feedback.labels[row] for row in rows], task)
    n_base = len(base_target)
    stats["baseRowsWithoutLabel"] += int((~keep[:n_base]).sum())
    stats["feedbackRowsWithBadLabel"] += int((~keep[n_base:]).sum())
    columns = {name: _feature_column(name, types[name], base, feedback, usable, stats)[keep] for name in names}
    ts = np.concatenate([np.full(n_base, np.nan), feedback.ts[usable]])
    is_feedback = np.arange(len(keep)) >= n_base
    served_values = [feedback.predictions[row] for row in rows]
    served = np.concatenate([np.full(n_base, np.nan), served_errors(y[n_base:], served_values, task)])
    return LabelledTable(
        features,
        types,
        columns,
        y[keep],
        ts[keep],
        is_feedback[keep],
        served[keep],
        missing_features,
        dict(unknown_classes),
    )


def class_keys(values: np.ndarray) -> set[str]:
    """The classes (``class_key``s) a target column holds; missing values are none."""
    return {class_key(value) for value in set(values.tolist()) if not _is_missing(value)}


def _leave_out_unknown_classes(labels: list[Any], usable: np.ndarray, classes: frozenset[str]) -> Counter[str]:
    """Clears ``usable`` for rows whose label is present but not one of ``classes``; the count per label.
    A missing label is left to ``label_column`` (``feedbackRowsWithBadLabel``)."""
    known: dict[Any, bool] = {}  # per distinct label: few values, many rows (1, 1.0 and True share an entry)
    unknown: Counter[str] = Counter()
    for row in np.flatnonzero(usable).tolist():
        label = labels[row]
        try:
            ok = known[label]
        except KeyError:
            ok = known[label] = _is_missing(label) or class_key(label) in classes
        except TypeError:  # an unhashable label (a JSON list or object) is not a class
            ok = False
        if not ok:
            usable[row] = False
            unknown[str(label)[:40]] += 1
    return unknown


def served_errors(labels: np.ndarray, predictions: list[Any], task: str) -> np.ndarray:
    """Per feedback row: 1.0 if the served class was wrong, else 0.0 (classification), or the absolute
    error (regression); NaN where the log has no prediction. Labels as `label_column` made them."""
    errors = np.full(len(predictions), np.nan)
    for i, (label, served) in enumerate(zip(labels.tolist(), predictions)):
        if _is_missing(served):
            continue
        if task == "regression":
            number = _as_number(served)
            errors[i] = abs(number - label) if math.isfinite(number) else np.nan
        else:
            errors[i] = float(_as_text(served) != _as_text(label))
    return errors


def _usable_feedback(feedback: FeedbackData, features: list[str], stats: Counter) -> tuple[np.ndarray, dict[str, int]]:
    """Rows that have every feature (bool mask); the others are counted, and the rows lacking each feature."""
    usable = np.ones(len(feedback), dtype=bool)
    lacking: dict[str, int] = {}
    for name in features:
        column = feedback.features.get(name)
        present = column.present() if column is not None else np.zeros(len(feedback), dtype=bool)
        if not present.all():
            lacking[name] = len(feedback) - int(present.sum())
        usable &= present
    stats["feedbackRowsMissingFeatures"] += len(feedback) - int(usable.sum())
    return usable, lacking


def _feature_column(
    name: str, kind: str, base: BaseData | None, feedback: FeedbackData, usable: np.ndarray, stats: Counter
) -> np.ndarray:
    base_part = base.columns[name] if base is not None else np.array([], dtype=np.float64)
    column = feedback.features.get(name)
    if column is None:  # no feedback row has it, so none is usable
        column = FeatureColumn(np.empty(len(feedback)), np.zeros(len(feedback), dtype=np.int8))
    if kind == NUMERIC:
        return np.concatenate([base_part.astype(np.float64), _feedback_numbers(column, usable, stats)])
    base_texts = base_part if base_part.dtype == object else _floats_as_text(base_part)
    return np.concatenate([base_texts, _feedback_texts(column, usable)])


def _feedback_numbers(column: FeatureColumn, usable: np.ndarray, stats: Counter) -> np.ndarray:
    """The usable rows' cells as numbers (NaN where not one); text that is not a number is counted."""
    numbers = column.numbers[usable]
    bad = int(np.isnan(numbers[column.kinds[usable] == FLOAT]).sum())
    position = np.cumsum(usable) - 1
    for row, value in column.others.items():
        if usable[row]:
            number = numbers[position[row]] = _as_number(value)
            bad += int(math.isnan(number) and value is not None and value != "")
    stats["nonNumericFeatureValues"] += bad
    return numbers


def _feedback_texts(column: FeatureColumn, usable: np.ndarray) -> np.ndarray:
    """The usable rows' cells as text, as ``str`` of their JSON value ("" for null)."""
    numbers, kinds = column.numbers[usable].tolist(), column.kinds[usable].tolist()
    texts = [str(int(x)) if k == INT else str(x) for x, k in zip(numbers, kinds)]
    position = np.cumsum(usable) - 1
    for row, value in column.others.items():
        if usable[row]:
            texts[position[row]] = "" if value is None else str(value)
    return np.array(texts, dtype=object)


def label_column(base_target: np.ndarray, feedback_labels: list[Any], task: str) -> tuple[np.ndarray, np.ndarray]:
    """Labels of base rows then feedback rows as one comparable type, and which rows have one.

    Classification: integers when every label is an integral number (so CSV "1", JSON 1 and 1.0 agree),
    otherwise text. Regression: floats.
    """
    if task == "regression":
        base = base_target if base_target.dtype == np.float64 else _numbers(base_target)
        y = np.concatenate([base, _numbers(feedback_labels)])
        return y, np.isfinite(y)
    integral = _integral_labels(base_target, feedback_labels)
    if integral is not None:
        return integral
    labels = [*base_target.tolist(), *feedback_labels]
    keep = np.array([not _is_missing(v) for v in labels], dtype=bool)
    return np.array([_as_text(v) if k else "" for v, k in zip(labels, keep)], dtype=object), keep


def _integral_labels(base_target: np.ndarray, feedback_labels: list[Any]) -> tuple[np.ndarray, np.ndarray] | None:
    """Vectorised for large numeric base data; None when some label is not an integral number."""
    base = base_target if base_target.dtype == np.float64 else _numbers(base_target)
    if base_target.dtype == object and np.isnan(base).sum() > sum(_is_missing(v) for v in base_target):
        return None
    fb_missing = np.array([_is_missing(v) for v in feedback_labels], dtype=bool)
    fb = _numbers(feedback_labels)
    if np.isnan(fb[~fb_missing]).any():
        return None
    values = np.concatenate([base, fb])
    keep = np.isfinite(values)
    if not np.all(values[keep] == np.round(values[keep])):
        return None
    return np.where(keep, values, 0).astype(np.int64), keep


def _numbers(values: Iterable[Any]) -> np.ndarray:
    return np.array([_as_number(v) for v in values], dtype=np.float64)


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    return isinstance(value, str) and value.strip().lower() in MISSING_TEXT


def _as_text(value: Any) -> str:
    if isinstance(value, float) and value == int(value):
        return str(int(value))  # 1.0 from a numeric CSV column reads as "1"
    return str(value).strip()


def _as_number(value: Any) -> float:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float, np.integer, np.floating)):
        return float(value)
    if isinstance(value, str) and value.strip().lower() not in MISSING_TEXT:
        try:
            return float(value)
        except ValueError:
            return math.nan
    return math.nan


def _is_numeric_value(value: Any) -> bool:
    return value is None or value == "" or not math.isnan(_as_number(value))


def _floats_as_text(values: np.ndarray) -> np.ndarray:
    return np.array(["" if math.isnan(v) else f"{v:g}" for v in values], dtype=object)


def require(condition: bool, message: str) -> None:
    if not condition:
        raise TrainerError(message)
