"""Latency check from Prometheus histogram buckets: canary vs stable quantiles, safe under repeated looks.

The question is the one users ask: is the canary's p50 / p95 at most `maxIncrease` worse than stable's?
For each quantile q and each arm, an always-valid confidence interval comes from ranks: the number of
samples at or below the true quantile, K_n, is Binomial(n, q), so S_n = (K_n - n q) / sqrt(q (1 - q)) is
(asymptotically) a Brownian motion in n. A half-normal mixture of exponential martingales (Robbins 1970;
Howard et al. 2021)

    M(S, n) = 2 sqrt(rho / (n + rho)) exp(S^2 / (2 (n + rho))) Phi(S / sqrt(n + rho)),   rho = minSamples

stays below 1/eps forever with probability >= 1 - eps. Inverting it gives ranks n q -+ r_n that bracket the
quantile at every n simultaneously; the histogram turns ranks into seconds by linear interpolation inside
a bucket, as PromQL's histogram_quantile does. Then, with ratio bounds canary_low / stable_high and
canary_high / stable_low:

    FAIL     some quantile's ratio is surely above 1 + maxIncrease (lower bound above the limit)
    PASS     every quantile's ratio is surely within it (upper bound at or below the limit)
    PENDING  below minSamples per arm, no traffic, or not yet sure either way

Error budget: a FAIL with every ratio within the limit needs one of the 2k bounds it uses (canary low,
stable high, k quantiles) to be wrong, each at alpha / 2k, so P(false FAIL, ever) <= alpha; likewise
P(PASS, ever | some ratio >= limit) <= beta. Asymptotic in n (the Gaussian approximation of the rank
count) and only as accurate as the buckets (interpolation). A Mann-Whitney U (tie-corrected, binned) is
reported as evidence, not used to decide: it tests for any shift, while the question is a tolerance, and it
is blind to tail-only regressions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from feedbackloop.core.analysis.normal import log_ndtr_array
from feedbackloop.core.analysis.outcome import Evidence, Outcome

# `le` -> cumulative count; `le` as Prometheus gives it (a float, or its text such as "+Inf").
Buckets = Mapping[float, float] | Mapping[str, float]


@dataclass(frozen=True)
class LatencyDesign:
    alpha: float = 0.05  # bound on failing a canary whose quantile ratios are all within the limit
    beta: float = 0.10  # bound on passing a canary with some quantile ratio at or above the limit
    max_increase: float = 0.2
    min_samples: int = 100
    quantiles: tuple[float, ...] = (0.5, 0.95)

    def __post_init__(self) -> None:
        if not (0 < self.alpha < 0.5 and 0 < self.beta < 0.5):
            raise ValueError(f"alpha and beta must be in (0, 0.5), got {self.alpha}, {self.beta}")
        if self.max_increase < 0 or self.min_samples < 2:
            raise ValueError(f"need maxIncrease >= 0 and minSamples >= 2, got {self.max_increase}, {self.min_samples}")
        if not self.quantiles or not all(0 < q < 1 for q in self.quantiles):
            raise ValueError(f"quantiles must be in (0, 1), got {self.quantiles}")


@dataclass(frozen=True)
class HistogramObservation:
    """Cumulative bucket counts (`le` -> count, Prometheus style, +Inf included) per arm, same window."""

    canary_buckets: Buckets = field(default_factory=dict)
    stable_buckets: Buckets = field(default_factory=dict)


# --- histogram handling ---------------------------------------------------------------------------------


def bin_counts(buckets: Buckets) -> tuple[np.ndarray, np.ndarray]:
    """(upper edges ascending, count per bin) from cumulative `le` buckets.

    increase() extrapolates each bucket series on its own, so the cumulative counts may dip slightly:
    a running maximum repairs that. Negative counts mean a broken query and are refused.
    """
    if not buckets:
        return np.array([math.inf]), np.zeros(1)
    edges = np.array([float(le) for le in buckets])
    cumulative = np.array([float(count) for count in buckets.values()])
    order = np.argsort(edges)
    edges, cumulative = edges[order], cumulative[order]
    if np.any(cumulative < 0) or not np.all(np.isfinite(cumulative)):
        raise ValueError("histogram bucket counts must be finite and non-negative")
    cumulative = np.maximum.accumulate(cumulative)
    return edges, np.diff(cumulative, prepend=0.0)


def value_at_rank(
    rank: np.ndarray | float, edges: np.ndarray, counts: np.ndarray, above_largest_edge: str = "inf"
) -> np.ndarray:
    """The latency at a (fractional) rank, interpolated inside its bucket; vectorized over leading axes.

    Rank <= 0 gives the first bucket's lower end, rank above the count +inf (no upper bound known), and a
    rank in the +Inf bucket +inf or, for lower bounds (above_largest_edge="edge"), the largest finite edge.
    """
    cumulative = np.cumsum(counts, axis=-1)
    total = cumulative[..., -1]
    rank = np.broadcast_to(np.asarray(rank, dtype=float), total.shape)
    index = np.argmax(cumulative >= rank[..., None], axis=-1)[..., None]
    lower_edges = np.concatenate(([min(0.0, edges[0])], edges[:-1]))
    upper, lower = edges[index][..., 0], lower_edges[index][..., 0]
    in_bucket = np.take_along_axis(counts, index, axis=-1)[..., 0]
    below = np.take_along_axis(cumulative, index, axis=-1)[..., 0] - in_bucket
    with np.errstate(invalid="ignore", divide="ignore"):
        fraction = np.clip(np.where(in_bucket > 0, (rank - below) / in_bucket, 1.0), 0.0, 1.0)
        value = lower + (upper - lower) * fraction
    beyond = lower if above_largest_edge == "edge" else np.inf
    value = np.where(np.isinf(upper), beyond, value)
    value = np.where(rank <= 0, lower_edges[0], np.where(rank > total, np.inf, value))
    return np.where(total > 0, value, np.nan)


def histogram_quantile(q: float, edges: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """PromQL's histogram_quantile, except +inf (not the largest finite edge) when it lies in +Inf."""
    return value_at_rank(q * counts.sum(axis=-1), edges, counts)


