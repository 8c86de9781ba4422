"""Latency check from Prometheus histogram buckets: canary vs stable, safe under repeated looks.

A Mann-Whitney U test on the binned samples (ties within a bucket handled by mid-ranks and the tie-corrected
variance) says whether the canary is stochastically slower; the quantile ratio (canary / stable, p50 and
p95 by default, interpolated like PromQL's histogram_quantile) says whether that matters.

    FAIL     the canary is significantly slower AND some quantile is more than maxIncrease worse
    PASS     every quantile ratio is within 1 + maxIncrease (a slowdown within tolerance is fine)
    PENDING  below minSamples per arm, or worse than tolerated but not yet significant

Significance uses an always-valid boundary, not the fixed-sample 1.645: the standardized U statistic over
cumulative data behaves like a Brownian motion S in information time I = 1 / Var(U / n_c n_s), and a
half-normal mixture of exponential martingales (Robbins 1970; Howard et al. 2021)

    M(S, I) = 2 sqrt(rho / (I + rho)) exp(S^2 / (2 (I + rho))) Phi(S / sqrt(I + rho))

stays below 1/alpha forever with probability >= 1 - alpha when the arms are equal. So the false-failure
rate of an equally fast canary is at most alpha however often one looks (asymptotically: the U statistic
is only approximately Gaussian). rho is the information at minSamples per arm, which makes the boundary
tightest at about ten times minSamples.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from scipy.special import log_ndtr

from .outcome import Evidence, Outcome

Buckets = Mapping[float | str, float]


@dataclass(frozen=True)
class LatencyDesign:
    alpha: float = 0.05
    max_increase: float = 0.2
    min_samples: int = 100
    quantiles: tuple[float, ...] = (0.5, 0.95)

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 0.5:
            raise ValueError(f"alpha must be in (0, 0.5), got {self.alpha}")
        if self.max_increase < 0 or self.min_samples < 2:
            raise ValueError(f"need maxIncrease >= 0 and minSamples >= 2, got {self.max_increase}, "
                             f"{self.min_samples}")
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


def histogram_quantile(q: float, edges: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """PromQL histogram_quantile along the last axis: linear inside the bucket holding rank q * total.

    Returns +inf where the rank falls in the +Inf bucket (the quantile is above the largest finite edge:
    unknown, and PromQL's "largest finite edge" would understate a slow canary) and nan without samples.
    """
    cumulative = np.cumsum(counts, axis=-1)
    total = cumulative[..., -1:]
    rank = q * total
    index = np.minimum(np.argmax(cumulative >= rank, axis=-1), len(edges) - 1)[..., None]
    lower_edges = np.concatenate(([min(0.0, edges[0])], edges[:-1]))
    upper = edges[index]
    lower = lower_edges[index]
    below = np.take_along_axis(cumulative, index, axis=-1) - np.take_along_axis(counts, index, axis=-1)
    in_bucket = np.take_along_axis(counts, index, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        fraction = np.where(in_bucket > 0, (rank - below) / in_bucket, 1.0)
        value = np.where(np.isinf(upper), np.inf, lower + (upper - lower) * fraction)
    value = np.where(total > 0, value, np.nan)
    return value[..., 0]


# --- the rank test and its always-valid boundary ---------------------------------------------------------

@dataclass(frozen=True)
class RankTest:
    """Mann-Whitney U on binned samples; works element-wise on arrays of streams (last axis = bins)."""

    u: np.ndarray                 # pairs (canary, stable) where the canary is slower, ties counted 1/2
    z: np.ndarray                 # standardized U (> 0: canary slower)
    information: np.ndarray       # 1 / Var(U / (n_c n_s)) under equality
    slower_probability: np.ndarray  # U / (n_c n_s): P(canary request slower than a stable one)


def rank_test(canary_counts: np.ndarray, stable_counts: np.ndarray) -> RankTest:
    n_canary = canary_counts.sum(axis=-1)
    n_stable = stable_counts.sum(axis=-1)
    stable_below = np.cumsum(stable_counts, axis=-1) - stable_counts
    u = (canary_counts * (stable_below + 0.5 * stable_counts)).sum(axis=-1)
    n = n_canary + n_stable
    ties = canary_counts + stable_counts
    tie_term = (ties ** 3 - ties).sum(axis=-1) / np.maximum(n * (n - 1), 1.0)
    variance = n_canary * n_stable / 12.0 * ((n + 1) - tie_term)
    pairs = n_canary * n_stable
    with np.errstate(invalid="ignore", divide="ignore"):
        z = np.where(variance > 0, (u - pairs / 2) / np.sqrt(variance), 0.0)
        information = np.where(variance > 0, pairs ** 2 / variance, 0.0)
        slower = np.where(pairs > 0, u / pairs, 0.5)
    return RankTest(u, z, information, slower)


def information_without_ties(samples_per_arm: float) -> float:
    """I for n samples per arm and no ties: 12 n^2 / (2n + 1)."""
    return 12.0 * samples_per_arm ** 2 / (2 * samples_per_arm + 1)


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
        too_low = middle ** 2 / 2 + log_ndtr(middle) < target
        low, high = np.where(too_low, middle, low), np.where(too_low, high, middle)
    return high * np.sqrt((information + rho) / information)


# --- one look -------------------------------------------------------------------------------------------

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
        return Evidence(name, Outcome.PENDING, f"waiting for samples: {smallest_arm:g} of "
                        f"{design.min_samples} per arm", counts)
    test = rank_test(canary_counts, stable_counts)
    boundary = float(mixture_boundary_z(test.information, information_without_ties(design.min_samples),
                                        design.alpha))
    ratios = _quantile_ratios(canary_edges, canary_counts, stable_counts, design.quantiles)
    decision = _decide(float(test.z), boundary, ratios, design)
    values = {**counts, "z": float(test.z), "zBoundary": boundary,
              "slowerProbability": float(test.slower_probability), "maxIncrease": design.max_increase,
              **{f"ratioP{_percent(q)}": ratio for q, ratio in ratios.items()}}
    return Evidence(name, decision, _message(decision, float(test.z), boundary, ratios, design), values)


def _quantile_ratios(edges: np.ndarray, canary_counts: np.ndarray, stable_counts: np.ndarray,
                     quantiles: tuple[float, ...]) -> dict[float, float]:
    ratios = {}
    for q in quantiles:
        canary = float(histogram_quantile(q, edges, canary_counts))
        stable = float(histogram_quantile(q, edges, stable_counts))
        ratios[q] = _ratio(canary, stable)
    return ratios


def _ratio(canary: float, stable: float) -> float:
    if math.isinf(canary) and math.isinf(stable):
        return math.nan  # both above the largest bucket: cannot compare
    if math.isinf(canary) or stable <= 0:
        return math.inf if canary > 0 else 1.0
    return canary / stable


def _decide(z: float, boundary: float, ratios: dict[float, float], design: LatencyDesign) -> Outcome:
    limit = 1 + design.max_increase
    if any(math.isnan(ratio) for ratio in ratios.values()):
        return Outcome.PENDING
    if all(ratio <= limit for ratio in ratios.values()):
        return Outcome.PASS
    return Outcome.FAIL if z >= boundary else Outcome.PENDING


def _message(decision: Outcome, z: float, boundary: float, ratios: dict[float, float],
             design: LatencyDesign) -> str:
    shown = ", ".join(f"p{_percent(q)} x{ratio:.2f}" for q, ratio in ratios.items())
    verdict = {Outcome.PASS: "within tolerance", Outcome.FAIL: "significantly slower beyond tolerance"}.get(
        decision, "slower than tolerated but not yet significant")
    if any(math.isnan(ratio) for ratio in ratios.values()):
        verdict = "quantiles above the largest finite bucket in both arms: cannot compare"
    return (f"{verdict}: canary/stable {shown} (limit x{1 + design.max_increase:.2f}); rank test z = {z:.2f}, "
            f"always-valid boundary {boundary:.2f}")


def _percent(q: float) -> str:
    return f"{100 * q:g}".replace(".", "_")
