"""Sequential non-inferiority test for a proportion (accuracy, error rate): canary vs stable.

Method (docs/canary-analysis.md has the derivation): a sequential probability ratio test on the
difference of the two "good outcome" rates, d = p_canary - p_stable, in the normal approximation in
information time (Whitehead 1997; Jennison & Turnbull 2000, ch. 3). At every look, from cumulative counts:

    d_hat = x_c / n_c - x_s / n_s                      (observed difference)
    I     = 1 / (v_c / n_c + v_s / n_s)                (information; v = p(1-p) at p_s~ - margin and p_s~,
                                                        p_s~ = (x_s+1)/(n_s+2))
    log LR = theta * I * (d_hat - mid)                 (canary "good" vs canary "bad")

with d_good = -margin + w, d_bad = -margin - w, theta = d_good - d_bad, mid = -margin and
w = min(delta - margin, margin). PROMOTE when log LR >= log(1/beta); ROLL BACK when log LR <= log(alpha).
Those are Ville's thresholds, not Wald's approximations: in the Brownian model the likelihood ratio is a
martingale under either hypothesis (a supermartingale beyond it), so P(ever roll back | d >= d_good) <= alpha
and P(ever promote | d <= -delta) <= beta however often one looks, and stopping early for any reason
(deadline, minimum samples, sample cap) only makes both errors rarer. For counts the model holds
asymptotically (central limit theorem, independent labels); benchmarks/canary_simulation.py checks the
bounds at realistic sizes. The statistic depends only on the cumulative counts: no state between looks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from feedbackloop.core.analysis.outcome import Evidence, Outcome

ArrayOrFloat = TypeVar("ArrayOrFloat", float, np.ndarray)


@dataclass(frozen=True)
class NonInferiorityDesign:
    """The error budget and the effect sizes of one proportion check.

    alpha: bound on rolling back a canary at least as good as `d_good` (so also an equal canary).
    beta: bound on promoting a canary `detectable_degradation` or more worse than stable.
    max_degradation: the non-inferiority margin; the test's indifference point (about 50/50) sits on it.
    """

    alpha: float = 0.05
    beta: float = 0.10
    max_degradation: float = 0.02
    detectable_degradation: float | None = None  # None: 1.5 x max_degradation
    min_samples: int = 200
    max_samples: int | None = None

    def __post_init__(self) -> None:
        if not (0 < self.alpha < 0.5 and 0 < self.beta < 0.5):
            raise ValueError(f"alpha and beta must be in (0, 0.5), got {self.alpha}, {self.beta}")
        if not 0 < self.max_degradation < 1:
            raise ValueError(
                "maxDegradation must be in (0, 1): with a zero margin an equally good canary "
                f"cannot be told apart from a slightly worse one, got {self.max_degradation}"
            )
        if not self.max_degradation < self.detectable < 1:
            raise ValueError(
                f"detectableDegradation ({self.detectable}) must exceed maxDegradation "
                f"({self.max_degradation}) and be below 1"
            )
        if self.min_samples < 1 or (self.max_samples is not None and self.max_samples < self.min_samples):
            raise ValueError(f"need 1 <= minSamples <= maxSamples, got {self.min_samples}, {self.max_samples}")

    @property
    def detectable(self) -> float:
        if self.detectable_degradation is None:
            return 1.5 * self.max_degradation
        return self.detectable_degradation

    @property
    def half_width(self) -> float:
        """Distance of both hypotheses from the margin; capped so that d_good <= 0 (an equal canary)."""
        return min(self.detectable - self.max_degradation, self.max_degradation)

    @property
    def good_difference(self) -> float:
        return -self.max_degradation + self.half_width

    @property
    def bad_difference(self) -> float:
        return -self.max_degradation - self.half_width

    @property
    def promote_log_threshold(self) -> float:
        return math.log(1 / self.beta)

    @property
    def rollback_log_threshold(self) -> float:
        return math.log(self.alpha)


def difference_and_information(
    canary_good: ArrayOrFloat,
    canary_total: ArrayOrFloat,
    stable_good: ArrayOrFloat,
    stable_total: ArrayOrFloat,
    max_degradation: float,
) -> tuple[ArrayOrFloat, ArrayOrFloat]:
    """(d_hat, I): the observed rate difference and its inverse variance. Totals must be positive.

    The variances are taken at the indifference point (stable's smoothed rate, and that minus the margin
    for the canary), not at the canary's own rate: otherwise a small canary arm that is lucky looks more
    certain, which inflated the missed-regression rate in simulation. Plain arithmetic, so it works
    element-wise on numpy arrays (the simulation uses it vectorized).
    """
    difference = canary_good / canary_total - stable_good / stable_total
    stable_rate = (stable_good + 1.0) / (stable_total + 2.0)  # one pseudo-success and -failure: never 0 or 1
    canary_floor = 1.0 / (canary_total + 2.0)
    canary_rate = np.clip(stable_rate - max_degradation, canary_floor, 1.0 - canary_floor)
    variance = canary_rate * (1.0 - canary_rate) / canary_total + stable_rate * (1.0 - stable_rate) / stable_total
    return difference, 1.0 / variance


def log_likelihood_ratio(
    difference: ArrayOrFloat, information: ArrayOrFloat, design: NonInferiorityDesign
) -> ArrayOrFloat:
    """log LR of "canary is d_good" against "canary is d_bad" for an observed difference."""
    separation = design.good_difference - design.bad_difference
    return separation * information * (difference + design.max_degradation)


def decision_boundaries(information: float, design: NonInferiorityDesign) -> tuple[float, float]:
    """(rollback below, promote above): the thresholds on d_hat at this much information.

    Both move toward -margin as information grows: early on only a large difference decides.
    """
    separation = design.good_difference - design.bad_difference
    mid = -design.max_degradation
    return (
        mid + design.rollback_log_threshold / (separation * information),
        mid + design.promote_log_threshold / (separation * information),
    )


@dataclass(frozen=True)
class CountObservation:
    """Cumulative counts since the analysis started, both arms over the same window.

    events: correct predictions (accuracy, higher is better) or errors (error rate, lower is better).
    Counts may be fractional (PromQL increase()). increase() extrapolates the events and the total series
    separately, so events may exceed the total by a hair: up to 1% + 1 is clamped, more is refused.
    """

    canary_events: float
    canary_total: float
    stable_events: float
    stable_total: float

    def __post_init__(self) -> None:
        for events_field, total in (("canary_events", self.canary_total), ("stable_events", self.stable_total)):
            events = getattr(self, events_field)
            if not (0 <= events <= 1.01 * total + 1) or not math.isfinite(total):
                raise ValueError(f"counts must satisfy 0 <= events <= total, got {events} of {total}")
            object.__setattr__(self, events_field, min(events, total))

    def good_counts(self, higher_is_better: bool) -> tuple[float, float, float, float]:
        """(canary_good, canary_total, stable_good, stable_total) in "good outcome" terms."""
        if higher_is_better:
            return self.canary_events, self.canary_total, self.stable_events, self.stable_total
        return (
            self.canary_total - self.canary_events,
            self.canary_total,
            self.stable_total - self.stable_events,
            self.stable_total,
        )


def judge_proportion(
    name: str, observation: CountObservation, design: NonInferiorityDesign, higher_is_better: bool = True
) -> Evidence:
    """One look of the sequential test. Too few samples is Pending, never a failure."""
    counts = _count_values(observation)
    smallest_arm = min(observation.canary_total, observation.stable_total)
    if smallest_arm == 0:
        return Evidence(name, Outcome.PENDING, "no traffic/labels yet in one arm: waiting", counts)
    if smallest_arm < design.min_samples:
        return Evidence(
            name, Outcome.PENDING, f"waiting for samples: {smallest_arm:g} of {design.min_samples} per arm", counts
        )
    canary_good, canary_total, stable_good, stable_total = observation.good_counts(higher_is_better)
    difference, information = difference_and_information(
        canary_good, canary_total, stable_good, stable_total, design.max_degradation
    )
    difference, information = float(difference), float(information)
    log_lr = log_likelihood_ratio(difference, information, design)
    decision = _decide(log_lr, observation, design)
    values = {**counts, **_statistic_values(difference, information, log_lr, design, higher_is_better)}
    return Evidence(name, decision, _message(decision, difference, information, design, higher_is_better), values)


def _decide(log_lr: float, observation: CountObservation, design: NonInferiorityDesign) -> Outcome:
    if log_lr <= design.rollback_log_threshold:
        return Outcome.FAIL
    if log_lr >= design.promote_log_threshold:
        return Outcome.PASS
    budget_spent = (
        design.max_samples is not None and min(observation.canary_total, observation.stable_total) >= design.max_samples
    )
    return Outcome.INCONCLUSIVE if budget_spent else Outcome.PENDING


def _count_values(observation: CountObservation) -> dict[str, float]:
    return {
        "canaryEvents": observation.canary_events,
        "canaryTotal": observation.canary_total,
        "stableEvents": observation.stable_events,
        "stableTotal": observation.stable_total,
    }


def _statistic_values(
    difference: float, information: float, log_lr: float, design: NonInferiorityDesign, higher_is_better: bool
) -> dict[str, float]:
    """The statistic and its boundaries, in the metric's own direction (error-rate differences are > 0 when worse)."""
    sign = 1.0 if higher_is_better else -1.0
    rollback_at, promote_at = decision_boundaries(information, design)
    return {
        "difference": sign * difference,
        "logLikelihoodRatio": log_lr,
        "promoteLogThreshold": design.promote_log_threshold,
        "rollbackLogThreshold": design.rollback_log_threshold,
        "promoteDifference": sign * promote_at,
        "rollbackDifference": sign * rollback_at,
        "maxDegradation": design.max_degradation,
        "information": information,
    }


