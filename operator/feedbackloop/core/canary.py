"""Canary traffic split and the bridge from live observations to the sequential analysis core."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import cast

from feedbackloop.core import status
from feedbackloop.core.analysis import (
    AnalysisConfig,
    AnalysisState,
    CountObservation,
    HistogramObservation,
    LatencyCheck,
    MetricError,
    NoData,
    Observation,
    Phase,
    ProportionCheck,
    ThresholdCheck,
    ValueObservation,
    evaluate,
    start_analysis,
)
from feedbackloop.core.api import Analysis
from feedbackloop.core.status import RolloutState
from feedbackloop.core.timeutil import parse_time


@dataclass(frozen=True)
class ArmCounts:
    """Successes out of trials for one arm over the analysis window (e.g. correct of labelled)."""

    success: float
    total: float


@dataclass(frozen=True)
class CanaryObservation:
    """What Prometheus said about canary vs stable since the canary started."""

    accuracy: tuple[ArmCounts, ArmCounts] | None = None  # (canary, stable)
    availability: tuple[ArmCounts, ArmCounts] | None = None  # non-5xx of requests
    latency: tuple[dict[float, float], dict[float, float]] | None = None  # cumulative buckets le -> count
    checks: dict[str, float | None] = field(default_factory=dict)
    error: str = ""  # Prometheus refused a query: every check errs (toward consecutiveErrorLimit)
    outage: str = ""  # Prometheus did not answer: no data, the analysis waits (up to maxDuration)


@dataclass(frozen=True)
class CanaryVerdict:
    phase: Phase  # the sequential analysis' own verdict, typed
    message: str
    rollout_fields: RolloutState


def replica_split(stable_replicas: int, weight: int) -> tuple[int, int]:
    """Canary replicas for a traffic weight with a plain Service (share = replica share), and the
    weight that share really gives. Stable keeps its replicas: the canary is added beside it."""
    if weight >= 100:
        return stable_replicas, 50
    canary = max(1, math.ceil(stable_replicas * weight / (100 - weight)))
    return canary, round(100 * canary / (canary + stable_replicas))


def analysis_config(analysis: Analysis, task: str) -> AnalysisConfig:
    """The analysis core's configuration from the CRD's rollout.analysis section."""
    proportions = [ProportionCheck("availability", True, analysis.availability_max_degradation)]
    if task == "classification":
        proportions.insert(0, ProportionCheck("accuracy", True))
    latency = analysis.latency
    return AnalysisConfig(
        alpha=analysis.alpha,
        beta=analysis.beta,
        max_degradation=analysis.max_degradation,
        detectable_degradation=analysis.detectable_degradation,
        min_samples=analysis.min_samples,
        max_samples=analysis.max_samples,
        max_duration_seconds=analysis.max_duration.seconds,
        on_inconclusive=analysis.on_inconclusive,
        min_decision_probability=analysis.min_decision_probability,
        consecutive_error_limit=analysis.consecutive_error_limit,
        proportions=tuple(proportions),
        latency=LatencyCheck(
            enabled=latency.enabled, max_increase=latency.max_increase, min_samples=latency.min_samples
        ),
        checks=tuple(ThresholdCheck(c.name, c.min, c.max, c.failure_limit) for c in analysis.checks),
    )


def _counts(arms: tuple[ArmCounts, ArmCounts] | None, what: str) -> Observation:
    if arms is None or arms[0].total <= 0 or arms[1].total <= 0:
        return NoData(f"no {what} in one of the arms yet")
    canary, stable = arms
    return CountObservation(canary.success, canary.total, stable.success, stable.total)


def observations_of(config: AnalysisConfig, observation: CanaryObservation) -> dict[str, Observation]:
    if observation.outage:  # an outage is missing data, never evidence against a healthy canary
        return {name: NoData(f"Prometheus unavailable: {observation.outage}") for name in config.check_names()}
    if observation.error:
        return {name: MetricError(observation.error) for name in config.check_names()}
    found: dict[str, Observation] = {
        "accuracy": _counts(observation.accuracy, "labelled feedback"),
        "availability": _counts(observation.availability, "requests"),
    }
    latency = observation.latency
    if latency and sum(latency[0].values()) and sum(latency[1].values()):
        found["latency"] = HistogramObservation(latency[0], latency[1])
    for name, value in observation.checks.items():
        found[name] = (
            NoData("the query returned no single value")
            if value is None or math.isnan(value)
            else ValueObservation(value)
        )
    return found


def judge_canary(
    analysis: Analysis,
    task: str,
    rollout: RolloutState,
    observation: CanaryObservation,
    now: float,
    may_end_early: bool = True,
) -> CanaryVerdict:
    """One look of the sequential analysis; its state comes from and goes back to the rollout status.
    may_end_early: the analysis may end Inconclusive before its deadline when undecidable (minDecisionProbability)."""
    config = analysis_config(analysis, task)
    started = parse_time(rollout.get("startedAt")) or now
    saved = rollout.get("analysis")
    state = AnalysisState.from_dict(dict(saved)) if saved else start_analysis(started)
    state, verdict, evidence = evaluate(config, state, observations_of(config, observation), now, may_end_early)
    fields: RolloutState = {
        "analysis": cast(status.AnalysisState, state.to_dict()),
        "analysisPhase": verdict.phase.value,
        "consecutiveErrors": state.max_consecutive_errors,
        "evidence": [cast(status.CheckEvidence, item.to_dict()) for item in evidence] or rollout.get("evidence", []),
    }
    return CanaryVerdict(verdict.phase, verdict.message, fields)
