"""Pure error analysis on the holdout: metrics, confusion matrix, per-class scores, worst slices."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    mean_absolute_error,
    mean_squared_error,
    precision_recall_fscore_support,
    r2_score,
)

from .tables import NUMERIC

PRIMARY_METRIC = {"classification": "accuracy", "regression": "mae"}
GREATER_IS_BETTER = {"accuracy": True, "f1_macro": True, "mae": False, "rmse": False, "r2": True}
MISSING_BIN = "missing"
TOP_SLICES = 10


def metrics(task: str, y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float | None]:
    if task == "classification":
        return {
            "accuracy": _round(accuracy_score(y_true, y_pred)),
            "f1_macro": _round(f1_score(y_true, y_pred, average="macro", zero_division=0)),
        }
    return {
        "mae": _round(mean_absolute_error(y_true, y_pred)),
        "rmse": _round(math.sqrt(mean_squared_error(y_true, y_pred))),
        "r2": _round(r2_score(y_true, y_pred)) if len(y_true) > 1 else None,
    }


def confusion(y_true: np.ndarray, y_pred: np.ndarray, labels: list[Any]) -> dict[str, Any]:
    """Rows are actual labels, columns predicted labels, in ``labels`` order."""
    matrix = confusion_matrix(y_true, y_pred, labels=labels)
    return {"labels": [plain(label) for label in labels], "matrix": matrix.tolist()}


def per_class(y_true: np.ndarray, y_pred: np.ndarray, labels: list[Any]) -> list[dict[str, Any]]:
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    return [
        {"label": plain(label), "precision": _round(p), "recall": _round(r), "f1": _round(f), "support": int(s)}
        for label, p, r, f, s in zip(labels, precision, recall, f1, support)
    ]


# --- slices --------------------------------------------------------------------------------------


def slice_bins(values: np.ndarray, kind: str, n_bins: int) -> np.ndarray:
    """Slice name of each value: a quantile interval for numbers, the value itself for text.

    Numeric features with at most ``n_bins`` distinct values are sliced by value ("= 3").
    """
    if kind != NUMERIC:
        return np.array([MISSING_BIN if v == "" else str(v) for v in values], dtype=object)
    names = np.full(len(values), MISSING_BIN, dtype=object)
    present = ~np.isnan(values)
    finite = values[present]
    if finite.size == 0:
        return names
    distinct = np.unique(finite)
    if distinct.size <= n_bins:
        names[present] = [f"= {v:.4g}" for v in finite]
        return names
    edges = np.unique(np.quantile(finite, np.linspace(0, 1, n_bins + 1)))
    index = np.clip(np.searchsorted(edges, finite, side="right") - 1, 0, len(edges) - 2)
    labels = [_interval(edges[i], edges[i + 1], closed=i == len(edges) - 2) for i in range(len(edges) - 1)]
    names[present] = np.array(labels, dtype=object)[index]
    return names


def _interval(low: float, high: float, closed: bool) -> str:
    return f"[{low:.4g}, {high:.4g}{']' if closed else ')'}"


def slice_table(
    task: str,
    columns: dict[str, np.ndarray],
    feature_types: dict[str, str],
    y_true: np.ndarray,
    predictions: dict[str, np.ndarray],
    n_bins: int,
    min_rows: int,
) -> list[dict[str, Any]]:
    """Every slice with at least ``min_rows`` holdout rows, scored for each model in ``predictions``."""
    metric = PRIMARY_METRIC[task]
    table = []
    for feature, values in columns.items():
        names = slice_bins(values, feature_types[feature], n_bins)
        for name in sorted(set(names.tolist()), key=str):
            rows = names == name
            if rows.sum() < min_rows:
                continue
            entry = {"feature": feature, "bin": name, "rows": int(rows.sum())}
            for model, y_pred in predictions.items():
                entry[model] = _slice_score(metric, y_true[rows], y_pred[rows])
            table.append(entry)
    return table


def worst_slices(table: list[dict[str, Any]], model: str, task: str, top: int = TOP_SLICES) -> list[dict[str, Any]]:
    """The ``top`` worst slices for ``model``: lowest accuracy (classification) or highest MAE.

    Each entry carries the model's score under the metric name, and the other models' scores
    (e.g. ``championAccuracy``) for the same rows.
    """
    metric = PRIMARY_METRIC[task]
    sign = 1 if GREATER_IS_BETTER[metric] else -1
    ranked = sorted(table, key=lambda e: (sign * e[model], -e["rows"], e["feature"], e["bin"]))
    return [_slice_entry(entry, model, metric) for entry in ranked[:top]]


def _slice_entry(entry: dict[str, Any], model: str, metric: str) -> dict[str, Any]:
    result = {"feature": entry["feature"], "bin": entry["bin"], metric: entry[model], "rows": entry["rows"]}
    for other in entry.keys() - {"feature", "bin", "rows", model}:
        result[f"{other}{metric[0].upper()}{metric[1:]}"] = entry[other]
    return result


def _slice_score(metric: str, y_true: np.ndarray, y_pred: np.ndarray) -> float:
    if metric == "accuracy":
        return _round(float(np.mean(y_true == y_pred)))
    return _round(float(np.mean(np.abs(y_true - y_pred))))


# --- helpers -------------------------------------------------------------------------------------


def _round(value: float) -> float | None:
    value = float(value)
    return round(value, 6) if math.isfinite(value) else None


def plain(label: Any) -> Any:
    """A JSON-friendly label (numpy scalars to Python)."""
    return label.item() if isinstance(label, np.generic) else label


def labels_of(*arrays: Sequence[Any]) -> list[Any]:
    """Sorted union of the labels in the arrays (truth and every model's predictions)."""
    labels = {plain(v) for array in arrays for v in array}
    try:
        return sorted(labels)
    except TypeError:  # mixed label types (e.g. a champion trained on text labels)
        return sorted(labels, key=str)
