"""The canary analysis state machine: pure, one call per look, state small enough for the CRD status.

    evaluate(config, state, observations, now) -> (state, verdict, evidence)

Phases: Running -> Successful | Failed | Inconclusive | Error (the last four are final).
  Failed        some check failed (a sequential test crossed its rollback boundary, a significant latency
                regression beyond tolerance, or a threshold check reached its failureLimit)
  Successful    every check passes at this look (sequential checks latch their pass)
  Error         a check's queries failed consecutiveErrorLimit times in a row
  Inconclusive  the deadline (maxDuration) passed, or a sequential check spent its sample budget,
                without a decision; or, at full traffic, a proportion check is unlikely to decide before
                the deadline at the label rate seen (minDecisionProbability: an equivalent canary ends
                early instead of holding the loop for its whole deadline); the caller decides
                (onInconclusive, default rollback)
No data and no traffic are never failures: the check is Pending until data arrives or the deadline passes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any, Literal, TypeVar

from feedbackloop.core.analysis.latency import HistogramObservation, LatencyDesign, judge_latency
from feedbackloop.core.analysis.outcome import Evidence, Outcome
from feedbackloop.core.analysis.sequential import (
    CountObservation,
    NonInferiorityDesign,
    decision_probability,
    judge_proportion,
)
from feedbackloop.core.analysis.threshold import ThresholdDesign, ValueObservation, judge_threshold
from feedbackloop.core.api import parse_duration


class Phase(str, Enum):
    RUNNING = "Running"
    SUCCESSFUL = "Successful"
    FAILED = "Failed"
    INCONCLUSIVE = "Inconclusive"
    ERROR = "Error"

    @property
    def final(self) -> bool:
        return self is not Phase.RUNNING


# --- observations ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NoData:
    """The query returned nothing (no traffic, no labels yet). Waiting, never a failure."""

    reason: str = "no data"


@dataclass(frozen=True)
class MetricError:
    """The query failed (Prometheus down, bad PromQL). Counts toward consecutiveErrorLimit."""

    message: str


PROJECTION_AFTER = 0.1  # of maxDuration: the label rate is measured over at least this long before projecting
Observation = CountObservation | HistogramObservation | ValueObservation | NoData | MetricError
ObservationT = TypeVar("ObservationT", CountObservation, HistogramObservation, ValueObservation)


# --- configuration (the CRD's rollout.analysis section) -------------------------------------------------


@dataclass(frozen=True)
class ProportionCheck:
    """A sequential non-inferiority check on counts: accuracy (higher is better) or error rate (lower)."""

    name: str = "accuracy"
    higher_is_better: bool = True
    max_degradation: float | None = None  # None: the analysis-wide maxDegradation
    detectable_degradation: float | None = None  # None: the analysis-wide detectableDegradation


@dataclass(frozen=True)
class LatencyCheck:
    name: str = "latency"
    enabled: bool = True
    max_increase: float = 0.2
    min_samples: int = 100
    quantiles: tuple[float, ...] = (0.5, 0.95)


@dataclass(frozen=True)
class ThresholdCheck:
    name: str
    min: float | None = None
    max: float | None = None
    failure_limit: int = 1


@dataclass(frozen=True)
class AnalysisConfig:
    """alpha is the analysis-wide false-rollback budget, split evenly over the statistical checks
    (proportion checks and latency); beta bounds, per check, promoting a regression (detectableDegradation
    on a proportion, a quantile ratio at or beyond 1 + maxIncrease on latency). Threshold checks carry no
    statistical guarantee."""

    alpha: float = 0.05
    beta: float = 0.10
    max_degradation: float = 0.02
    detectable_degradation: float | None = None  # None: 1.5 x maxDegradation
    min_samples: int = 200
    max_samples: int | None = None
    max_duration_seconds: float = 7200.0
    on_inconclusive: Literal["rollback", "promote"] = "rollback"
    consecutive_error_limit: int = 4
    min_decision_probability: float = 0.1  # 0: never end early as undecidable
    proportions: tuple[ProportionCheck, ...] = (ProportionCheck(),)
    latency: LatencyCheck = LatencyCheck()
    checks: tuple[ThresholdCheck, ...] = ()

    def __post_init__(self) -> None:
        names = self.check_names()
        if not names:
            raise ValueError("the analysis needs at least one check")
        if len(names) != len(set(names)):
            raise ValueError(f"check names must be unique, got {names}")
        if self.consecutive_error_limit < 1 or self.max_duration_seconds <= 0:
            raise ValueError("consecutiveErrorLimit must be >= 1 and maxDuration > 0")
        if not 0 <= self.min_decision_probability < 1:
            raise ValueError(f"minDecisionProbability must be in [0, 1), got {self.min_decision_probability}")
        if self.on_inconclusive not in ("rollback", "promote"):
            raise ValueError(f"onInconclusive must be rollback or promote, got {self.on_inconclusive!r}")
        for check in self.proportions:  # fail at configuration time, not at the first look
            self.proportion_design(check)
        self.latency_design()
        for threshold in self.checks:
            threshold_design(threshold)

    def check_names(self) -> list[str]:
        latency = [self.latency.name] if self.latency.enabled else []
        return [check.name for check in self.proportions] + latency + [check.name for check in self.checks]

    def sequential_check_names(self) -> list[str]:
        """The statistical checks: their PASS latches, and they share alpha."""
        latency = [self.latency.name] if self.latency.enabled else []
        return [check.name for check in self.proportions] + latency

    @property
    def alpha_per_check(self) -> float:
        """Bonferroni: each statistical check may falsely fail with at most alpha / k."""
        return self.alpha / max(len(self.sequential_check_names()), 1)

    def proportion_design(self, check: ProportionCheck) -> NonInferiorityDesign:
        margin = self.max_degradation if check.max_degradation is None else check.max_degradation
        detectable = check.detectable_degradation
        if detectable is None and check.max_degradation is None:
            detectable = self.detectable_degradation
        return NonInferiorityDesign(
            alpha=self.alpha_per_check,
            beta=self.beta,
            max_degradation=margin,
            detectable_degradation=detectable,
            min_samples=self.min_samples,
            max_samples=self.max_samples,
        )

    def latency_design(self) -> LatencyDesign:
        latency = self.latency
        return LatencyDesign(
            alpha=self.alpha_per_check,
            beta=self.beta,
            max_increase=latency.max_increase,
            min_samples=latency.min_samples,
            quantiles=tuple(latency.quantiles),
        )

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> AnalysisConfig:
        """From the CRD's camelCase `rollout.analysis` mapping; fields this core does not use are ignored."""
        return cls(**_fields_from_spec(spec))


