"""Which rows to train on and which to hold out: the concept since the error last rose, when it is known.

After a drift the rows that matter are the ones after it. The trainer finds the most recent rise in the
served model's error (changepoint.latest_rise) and then:
- trains on the labelled feedback after that cut only, holding out a stratified random share of those
  same rows (so the challenger and the champion are judged on the new concept, and the holdout does not
  take the only new-concept rows, as a holdout of the newest rows would);
- when the segment after the cut is too short to train on, trains on everything (base data and the
  window, as without a cut) but still holds out from the segment: the gate asks about the new concept;
- remembers the cut (`conceptSince`) in the version's metadata, so that the next retraining, which may
  see no rise (its champion already fits the new concept), still leaves the older concept and the base
  data out.
Without a cut (or with change detection off) the holdout is the newest feedback (split.choose_holdout) and
training uses the base data and the window, feedback weighted `recent_weight`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import changepoint, split

POST_CHANGE = "post_change_stratified"


@dataclass(frozen=True)
class ChangeSettings:
    enabled: bool = True
    alpha: float = changepoint.DEFAULT_ALPHA
    min_rows: int = changepoint.DEFAULT_MIN_SEGMENT  # per side of a change, and to train on after one


@dataclass(frozen=True)
class TrainingPlan:
    train: np.ndarray  # table row indices
    holdout: np.ndarray
    weights: np.ndarray  # one per train row
    strategy: str
    reason: str
    concept_since: float | None  # prediction time from which the current concept is trained on
    cut: dict[str, Any] | None  # the change found in this run, for metadata and the report

    @property
    def split(self) -> split.Split:
        return split.Split(self.train, self.holdout, self.strategy, self.reason)


def plan_training(
    is_feedback: np.ndarray,
    y: np.ndarray,
    ts: np.ndarray,
    served_error: np.ndarray,
    *,
    fraction: float,
    min_holdout_rows: int,
    stratify: bool,
    seed: int,
    recent_weight: float,
    change: ChangeSettings,
    inherited_since: float | None = None,
) -> TrainingPlan:
    """The plan for one run. `served_error` is NaN where unknown (base rows, logs without predictions)."""
    cut = _find_cut(is_feedback, ts, served_error, change) if change.enabled else None
    since = cut["ts"] if cut else inherited_since if change.enabled else None
    segment = np.flatnonzero(is_feedback & (ts >= since)) if since is not None else np.array([], dtype=np.int64)
    if since is None or len(segment) < 2 * min_holdout_rows:
        return _window_plan(is_feedback, y, fraction, min_holdout_rows, stratify, seed, recent_weight, since, cut)
    holdout = _stratified_share(segment, y, max(math.ceil(fraction * len(segment)), min_holdout_rows), stratify, seed)
    rest = np.setdiff1d(segment, holdout)
    origin = f"the cut at ts {since:.0f}" if cut else f"the champion's cut at ts {since:.0f}"
    if len(rest) >= change.min_rows:
        reason = (
            f"{len(holdout)} of the {len(segment)} feedback rows since {origin} (stratified); "
            f"trained on the other {len(rest)} only"
        )
        return TrainingPlan(rest, holdout, np.ones(len(rest)), POST_CHANGE, reason, since, cut)
    train = np.setdiff1d(np.arange(len(y)), holdout)
    reason = (
        f"{len(holdout)} of the {len(segment)} feedback rows since {origin} (stratified); only {len(rest)} "
        f"others there (< {change.min_rows}): trained on the base data and the window as well"
    )
    weights = split.sample_weights(is_feedback[train], recent_weight)
    return TrainingPlan(train, holdout, weights, POST_CHANGE, reason, since, cut)


def _find_cut(
    is_feedback: np.ndarray, ts: np.ndarray, served_error: np.ndarray, change: ChangeSettings
) -> dict[str, Any] | None:
    known = np.flatnonzero(is_feedback & np.isfinite(served_error))
    found = changepoint.latest_rise(served_error[known], change.alpha, change.min_rows)
    if found is None:
        return None
    row = known[found.index]
    return {
        "ts": float(ts[row]),
        "errorBefore": round(found.before, 6),
        "errorAfter": round(found.after, 6),
        "statistic": round(found.statistic, 3),
        "pValue": float(f"{found.p_value:.3g}"),
        "rowsBefore": int(found.index),
        "rowsAfter": int(len(known) - found.index),
        "method": f"CUSUM, binary segmentation, alpha {change.alpha:g}, min {change.min_rows} rows per side",
    }


def _window_plan(
    is_feedback: np.ndarray,
    y: np.ndarray,
    fraction: float,
    min_holdout_rows: int,
    stratify: bool,
    seed: int,
    recent_weight: float,
    since: float | None,
    cut: dict[str, Any] | None,
) -> TrainingPlan:
    chosen = split.choose_holdout(is_feedback, y, fraction, min_holdout_rows, stratify, seed)
    weights = split.sample_weights(is_feedback[chosen.train], recent_weight)
    reason = chosen.reason
    if since is not None:
        reason += f" (too few rows since the cut at ts {since:.0f} to hold out from them)"
    return TrainingPlan(chosen.train, chosen.holdout, weights, chosen.strategy, reason, since, cut)


def _stratified_share(rows: np.ndarray, y: np.ndarray, size: int, stratify: bool, seed: int) -> np.ndarray:
    """`size` of `rows` at random, in proportion per class when `stratify` (each class keeps one row)."""
    rng = np.random.default_rng([seed, 7])
    if not stratify:
        return np.sort(rng.choice(rows, size=size, replace=False))
    picked = []
    labels = y[rows]
    for label in sorted(set(labels.tolist())):
        members = rows[labels == label]
        take = min(len(members) - 1, round(size * len(members) / len(rows)))
        picked.append(rng.choice(members, size=max(take, 0), replace=False))
    return np.sort(np.concatenate(picked))
