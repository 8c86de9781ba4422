"""No false alarms (issue 23, item 7): a serving version without data yet, or whose window fills after a
promotion, is never a Warning; an outage of data (or of queries) later still is, once. Driven through the
phase machine (phases.decide), round after round, as the engine drives it."""

from __future__ import annotations

from feedbackloop.core import api, phases
from feedbackloop.core.monitoring import (
    AWAITING_DATA,
    QUERIES_SUCCEEDED,
    UNAVAILABLE,
    Health,
    RuleState,
    Sample,
    availability,
)
from feedbackloop.core.phases import Event, ServingObservation, World, decide
from feedbackloop.core.timeutil import format_time

NOW = 1_800_000_000.0
SPEC = api.validate_spec(
    {
        "model": {"name": "churn", "storage": {"hostPath": {"path": "/d"}}},
        "monitoring": {
            "prometheus": {"url": "http://p"},
            "metrics": [{"name": "accuracy", "query": "q", "min": 0.8, "minSamples": 30, "samplesQuery": "s"}],
        },
        "retraining": {"features": ["a"], "target": "y", "cooldown": "1h"},
    }
)


def step(status: dict, now: float, sample: Sample | None = None, **kw: object) -> phases.Decision:
    """One round: the poll since the last one (None: a round without a poll), the stable Deployment ready."""
    version = status.get("currentVersion")
    world = World(
        now=now,
        name="churn",
        generation=1,
        spec=SPEC,
        status=status,
        samples=None if sample is None else ({"accuracy": sample},),
        serving=ServingObservation(stable_version=version, stable_ready=2, stable_replicas=2),
        **kw,  # type: ignore[arg-type]
    )
    return decide(world)


def warnings(decision: phases.Decision) -> list[tuple[str, str]]:
    return [(a.reason, a.message) for a in decision.actions if isinstance(a, Event) and a.type == "Warning"]


def reasons(decision: phases.Decision) -> list[str]:
    return [a.reason for a in decision.actions if isinstance(a, Event)]


def metrics_available(status: dict) -> tuple[str, str]:
    found = next(c for c in status["conditions"] if c["type"] == "MetricsAvailable")
    return found["status"], found["reason"]


def healthy_canary() -> dict:
    """Version 1 serves with data (MetricsAvailable=True), version 2 is at its canary's last step."""
    d = step({"currentVersion": 1, "phase": phases.MONITORING}, NOW - 60, Sample(0.9, NOW - 60, samples=100, version=1))
    assert metrics_available(d.status) == ("True", QUERIES_SUCCEEDED)
    status = d.status
    status["rollout"] = {
        "version": 2,
        "trigger": "Breach",
        "step": 0,
        "weight": 30,
        "startedAt": format_time(NOW - 100),
        "stepStartedAt": format_time(NOW - 100),
        "analysisPhase": "Running",
        "consecutiveErrors": 0,
        "evidence": [],
        "paused": False,
    }
    return status


def promote() -> dict:
    d = step(healthy_canary(), NOW, Sample(0.9, NOW, samples=100, version=1), requests={"promote": "now"})
    assert d.status["currentVersion"] == 2 and d.status["history"][-1]["outcome"] == "Promoted"
    assert not warnings(d)
    return d.status


def test_no_warning_while_the_promoted_versions_window_fills_and_one_when_its_data_goes_away() -> None:
    status = promote()
    # The new version's window fills: no series yet, then too few labels for minSamples, round after round.
    fill = [Sample(None, NOW + 2, version=2), Sample(0.7, NOW + 4, samples=3, version=2)]
    fill += [Sample(0.75, NOW + 6 + i, samples=10 + i, version=2) for i in range(10)]
    seen = []
    for i, sample in enumerate(fill):
        d = step(status, sample.at, sample)
        assert not warnings(d), f"round {i}: {warnings(d)}"
        assert metrics_available(d.status) == ("False", AWAITING_DATA), i
        assert d.status["phase"] == phases.MONITORING
        seen += reasons(d)
        status = d.status
    assert seen.count("AwaitingMetrics") == 1  # said once, as a Normal Event
    # Its first judged value: available (a bad value breaches only after its `for`, as any other).
    d = step(status, NOW + 30, Sample(0.9, NOW + 30, samples=40, version=2))
    assert metrics_available(d.status) == ("True", QUERIES_SUCCEEDED) and not warnings(d)
    # Later the series goes away: that is an outage of this version's data, a Warning, once.
    lost = step(d.status, NOW + 60, Sample(None, NOW + 60, version=2))
    assert [reason for reason, _ in warnings(lost)] == ["MetricsUnavailable"]
    assert metrics_available(lost.status) == ("False", UNAVAILABLE)
    again = step(lost.status, NOW + 62, Sample(None, NOW + 62, version=2))
    assert not warnings(again) and metrics_available(again.status) == ("False", UNAVAILABLE)