def threshold_design(check: ThresholdCheck) -> ThresholdDesign:
    return ThresholdDesign(min=check.min, max=check.max, failure_limit=check.failure_limit)


_SCALARS = {
    "alpha": "alpha",
    "beta": "beta",
    "maxDegradation": "max_degradation",
    "detectableDegradation": "detectable_degradation",
    "minSamples": "min_samples",
    "maxSamples": "max_samples",
    "onInconclusive": "on_inconclusive",
    "consecutiveErrorLimit": "consecutive_error_limit",
    "minDecisionProbability": "min_decision_probability",
}


def _fields_from_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    fields: dict[str, Any] = {python: spec[key] for key, python in _SCALARS.items() if key in spec}
    if "maxDuration" in spec:
        fields["max_duration_seconds"] = duration_seconds(spec["maxDuration"])
    if "proportions" in spec:
        fields["proportions"] = tuple(_proportion_from_spec(item) for item in spec["proportions"])
    if "latency" in spec:
        fields["latency"] = _latency_from_spec(spec["latency"])
    if "checks" in spec:
        fields["checks"] = tuple(
            ThresholdCheck(
                name=item["name"], min=item.get("min"), max=item.get("max"), failure_limit=item.get("failureLimit", 1)
            )
            for item in spec["checks"]
        )
    return fields


