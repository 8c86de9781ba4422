"""The offline CUSUM change-point test on the served error stream (mfl_trainer.changepoint)."""

from __future__ import annotations

import numpy as np
import pytest

from mfl_trainer import changepoint


def bernoulli(rates_and_lengths: list[tuple[float, int]], seed: int) -> np.ndarray:
    """0/1 errors: consecutive segments, each with its own error rate."""
    rng = np.random.default_rng(seed)
    return np.concatenate([(rng.random(n) < rate).astype(np.float64) for rate, n in rates_and_lengths])


# --- Kolmogorov's tail ---------------------------------------------------------------------------


@pytest.mark.parametrize("c, tail", [(1.358, 0.05), (1.628, 0.01), (1.224, 0.10), (1.949, 0.001)])
def test_kolmogorov_tail_known_quantiles(c, tail):
    assert changepoint.kolmogorov_tail(c) == pytest.approx(tail, rel=0.01)


def test_kolmogorov_tail_is_a_decreasing_probability():
    grid = np.linspace(0.0, 4.0, 401)
    values = [changepoint.kolmogorov_tail(float(c)) for c in grid]
    assert all(0.0 <= v <= 1.0 for v in values)
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert values[0] == 1.0 and changepoint.kolmogorov_tail(0.3) > 0.99999 and values[-1] < 1e-12
    # Continuous where the series takes over from the constant (c = 0.2)
    assert changepoint.kolmogorov_tail(0.2001) == pytest.approx(1.0, abs=1e-9)


# --- the single test -----------------------------------------------------------------------------