def _message(
    decision: Outcome, difference: float, information: float, design: NonInferiorityDesign, higher_is_better: bool
) -> str:
    rollback_at, promote_at = decision_boundaries(information, design)
    if higher_is_better:
        observed = f"canary - stable = {_points(difference)}"
        bounds = f"promote above {_points(promote_at)}, roll back below {_points(rollback_at)}"
    else:
        observed = f"canary - stable error rate = {_points(-difference)}"
        bounds = f"promote below {_points(-promote_at)}, roll back above {_points(-rollback_at)}"
    verdict = {
        Outcome.PASS: "no worse than the margin allows",
        Outcome.FAIL: "worse than the margin allows",
        Outcome.INCONCLUSIVE: "sample budget spent without a decision",
    }.get(decision, "not decided yet")
    return (
        f"{verdict}: {observed} ({bounds} at this sample size; "
        f"maxDegradation {100 * design.max_degradation:.2f} pts, alpha {design.alpha:g}, beta {design.beta:g})"
    )


def _points(rate_difference: float) -> str:
    return f"{100 * rate_difference:+.2f} pts"


def decision_probability(
    log_lr: float, difference: float, remaining_information: float, design: NonInferiorityDesign
) -> float:
    """P(the test crosses either boundary within `remaining_information` more information), were the true
    difference the one observed: conditional power under the current trend (Lan, Simon & Halperin 1982), in
    the Brownian model the test is built on (log LR drifts by theta * (d + margin) per unit of information,
    with variance theta^2). Bounded above by the sum of the two one-boundary crossing probabilities, so it
    errs toward "may still decide": a stop on it is never premature for lack of that term.
    """
    if remaining_information <= 0:
        return 0.0
    separation = design.good_difference - design.bad_difference
    drift = separation * (difference + design.max_degradation) * remaining_information
    spread = separation * math.sqrt(remaining_information)
    up = design.promote_log_threshold - log_lr
    down = log_lr - design.rollback_log_threshold
    return min(1.0, _crossing_probability(up, drift, spread) + _crossing_probability(down, -drift, spread))


