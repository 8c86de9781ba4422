"""Which rows the trainer trains and judges on, with and without a change point (mfl_trainer.plan)."""

from __future__ import annotations

import numpy as np
import pytest

from mfl_trainer import plan, split

N_BASE = 300
START = 1_764_000_000.0
STEP = 60.0
SETTINGS = {"fraction": 0.25, "min_holdout_rows": 30, "stratify": True, "seed": 0, "recent_weight": 3.0}


def table(
    n_feedback: int = 1000, rates: tuple[tuple[float, int], ...] | None = ((0.1, 700), (0.5, 300)), seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(is_feedback, y, ts, served_error): base rows first, then feedback in time order whose served error
    has the given (rate, rows) segments; all NaN when `rates` is None (logs without predictions)."""
    rng = np.random.default_rng(seed)
    n = N_BASE + n_feedback
    is_feedback = np.arange(n) >= N_BASE
    y = (rng.random(n) < 0.3).astype(np.int64)  # imbalanced classes
    ts = np.concatenate([np.full(N_BASE, np.nan), START + STEP * np.arange(n_feedback)])
    served = np.full(n, np.nan)
    if rates is not None:
        assert sum(count for _, count in rates) == n_feedback
        served[N_BASE:] = np.concatenate([(rng.random(count) < rate).astype(float) for rate, count in rates])
    return is_feedback, y, ts, served


def make(
    is_feedback, y, ts, served, change: plan.ChangeSettings | None = None, inherited: float | None = None, **overrides
) -> plan.TrainingPlan:
    return plan.plan_training(
        is_feedback,
        y,
        ts,
        served,
        **{**SETTINGS, **overrides},
        change=change or plan.ChangeSettings(),
        inherited_since=inherited,
    )


def assert_window_plan(training: plan.TrainingPlan, is_feedback, y, **overrides) -> None:
    """The plan without a cut: split.choose_holdout's holdout, base and feedback trained on."""
    settings = {**SETTINGS, **overrides}
    expected = split.choose_holdout(
        is_feedback, y, settings["fraction"], settings["min_holdout_rows"], settings["stratify"], settings["seed"]
    )
    assert np.array_equal(training.train, expected.train)
    assert np.array_equal(training.holdout, expected.holdout)
    assert training.strategy == expected.strategy
    weights = split.sample_weights(is_feedback[expected.train], settings["recent_weight"])
    assert np.array_equal(training.weights, weights)
    assert training.folds is None and training.recipes == ()
    assert training.split.strategy == expected.strategy


# --- without a cut -------------------------------------------------------------------------------


def test_without_served_errors_the_plan_is_the_window_plan():
    is_feedback, y, ts, served = table(rates=None)
    training = make(is_feedback, y, ts, served)
    assert_window_plan(training, is_feedback, y)
    assert training.cut is None and training.concept_since is None
    assert training.strategy == split.TIME_ORDERED
    assert training.reason == split.choose_holdout(is_feedback, y, 0.25, 30, True, 0).reason
    assert len(training.holdout) == 250 and np.array_equal(training.holdout, np.arange(N_BASE + 750, N_BASE + 1000))


def test_without_a_rise_the_plan_is_the_window_plan():
    is_feedback, y, ts, served = table(rates=((0.2, 1000),))
    training = make(is_feedback, y, ts, served)
    assert_window_plan(training, is_feedback, y)
    assert training.cut is None and training.concept_since is None


def test_a_fall_is_not_a_cut():
    is_feedback, y, ts, served = table(rates=((0.5, 500), (0.1, 500)))
    training = make(is_feedback, y, ts, served)
    assert training.cut is None
    assert_window_plan(training, is_feedback, y)


def test_change_detection_off_ignores_a_rise_and_an_inherited_cut():
    is_feedback, y, ts, served = table()
    off = plan.ChangeSettings(enabled=False)
    for inherited in (None, START + STEP * 500):
        training = make(is_feedback, y, ts, served, change=off, inherited=inherited)
        assert training.cut is None and training.concept_since is None
        assert_window_plan(training, is_feedback, y)
    assert make(is_feedback, y, ts, served).cut is not None  # on: the same rows have a cut


# --- a cut with enough rows since: cross-fitting ---------------------------------------------------


def test_an_abrupt_rise_gives_a_cross_fitted_plan_on_the_rows_since_the_cut():
    is_feedback, y, ts, served = table()
    training = make(is_feedback, y, ts, served)

    cut = training.cut
    assert cut is not None and training.strategy == plan.CROSS_FITTED
    assert abs((cut["ts"] - START) / STEP - 700) <= 30
    assert cut["pValue"] < 1e-6 and cut["errorBefore"] < 0.2 and cut["errorAfter"] > 0.4
    assert cut["rowsBefore"] + cut["rowsAfter"] == 1000 and START + STEP * cut["rowsBefore"] == cut["ts"]
    assert training.concept_since == cut["ts"]
    segment = np.flatnonzero(is_feedback & (ts >= cut["ts"]))
    assert len(segment) == cut["rowsAfter"]
    assert np.array_equal(training.holdout, segment) and np.array_equal(training.train, segment)
    assert np.array_equal(training.weights, np.ones(len(segment)))
    assert str(len(segment)) in training.reason and "cross-fitted" in training.reason


def test_folds_are_balanced_per_class():
    is_feedback, y, ts, served = table()
    training = make(is_feedback, y, ts, served)
    folds = training.folds
    assert folds is not None and len(folds) == len(training.holdout)
    assert set(folds.tolist()) == set(range(plan.FOLDS))
    labels = y[training.holdout]
    for label in (0, 1):
        counts = np.bincount(folds[labels == label], minlength=plan.FOLDS)
        assert counts.max() - counts.min() <= 1, (label, counts)
    totals = np.bincount(folds, minlength=plan.FOLDS)
    assert totals.max() - totals.min() <= 1
    again = make(is_feedback, y, ts, served)
    assert np.array_equal(again.folds, folds)  # deterministic for a seed
    assert not np.array_equal(make(is_feedback, y, ts, served, seed=1).folds, folds)


def test_folds_without_stratification_are_balanced():
    is_feedback, y, ts, served = table()
    training = make(is_feedback, y, ts, served, stratify=False)
    totals = np.bincount(training.folds, minlength=plan.FOLDS)
    assert totals.max() - totals.min() <= 1


def test_the_two_recipes_and_their_rows():
    is_feedback, y, ts, served = table()
    training = make(is_feedback, y, ts, served)
    segment = training.holdout
    assert [r.name for r in training.recipes] == [plan.SINCE_CUT, plan.WITH_HISTORY]
    since_cut, with_history = training.recipes

    rows, weights = training.rows_of(since_cut)
    assert np.array_equal(rows, segment) and np.array_equal(weights, np.ones(len(segment)))

    rows, weights = training.rows_of(with_history)
    before = np.setdiff1d(np.arange(len(y)), segment)
    assert np.array_equal(rows, np.concatenate([before, segment]))
    assert len(np.unique(rows)) == len(y)  # every row once: the base data, the window before the cut, since
    expected = np.where(is_feedback[rows], 3.0, 1.0)  # feedback weighs recentWeight on both sides of the cut
    assert np.array_equal(weights, expected)
    assert rows.dtype.kind == "i"


# --- an inherited cut ---------------------------------------------------------------------------------


def test_an_inherited_cut_is_kept_without_a_new_rise():
    is_feedback, y, ts, served = table(rates=((0.15, 1000),))
    since = START + STEP * 400
    training = make(is_feedback, y, ts, served, inherited=since)
    assert training.cut is None and training.concept_since == since
    assert training.strategy == plan.CROSS_FITTED
    assert np.array_equal(training.holdout, np.arange(N_BASE + 400, N_BASE + 1000))
    assert "champion's cut" in training.reason
    # without a champion's cut the same rows are a window plan
    assert make(is_feedback, y, ts, served).concept_since is None


def test_an_inherited_cut_applies_without_served_errors():
    is_feedback, y, ts, served = table(rates=None)
    since = START + STEP * 600
    training = make(is_feedback, y, ts, served, inherited=since)
    assert training.concept_since == since and training.cut is None
    assert np.array_equal(training.holdout, np.arange(N_BASE + 600, N_BASE + 1000))


def test_rows_without_a_served_prediction_are_skipped_by_the_test_but_trained_on():
    """Older logs without predictions interleaved with newer ones: the cut is found among the rows with
    a served error, and every feedback row since it (known error or not) is trained and judged on."""
    is_feedback, y, ts, served = table()
    unknown = np.flatnonzero(is_feedback)[::3]
    served[unknown] = np.nan
    training = make(is_feedback, y, ts, served)
    cut = training.cut
    assert cut is not None and abs((cut["ts"] - START) / STEP - 700) <= 30
    known_after = np.isfinite(served) & (ts >= cut["ts"])
    assert cut["rowsAfter"] == known_after.sum() and cut["rowsBefore"] + cut["rowsAfter"] == 1000 - len(unknown)
    assert np.array_equal(training.holdout, np.flatnonzero(is_feedback & (ts >= cut["ts"])))
    assert np.isnan(served[training.holdout]).sum() > 50


def test_a_new_rise_replaces_the_inherited_cut():
    is_feedback, y, ts, served = table()
    training = make(is_feedback, y, ts, served, inherited=START + STEP * 100)
    assert training.cut is not None and training.concept_since == training.cut["ts"]
    assert training.concept_since > START + STEP * 600


def test_a_short_segment_holds_out_a_stratified_share_of_it():
    """80 rows since the cut: fewer than min_rows (100) to train on alone, enough for a holdout of 30."""
    is_feedback, y, ts, served = table(rates=((0.2, 1000),))
    since = START + STEP * 920
    training = make(is_feedback, y, ts, served, inherited=since)
    segment = np.arange(N_BASE + 920, N_BASE + 1000)

    assert training.strategy == plan.POST_CHANGE and training.cut is None and training.concept_since == since
    assert training.folds is None and training.recipes == ()
    assert set(training.holdout.tolist()) <= set(segment.tolist())
    assert abs(len(training.holdout) - 30) <= 2  # max(ceil(0.25 * 80), 30), rounded per class
    for label in (0, 1):
        share = np.mean(y[training.holdout] == label)
        assert abs(share - np.mean(y[segment] == label)) < 0.1
    assert np.intersect1d(training.train, training.holdout).size == 0
    assert np.array_equal(np.union1d(training.train, training.holdout), np.arange(len(y)))
    assert (~is_feedback[training.train]).sum() == N_BASE  # the base data is trained on
    assert np.array_equal(training.weights, np.where(is_feedback[training.train], 3.0, 1.0))
    assert "80 feedback rows since" in training.reason


def test_a_short_segment_without_stratification():
    is_feedback, y, ts, served = table(rates=((0.2, 1000),))
    training = make(is_feedback, y, ts, served, inherited=START + STEP * 920, stratify=False)
    assert training.strategy == plan.POST_CHANGE and len(training.holdout) == 30
    assert training.holdout.min() >= N_BASE + 920


def test_too_few_rows_since_the_cut_for_a_holdout_keep_the_cut():
    """50 rows since the cut < 2 * min_holdout_rows: the newest feedback is the holdout, the cut is kept."""
    is_feedback, y, ts, served = table(rates=((0.2, 1000),))
    since = START + STEP * 950
    training = make(is_feedback, y, ts, served, inherited=since)
    assert_window_plan(training, is_feedback, y)
    assert training.concept_since == since and training.cut is None
    assert "too few rows since the cut" in training.reason


def test_a_found_cut_with_too_few_rows_for_a_holdout_is_kept():
    """min_rows 60 per side, min_holdout_rows 50: 80 rows after the rise cannot give 2 holdouts of 50."""
    is_feedback, y, ts, served = table(rates=((0.05, 920), (0.9, 80)))
    training = make(is_feedback, y, ts, served, change=plan.ChangeSettings(min_rows=60), min_holdout_rows=50)
    assert training.cut is not None and training.concept_since == training.cut["ts"]
    assert_window_plan(training, is_feedback, y, min_holdout_rows=50)


# --- cross-fitting ------------------------------------------------------------------------------


class RecordingFit:
    """A fake fit_predict: remembers what each model was fitted on and predicts the row index."""

    def __init__(self) -> None:
        self.calls: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def __call__(self, rows: np.ndarray, weights: np.ndarray, test: np.ndarray) -> np.ndarray:
        self.calls.append((rows.copy(), weights.copy(), test.copy()))
        return test.astype(np.int64)


@pytest.mark.parametrize("recipe_index", [0, 1])
def test_out_of_fold_never_predicts_a_row_with_a_model_fitted_on_it(recipe_index):
    is_feedback, y, ts, served = table()
    training = make(is_feedback, y, ts, served)
    recipe = training.recipes[recipe_index]
    fit = RecordingFit()
    predicted = plan.out_of_fold(training, recipe, fit)

    assert np.array_equal(predicted, training.holdout)  # each row's prediction lands in its place
    assert len(fit.calls) == plan.FOLDS
    tested = np.concatenate([test for _, _, test in fit.calls])
    assert np.array_equal(np.sort(tested), training.holdout)  # every judged row predicted exactly once
    for rows, weights, test in fit.calls:
        assert np.intersect1d(rows, test).size == 0
        assert len(weights) == len(rows)
        assert set(recipe.extra.tolist()) <= set(rows.tolist())
        in_segment = np.isin(rows, training.holdout)
        assert np.all(weights[in_segment] == recipe.segment_weight)
        # the other folds of the segment are all trained on
        assert np.array_equal(np.sort(rows[in_segment]), np.setdiff1d(training.holdout, test))


def test_out_of_fold_with_labels_of_several_types():
    is_feedback, y, ts, served = table()
    training = make(is_feedback, y, ts, served)
    fold_of = dict(zip(training.holdout.tolist(), training.folds.tolist()))

    def fit_predict(rows, weights, test):
        fold = fold_of[int(test[0])]
        return np.array(["yes"] * len(test)) if fold == 0 else np.array([fold] * len(test))

    predicted = plan.out_of_fold(training, training.recipes[0], fit_predict)
    assert predicted.dtype == object
    assert predicted.tolist() == ["yes" if f == 0 else f for f in training.folds.tolist()]


def test_best_recipe_picks_the_higher_score():
    is_feedback, y, ts, served = table()
    training = make(is_feedback, y, ts, served)

    def trained_rows(rows, weights, test):
        return np.full(len(test), float(len(rows)))

    fewer, predicted, scores = plan.best_recipe(training, trained_rows, lambda p: -float(p.mean()))
    assert fewer.name == plan.SINCE_CUT and set(scores) == {plan.SINCE_CUT, plan.WITH_HISTORY}
    assert scores[plan.SINCE_CUT] > scores[plan.WITH_HISTORY]
    assert -predicted.mean() == scores[plan.SINCE_CUT]
    more, predicted, scores = plan.best_recipe(training, trained_rows, lambda p: float(p.mean()))
    assert more.name == plan.WITH_HISTORY and predicted.mean() == scores[plan.WITH_HISTORY]
    assert predicted.min() > len(training.holdout)  # predictions of the with-history models


def test_best_recipe_ties_go_to_the_first_recipe():
    is_feedback, y, ts, served = table()
    training = make(is_feedback, y, ts, served)
    recipe, _, scores = plan.best_recipe(training, RecordingFit(), lambda p: 0.5)
    assert recipe.name == plan.SINCE_CUT and scores == {plan.SINCE_CUT: 0.5, plan.WITH_HISTORY: 0.5}
    recipe, _, _ = plan.best_recipe(training, RecordingFit(), lambda p: -np.inf)
    assert recipe.name == plan.SINCE_CUT
