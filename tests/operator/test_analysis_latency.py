"""The latency check from histogram buckets (feedbackloop.core.analysis.latency)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.special import log_ndtr
from scipy.stats import mannwhitneyu, norm

from feedbackloop.core.analysis import latency
from feedbackloop.core.analysis.latency import (
    HistogramObservation,
    LatencyDesign,
    bin_counts,
    bucket_span,
    histogram_quantile,
    judge_latency,
    mixture_boundary_z,
    quantile_bounds,
    rank_test,
    value_at_rank,
)
from feedbackloop.core.analysis.outcome import Outcome

EDGES = 0.01 * 1.25 ** np.arange(25)  # fine buckets, 10 ms .. 2.1 s
DESIGN = LatencyDesign(alpha=0.05, beta=0.10, max_increase=0.2, min_samples=500)


def lognormal_buckets(median: float, count: float, edges: np.ndarray = EDGES) -> dict[str, float]:
    """Expected cumulative bucket counts of a log-normal latency (no sampling noise)."""
    cumulative = count * norm.cdf(np.log(edges / median) / 0.6)
    return {**{f"{edge:g}": float(c) for edge, c in zip(edges, cumulative)}, "+Inf": float(count)}


class TestBuckets:
    def test_cumulative_string_buckets_become_bins(self) -> None:
        edges, counts = bin_counts({"+Inf": 10, "0.5": 9, "0.1": 2, "0.25": 7})
        assert list(edges) == [0.1, 0.25, 0.5, math.inf]
        assert list(counts) == [2, 5, 2, 1]

    def test_slightly_decreasing_extrapolated_counts_are_repaired(self) -> None:
        _, counts = bin_counts({"0.1": 5.2, "0.25": 5.1, "+Inf": 8})
        assert np.all(counts >= 0) and counts.sum() == pytest.approx(8)

    def test_negative_counts_are_refused(self) -> None:
        with pytest.raises(ValueError):
            bin_counts({"0.1": -1, "+Inf": 3})

    def test_quantile_interpolates_like_promql(self) -> None:
        edges, counts = bin_counts({"0.1": 500, "0.25": 1500, "0.5": 1900, "+Inf": 2000})
        assert float(histogram_quantile(0.5, edges, counts)) == pytest.approx(0.175)
        assert float(histogram_quantile(0.1, edges, counts)) == pytest.approx(0.04)
        assert math.isinf(float(histogram_quantile(0.99, edges, counts)))  # above the largest finite edge

    def test_value_at_rank_edges(self) -> None:
        edges, counts = bin_counts({"0.1": 500, "0.25": 1500, "+Inf": 2000})
        assert float(value_at_rank(0, edges, counts)) == 0.0
        assert math.isinf(float(value_at_rank(2001, edges, counts)))
        assert float(value_at_rank(1800, edges, counts, above_largest_edge="edge")) == 0.25
        assert math.isnan(float(value_at_rank(1, edges, np.zeros(3))))

    def test_bucket_span(self) -> None:
        edges, counts = bin_counts({"0.1": 500, "0.25": 1500, "+Inf": 2000})
        assert bucket_span(0.5, edges, counts) == pytest.approx(2.5)
        assert math.isinf(bucket_span(0.1, edges, counts))


class TestRankTest:
    def test_matches_scipy_on_tied_data(self) -> None:
        canary_counts, stable_counts = np.array([3.0, 10, 7, 5]), np.array([8.0, 9, 4, 2])
        test = rank_test(canary_counts, stable_counts)
        canary = np.repeat(np.arange(4), canary_counts.astype(int))
        stable = np.repeat(np.arange(4), stable_counts.astype(int))
        reference = mannwhitneyu(canary, stable, alternative="greater", use_continuity=False, method="asymptotic")
        assert float(test.u) == pytest.approx(reference.statistic)
        assert float(norm.sf(test.z)) == pytest.approx(reference.pvalue)

    def test_equal_histograms_are_a_coin_flip(self) -> None:
        test = rank_test(np.array([5.0, 5, 5]), np.array([5.0, 5, 5]))
        assert float(test.slower_probability) == 0.5 and float(test.z) == 0.0


class TestMixtureBoundary:
    def test_solves_the_martingale_equation(self) -> None:
        information, rho, alpha = 5000.0, 500.0, 0.05
        z = float(mixture_boundary_z(information, rho, alpha))
        x = z * math.sqrt(information / (information + rho))
        log_m = math.log(2) + 0.5 * math.log(rho / (information + rho)) + x * x / 2 + float(log_ndtr(x))
        assert log_m == pytest.approx(math.log(1 / alpha), abs=1e-6)

    def test_stricter_than_a_fixed_sample_z_and_stricter_for_smaller_alpha(self) -> None:
        informations = np.array([10.0, 100.0, 1e3, 1e4, 1e5, 1e6])
        loose, strict = mixture_boundary_z(informations, 100.0, 0.1), mixture_boundary_z(informations, 100.0, 0.01)
        assert np.all(loose > norm.ppf(0.9)) and np.all(strict > loose)

    def test_quantile_bounds_bracket_the_estimate_and_narrow_with_samples(self) -> None:
        widths = []
        for count in (1_000, 10_000, 100_000):
            edges, counts = bin_counts(lognormal_buckets(0.08, count))
            low, high = quantile_bounds(0.95, edges, counts, 500.0, 0.0125, 0.05)
            estimate = float(histogram_quantile(0.95, edges, counts))
            assert float(low) < estimate < float(high)
            widths.append(float(high) / float(low))
        assert widths == sorted(widths, reverse=True)


class TestJudge:
    def test_below_minimum_samples_is_pending(self) -> None:
        evidence = judge_latency(
            "latency", HistogramObservation(lognormal_buckets(0.3, 400), lognormal_buckets(0.08, 400)), DESIGN
        )
        assert evidence.decision is Outcome.PENDING and "waiting for samples" in evidence.message

    def test_no_traffic_is_pending(self) -> None:
        evidence = judge_latency("latency", HistogramObservation({}, lognormal_buckets(0.08, 400)), DESIGN)
        assert evidence.decision is Outcome.PENDING

    def test_different_buckets_are_an_error(self) -> None:
        with pytest.raises(ValueError):
            judge_latency("latency", HistogramObservation({"0.1": 600, "+Inf": 600}, {"0.2": 600, "+Inf": 600}), DESIGN)

    def test_equal_latency_passes(self) -> None:
        observation = HistogramObservation(lognormal_buckets(0.08, 20_000), lognormal_buckets(0.08, 20_000))
        assert judge_latency("latency", observation, DESIGN).decision is Outcome.PASS

    def test_much_slower_canary_fails(self) -> None:
        observation = HistogramObservation(lognormal_buckets(0.12, 5_000), lognormal_buckets(0.08, 5_000))
        evidence = judge_latency("latency", observation, DESIGN)
        assert evidence.decision is Outcome.FAIL
        assert evidence.values["ratioP50"] == pytest.approx(1.5, rel=0.02)
        assert evidence.values["ratioP50Low"] > 1.2

    def test_slower_within_tolerance_passes(self) -> None:
        observation = HistogramObservation(lognormal_buckets(0.088, 50_000), lognormal_buckets(0.08, 50_000))
        assert judge_latency("latency", observation, DESIGN).decision is Outcome.PASS

    def test_tail_only_regression_fails(self) -> None:
        """Same median, p95 twice as slow: a rank test barely notices, the p95 bound does."""
        stable = lognormal_buckets(0.08, 10_000)
        canary = {
            le: 0.9 * count + 0.1 * slow
            for (le, count), slow in zip(stable.items(), lognormal_buckets(0.4, 10_000).values())
        }
        evidence = judge_latency("latency", HistogramObservation(canary, stable), DESIGN)
        assert evidence.decision is Outcome.FAIL and evidence.values["ratioP95Low"] > 1.2

    def test_quantile_in_the_inf_bucket_is_never_passed(self) -> None:
        buckets = {"0.05": 4000, "+Inf": 10_000}
        evidence = judge_latency("latency", HistogramObservation(buckets, buckets), DESIGN)
        assert evidence.decision is Outcome.PENDING and "+Inf bucket" in evidence.message

    def test_coarse_buckets_are_flagged(self) -> None:
        coarse = np.array([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10])
        buckets = lognormal_buckets(0.08, 20_000, coarse)
        evidence = judge_latency("latency", HistogramObservation(buckets, buckets), DESIGN)
        assert "twice the tolerance" in evidence.message and evidence.values["bucketSpanP95"] == 2.5

    def test_fine_buckets_are_not_flagged(self) -> None:
        buckets = lognormal_buckets(0.08, 20_000)
        assert "tolerance wide" not in judge_latency("latency", HistogramObservation(buckets, buckets), DESIGN).message

    def test_evidence_fields_and_json(self) -> None:
        observation = HistogramObservation(lognormal_buckets(0.08, 2_000), lognormal_buckets(0.08, 2_000))
        evidence = judge_latency("latency", observation, DESIGN)
        for key in (
            "canaryCount",
            "stableCount",
            "maxIncrease",
            "rankZ",
            "slowerProbability",
            "ratioP50",
            "ratioP50Low",
            "ratioP50High",
            "ratioP95",
            "ratioP95Low",
            "ratioP95High",
        ):
            assert key in evidence.values
        json.dumps(evidence.to_dict())

    @pytest.mark.parametrize(
        "arguments",
        [{"alpha": 0.6}, {"max_increase": -0.1}, {"min_samples": 1}, {"quantiles": ()}, {"quantiles": (1.0,)}],
    )
    def test_refuses_bad_designs(self, arguments: dict) -> None:
        with pytest.raises(ValueError):
            LatencyDesign(**arguments)


class TestWithoutScipy:
    """latency.py computes log Phi with analysis.normal (no scipy in the operator image): scipy's answers."""

    def test_the_boundary_is_scipys(self, monkeypatch: pytest.MonkeyPatch) -> None:
        informations = np.unique(np.round(np.logspace(0, 7, 200)))
        for rho in (2.0, 100.0, 500.0):
            for alpha in (0.001, 0.0125, 0.05, 0.1, 0.25):
                ours = mixture_boundary_z(informations, rho, alpha)
                with monkeypatch.context() as patch:
                    patch.setattr(latency, "log_ndtr_array", log_ndtr)
                    reference = mixture_boundary_z(informations, rho, alpha)
                np.testing.assert_allclose(ours, reference, rtol=1e-12)

    def test_the_verdicts_are_scipys(self, monkeypatch: pytest.MonkeyPatch) -> None:
        rng = np.random.default_rng(19)
        probabilities = np.diff(norm.cdf(np.log(np.append(EDGES, np.inf) / 0.08) / 0.6), prepend=0.0)
        observations = []
        for slowdown in (1.0, 1.1, 1.2, 1.3, 1.5):
            slow = np.diff(norm.cdf(np.log(np.append(EDGES, np.inf) / (0.08 * slowdown)) / 0.6), prepend=0.0)
            for count in (300, 600, 2_000, 10_000, 50_000):
                canary, stable = rng.multinomial(count, slow).cumsum(), rng.multinomial(count, probabilities).cumsum()
                labels = [f"{edge:g}" for edge in EDGES] + ["+Inf"]
                observations.append(
                    HistogramObservation(dict(zip(labels, map(float, canary))), dict(zip(labels, map(float, stable))))
                )
        ours = [judge_latency("latency", observation, DESIGN) for observation in observations]
        with monkeypatch.context() as patch:
            patch.setattr(latency, "log_ndtr_array", log_ndtr)
            reference = [judge_latency("latency", observation, DESIGN) for observation in observations]
        assert [e.decision for e in ours] == [e.decision for e in reference]
        assert {e.decision for e in ours} == {Outcome.PASS, Outcome.FAIL, Outcome.PENDING}
        for mine, theirs in zip(ours, reference):
            assert mine.message == theirs.message
            assert mine.values == pytest.approx(theirs.values, rel=1e-12)