def _proportion_from_spec(item: Mapping[str, Any]) -> ProportionCheck:
    direction = item.get("direction", "higherIsBetter")
    if direction not in ("higherIsBetter", "lowerIsBetter"):
        raise ValueError(f"direction must be higherIsBetter or lowerIsBetter, got {direction!r}")
    return ProportionCheck(
        name=item["name"],
        higher_is_better=direction == "higherIsBetter",
        max_degradation=item.get("maxDegradation"),
        detectable_degradation=item.get("detectableDegradation"),
    )


def _latency_from_spec(item: Mapping[str, Any]) -> LatencyCheck:
    default = LatencyCheck()
    return LatencyCheck(
        name=item.get("name", default.name),
        enabled=item.get("enabled", default.enabled),
        max_increase=item.get("maxIncrease", default.max_increase),
        min_samples=item.get("minSamples", default.min_samples),
        quantiles=tuple(item.get("quantiles", default.quantiles)),
    )


def duration_seconds(value: str | float) -> float:
    """'1h30m' -> 5400.0; numbers are seconds already (the API's duration grammar)."""
    return float(value) if isinstance(value, (int, float)) else parse_duration(value)


# --- state and verdict ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class AnalysisState:
    """What must survive between looks: a phase, a few counters, no samples."""

    started_at: float
    phase: Phase = Phase.RUNNING
    looks: int = 0
    passed: tuple[str, ...] = ()  # sequential checks whose promote boundary was crossed (latched)
    consecutive_errors: dict[str, int] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)  # threshold checks: failed looks so far
    finished_at: float | None = None
    message: str = ""
    # per proportion check, (time, information) at its first look at full traffic: the label rate since
    # then projects the information the deadline leaves
    information_since: dict[str, tuple[float, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "phase": self.phase.value,
            "startedAt": self.started_at,
            "looks": self.looks,
            "passed": list(self.passed),
            "consecutiveErrors": dict(self.consecutive_errors),
            "failures": dict(self.failures),
            "finishedAt": self.finished_at,
            "message": self.message,
            "informationSince": {name: list(anchor) for name, anchor in self.information_since.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AnalysisState:
        return cls(
            started_at=float(data["startedAt"]),
            phase=Phase(data.get("phase", "Running")),
            looks=int(data.get("looks", 0)),
            passed=tuple(data.get("passed", ())),
            consecutive_errors={k: int(v) for k, v in data.get("consecutiveErrors", {}).items()},
            failures={k: int(v) for k, v in data.get("failures", {}).items()},
            finished_at=data.get("finishedAt"),
            message=data.get("message", ""),
            information_since={
                name: (float(anchor[0]), float(anchor[1])) for name, anchor in data.get("informationSince", {}).items()
            },
        )

    @property
    def max_consecutive_errors(self) -> int:
        return max(self.consecutive_errors.values(), default=0)


@dataclass(frozen=True)
class Verdict:
    phase: Phase
    action: Literal["wait", "promote", "rollback"]
    message: str


def start_analysis(now: float) -> AnalysisState:
    return AnalysisState(started_at=now)


def action_for(phase: Phase, config: AnalysisConfig) -> Literal["wait", "promote", "rollback"]:
    if phase is Phase.SUCCESSFUL:
        return "promote"
    if phase is Phase.INCONCLUSIVE:
        return config.on_inconclusive
    if phase is Phase.RUNNING:
        return "wait"
    return "rollback"


# --- one look -------------------------------------------------------------------------------------------


def evaluate(
    config: AnalysisConfig,
    state: AnalysisState,
    observations: Mapping[str, Observation],
    now: float,
    may_end_early: bool = True,
) -> tuple[AnalysisState, Verdict, list[Evidence]]:
    """Judge every check at this look and advance the state. A final state is returned unchanged.
    may_end_early: the caller's traffic is final (the label rate will not grow) and it wants an undecidable
    analysis ended before its deadline; the label rate is measured from the first such look."""
    if state.phase.final:
        return state, Verdict(state.phase, action_for(state.phase, config), state.message), []
    judged = [
        _judge_check(config, state, name, observations.get(name, NoData("no observation")))
        for name in config.check_names()
    ]
    failures = _threshold_failures(config, state, judged)
    evidence = [_apply_failure_limit(config, failures, item) for item in judged]
    counted = _track_information(config, _count(config, state, evidence, failures), evidence, now, may_end_early)
    evidence = _project(config, counted, evidence, now)
    phase, headline, relevant = _phase(config, counted, evidence, now)
    short = f"{headline}: {', '.join(item.name for item in relevant)}" if relevant else headline
    new_state = replace(counted, phase=phase, message=short, finished_at=now if phase.final else None)
    message = f"{headline}: " + "; ".join(f"{item.name}: {item.message}" for item in relevant)
    return new_state, Verdict(phase, action_for(phase, config), message), evidence


def _judge_check(config: AnalysisConfig, state: AnalysisState, name: str, observation: Observation) -> Evidence:
    return _latch_pass(state, _judge_raw(config, name, observation))


def _judge_raw(config: AnalysisConfig, name: str, observation: Observation) -> Evidence:
    if isinstance(observation, NoData):
        return Evidence(name, Outcome.PENDING, f"{observation.reason}: waiting")
    if isinstance(observation, MetricError):
        return Evidence(name, Outcome.ERROR, f"query failed: {observation.message}")
    try:
        return _judge_observation(config, name, observation)
    except (ValueError, TypeError, ZeroDivisionError) as problem:
        return Evidence(name, Outcome.ERROR, f"unusable observation: {problem}")


def _judge_observation(config: AnalysisConfig, name: str, observation: Observation) -> Evidence:
    for check in config.proportions:
        if check.name == name:
            counts = _expect(observation, CountObservation, name)
            return judge_proportion(name, counts, config.proportion_design(check), check.higher_is_better)
    if config.latency.enabled and config.latency.name == name:
        histogram = _expect(observation, HistogramObservation, name)
        return judge_latency(name, histogram, config.latency_design())
    threshold = next(check for check in config.checks if check.name == name)
    value = _expect(observation, ValueObservation, name)
    return judge_threshold(name, value, threshold_design(threshold))


def _expect(observation: Observation, kind: type[ObservationT], name: str) -> ObservationT:
    if not isinstance(observation, kind):
        raise TypeError(f"check {name!r} expects {kind.__name__}, got {type(observation).__name__}")
    return observation


def _latch_pass(state: AnalysisState, evidence: Evidence) -> Evidence:
    """A statistical check that crossed its pass boundary stays passed (the first crossing carries the
    guarantee), through no data and query errors too; a later fail crossing still fails it, which costs
    nothing: P(ever failing) <= alpha."""
    if evidence.name not in state.passed or evidence.decision in (Outcome.FAIL, Outcome.PASS):
        return evidence
    return replace(
        evidence, decision=Outcome.PASS, message=f"passed earlier (pass boundary crossed); now: {evidence.message}"
    )


def _threshold_failures(config: AnalysisConfig, state: AnalysisState, judged: list[Evidence]) -> dict[str, int]:
    thresholds = {check.name for check in config.checks}
    failures = dict(state.failures)
    for item in judged:
        if item.name in thresholds and item.decision is Outcome.FAIL:
            failures[item.name] = failures.get(item.name, 0) + 1
    return failures


def _apply_failure_limit(config: AnalysisConfig, failures: dict[str, int], evidence: Evidence) -> Evidence:
    """A threshold check fails the analysis only at its failureLimit-th failed look (Flagger's threshold)."""
    threshold = next((check for check in config.checks if check.name == evidence.name), None)
    if threshold is None or evidence.decision is not Outcome.FAIL:
        return evidence
    count = failures[evidence.name]
    message = f"{evidence.message} (failure {count} of {threshold.failure_limit})"
    decision = Outcome.FAIL if count >= threshold.failure_limit else Outcome.PENDING
    return replace(evidence, decision=decision, message=message)


def _count(
    config: AnalysisConfig, state: AnalysisState, evidence: list[Evidence], failures: dict[str, int]
) -> AnalysisState:
    errors = {
        item.name: state.consecutive_errors.get(item.name, 0) + 1 for item in evidence if item.decision is Outcome.ERROR
    }
    sequential = set(config.sequential_check_names())
    passes = {item.name for item in evidence if item.decision is Outcome.PASS and item.name in sequential}
    passed = tuple(sorted(set(state.passed) | passes))
    return replace(state, looks=state.looks + 1, consecutive_errors=errors, failures=failures, passed=passed)


def _track_information(
    config: AnalysisConfig, state: AnalysisState, evidence: list[Evidence], now: float, may_end_early: bool
) -> AnalysisState:
    """Anchor each proportion check's information at its first look that may end early (forgotten otherwise)."""
    if not may_end_early:
        return replace(state, information_since={})
    proportions = {check.name for check in config.proportions}
    anchors = dict(state.information_since)
    for item in evidence:
        information = item.values.get("information")
        if item.name in proportions and information is not None and item.name not in anchors:
            anchors[item.name] = (now, information)
    return replace(state, information_since=anchors)


def _project(config: AnalysisConfig, state: AnalysisState, evidence: list[Evidence], now: float) -> list[Evidence]:
    """Each pending proportion check's chance of deciding before the deadline (values.decisionProbability),
    once its anchor is a tenth of maxDuration old; below minDecisionProbability the check is Inconclusive.
    With onInconclusive: promote, only when every other check has passed: ending early must not skip a
    check that could still fail."""
    if config.min_decision_probability <= 0:
        return evidence
    projected = []
    for item in evidence:
        others_passed = all(other.decision is Outcome.PASS for other in evidence if other.name != item.name)
        projected.append(_projected(config, state, item, now, config.on_inconclusive == "rollback" or others_passed))
    return projected


def _projected(config: AnalysisConfig, state: AnalysisState, item: Evidence, now: float, may_stop: bool) -> Evidence:
    check = next((c for c in config.proportions if c.name == item.name), None)
    anchor = state.information_since.get(item.name)
    information = item.values.get("information")
    if check is None or anchor is None or information is None or item.decision is not Outcome.PENDING:
        return item
    since, anchored_information = anchor
    if now - since < PROJECTION_AFTER * config.max_duration_seconds:
        return item
    left = max(0.0, state.started_at + config.max_duration_seconds - now)
    rate = max(0.0, information - anchored_information) / (now - since)
    good_difference = item.values["difference"] if check.higher_is_better else -item.values["difference"]
    chance = decision_probability(
        item.values["logLikelihoodRatio"], good_difference, rate * left, config.proportion_design(check)
    )
    values = {**item.values, "decisionProbability": chance}
    if chance >= config.min_decision_probability or not may_stop:
        return replace(item, values=values, message=f"{item.message}; P(a decision before the deadline) {chance:.2f}")
    message = (
        f"undecidable before the deadline: P(a decision in the {left:.0f}s left, at the label rate since "
        f"full traffic) = {chance:.3f} < minDecisionProbability {config.min_decision_probability:g}; {item.message}"
    )
    return replace(item, decision=Outcome.INCONCLUSIVE, message=message, values=values)


def _phase(
    config: AnalysisConfig, state: AnalysisState, evidence: list[Evidence], now: float
) -> tuple[Phase, str, list[Evidence]]:
    """(phase, headline, the evidence that explains it). Failure beats error beats success."""

    def having(outcome: Outcome) -> list[Evidence]:
        return [item for item in evidence if item.decision is outcome]

    undecided = [item for item in evidence if item.decision is not Outcome.PASS]
    exhausted = [
        item
        for item in having(Outcome.ERROR)
        if state.consecutive_errors.get(item.name, 0) >= config.consecutive_error_limit
    ]
    if having(Outcome.FAIL):
        return Phase.FAILED, "failed", having(Outcome.FAIL)
    if exhausted:
        return Phase.ERROR, f"{config.consecutive_error_limit} consecutive errors", exhausted
    if not undecided:
        return Phase.SUCCESSFUL, "all checks passed", evidence
    if having(Outcome.INCONCLUSIVE):
        return Phase.INCONCLUSIVE, "undecidable in the budget (samples or time left)", having(Outcome.INCONCLUSIVE)
    if now >= state.started_at + config.max_duration_seconds:
        return Phase.INCONCLUSIVE, f"deadline of {config.max_duration_seconds:g}s reached undecided", undecided
    return Phase.RUNNING, "waiting", undecided