def mixture_boundary_z(information: np.ndarray | float, rho: float, alpha: float) -> np.ndarray:
    """The z at which the one-sided normal-mixture martingale reaches 1/alpha at this information.

    Solves log 2 + 1/2 log(rho / (I + rho)) + x^2 / 2 + log Phi(x) = log(1/alpha) for x = S / sqrt(I + rho)
    by bisection (vectorized, monotone in x), then z = x sqrt((I + rho) / I).
    """
    information = np.maximum(np.asarray(information, dtype=float), 1e-12)
    target = math.log(1 / alpha) - math.log(2) - 0.5 * np.log(rho / (information + rho))
    low, high = np.full_like(information, -10.0), np.full_like(information, 50.0)
    for _ in range(60):
        middle = (low + high) / 2
        too_low = middle**2 / 2 + log_ndtr_array(middle) < target
        low, high = np.where(too_low, middle, low), np.where(too_low, high, middle)
    return high * np.sqrt((information + rho) / information)


def quantile_bounds(
    q: float, edges: np.ndarray, counts: np.ndarray, rho: float, low_error: float, high_error: float
) -> tuple[np.ndarray, np.ndarray]:
    """Always-valid (low, high) bounds on the q-quantile: wrong at any n with probability <= each error."""
    n = counts.sum(axis=-1)
    spread = np.sqrt(n * q * (1 - q))
    sizes, position = np.unique(n, return_inverse=True)  # the boundary depends on n only: solve once per n
    low_z = mixture_boundary_z(sizes, rho, low_error)[position].reshape(np.shape(n))
    high_z = mixture_boundary_z(sizes, rho, high_error)[position].reshape(np.shape(n))
    low_rank = n * q - low_z * spread
    high_rank = n * q + high_z * spread + 1  # the next order statistic
    return (value_at_rank(low_rank, edges, counts, above_largest_edge="edge"), value_at_rank(high_rank, edges, counts))


@dataclass(frozen=True)
class RatioBounds:
    """canary / stable for one quantile: point estimate and always-valid bounds (arrays over streams)."""

    estimate: np.ndarray
    low: np.ndarray  # used to FAIL (alpha side)
    high: np.ndarray  # used to PASS (beta side)


def ratio_bounds(
    q: float, edges: np.ndarray, canary: np.ndarray, stable: np.ndarray, design: LatencyDesign
) -> RatioBounds:
    rho = float(design.min_samples)
    fail_error = design.alpha / (2 * len(design.quantiles))
    pass_error = design.beta / 2
    canary_low, canary_high = quantile_bounds(q, edges, canary, rho, fail_error, pass_error)
    stable_low, stable_high = quantile_bounds(q, edges, stable, rho, pass_error, fail_error)
    with np.errstate(invalid="ignore", divide="ignore"):
        estimate = histogram_quantile(q, edges, canary) / histogram_quantile(q, edges, stable)
        low = np.where(np.isinf(stable_high), 0.0, canary_low / stable_high)
        high = np.where(stable_low > 0, canary_high / stable_low, np.inf)
    return RatioBounds(estimate, low, high)


# --- Mann-Whitney, for the evidence record ----------------------------------------------------------------


@dataclass(frozen=True)
class RankTest:
    """Mann-Whitney U on binned samples; works element-wise on arrays of streams (last axis = bins)."""

    u: np.ndarray  # pairs (canary, stable) where the canary is slower, ties counted 1/2
    z: np.ndarray  # tie-corrected standardized U (> 0: canary slower)
    slower_probability: np.ndarray  # U / (n_c n_s): P(a canary request is slower than a stable one)