def test_cusum_statistic_and_split_by_hand():
    errors = np.array([0.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    change = changepoint.cusum_test(errors)
    # mean 0.5, std 0.5; S_3 = -1.5 is the largest |S_k|: T = 1.5 / (0.5 * sqrt(6))
    assert change.index == 3 and change.before == 0.0 and change.after == 1.0 and change.rise
    assert change.statistic == pytest.approx(1.5 / (0.5 * np.sqrt(6)))
    assert change.p_value == pytest.approx(changepoint.kolmogorov_tail(change.statistic))
    assert not changepoint.cusum_test(errors[::-1]).rise


@pytest.mark.parametrize("errors", [np.zeros(500), np.ones(500), np.full(500, 0.25), np.array([1.0])])
def test_constant_or_single_stream_has_no_change(errors):
    assert changepoint.cusum_test(errors) is None
    assert changepoint.find_changes(errors) == []
    assert changepoint.latest_rise(errors) is None


@pytest.mark.parametrize("value", [0.3, 1 / 3])
def test_constant_regression_errors_are_not_split(value):
    errors = np.full(500, value)
    assert changepoint.find_changes(errors, min_segment=10) == []
    assert changepoint.latest_rise(errors, min_segment=10) is None
    steps = np.concatenate([np.full(500, 0.1), np.full(500, value), np.full(500, 0.2)])
    assert [c.index for c in changepoint.find_changes(steps)] == [500, 1000]


@pytest.mark.parametrize("value", [0.3, 1 / 3])
def test_cusum_test_of_a_constant_float_stream_is_none(value):
    assert changepoint.cusum_test(np.full(500, value)) is None


def test_false_alarm_rate_without_change_is_within_the_level():
    """i.i.d. Bernoulli(0.2): the test at alpha 0.05 (asymptotic) rejects at most about 5% of streams."""
    streams = [bernoulli([(0.2, 500)], seed) for seed in range(200)]
    rejected = sum(changepoint.cusum_test(x).p_value <= 0.05 for x in streams)
    found = sum(bool(changepoint.find_changes(x, alpha=0.05, min_segment=50)) for x in streams)
    assert rejected / 200 <= 0.08
    assert found / 200 <= 0.08
    # ...and at the trainer's default level on long streams, almost never
    long_streams = [bernoulli([(0.2, 2000)], seed) for seed in range(1000, 1050)]
    assert sum(bool(changepoint.find_changes(x)) for x in long_streams) <= 2
    assert all(changepoint.latest_rise(x) is None for x in long_streams[:20])


def test_rejects_at_the_nominal_rate_roughly():
    """Not a test that never rejects: at alpha 0.2 a fair share of no-change streams is rejected."""
    streams = [bernoulli([(0.2, 500)], seed) for seed in range(200)]
    rejected = sum(changepoint.cusum_test(x).p_value <= 0.2 for x in streams)
    assert 0.08 <= rejected / 200 <= 0.25


@pytest.mark.parametrize("seed", range(5))
def test_a_jump_is_located_and_significant(seed):
    errors = bernoulli([(0.1, 1200), (0.5, 800)], seed)
    changes = changepoint.find_changes(errors)
    assert len(changes) == 1
    change = changes[0]
    assert abs(change.index - 1200) <= 30
    assert change.p_value < 1e-6 and change.rise
    assert change.before == pytest.approx(errors[: change.index].mean())
    assert change.after == pytest.approx(errors[change.index :].mean())
    assert 0.05 < change.before < 0.15 and 0.4 < change.after < 0.6
    rise = changepoint.latest_rise(errors)
    assert rise is not None and rise.index == change.index


def test_latest_rise_skips_a_later_fall():
    """Low, high, medium: a drift, then a better (not perfect) version promoted. The rise is returned,
    re-measured against its neighbouring changes (not against the whole stream)."""
    errors = bernoulli([(0.05, 1000), (0.5, 600), (0.25, 600)], seed=3)
    changes = changepoint.find_changes(errors)
    assert [c.rise for c in changes] == [True, False]
    assert abs(changes[0].index - 1000) <= 30 and abs(changes[1].index - 1600) <= 30
    rise = changepoint.latest_rise(errors)
    assert rise is not None and rise.index == changes[0].index
    assert rise.before == pytest.approx(errors[: rise.index].mean())
    assert rise.after == pytest.approx(errors[rise.index : changes[1].index].mean())
    assert 0.4 < rise.after < 0.6


def test_latest_rise_is_the_most_recent_of_two():
    errors = bernoulli([(0.05, 800), (0.3, 800), (0.7, 600)], seed=4)
    rise = changepoint.latest_rise(errors)
    assert rise is not None and abs(rise.index - 1600) <= 30
    assert 0.2 < rise.before < 0.4 and rise.after > 0.6


def test_only_falls_give_no_rise():
    errors = bernoulli([(0.6, 800), (0.3, 600), (0.05, 600)], seed=5)
    changes = changepoint.find_changes(errors)
    assert len(changes) == 2 and not any(c.rise for c in changes)
    assert changepoint.latest_rise(errors) is None


def test_segments_shorter_than_twice_min_segment_are_not_split():
    jump = np.concatenate([np.zeros(100), np.ones(99)])  # an obvious change, but 199 < 2 * 100 rows
    assert changepoint.find_changes(jump, min_segment=100) == []
    assert changepoint.latest_rise(jump, min_segment=100) is None
    longer = np.concatenate([np.zeros(100), np.ones(100)])
    assert [c.index for c in changepoint.find_changes(longer, min_segment=100)] == [100]
    assert [c.index for c in changepoint.find_changes(jump, min_segment=50)] == [100]


def test_a_change_closer_to_the_edge_than_min_segment_is_clamped_to_it():
    """Only 50 rows of the new error level: the cut is placed min_segment rows from the end, keeping a few
    old rows rather than missing the rise; with min_segment 50 it is located exactly."""
    errors = np.concatenate([np.zeros(950), np.ones(50)])
    [clamped] = changepoint.find_changes(errors, min_segment=100)
    assert clamped.index == 900 and clamped.rise
    assert [c.index for c in changepoint.find_changes(errors, min_segment=50)] == [950]


def test_alpha_decides():
    errors = bernoulli([(0.2, 300), (0.3, 300)], seed=6)
    change = changepoint.cusum_test(errors)
    assert 1e-4 < change.p_value < 0.05  # a moderate change: significant at one level and not another
    assert changepoint.find_changes(errors, alpha=0.05, min_segment=50)
    assert changepoint.find_changes(errors, alpha=change.p_value / 2, min_segment=50) == []


def test_regression_errors():
    """Absolute errors of a regression model: floats, skewed; the mean doubles at row 900."""
    rng = np.random.default_rng(7)
    errors = np.abs(np.concatenate([rng.normal(0, 1.0, 900), rng.normal(0, 2.0, 500), rng.normal(0, 1.2, 400)]))
    rise = changepoint.latest_rise(errors)
    assert rise is not None and abs(rise.index - 900) <= 40
    assert rise.after > 1.8 * rise.before
    changes = changepoint.find_changes(errors)
    assert changes[-1].index > 1300 and not changes[-1].rise  # the later improvement is a fall


def test_a_short_run_at_the_start_does_not_mask_a_later_rise():
    errors = bernoulli([(1.0, 90), (0.1, 910), (0.4, 300)], seed=0)
    assert changepoint.find_changes(errors[90:])  # without the head run the rise is found (p ~ 1e-19)
    rise = changepoint.latest_rise(errors)
    assert rise is not None and abs(rise.index - 1000) <= 30
