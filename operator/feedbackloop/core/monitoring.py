"""Is the model healthy? Threshold rules with `for` semantics, as Prometheus alerting rules have.

Pure functions over plain data. The state of every rule lives in the loop's status (breach start as a
timestamp), so a restarted operator picks up a pending breach where it was: `for` keeps counting from
the breach start it reads back, it does not restart.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from feedbackloop.core.api import MetricRule, Monitoring
from feedbackloop.core.status import MetricState
from feedbackloop.core.timeutil import format_time, parse_time
from mfl_contracts import metrics as names

RuleHealth = Literal["Healthy", "Pending", "Breaching", "NoData"]
HEALTHY: RuleHealth = "Healthy"
PENDING: RuleHealth = "Pending"
BREACHING: RuleHealth = "Breaching"
NO_DATA: RuleHealth = "NoData"


@dataclass(frozen=True)
class Sample:
    """One poll's result for one rule: a value, or None with the reason there is none."""

    value: float | None
    at: float
    error: str = ""
    samples: float | None = None  # the rule's samplesQuery result, when it has one
    version: int | None = None  # the serving version it was polled for ({{version}}); None: not known
    breakdown: tuple[tuple[str, float], ...] | None = None  # the input-drift check's features, largest first


@dataclass(frozen=True)
class RuleState:
    state: RuleHealth = NO_DATA
    value: float | None = None
    sample_time: float | None = None
    breach_since: float | None = None
    message: str = ""
    failed: bool = False  # the last poll's query failed (vs. answered with no data); not kept in status


def usable_value(rule: MetricRule, sample: Sample) -> tuple[float | None, str]:
    """The sample's value if it can be judged; else None and why (errors, NaN, too few samples)."""
    if sample.error:
        return None, sample.error
    if sample.value is None or math.isnan(sample.value):
        return None, "query returned no data" if sample.value is None else "query returned NaN"
    if rule.min_samples is not None:
        if sample.samples is None or math.isnan(sample.samples):
            return None, "samples query returned no data"
        if sample.samples < rule.min_samples:
            return None, f"{sample.samples:g} samples < minSamples {rule.min_samples}"
    return sample.value, ""


def violation(rule: MetricRule, value: float) -> str:
    """Why the value breaks the rule, or '' when it does not."""
    if rule.min is not None and value < rule.min:
        return f"{rule.name}={value:.4g} below min {rule.min:g}"
    if rule.max is not None and value > rule.max:
        return f"{rule.name}={value:.4g} above max {rule.max:g}"
    return ""


def evaluate_rule(rule: MetricRule, previous: RuleState, sample: Sample) -> RuleState:
    """The rule's next state after one sample."""
    value, no_data_reason = usable_value(rule, sample)
    if value is None:
        return replace(_on_no_data(rule, previous, sample.at, no_data_reason), failed=bool(sample.error))
    why = violation(rule, value)
    if not why:
        return RuleState(HEALTHY, value, sample.at, None, f"{rule.name}={value:.4g} within bounds")
    return _breaching(rule, previous, sample.at, value, why)


def _breaching(rule: MetricRule, previous: RuleState, at: float, value: float | None, why: str) -> RuleState:
    since = previous.breach_since if previous.breach_since is not None else at
    held_for = rule.for_.seconds
    state = BREACHING if at - since >= held_for else PENDING
    message = why if state == BREACHING else f"{why} (pending {at - since:.0f}s of {held_for:.0f}s)"
    return RuleState(state, value, at if value is not None else previous.sample_time, since, message)


def _on_no_data(rule: MetricRule, previous: RuleState, at: float, reason: str) -> RuleState:
    if rule.on_no_data == "breach":
        return _breaching(rule, previous, at, None, f"{rule.name}: no data ({reason}), onNoData=breach")
    if rule.on_no_data == "ignore":
        return RuleState(NO_DATA, None, previous.sample_time, None, f"{rule.name}: {reason} (ignored)")
    # hold: keep judging by the last state; a pending breach waits for data before it can fire
    held = previous.state if previous.state in (BREACHING, PENDING) else NO_DATA
    return replace(previous, state=held, message=f"{rule.name}: {reason}; holding {held}")


@dataclass(frozen=True)
class Health:
    breaching: list[str]
    no_data: list[str]
    rules: dict[str, RuleState]

    @property
    def breached(self) -> bool:
        return bool(self.breaching)


def summarize(rules: dict[str, RuleState]) -> Health:
    return Health(
        breaching=[name for name, s in rules.items() if s.state == BREACHING],
        no_data=[name for name, s in rules.items() if s.state == NO_DATA or (s.value is None)],
        rules=rules,
    )


# MetricsAvailable's reasons: data for at least one rule; none yet for the serving version (a new version, its
# window filling: expected, never a Warning); none where there was some, or queries that fail (a Warning).
QUERIES_SUCCEEDED = "QueriesSucceeded"
AWAITING_DATA = "AwaitingData"
UNAVAILABLE = "NoData"


def awaiting_first_data(health: Health, version_since: float | None = None) -> bool:
    """Whether every rule without data is waiting for the serving version's first sample: none yet (or only from
    before `version_since`, when the serving version was promoted: its predecessor's), and no query failed.
    Query failures, or data of this version that was there and went away, are not."""
    rules = [health.rules[name] for name in health.no_data]
    return all(
        not rule.failed
        and (rule.sample_time is None or (version_since is not None and rule.sample_time <= version_since))
        for rule in rules
    )