def test_a_failing_query_while_the_window_fills_warns_once_even_when_it_then_answers_empty() -> None:
    status = step(promote(), NOW + 2, Sample(None, NOW + 2, version=2)).status
    failed = step(status, NOW + 4, Sample(None, NOW + 4, error="HTTP 503", version=2))
    assert [reason for reason, _ in warnings(failed)] == ["MetricsUnavailable"]
    empty = step(failed.status, NOW + 6, Sample(None, NOW + 6, version=2))
    failed_again = step(empty.status, NOW + 8, Sample(None, NOW + 8, error="HTTP 503", version=2))
    assert not warnings(empty) and not warnings(failed_again)  # the same outage: no Event per flap
    assert metrics_available(empty.status) == ("False", UNAVAILABLE)
    back = step(failed_again.status, NOW + 10, Sample(0.9, NOW + 10, samples=40, version=2))
    assert metrics_available(back.status) == ("True", QUERIES_SUCCEEDED)


def test_a_poll_of_the_previous_version_racing_the_promotion_is_not_the_new_versions_evidence() -> None:
    status = promote()
    d = step(status, NOW + 2, Sample(0.9, NOW + 1, samples=100, version=1))  # polled for version 1
    assert not warnings(d)
    assert all(m.get("sampleTime") is None for m in d.status["metrics"])


def test_a_status_written_before_the_fix_keeps_its_predecessors_sample_time_and_is_still_awaited() -> None:
    """A loop promoted by an older operator: its rules kept version 1's sampleTime; a sample from before the
    promotion is its predecessor's, so the new version is still awaited."""
    status = promote()
    for metric in status["metrics"]:
        metric["sampleTime"] = format_time(NOW - 60)
    d = step(status, NOW + 2, Sample(None, NOW + 2, version=2))
    assert not warnings(d) and metrics_available(d.status) == ("False", AWAITING_DATA)


def test_availability_is_a_function_of_the_rules_and_the_conditions_reason() -> None:
    fresh = Health([], ["accuracy"], {"accuracy": RuleState(message="accuracy: query returned no data")})
    lost = Health([], ["accuracy"], {"accuracy": RuleState(sample_time=100.0, message="accuracy: no data")})
    old = Health([], ["accuracy"], {"accuracy": RuleState(sample_time=100.0, message="accuracy: no data")})
    failed = Health([], ["accuracy"], {"accuracy": RuleState(message="accuracy: HTTP 503", failed=True)})
    data = Health([], [], {"accuracy": RuleState("Healthy", 0.9, 100.0)})
    assert availability(data, None) == availability(data, UNAVAILABLE)
    assert availability(data, None).available
    first = availability(fresh, None)
    assert (first.reason, first.event and first.event[:2]) == (AWAITING_DATA, ("Normal", "AwaitingMetrics"))
    assert availability(fresh, AWAITING_DATA).event is None
    assert availability(fresh, UNAVAILABLE).reason == UNAVAILABLE  # an outage is over when data comes back
    assert availability(lost, None).event == ("Warning", "MetricsUnavailable", "accuracy: no data")
    assert availability(lost, AWAITING_DATA).event is not None  # data came, went: a Warning, not awaited
    assert availability(lost, UNAVAILABLE).event is None
    assert availability(old, None, version_since=100.0).reason == AWAITING_DATA  # the predecessor's sample
    assert availability(old, None, version_since=99.0).reason == UNAVAILABLE
    assert availability(failed, None).event is not None and availability(failed, None).reason == UNAVAILABLE
