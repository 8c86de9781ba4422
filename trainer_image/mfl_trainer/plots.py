"""Plots for the version folder (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display in a container; must precede the pyplot import
import matplotlib.pyplot as plt
import numpy as np

_MAX_ANNOTATED_CLASSES = 20


def confusion_png(path: Path, panels: list[tuple[str, dict[str, Any]]], title: str) -> None:
    """One panel per model: rows normalised to recall (colour), raw counts annotated."""
    figure, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.6), squeeze=False)
    for axis, (name, matrix) in zip(axes[0], panels):
        _confusion_panel(axis, name, matrix["labels"], np.asarray(matrix["matrix"]))
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _confusion_panel(axis: Any, name: str, labels: list[Any], counts: np.ndarray) -> None:
    totals = counts.sum(axis=1, keepdims=True)
    normalised = np.divide(counts, totals, out=np.zeros(counts.shape, dtype=float), where=totals > 0)
    image = axis.imshow(normalised, cmap="Blues", vmin=0.0, vmax=1.0)
    ticks = np.arange(len(labels))
    axis.set_xticks(ticks, [str(label) for label in labels], rotation=45 if len(labels) > 6 else 0)
    axis.set_yticks(ticks, [str(label) for label in labels])
    axis.set_xlabel("predicted")
    axis.set_ylabel("actual")
    accuracy = np.trace(counts) / max(1, counts.sum())
    axis.set_title(f"{name} (accuracy {accuracy:.3f}, n={int(counts.sum())})")
    if len(labels) <= _MAX_ANNOTATED_CLASSES:
        for (i, j), count in np.ndenumerate(counts):
            colour = "white" if normalised[i, j] > 0.5 else "black"
            axis.text(j, i, f"{count}\n{normalised[i, j]:.0%}", ha="center", va="center", color=colour, fontsize=8)
    axis.figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04)


def residuals_png(path: Path, y_true: np.ndarray, predictions: dict[str, np.ndarray], title: str) -> None:
    """Regression has no confusion matrix: predicted against actual, one panel per model."""
    figure, axes = plt.subplots(1, len(predictions), figsize=(5 * len(predictions), 4.6), squeeze=False)
    low, high = float(np.min(y_true)), float(np.max(y_true))
    for axis, (name, y_pred) in zip(axes[0], predictions.items()):
        axis.scatter(y_true, y_pred, s=6, alpha=0.4)
        axis.plot([low, high], [low, high], color="black", linewidth=1)
        axis.set_xlabel("actual")
        axis.set_ylabel("predicted")
        axis.set_title(f"{name} (MAE {np.mean(np.abs(y_true - y_pred)):.4g}, n={len(y_true)})")
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