def _crossing_probability(distance: float, drift: float, spread: float) -> float:
    """P(max over [0, t] of a Brownian motion with mean `drift` and sd `spread` at t reaches `distance`)
    (reflection principle): Phi((drift - b) / s) + exp(2 drift b / s^2) Phi((-b - drift) / s)."""
    if distance <= 0:
        return 1.0
    direct = _normal_cdf((drift - distance) / spread)
    reflected_tail = _normal_cdf((-distance - drift) / spread)
    if reflected_tail == 0.0:
        return direct
    return min(1.0, direct + math.exp(2 * drift * distance / spread**2 + math.log(reflected_tail)))


def _normal_cdf(z: float) -> float:
    return 0.5 * math.erfc(-z / math.sqrt(2))


# --- planning -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OperatingPoint:
    """What to expect for one true difference (Brownian approximation; ignores overshoot and minSamples)."""

    promote_probability: float
    expected_samples_per_arm: float


def operating_point(design: NonInferiorityDesign, stable_rate: float, difference: float) -> OperatingPoint:
    """Promote probability and expected labels per arm to a decision, equal allocation.

    Use it to size the deadline: plan for a few times the expected samples at the slowest difference of
    interest (the margin itself is the slowest: there the test has no drift).
    """
    canary_rate = min(max(stable_rate + difference, 0.0), 1.0)
    variance_per_pair = canary_rate * (1 - canary_rate) + stable_rate * (1 - stable_rate)
    separation = design.good_difference - design.bad_difference
    drift = separation * (difference + design.max_degradation)
    diffusion = separation**2
    upper, lower = design.promote_log_threshold, -design.rollback_log_threshold
    if abs(drift) < 1e-12:
        promote = lower / (upper + lower)
        information = upper * lower / diffusion
    else:
        promote = _exit_upper_probability(drift / diffusion, upper, lower)
        information = (upper * promote - lower * (1 - promote)) / drift
    return OperatingPoint(promote, information * variance_per_pair)


def _exit_upper_probability(drift_over_diffusion: float, upper: float, lower: float) -> float:
    """P(a Brownian motion with this drift/diffusion ratio leaves (-lower, upper) at the top)."""
    k = 2 * drift_over_diffusion
    width = upper + lower
    if k > 0:  # (1 - e^{-k lower}) / (1 - e^{-k width}), exponents <= 0
        return math.expm1(-k * lower) / math.expm1(-k * width)
    return math.exp(k * upper) * math.expm1(k * lower) / math.expm1(k * width)
