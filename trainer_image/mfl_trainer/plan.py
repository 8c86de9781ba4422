"""Which rows to train on and which to judge on: the concept since the error last rose, when it is known.

After a drift the rows that matter are the ones after it. The trainer finds the most recent rise in the
served model's error (changepoint.latest_rise) and then:
- with at least `min_rows` labelled rows since that cut, judges by cross-fitting on them: each of those
  rows is predicted by a model fitted on the other folds (5, stratified), so every new-concept row is
  both trained on (by the published model) and judged on (out of fold), and the champion is scored on
  the same rows. A holdout would take the newest rows, often the only new-concept ones, away from the
  challenger, or leave the gate a few dozen rows to decide on. Two recipes are cross-fitted, the rows
  since the cut alone and those plus the older history (base data and the window before the cut), and
  the better one on the rows since the cut is trained: the window size chosen by its estimated error on
  the newest concept (Klinkenberg & Joachims 2000). After an abrupt drift the first wins; in the middle
  of a gradual one, or when the change was small, the history still helps and the second does;
- with fewer, holds out a stratified share of those rows and trains on everything else (base data and the
  window, as without a cut): the gate still asks about the new concept;
- remembers the cut (`conceptSince`) in the version's metadata, so that the next retraining, which may
  see no rise (its champion already fits the new concept), still leaves the older concept and the base
  data out.
Without a cut (or with change detection off) the holdout is the newest feedback (split.choose_holdout) and
training uses the base data and the window, feedback weighted `recent_weight`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import changepoint, split

POST_CHANGE = "post_change_stratified"
CROSS_FITTED = "post_change_cross_fitted"
FOLDS = 5
SINCE_CUT, WITH_HISTORY = "sinceCut", "withHistory"


@dataclass(frozen=True)
class ChangeSettings:
    enabled: bool = True
    alpha: float = changepoint.DEFAULT_ALPHA
    min_rows: int = changepoint.DEFAULT_MIN_SEGMENT  # per side of a change, and to train on after one


@dataclass(frozen=True)
class Recipe:
    """What a cross-fitted challenger trains on besides the rows since the cut."""

    name: str
    extra: np.ndarray  # table rows from before the cut
    extra_weights: np.ndarray
    segment_weight: float  # weight of the rows since the cut


@dataclass(frozen=True)
class TrainingPlan:
    train: np.ndarray  # table row indices
    holdout: np.ndarray
    weights: np.ndarray  # one per train row
    strategy: str
    reason: str
    concept_since: float | None  # prediction time from which the current concept is trained on
    cut: dict[str, Any] | None  # the change found in this run, for metadata and the report
    folds: np.ndarray | None = None  # cross-fitting: the fold of each holdout row, and the recipes to try
    recipes: tuple[Recipe, ...] = ()

    @property
    def split(self) -> split.Split:
        return split.Split(self.train, self.holdout, self.strategy, self.reason)

    def rows_of(self, recipe: Recipe) -> tuple[np.ndarray, np.ndarray]:
        """(train rows, weights) of a cross-fitted recipe: its extra rows and every judged row."""
        return (
            np.concatenate([recipe.extra, self.holdout]),
            np.concatenate([recipe.extra_weights, np.full(len(self.holdout), recipe.segment_weight)]),
        )


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
    origin = f"the cut at ts {since:.0f}" if cut else f"the champion's cut at ts {since:.0f}"
    if len(segment) >= change.min_rows:
        folds = _stratified_folds(segment, y, stratify, seed)
        before = np.setdiff1d(np.arange(len(y)), segment)
        recipes = (
            Recipe(SINCE_CUT, np.array([], dtype=np.int64), np.array([]), 1.0),
            Recipe(WITH_HISTORY, before, split.sample_weights(is_feedback[before], recent_weight), recent_weight),
        )
        reason = f"all {len(segment)} feedback rows since {origin}, cross-fitted in {FOLDS} folds"
        return TrainingPlan(segment, segment, np.ones(len(segment)), CROSS_FITTED, reason, since, cut, folds, recipes)
    holdout = _stratified_share(segment, y, max(math.ceil(fraction * len(segment)), min_holdout_rows), stratify, seed)
    train = np.setdiff1d(np.arange(len(y)), holdout)
    reason = (
        f"{len(holdout)} of the {len(segment)} feedback rows since {origin} (stratified; fewer than "
        f"{change.min_rows} to train on alone): trained on the base data and the window as well"
    )
    weights = split.sample_weights(is_feedback[train], recent_weight)
    return TrainingPlan(train, holdout, weights, POST_CHANGE, reason, since, cut)


FitPredict = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def out_of_fold(training: TrainingPlan, recipe: Recipe, fit_predict: FitPredict) -> np.ndarray:
    """Predictions for the holdout rows, each from a model of `recipe` fitted without its fold.
    `fit_predict(train_rows, weights, test_rows)` fits on table rows and predicts others."""
    assert training.folds is not None
    predictions: np.ndarray | None = None
    for fold in range(FOLDS):
        test = training.folds == fold
        if not test.any():
            continue
        rows = np.concatenate([recipe.extra, training.holdout[~test]])
        weights = np.concatenate([recipe.extra_weights, np.full(int((~test).sum()), recipe.segment_weight)])
        predicted = np.asarray(fit_predict(rows, weights, training.holdout[test]))
        if predictions is None:
            predictions = np.empty(len(training.holdout), dtype=predicted.dtype)
        elif predictions.dtype != predicted.dtype:
            predictions = predictions.astype(object)
        predictions[test] = predicted
    assert predictions is not None
    return predictions


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


def best_recipe(
    training: TrainingPlan, fit_predict: FitPredict, score: Callable[[np.ndarray], float]
) -> tuple[Recipe, np.ndarray, dict[str, float]]:
    """The recipe whose out-of-fold predictions score best (`score`: higher is better), those predictions,
    and every recipe's score. Ties go to the first recipe, the one with less history."""
    scored = [(recipe, out_of_fold(training, recipe, fit_predict)) for recipe in training.recipes]
    scores = {recipe.name: score(predicted) for recipe, predicted in scored}
    recipe, predicted = max(scored, key=lambda item: scores[item[0].name])
    return recipe, predicted, scores


def unseen_by_champion(ts: np.ndarray, seen_until: float | None, min_rows: int) -> np.ndarray:
    """Which judged rows the champion cannot have trained on (predicted after its data window ended), when
    there are at least `min_rows` of them; else all (the comparison then favours the champion, never the
    challenger). A champion scored on its own training rows looks better than it is: after it was trained
    on the rows since a cut, every later challenger was judged against its in-sample accuracy."""
    if seen_until is None:
        return np.ones(len(ts), dtype=bool)
    unseen = np.nan_to_num(ts, nan=-np.inf) > seen_until
    return unseen if int(unseen.sum()) >= min_rows else np.ones(len(ts), dtype=bool)


def _stratified_folds(rows: np.ndarray, y: np.ndarray, stratify: bool, seed: int) -> np.ndarray:
    """A fold per row, 0..FOLDS-1, dealt round-robin in a random order within each class."""
    rng = np.random.default_rng([seed, 11])
    folds = np.empty(len(rows), dtype=np.int64)
    groups = [np.flatnonzero(y[rows] == label) for label in sorted(set(y[rows].tolist()))] if stratify else []
    offset = 0
    for members in groups or [np.arange(len(rows))]:
        folds[rng.permutation(members)] = (np.arange(len(members)) + offset) % FOLDS
        offset += len(members)
    return folds


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