def rank_test(canary_counts: np.ndarray, stable_counts: np.ndarray) -> RankTest:
    n_canary = canary_counts.sum(axis=-1)
    n_stable = stable_counts.sum(axis=-1)
    stable_below = np.cumsum(stable_counts, axis=-1) - stable_counts
    u = (canary_counts * (stable_below + 0.5 * stable_counts)).sum(axis=-1)
    n = n_canary + n_stable
    ties = canary_counts + stable_counts
    tie_term = (ties**3 - ties).sum(axis=-1) / np.maximum(n * (n - 1), 1.0)
    variance = n_canary * n_stable / 12.0 * ((n + 1) - tie_term)
    pairs = n_canary * n_stable
    with np.errstate(invalid="ignore", divide="ignore"):
        z = np.where(variance > 0, (u - pairs / 2) / np.sqrt(variance), 0.0)
        slower = np.where(pairs > 0, u / pairs, 0.5)
    return RankTest(u, z, slower)


# --- one look -------------------------------------------------------------------------------------------


def latency_decision(bounds: list[RatioBounds], max_increase: float) -> tuple[np.ndarray, np.ndarray]:
    """(fail, pass) flags, element-wise over streams."""
    limit = 1 + max_increase
    fail = np.any([b.low > limit for b in bounds], axis=0)
    passed = np.all([b.high <= limit for b in bounds], axis=0)
    return fail, passed & ~fail


def judge_latency(name: str, observation: HistogramObservation, design: LatencyDesign) -> Evidence:
    canary_edges, canary_counts = bin_counts(observation.canary_buckets)
    stable_edges, stable_counts = bin_counts(observation.stable_buckets)
    counts = {"canaryCount": float(canary_counts.sum()), "stableCount": float(stable_counts.sum())}
    smallest_arm = min(counts.values())
    if smallest_arm == 0:
        return Evidence(name, Outcome.PENDING, "no requests yet in one arm: waiting", counts)
    if not np.array_equal(canary_edges, stable_edges):
        raise ValueError("canary and stable histograms have different buckets")
    if smallest_arm < design.min_samples:
        return Evidence(
            name, Outcome.PENDING, f"waiting for samples: {smallest_arm:g} of {design.min_samples} per arm", counts
        )
    bounds = {q: ratio_bounds(q, canary_edges, canary_counts, stable_counts, design) for q in design.quantiles}
    fail, passed = latency_decision(list(bounds.values()), design.max_increase)
    decision = Outcome.FAIL if fail else Outcome.PASS if passed else Outcome.PENDING
    test = rank_test(canary_counts, stable_counts)
    spans = {q: bucket_span(q, stable_edges, stable_counts) for q in design.quantiles}
    values = {
        **counts,
        "maxIncrease": design.max_increase,
        "rankZ": float(test.z),
        "slowerProbability": float(test.slower_probability),
    }
    for q, bound in bounds.items():
        label = _percent(q)
        values.update(
            {
                f"ratioP{label}": float(bound.estimate),
                f"ratioP{label}Low": float(bound.low),
                f"ratioP{label}High": float(bound.high),
                f"bucketSpanP{label}": spans[q],
            }
        )
    return Evidence(name, decision, _message(decision, bounds, test, design, spans), values)


def bucket_span(q: float, edges: np.ndarray, counts: np.ndarray) -> float:
    """upper / lower edge of the bucket holding the q-quantile: the resolution of any ratio read there."""
    cumulative = np.cumsum(counts)
    index = int(np.argmax(cumulative >= q * cumulative[-1]))
    lower = edges[index - 1] if index > 0 else min(0.0, float(edges[0]))
    return float(edges[index] / lower) if lower > 0 else math.inf


def _message(
    decision: Outcome,
    bounds: dict[float, RatioBounds],
    test: RankTest,
    design: LatencyDesign,
    spans: dict[float, float],
) -> str:
    verdict = {Outcome.PASS: "within tolerance", Outcome.FAIL: "slower than tolerated"}.get(decision, "not sure yet")
    shown = ", ".join(
        f"p{_percent(q)} x{float(b.estimate):.2f} [{float(b.low):.2f}, {float(b.high):.2f}]" for q, b in bounds.items()
    )
    if any(np.isinf(b.high) for b in bounds.values()):
        verdict += " (a quantile reaches the +Inf bucket, so it cannot be bounded: add larger buckets)"
    coarse = [f"p{_percent(q)} x{span:.2f}" for q, span in spans.items() if span > 1 + 2 * design.max_increase]
    if coarse:
        verdict += (
            f" (buckets around {', '.join(coarse)} are over twice the tolerance wide: ratios are "
            "interpolated guesses there, finer buckets make them trustworthy)"
        )
    return (
        f"{verdict}: canary/stable {shown} (limit x{1 + design.max_increase:.2f}; always-valid bounds); "
        f"a canary request is slower than a stable one {100 * float(test.slower_probability):.0f}% of the "
        f"time (rank test z = {float(test.z):.2f})"
    )


def _percent(q: float) -> str:
    return f"{100 * q:g}".replace(".", "_")
