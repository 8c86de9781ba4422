"""Pure choice of the holdout, label noise and sample weights."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

TIME_ORDERED = "time_ordered_feedback"
STRATIFIED_BASE = "stratified_random_base"
RANDOM_BASE = "random_base"


@dataclass(frozen=True)
class Split:
    train: np.ndarray  # row indices
    holdout: np.ndarray  # row indices
    strategy: str
    reason: str


def choose_holdout(
    is_feedback: np.ndarray, y: np.ndarray, fraction: float, min_holdout_rows: int, stratify: bool, seed: int
) -> Split:
    """The most recent labelled feedback is the holdout: it is what the model will face next.

    Rows are in time order within the feedback (see ``tables.build_table``). With too little
    feedback for a holdout of ``min_holdout_rows``, a (stratified) random share of the base data is
    held out instead and all feedback is trained on.
    """
    feedback_rows = np.flatnonzero(is_feedback)
    base_rows = np.flatnonzero(~is_feedback)
    n_recent = math.ceil(fraction * len(feedback_rows))
    if n_recent >= min_holdout_rows or (len(base_rows) == 0 and n_recent >= 1):
        cut = len(feedback_rows) - n_recent
        return Split(
            np.concatenate([base_rows, feedback_rows[:cut]]),
            feedback_rows[cut:],
            TIME_ORDERED,
            f"the {n_recent} most recent of {len(feedback_rows)} labelled feedback rows",
        )
    holdout, strategy = _random_base_holdout(base_rows, y, fraction, stratify, seed)
    train = np.setdiff1d(np.arange(len(y)), holdout)
    reason = (
        f"only {len(feedback_rows)} labelled feedback rows: a {fraction:g} share would hold out "
        f"{n_recent} < minHoldoutRows {min_holdout_rows}; held out {len(holdout)} base rows instead"
    )
    return Split(train, holdout, strategy, reason)


def _random_base_holdout(
    base_rows: np.ndarray, y: np.ndarray, fraction: float, stratify: bool, seed: int
) -> tuple[np.ndarray, str]:
    rng = np.random.default_rng(seed)
    if not stratify:
        size = max(1, round(fraction * len(base_rows)))
        return np.sort(rng.choice(base_rows, size=size, replace=False)), RANDOM_BASE
    picked = []
    labels = y[base_rows]
    for label in sorted(set(labels.tolist())):
        members = base_rows[labels == label]
        size = round(fraction * len(members))  # a class with one row stays in training
        picked.append(rng.choice(members, size=size, replace=False))
    return np.sort(np.concatenate(picked)), STRATIFIED_BASE


def flip_labels(
    y: np.ndarray, fraction: float, classes: list, seed: int, regression: bool = False
) -> tuple[np.ndarray, int]:
    """A deliberately bad training set (tests): ``fraction`` of labels changed, deterministically.

    Classification: the label becomes the next class. Regression: the picked labels are shuffled.
    """
    count = round(fraction * len(y))
    if count == 0:
        return y, 0
    rng = np.random.default_rng([seed, 99])
    rows = rng.choice(len(y), size=count, replace=False)
    noisy = y.copy()
    if regression:
        noisy[rows] = y[rng.permutation(rows)]
    elif len(classes) > 1:
        position = {label: i for i, label in enumerate(classes)}
        noisy[rows] = [classes[(position[label] + 1) % len(classes)] for label in y[rows].tolist()]
    return noisy, count


def sample_weights(is_feedback: np.ndarray, recent_weight: float) -> np.ndarray:
    return np.where(is_feedback, recent_weight, 1.0)
