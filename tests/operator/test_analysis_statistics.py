"""Error rates under looks at every interval, by seeded simulation (small and fast; the benchmark in
benchmarks/canary_simulation.py runs the full comparison)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm

from feedbackloop.core.analysis import AnalysisConfig, CountObservation, LatencyCheck, Phase, evaluate, start_analysis
from feedbackloop.core.analysis.latency import LatencyDesign, latency_decision, ratio_bounds
from feedbackloop.core.analysis.sequential import NonInferiorityDesign, difference_and_information, log_likelihood_ratio

DESIGN = NonInferiorityDesign(alpha=0.05, beta=0.10, max_degradation=0.02, detectable_degradation=0.03, min_samples=200)
STREAMS, LOOKS = 1000, 40


def cumulative_counts(
    seed: int,
    difference: float,
    canary_labels: int = 200,
    stable_labels: int = 200,
    streams: int = STREAMS,
    looks: int = LOOKS,
    stable_rate: float = 0.9,
):
    rng = np.random.default_rng(seed)
    canary = rng.binomial(canary_labels, stable_rate + difference, (streams, looks)).cumsum(axis=1)
    stable = rng.binomial(stable_labels, stable_rate, (streams, looks)).cumsum(axis=1)
    intervals = np.arange(1, looks + 1)
    return canary.astype(float), canary_labels * intervals, stable.astype(float), stable_labels * intervals


def first_crossings(flags_promote: np.ndarray, flags_rollback: np.ndarray) -> tuple[float, float]:
    """(promote rate, rollback rate) when acting on the first crossing."""
    looks = flags_promote.shape[1]
    first_promote = np.where(flags_promote.any(1), flags_promote.argmax(1), looks)
    first_rollback = np.where(flags_rollback.any(1), flags_rollback.argmax(1), looks)
    return float(np.mean(first_promote < first_rollback)), float(np.mean(first_rollback < first_promote))


def sequential_rates(seed: int, difference: float, **arms: int) -> tuple[float, float]:
    canary_good, canary_total, stable_good, stable_total = cumulative_counts(seed, difference, **arms)
    d_hat, information = difference_and_information(
        canary_good, canary_total, stable_good, stable_total, DESIGN.max_degradation
    )
    log_lr = log_likelihood_ratio(d_hat, information, DESIGN)
    enough = np.minimum(canary_total, stable_total) >= DESIGN.min_samples
    return first_crossings(
        (log_lr >= DESIGN.promote_log_threshold) & enough, (log_lr <= DESIGN.rollback_log_threshold) & enough
    )


def slack(rate: float, streams: int = STREAMS) -> float:
    """Two Monte Carlo standard errors, for bounds the test meets with little room (at its design points)."""
    return 2 * np.sqrt(rate * (1 - rate) / streams)


def test_equal_canary_is_rarely_rolled_back() -> None:
    promote, rollback = sequential_rates(11, 0.0)
    assert rollback <= DESIGN.alpha and promote >= 0.95


def test_canary_inside_the_margin_keeps_alpha() -> None:
    _, rollback = sequential_rates(12, DESIGN.good_difference)
    assert rollback <= DESIGN.alpha + slack(DESIGN.alpha)


def test_regression_of_delta_is_rarely_promoted() -> None:
    promote, rollback = sequential_rates(13, -DESIGN.detectable)
    assert promote <= DESIGN.beta and rollback >= 0.85


def test_small_canary_arm_keeps_beta() -> None:
    promote, _ = sequential_rates(14, -DESIGN.detectable, canary_labels=50, stable_labels=200)
    assert promote <= DESIGN.beta + slack(DESIGN.beta)


def test_peeking_at_a_fixed_sample_z_test_breaks_alpha() -> None:
    """The reason for all this: the same data judged by a z-test at every look."""
    canary_good, canary_total, stable_good, stable_total = cumulative_counts(15, 0.0)
    pooled = (canary_good + stable_good) / (canary_total + stable_total)
    z = (canary_good / canary_total - stable_good / stable_total) / np.sqrt(
        pooled * (1 - pooled) * (1 / canary_total + 1 / stable_total)
    )
    peeked_rollback = float(np.mean((z < -norm.ppf(0.95)).any(axis=1)))
    assert peeked_rollback > 3 * DESIGN.alpha


def test_state_machine_agrees_with_the_vectorized_test() -> None:
    config = AnalysisConfig(
        alpha=0.05,
        beta=0.10,
        max_degradation=0.02,
        detectable_degradation=0.03,
        min_samples=200,
        latency=LatencyCheck(enabled=False),
        max_duration_seconds=1e9,
    )
    canary_good, canary_total, stable_good, stable_total = cumulative_counts(16, -0.02, streams=30)
    d_hat, information = difference_and_information(canary_good, canary_total, stable_good, stable_total, 0.02)
    log_lr = log_likelihood_ratio(d_hat, information, DESIGN)
    for stream in range(30):
        state = start_analysis(0.0)
        for index in range(LOOKS):
            observation = CountObservation(
                canary_good[stream, index], canary_total[index], stable_good[stream, index], stable_total[index]
            )
            state, _, _ = evaluate(config, state, {"accuracy": observation}, float(index + 1))
            if state.phase.final:
                break
        crossed = np.flatnonzero(
            (log_lr[stream] >= DESIGN.promote_log_threshold) | (log_lr[stream] <= DESIGN.rollback_log_threshold)
        )
        if crossed.size == 0:
            assert state.phase is Phase.RUNNING
            continue
        expected = Phase.SUCCESSFUL if log_lr[stream, crossed[0]] > 0 else Phase.FAILED
        assert (state.phase, state.looks) == (expected, crossed[0] + 1)


EDGES = np.append(0.01 * 1.25 ** np.arange(25), np.inf)
LATENCY = LatencyDesign(alpha=0.05, beta=0.10, max_increase=0.2, min_samples=500)


def latency_rates(seed: int, slowdown: float, streams: int = 400, looks: int = 20) -> tuple[float, float]:
    rng = np.random.default_rng(seed)

    def arm(median: float) -> np.ndarray:
        probabilities = np.diff(norm.cdf(np.log(EDGES / median) / 0.6), prepend=0.0)
        return rng.multinomial(1000, probabilities, size=(streams, looks)).cumsum(axis=1).astype(float)

    stable, canary = arm(0.08), arm(0.08 * slowdown)
    fail, passed = latency_decision(
        [ratio_bounds(q, EDGES, canary, stable, LATENCY) for q in LATENCY.quantiles], LATENCY.max_increase
    )
    return first_crossings(passed, fail)


@pytest.mark.parametrize("slowdown", [1.0, 1.1])
def test_latency_within_tolerance_is_rarely_failed(slowdown: float) -> None:
    promote, rollback = latency_rates(21, slowdown)
    assert rollback <= LATENCY.alpha and promote >= 0.9


def test_latency_at_the_limit_is_rarely_passed() -> None:
    promote, _ = latency_rates(22, 1.2)
    assert promote <= LATENCY.beta


def test_much_slower_latency_is_failed() -> None:
    _, rollback = latency_rates(23, 1.4)
    assert rollback >= 0.95
