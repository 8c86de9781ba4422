"""The sequential non-inferiority test on counts (feedbackloop.core.analysis.sequential)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from feedbackloop.core.analysis.outcome import Outcome
from feedbackloop.core.analysis.sequential import (
    CountObservation,
    NonInferiorityDesign,
    decision_boundaries,
    decision_probability,
    difference_and_information,
    judge_proportion,
    log_likelihood_ratio,
    operating_point,
)

DESIGN = NonInferiorityDesign(alpha=0.05, beta=0.10, max_degradation=0.02, detectable_degradation=0.03, min_samples=200)


def llr(
    canary_good: float,
    canary_total: float,
    stable_good: float,
    stable_total: float,
    design: NonInferiorityDesign = DESIGN,
) -> float:
    difference, information = difference_and_information(
        canary_good, canary_total, stable_good, stable_total, design.max_degradation
    )
    return float(log_likelihood_ratio(difference, information, design))


class TestDesign:
    def test_hypotheses_sit_symmetrically_around_the_margin(self) -> None:
        assert DESIGN.good_difference == pytest.approx(-0.01)
        assert DESIGN.bad_difference == pytest.approx(-0.03)
        assert DESIGN.promote_log_threshold == pytest.approx(math.log(10))
        assert DESIGN.rollback_log_threshold == pytest.approx(math.log(0.05))

    def test_good_hypothesis_is_capped_at_an_equal_canary(self) -> None:
        wide = NonInferiorityDesign(max_degradation=0.01, detectable_degradation=0.05)
        assert wide.good_difference == 0.0
        assert wide.bad_difference == pytest.approx(-0.02)  # a stronger guarantee than at -0.05

    def test_default_detectable_degradation_is_one_and_a_half_margins(self) -> None:
        assert NonInferiorityDesign(max_degradation=0.04).detectable == pytest.approx(0.06)

    @pytest.mark.parametrize(
        "arguments",
        [
            {"max_degradation": 0.0},
            {"max_degradation": 0.02, "detectable_degradation": 0.02},
            {"alpha": 0.0},
            {"beta": 0.5},
            {"min_samples": 0},
            {"min_samples": 500, "max_samples": 100},
        ],
    )
    def test_refuses_designs_without_a_meaning(self, arguments: dict) -> None:
        with pytest.raises(ValueError):
            NonInferiorityDesign(**arguments)


class TestStatistic:
    def test_log_lr_increases_with_canary_successes(self) -> None:
        values = [llr(good, 1000, 900, 1000) for good in range(850, 951, 10)]
        assert values == sorted(values) and len(set(values)) == len(values)

    def test_log_lr_decreases_with_stable_successes(self) -> None:
        values = [llr(900, 1000, good, 1000) for good in range(850, 951, 10)]
        assert values == sorted(values, reverse=True)

    def test_log_lr_is_zero_at_the_margin(self) -> None:
        assert llr(880, 1000, 900, 1000) == pytest.approx(0.0, abs=1e-9)

    def test_evidence_grows_with_sample_size_at_a_fixed_difference(self) -> None:
        values = [llr(0.9 * n, n, 0.9 * n, n) for n in (200, 400, 800, 1600, 3200)]
        assert values == sorted(values) and values[0] > 0

    def test_boundaries_close_in_on_the_margin_monotonically(self) -> None:
        informations = [100.0, 1_000.0, 10_000.0, 100_000.0]
        rollbacks, promotes = zip(*(decision_boundaries(i, DESIGN) for i in informations))
        assert list(promotes) == sorted(promotes, reverse=True)
        assert list(rollbacks) == sorted(rollbacks)
        assert all(r < -DESIGN.max_degradation < p for r, p in zip(rollbacks, promotes))
        assert promotes[-1] == pytest.approx(-0.02, abs=0.002) and rollbacks[-1] == pytest.approx(-0.02, abs=0.002)

    def test_boundaries_agree_with_the_log_lr_thresholds(self) -> None:
        difference, information = difference_and_information(900.0, 1000.0, 905.0, 1000.0, 0.02)
        rollback_at, promote_at = decision_boundaries(float(information), DESIGN)
        assert float(log_likelihood_ratio(promote_at, information, DESIGN)) == pytest.approx(
            DESIGN.promote_log_threshold
        )
        assert float(log_likelihood_ratio(rollback_at, information, DESIGN)) == pytest.approx(
            DESIGN.rollback_log_threshold
        )

    def test_perfect_arms_have_finite_information(self) -> None:
        difference, information = difference_and_information(1000.0, 1000.0, 1000.0, 1000.0, 0.02)
        assert difference == 0 and math.isfinite(information) and information > 0

    def test_vectorized_equals_scalar(self) -> None:
        canary = np.array([850.0, 900.0, 950.0])
        difference, information = difference_and_information(canary, 1000.0, 900.0, 1000.0, 0.02)
        vector = log_likelihood_ratio(difference, information, DESIGN)
        assert vector == pytest.approx([llr(c, 1000, 900, 1000) for c in canary])


class TestJudge:
    def test_below_minimum_samples_is_pending_even_for_terrible_data(self) -> None:
        evidence = judge_proportion("accuracy", CountObservation(0, 199, 199, 199), DESIGN)
        assert evidence.decision is Outcome.PENDING and "waiting for samples" in evidence.message

    def test_no_traffic_is_pending(self) -> None:
        evidence = judge_proportion("accuracy", CountObservation(0, 0, 0, 0), DESIGN)
        assert evidence.decision is Outcome.PENDING and "no traffic" in evidence.message

    def test_clear_regression_fails(self) -> None:
        evidence = judge_proportion("accuracy", CountObservation(1700, 2000, 1800, 2000), DESIGN)
        assert evidence.decision is Outcome.FAIL

    def test_equal_accuracy_with_enough_labels_passes(self) -> None:
        evidence = judge_proportion("accuracy", CountObservation(2700, 3000, 2700, 3000), DESIGN)
        assert evidence.decision is Outcome.PASS

    def test_small_equal_sample_is_not_yet_decided(self) -> None:
        evidence = judge_proportion("accuracy", CountObservation(180, 200, 180, 200), DESIGN)
        assert evidence.decision is Outcome.PENDING

    def test_error_rate_counts_errors_as_bad(self) -> None:
        worse = judge_proportion("errors", CountObservation(300, 2000, 100, 2000), DESIGN, higher_is_better=False)
        same = judge_proportion("errors", CountObservation(100, 3000, 100, 3000), DESIGN, higher_is_better=False)
        assert worse.decision is Outcome.FAIL and same.decision is Outcome.PASS
        assert worse.values["difference"] == pytest.approx(0.1)  # in the metric's own direction
        assert worse.values["rollbackDifference"] > 0.02 > -worse.values["maxDegradation"]

    def test_sample_budget_spent_is_inconclusive(self) -> None:
        capped = NonInferiorityDesign(min_samples=200, max_samples=1000)
        at_margin = judge_proportion("accuracy", CountObservation(880, 1000, 900, 1000), capped)
        assert at_margin.decision is Outcome.INCONCLUSIVE

    def test_evidence_explains_the_decision(self) -> None:
        evidence = judge_proportion("accuracy", CountObservation(900, 1000, 905, 1000), DESIGN)
        for key in (
            "canaryEvents",
            "canaryTotal",
            "stableEvents",
            "stableTotal",
            "difference",
            "logLikelihoodRatio",
            "promoteLogThreshold",
            "rollbackLogThreshold",
            "promoteDifference",
            "rollbackDifference",
            "maxDegradation",
            "information",
        ):
            assert key in evidence.values
        assert "promote above" in evidence.message and "roll back below" in evidence.message
        assert json.loads(json.dumps(evidence.to_dict()))["decision"] == "Pending"

    def test_extrapolation_excess_is_clamped(self) -> None:
        observation = CountObservation(1000.4, 1000.1, 900.0, 1000.0)
        assert observation.canary_events == 1000.1

    @pytest.mark.parametrize(
        "counts", [(20, 10, 5, 10), (-1, 10, 5, 10), (1, 10, 5, math.inf), (1, 10, 5, math.nan), (math.nan, 10, 5, 10)]
    )
    def test_refuses_impossible_counts(self, counts: tuple) -> None:
        with pytest.raises(ValueError):
            CountObservation(*counts)


class TestOperatingPoint:
    def test_error_bounds_at_the_design_points(self) -> None:
        assert 1 - operating_point(DESIGN, 0.9, DESIGN.good_difference).promote_probability <= DESIGN.alpha
        assert operating_point(DESIGN, 0.9, -DESIGN.detectable).promote_probability <= DESIGN.beta

    def test_promote_probability_rises_with_the_difference(self) -> None:
        probabilities = [operating_point(DESIGN, 0.9, d).promote_probability for d in (-0.05, -0.03, -0.02, 0, 0.02)]
        assert probabilities == sorted(probabilities)
        assert operating_point(DESIGN, 0.9, -0.02).promote_probability == pytest.approx(0.57, abs=0.02)

    def test_the_margin_is_the_slowest_place(self) -> None:
        samples = {d: operating_point(DESIGN, 0.9, d).expected_samples_per_arm for d in (-0.04, -0.02, 0.0)}
        assert samples[-0.02] > samples[-0.04] and samples[-0.02] > samples[0.0]


class TestDecisionProbability:
    """decision_probability: the chance the test decides within the information left, under the trend seen,
    checked against simulated Brownian paths of the log likelihood ratio (the model the test is built on)."""

    DESIGN = NonInferiorityDesign(alpha=0.025, beta=0.1, max_degradation=0.02)

    @pytest.mark.parametrize(
        ("log_lr", "difference", "information"),
        [(0.0, 0.0, 1500.0), (0.0, 0.0, 5000.0), (1.0, -0.02, 3000.0), (-2.0, -0.03, 2000.0), (2.0, 0.01, 300.0)],
    )
    def test_matches_simulated_paths(self, log_lr: float, difference: float, information: float) -> None:
        design, steps, paths = self.DESIGN, 1000, 4000
        separation = design.good_difference - design.bad_difference
        step = information / steps
        rng = np.random.default_rng(5)
        increments = rng.normal(separation * (difference + design.max_degradation) * step,
                                separation * np.sqrt(step), (paths, steps))  # fmt: skip
        walk = log_lr + increments.cumsum(axis=1)
        crossed = ((walk >= design.promote_log_threshold) | (walk <= design.rollback_log_threshold)).any(axis=1)
        expected = decision_probability(log_lr, difference, information, design)
        # discrete paths miss some crossings between steps: the formula is an upper bound, within 0.03
        assert crossed.mean() - 0.02 <= expected <= crossed.mean() + 0.03

    def test_edges(self) -> None:
        design = self.DESIGN
        assert decision_probability(0.0, 0.0, 0.0, design) == 0.0
        assert decision_probability(design.promote_log_threshold + 0.1, 0.0, 10.0, design) == 1.0
        more = [decision_probability(0.0, 0.0, info, design) for info in (100.0, 1000.0, 4000.0, 20000.0)]
        assert more == sorted(more) and more[-1] > 0.95
