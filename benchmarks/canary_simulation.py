"""Simulate canary analyses: the sequential test against per-interval raw thresholds and z-tests.

Labelled feedback arrives per interval in both arms; every judge looks after every interval. Judges:
  sequential            this project's test (feedbackloop.core.analysis.sequential), evaluated vectorized
  raw diff, N=k         Flagger/Argo style: an interval whose canary accuracy is below stable - margin is a
                        failed check; roll back at the k-th failed check, promote after `raw_intervals`
  raw acc >= min, N=3   the same with a fixed floor (stable accuracy - margin) on the canary alone
  z-test @horizon       two-proportion z-test (canary worse than stable?) once, at the horizon
  z-test peeked         the same z-test at every interval, rolling back at the first significant look
  NI z-test @horizon    fixed-sample non-inferiority test at the horizon (promote if z > z_{1-beta})

Then, with labels too scarce for the deadline: the same test run to the deadline against the test that
ends early when a decision before the deadline has become unlikely (minDecisionProbability), and how long
each holds the loop.

Run: python benchmarks/canary_simulation.py [--streams N] [--seed S]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import numpy as np
from scipy.stats import norm

from feedbackloop.core.analysis.latency import (
    LatencyDesign,
    histogram_quantile,
    latency_decision,
    ratio_bounds,
    value_at_rank,
)
from feedbackloop.core.analysis.machine import PROJECTION_AFTER
from feedbackloop.core.analysis.sequential import (
    NonInferiorityDesign,
    decision_probability,
    difference_and_information,
    log_likelihood_ratio,
)

PROMOTE, ROLLBACK, INCONCLUSIVE = 1, -1, 0


@dataclass(frozen=True)
class Setup:
    stable_accuracy: float = 0.90
    canary_labels: int = 200  # per interval
    stable_labels: int = 200
    horizon: int = 40  # intervals the statistical judges may use
    raw_intervals: int = 10  # Flagger-style analyses run a fixed number of iterations
    design: NonInferiorityDesign = NonInferiorityDesign(
        alpha=0.05, beta=0.10, max_degradation=0.02, detectable_degradation=0.03, min_samples=200
    )


@dataclass(frozen=True)
class Streams:
    canary_good: np.ndarray  # cumulative, shape (streams, looks)
    stable_good: np.ndarray
    canary_total: np.ndarray  # cumulative, shape (looks,)
    stable_total: np.ndarray


@dataclass(frozen=True)
class Decisions:
    decision: np.ndarray  # PROMOTE / ROLLBACK / INCONCLUSIVE per stream
    labels_per_arm: np.ndarray  # mean of both arms' labels when the decision was taken


def simulate(rng: np.random.Generator, setup: Setup, difference: float, streams: int) -> Streams:
    looks = setup.horizon
    canary = rng.binomial(setup.canary_labels, setup.stable_accuracy + difference, (streams, looks))
    stable = rng.binomial(setup.stable_labels, setup.stable_accuracy, (streams, looks))
    intervals = np.arange(1, looks + 1)
    return Streams(
        canary.cumsum(axis=1).astype(float),
        stable.cumsum(axis=1).astype(float),
        setup.canary_labels * intervals.astype(float),
        setup.stable_labels * intervals.astype(float),
    )


def first_true(flags: np.ndarray) -> np.ndarray:
    """Index of the first True per row, or the number of columns if none."""
    return np.where(flags.any(axis=1), flags.argmax(axis=1), flags.shape[1])


def stop_at_first(promote: np.ndarray, rollback: np.ndarray, data: Streams, at_end: int = INCONCLUSIVE) -> Decisions:
    """Act on the first boundary crossing; `at_end` is the decision of streams that never crossed."""
    looks = promote.shape[1]
    first_promote, first_rollback = first_true(promote), first_true(rollback)
    decision = np.where(first_rollback <= first_promote, ROLLBACK, PROMOTE)
    decision = np.where(np.minimum(first_promote, first_rollback) == looks, at_end, decision)
    decided_at = np.minimum(np.minimum(first_promote, first_rollback), looks - 1)
    labels = (data.canary_total[decided_at] + data.stable_total[decided_at]) / 2
    return Decisions(decision, labels)


# --- judges ---------------------------------------------------------------------------------------------


def sequential_judge(data: Streams, setup: Setup) -> Decisions:
    design = setup.design
    difference, information = difference_and_information(
        data.canary_good, data.canary_total, data.stable_good, data.stable_total, design.max_degradation
    )
    log_lr = log_likelihood_ratio(difference, information, design)
    enough = np.minimum(data.canary_total, data.stable_total) >= design.min_samples
    return stop_at_first(
        (log_lr >= design.promote_log_threshold) & enough, (log_lr <= design.rollback_log_threshold) & enough, data
    )


def interval_accuracies(data: Streams) -> tuple[np.ndarray, np.ndarray]:
    canary = np.diff(data.canary_good, axis=1, prepend=0.0) / np.diff(data.canary_total, prepend=0.0)
    stable = np.diff(data.stable_good, axis=1, prepend=0.0) / np.diff(data.stable_total, prepend=0.0)
    return canary, stable


def raw_threshold_judge(failed_check: np.ndarray, failure_limit: int, data: Streams, setup: Setup) -> Decisions:
    failed_check = failed_check[:, : setup.raw_intervals]
    rollback = np.cumsum(failed_check, axis=1) >= failure_limit
    never = np.zeros_like(rollback)
    trimmed = Streams(
        data.canary_good,
        data.stable_good,
        data.canary_total[: setup.raw_intervals],
        data.stable_total[: setup.raw_intervals],
    )
    return stop_at_first(never, rollback, trimmed, at_end=PROMOTE)


def z_scores(data: Streams, margin: float = 0.0, pooled: bool = True) -> np.ndarray:
    canary_rate = data.canary_good / data.canary_total
    stable_rate = data.stable_good / data.stable_total
    if pooled:
        rate = (data.canary_good + data.stable_good) / (data.canary_total + data.stable_total)
        variance = rate * (1 - rate) * (1 / data.canary_total + 1 / data.stable_total)
    else:
        variance = (
            canary_rate * (1 - canary_rate) / data.canary_total + stable_rate * (1 - stable_rate) / data.stable_total
        )
    return (canary_rate - stable_rate + margin) / np.sqrt(np.maximum(variance, 1e-12))


def z_test_judges(data: Streams, setup: Setup) -> dict[str, Decisions]:
    alpha, beta, margin = setup.design.alpha, setup.design.beta, setup.design.max_degradation
    worse = z_scores(data) < -norm.ppf(1 - alpha)
    at_horizon = np.zeros_like(worse)
    at_horizon[:, -1] = worse[:, -1]
    no_promote = np.zeros_like(worse)
    non_inferior = z_scores(data, margin, pooled=False) > norm.ppf(1 - beta)
    ni_promote, ni_rollback = np.zeros_like(worse), np.zeros_like(worse)
    ni_promote[:, -1], ni_rollback[:, -1] = non_inferior[:, -1], ~non_inferior[:, -1]
    return {
        "z-test @horizon": stop_at_first(no_promote, at_horizon, data, at_end=PROMOTE),
        "z-test peeked every interval": stop_at_first(no_promote, worse, data, at_end=PROMOTE),
        "NI z-test @horizon": stop_at_first(ni_promote, ni_rollback, data),
    }


def all_judges(data: Streams, setup: Setup) -> dict[str, Decisions]:
    margin = setup.design.max_degradation
    canary, stable = interval_accuracies(data)
    below_stable = canary < stable - margin
    below_floor = canary < setup.stable_accuracy - margin
    raw = f"({setup.raw_intervals} intervals)"
    return {
        "sequential (this)": sequential_judge(data, setup),
        f"raw diff, N=1 {raw}": raw_threshold_judge(below_stable, 1, data, setup),
        f"raw diff, N=3 {raw}": raw_threshold_judge(below_stable, 3, data, setup),
        f"raw acc >= {setup.stable_accuracy - margin:.2f}, N=3 {raw}": raw_threshold_judge(below_floor, 3, data, setup),
        **z_test_judges(data, setup),
    }


# --- reporting ------------------------------------------------------------------------------------------

SCENARIOS = {
    "equal accuracy": 0.0,
    "canary 3 pts worse": -0.03,
    "canary 1 pt worse": -0.01,
    "canary 2 pts better": 0.02,
}


def rates(decisions: Decisions) -> tuple[float, float, float, float]:
    decided = decisions.decision != INCONCLUSIVE
    labels = float(decisions.labels_per_arm[decided].mean()) if decided.any() else float("nan")
    return (
        float(np.mean(decisions.decision == ROLLBACK)),
        float(np.mean(decisions.decision == PROMOTE)),
        float(np.mean(~decided)),
        labels,
    )


def main_table(streams: int, seed: int, setup: Setup) -> dict[str, dict[str, Decisions]]:
    print(f"{'scenario':<22} {'judge':<36} {'rollback':>8} {'promote':>8} {'inconcl.':>8} {'labels/arm':>10}")
    results = {}
    for index, (scenario, difference) in enumerate(SCENARIOS.items()):
        data = simulate(np.random.default_rng(seed + index), setup, difference, streams)
        results[scenario] = all_judges(data, setup)
        for judge, decisions in results[scenario].items():
            rollback, promote, inconclusive, labels = rates(decisions)
            print(f"{scenario:<22} {judge:<36} {rollback:8.3f} {promote:8.3f} {inconclusive:8.3f} {labels:10.0f}")
        print()
    return results


def guarantees(results: dict[str, dict[str, Decisions]], setup: Setup, streams: int) -> bool:
    design = setup.design
    false_rollback = rates(results["equal accuracy"]["sequential (this)"])[0]
    missed = rates(results["canary 3 pts worse"]["sequential (this)"])[1]
    inside_margin = rates(results["canary 1 pt worse"]["sequential (this)"])[0]
    checks = [
        ("false rollback, equal canary", false_rollback, design.alpha),
        ("false rollback, 1 pt worse (= d_good)", inside_margin, design.alpha),
        ("missed regression, 3 pts worse", missed, design.beta),
    ]
    for label, observed, bound in checks:
        verdict = "OK" if observed <= bound else "VIOLATED"
        error = 2 * np.sqrt(bound * (1 - bound) / streams)
        print(f"  {label:<40} {observed:.3f} <= {bound:.2f}  {verdict}  (2 Monte Carlo s.e. at the bound: {error:.3f})")
    return all(observed <= bound for _, observed, bound in checks)


def robustness(streams: int, seed: int) -> None:
    """The sequential test away from the headline setting: unequal traffic, rare errors, at the margin."""
    print(f"{'condition':<46} {'true diff':>9} {'rollback':>8} {'promote':>8} {'inconcl.':>8} {'labels/arm':>10}")
    wide = NonInferiorityDesign(
        alpha=0.05, beta=0.10, max_degradation=0.02, detectable_degradation=0.03, min_samples=50
    )
    rare = NonInferiorityDesign(
        alpha=0.05, beta=0.10, max_degradation=0.005, detectable_degradation=0.01, min_samples=1000
    )
    conditions = [
        ("acc .90, canary 20% of traffic (50 vs 200)", Setup(canary_labels=50, horizon=160, design=wide)),
        ("acc .90, canary 80% of traffic (800 vs 200)", Setup(canary_labels=800, horizon=40, design=wide)),
        (
            "error rate 1%, margin 0.5 pt, delta 1 pt",
            Setup(stable_accuracy=0.99, canary_labels=1000, stable_labels=1000, horizon=60, design=rare),
        ),
    ]
    for index, (label, setup) in enumerate(conditions):
        design = setup.design
        for difference in dict.fromkeys((0.0, design.good_difference, -design.max_degradation, -design.detectable)):
            data = simulate(np.random.default_rng(seed + 100 + index), setup, difference, streams)
            rollback, promote, inconclusive, labels = rates(sequential_judge(data, setup))
            print(
                f"{label:<46} {100 * difference:+8.2f}p {rollback:8.3f} {promote:8.3f} {inconclusive:8.3f} "
                f"{labels:10.0f}"
            )
    print()


# --- latency --------------------------------------------------------------------------------------------

PROMETHEUS_DEFAULT_BUCKETS = np.array([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, np.inf])
FINE_BUCKETS = np.append(0.01 * 1.25 ** np.arange(25), np.inf)  # 10 ms .. 2.1 s in 25% steps
LATENCY_SCENARIOS = {
    "equal latency": 1.0,
    "canary 10% slower": 1.1,
    "canary 20% slower (=limit)": 1.2,
    "canary 40% slower": 1.4,
}


@dataclass(frozen=True)
class LatencySetup:
    requests: int = 1000  # per arm per interval
    looks: int = 40
    raw_intervals: int = 10
    median_seconds: float = 0.08
    log_sd: float = 0.6  # log-normal spread: p95 = median x 2.7
    design: LatencyDesign = LatencyDesign(alpha=0.05, beta=0.10, max_increase=0.2, min_samples=500)


def latency_counts(
    rng: np.random.Generator, edges: np.ndarray, median: float, setup: LatencySetup, streams: int
) -> np.ndarray:
    """Per-bucket counts cumulated over intervals, shape (streams, looks, buckets); log-normal latencies."""
    probabilities = np.diff(norm.cdf(np.log(edges / median) / setup.log_sd), prepend=0.0)
    counts = rng.multinomial(setup.requests, probabilities, size=(streams, setup.looks))
    return counts.cumsum(axis=1).astype(float)


def fixed_z_bounds(q: float, edges: np.ndarray, counts: np.ndarray, error: float) -> tuple[np.ndarray, np.ndarray]:
    """The textbook fixed-sample quantile interval (valid at one look only)."""
    n = counts.sum(axis=-1)
    spread = norm.ppf(1 - error) * np.sqrt(n * q * (1 - q))
    return (
        value_at_rank(n * q - spread, edges, counts, above_largest_edge="edge"),
        value_at_rank(n * q + spread + 1, edges, counts),
    )


def latency_judges(
    edges: np.ndarray, canary: np.ndarray, stable: np.ndarray, setup: LatencySetup
) -> dict[str, tuple[np.ndarray, np.ndarray, int, int]]:
    """judge -> (fail flags, pass flags, looks used, decision if nothing crossed); flags (streams, looks)."""
    design = setup.design
    limit = 1 + design.max_increase
    enough = np.minimum(canary.sum(axis=-1), stable.sum(axis=-1)) >= design.min_samples
    bounds = [ratio_bounds(q, edges, canary, stable, design) for q in design.quantiles]
    fail, passed = latency_decision(bounds, design.max_increase)
    naive_fail, naive_pass = np.zeros_like(fail), np.ones_like(passed)
    for q in design.quantiles:
        canary_low, canary_high = fixed_z_bounds(q, edges, canary, design.alpha / (2 * len(design.quantiles)))
        stable_low, stable_high = fixed_z_bounds(q, edges, stable, design.beta / 2)
        naive_fail |= canary_low / stable_high > limit
        naive_pass &= canary_high / stable_low <= limit
    interval_ratio = histogram_quantile(0.95, edges, np.diff(canary, axis=1, prepend=0.0)) / histogram_quantile(
        0.95, edges, np.diff(stable, axis=1, prepend=0.0)
    )
    raw_failed = np.cumsum(interval_ratio > limit, axis=1)
    never = np.zeros_like(fail)
    return {
        "quantile bounds, always-valid (this)": (enough & fail, enough & passed, setup.looks, INCONCLUSIVE),
        "quantile bounds, fixed-sample z, peeked": (
            enough & naive_fail,
            enough & naive_pass & ~naive_fail,
            setup.looks,
            INCONCLUSIVE,
        ),
        f"raw interval p95 > x{limit:.1f}, N=1": (raw_failed >= 1, never, setup.raw_intervals, PROMOTE),
        f"raw interval p95 > x{limit:.1f}, N=3": (raw_failed >= 3, never, setup.raw_intervals, PROMOTE),
    }


def latency_table(streams: int, seed: int, setup: LatencySetup) -> None:
    print(
        f"{'buckets':<8} {'latency scenario':<27} {'judge':<40} {'fail':>6} {'pass':>6} {'inconcl.':>8} "
        f"{'requests/arm':>12}"
    )
    for bucket_name, edges in (("default", PROMETHEUS_DEFAULT_BUCKETS), ("fine", FINE_BUCKETS)):
        for index, (scenario, slowdown) in enumerate(LATENCY_SCENARIOS.items()):
            rng = np.random.default_rng(seed + 200 + index)
            stable = latency_counts(rng, edges, setup.median_seconds, setup, streams)
            canary = latency_counts(rng, edges, setup.median_seconds * slowdown, setup, streams)
            for judge, (fail, passed, looks, at_end) in latency_judges(edges, canary, stable, setup).items():
                requests = setup.requests * np.arange(1, looks + 1, dtype=float)
                data = Streams(canary[:, :looks, 0], canary[:, :looks, 0], requests, requests)
                rollback, promote, inconclusive, used = rates(
                    stop_at_first(passed[:, :looks], fail[:, :looks], data, at_end=at_end)
                )
                print(
                    f"{bucket_name:<8} {scenario:<27} {judge:<40} {rollback:6.3f} {promote:6.3f} "
                    f"{inconclusive:8.3f} {_count(used):>12}"
                )
        print()
    print(
        "Prometheus' default buckets are 2-2.5x apart around these latencies: at the 1.2x limit the interpolated "
        "ratios are biased\nand the pass rate exceeds beta (the evidence message flags buckets over twice the "
        "tolerance wide). 1.25x buckets keep it.\n"
    )


def _count(value: float) -> str:
    return "-" if np.isnan(value) else f"{value:.0f}"


# --- ending undecidable analyses early (minDecisionProbability) ------------------------------------------

SCARCE = Setup(canary_labels=25, stable_labels=25)  # 1,000 labels per arm by the deadline: too few for an equal canary
EARLY_SCENARIOS = {"equal accuracy": 0.0, "canary 1 pt worse": -0.01, "canary 3 pts worse": -0.03,
                   "canary 2 pts better": 0.02, "canary 5 pts better": 0.05}  # fmt: skip


def early_end_judge(data: Streams, setup: Setup, min_probability: float) -> tuple[Decisions, np.ndarray]:
    """The sequential test that also ends Inconclusive once P(a decision before the deadline) < min_probability,
    projected as the analysis does it: the information rate since the first look with minSamples, after a
    tenth of the horizon. Returns the decisions and the look (1-based) each analysis ended at."""
    design, looks = setup.design, setup.horizon
    difference, information = difference_and_information(
        data.canary_good, data.canary_total, data.stable_good, data.stable_total, design.max_degradation
    )
    log_lr = log_likelihood_ratio(difference, information, design)
    enough = np.minimum(data.canary_total, data.stable_total) >= design.min_samples
    anchor = int(np.argmax(enough))  # the totals are the same in every stream
    undecidable = np.zeros(log_lr.shape, bool)
    if min_probability > 0:  # 0: never projected, the analysis runs to its deadline
        for look in range(anchor + max(1, round(PROJECTION_AFTER * looks)), looks - 1):
            rate = (information[:, look] - information[:, anchor]) / (look - anchor)
            left = rate * (looks - 1 - look)
            chances = [decision_probability(*args, design) for args in zip(log_lr[:, look], difference[:, look], left)]
            undecidable[:, look] = np.array(chances) < min_probability
    promote = (log_lr >= design.promote_log_threshold) & enough
    rollback = (log_lr <= design.rollback_log_threshold) & enough
    first_promote, first_rollback, first_stop = first_true(promote), first_true(rollback), first_true(undecidable)
    first = np.minimum(np.minimum(first_promote, first_rollback), first_stop)
    decision = np.where(first == first_rollback, ROLLBACK, np.where(first == first_promote, PROMOTE, INCONCLUSIVE))
    decision = np.where(first >= looks, INCONCLUSIVE, decision)
    ended = np.minimum(first, looks - 1)
    labels = (data.canary_total[ended] + data.stable_total[ended]) / 2
    return Decisions(decision, labels), ended + 1


def early_end_table(streams: int, seed: int, setup: Setup = SCARCE, min_probability: float = 0.1) -> None:
    print(f"{'scenario':<22} {'judge':<30} {'rollback':>8} {'promote':>8} {'inconcl.':>8} {'looks held':>10}")
    for index, (scenario, difference) in enumerate(EARLY_SCENARIOS.items()):
        data = simulate(np.random.default_rng(seed + 100 + index), setup, difference, streams)
        to_deadline, held_to_deadline = early_end_judge(data, setup, 0.0)
        early, held_early = early_end_judge(data, setup, min_probability)
        for judge, decisions, held in (
            ("to the deadline (0)", to_deadline, held_to_deadline),
            (f"ends early ({min_probability:g})", early, held_early),
        ):
            rollback, promote, inconclusive, _ = rates(decisions)
            line = f"{rollback:8.3f} {promote:8.3f} {inconclusive:8.3f} {held.mean():10.1f}"
            print(f"{scenario:<22} {judge:<30} {line}")
        print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=2000, help="simulated analyses per scenario")
    parser.add_argument("--seed", type=int, default=20240601)
    arguments = parser.parse_args()
    started = time.perf_counter()
    setup = Setup()
    design = setup.design
    print(
        f"alpha={design.alpha} (false rollback of an equal canary), beta={design.beta} (missed regression of "
        f"delta), margin (maxDegradation)={design.max_degradation}, delta (detectableDegradation)="
        f"{design.detectable}\nSPRT hypotheses: d_good={design.good_difference:+.3f}, d_bad="
        f"{design.bad_difference:+.3f}; promote at log LR >= {design.promote_log_threshold:.3f}, roll back at "
        f"<= {design.rollback_log_threshold:.3f}; minSamples={design.min_samples}/arm\n"
        f"stable accuracy {setup.stable_accuracy}, {setup.canary_labels} labels per arm per interval, horizon "
        f"{setup.horizon} intervals ({setup.horizon * setup.canary_labels} labels/arm), raw judges "
        f"{setup.raw_intervals} intervals, {arguments.streams} streams per scenario, seed {arguments.seed}\n"
    )
    results = main_table(arguments.streams, arguments.seed, setup)
    print("Guarantees of the sequential test:")
    held = guarantees(results, setup, arguments.streams)
    print("\nRobustness of the sequential test (alpha 0.05, beta 0.10):")
    robustness(arguments.streams, arguments.seed)
    latency = LatencySetup()
    print(
        f"Latency check (p50 and p95 may be {latency.design.max_increase:.0%} worse; alpha "
        f"{latency.design.alpha}, beta {latency.design.beta}; {latency.requests} requests per arm per interval, "
        f"{latency.looks} looks, minSamples {latency.design.min_samples}; raw judges {latency.raw_intervals} "
        "intervals):"
    )
    latency_table(arguments.streams, arguments.seed, latency)
    print(
        f"\nUndecidable analyses end early (minDecisionProbability): {SCARCE.canary_labels} labels per arm per "
        f"interval, deadline at {SCARCE.horizon} intervals ({SCARCE.horizon * SCARCE.canary_labels} labels/arm); "
        "'looks held': intervals until the analysis ended, i.e. how long it held the loop:"
    )
    early_end_table(arguments.streams, arguments.seed)
    print(f"guarantees {'hold' if held else 'VIOLATED'}; {time.perf_counter() - started:.1f}s")


if __name__ == "__main__":
    main()