@dataclass(frozen=True)
class Availability:
    """The MetricsAvailable condition, and the one Event it is worth (None: nothing new to say)."""

    available: bool
    reason: str  # QUERIES_SUCCEEDED | AWAITING_DATA | UNAVAILABLE
    message: str
    event: tuple[str, str, str] | None = None  # (type, reason, message)


def availability(health: Health, previous_reason: str | None, version_since: float | None = None) -> Availability:
    """MetricsAvailable from this round's health and the condition's reason before it (None: no condition, or
    True). A serving version awaiting its first data is AwaitingData with a Normal Event, never a Warning; an
    outage (failed queries, data gone) is NoData with one Warning. NoData stays NoData until data comes back (a
    failing query that then answers empty is the same outage, not a new Event each time)."""
    if len(health.no_data) < len(health.rules):
        return Availability(True, QUERIES_SUCCEEDED, f"{len(health.rules)} metric(s) reporting")
    message = "; ".join(health.rules[n].message for n in health.no_data[:3])
    if previous_reason != UNAVAILABLE and awaiting_first_data(health, version_since):
        awaited = f"no data yet for the serving version: {message}"
        event = None if previous_reason == AWAITING_DATA else ("Normal", "AwaitingMetrics", awaited)
        return Availability(False, AWAITING_DATA, message, event)
    event = None if previous_reason == UNAVAILABLE else ("Warning", "MetricsUnavailable", message)
    return Availability(False, UNAVAILABLE, message, event)


Round = Mapping[str, Sample]  # one poll's samples, by rule name


def judge(
    rules: Sequence[MetricRule], metrics: Sequence[MetricState], rounds: Sequence[Round], version: int | None
) -> Health:
    """The one place a breach is judged: each rule's last state, read from `status.metrics`, stepped by every
    poll since (in order). Samples polled for another version than the one serving now are not this
    version's evidence (a poll that raced a promotion) and are left out.
    """
    previous = {entry.get("name"): rule_state_from_status(entry) for entry in metrics}
    states: dict[str, RuleState] = {}
    for rule in rules:
        state = previous.get(rule.name)
        for samples in rounds:
            sample = samples.get(rule.name)
            if sample is None or (sample.version is not None and version is not None and sample.version != version):
                continue
            state = evaluate_rule(rule, state or RuleState(), sample)
        if state is not None:
            states[rule.name] = state
    return summarize(states)


def rule_state_from_status(entry: MetricState) -> RuleState:
    """Read one `status.metrics[]` entry back (after a restart, or from the last write)."""
    return RuleState(
        state=entry.get("state", NO_DATA),
        value=entry.get("value"),
        sample_time=parse_time(entry.get("sampleTime")),
        breach_since=parse_time(entry.get("breachSince")),
        message=entry.get("message", ""),
    )


def rule_state_to_status(name: str, state: RuleState) -> MetricState:
    return {
        "name": name,
        "state": state.state,
        # +Inf (histogram_quantile past the last bucket) is no value for JSON; the state keeps the breach.
        "value": round(state.value, 6) if state.value is not None and math.isfinite(state.value) else None,
        "sampleTime": format_time(state.sample_time),
        "breachSince": format_time(state.breach_since),
        "message": state.message,
    }


def default_rules(monitoring: Monitoring, task: str) -> list[MetricRule]:
    """The reference server's rules, used when `monitoring.metrics` is empty."""
    # The serving version only: feedback for the previous version, arriving late, must not judge this one.
    selector = 'model="{{model}}",namespace="{{namespace}}",version="{{version}}",track="stable"'
    window = "5m"
    latency = MetricRule(
        name="latencyP99",
        query=(
            "histogram_quantile(0.99, sum by (model, namespace, version, le) "
            f"(rate({names.PREDICTION_LATENCY}_bucket{{{selector}}}[{window}])))"
        ),
        max=monitoring.default_latency_p99_max_seconds,
        for_="2m",
    )
    error_rate = MetricRule(
        name="errorRate",
        # `or ... * 0`: no 5xx series at all is a zero error rate, not missing data
        query=(
            f'(sum by (model, namespace, version) (rate({names.HTTP_REQUESTS}{{{selector},code=~"5.."}}[{window}])) '
            f"or sum by (model, namespace, version) (rate({names.HTTP_REQUESTS}{{{selector}}}[{window}])) * 0) / "
            f"sum by (model, namespace, version) (rate({names.HTTP_REQUESTS}{{{selector}}}[{window}]))"
        ),
        max=0.05,
        for_="2m",
    )
    if task == "regression":
        quality = MetricRule(
            name="meanAbsError",
            query=(
                f"sum by (model, namespace, version) (rate({names.FEEDBACK_ABS_ERROR}_sum{{{selector}}}[{window}])) / "
                f"sum by (model, namespace, version) (rate({names.FEEDBACK_ABS_ERROR}_count{{{selector}}}[{window}]))"
            ),
            max=1.0,
            for_="2m",
        )
        return [quality, error_rate, latency]
    accuracy = MetricRule(
        name="accuracy",
        query=(
            f"sum by (model, namespace, version) (increase({names.FEEDBACK_CORRECT}{{{selector}}}[{window}])) / "
            f"sum by (model, namespace, version) (increase({names.FEEDBACK}{{{selector}}}[{window}]))"
        ),
        min=monitoring.default_accuracy_min,
        min_samples=50,
        samples_query=f"sum by (model, namespace, version) (increase({names.FEEDBACK}{{{selector}}}[{window}]))",
        for_="1m",
    )
    return [accuracy, error_rate, latency]


def rules_of(monitoring: Monitoring, task: str) -> list[MetricRule]:
    return list(monitoring.metrics) or default_rules(monitoring, task)
