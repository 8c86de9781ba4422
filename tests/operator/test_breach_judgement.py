"""A breach is judged in one place: `decide` steps each rule from the status it reads by the polls since.

The observer only gathers samples; these tests drive `for` and `onNoData` through `decide` (the status one
round writes is the next round's input, as in the operator), and show that polls queued behind a reconcile, or
taken for a version that has since been replaced, are judged against the status as it is now.
"""

from __future__ import annotations

from typing import Any

import pytest

from feedbackloop.core import phases
from feedbackloop.core.monitoring import Sample
from feedbackloop.core.phases import StartTraining, decide

from .test_phases import NOW, actions_of, events, make_spec, monitoring_status, serving, world


def accuracy(value: float | None, at: float, *, error: str = "", version: int | None = 1) -> dict[str, Sample]:
    """One poll of the default rules: accuracy as given (with enough samples), the others healthy."""
    return {
        "accuracy": Sample(value, at, error=error, samples=500.0, version=version),
        "errorRate": Sample(0.0, at, version=version),
        "latencyP99": Sample(0.1, at, version=version),
    }


def rounds(status: dict[str, Any], *polls: tuple[float, dict[str, Sample]], spec: Any = None) -> dict[str, Any]:
    """Each (time, poll) reconciled in turn, the status carried from one round to the next."""
    for at, poll in polls:
        status = decide(world(status, spec=spec, samples=(poll,), serving=serving(), now=at)).status
    return status


def rule(status: dict[str, Any], name: str = "accuracy") -> dict[str, Any]:
    return next(m for m in status["metrics"] if m["name"] == name)


def test_a_low_value_is_pending_until_it_has_held_for_its_for_then_breaching() -> None:
    pending = rounds(monitoring_status(), (NOW, accuracy(0.5, NOW)))
    assert rule(pending)["state"] == "Pending" and "pending 0s of 60s" in rule(pending)["message"]
    assert pending["phase"] == phases.MONITORING
    still = rounds(pending, (NOW + 30, accuracy(0.5, NOW + 30)))
    assert rule(still)["state"] == "Pending"
    d = decide(world(still, samples=(accuracy(0.5, NOW + 60),), serving=serving(), now=NOW + 60))
    assert rule(d.status)["state"] == "Breaching"
    assert ("Warning", "BreachStarted") in events(d)
    assert actions_of(d, StartTraining)


def test_a_recovery_inside_for_resets_the_pending_breach() -> None:
    status = rounds(
        monitoring_status(),
        (NOW, accuracy(0.5, NOW)),
        (NOW + 30, accuracy(0.9, NOW + 30)),
        (NOW + 60, accuracy(0.5, NOW + 60)),
    )
    assert rule(status)["state"] == "Pending"  # counted again from NOW + 60, not from NOW
    assert (
        rule(status)["breachSince"]
        == rule(rounds(monitoring_status(), (NOW + 60, accuracy(0.5, NOW + 60))))["breachSince"]
    )


def test_polls_queued_behind_a_slow_reconcile_are_all_judged_in_order() -> None:
    """Two polls landed while the loop's reconcile was busy: the breach counts from the first."""
    polls = (accuracy(0.5, NOW), accuracy(0.5, NOW + 60))
    d = decide(world(monitoring_status(), samples=polls, serving=serving(), now=NOW + 61))
    assert rule(d.status)["state"] == "Breaching"


@pytest.mark.parametrize(
    ("on_no_data", "state_after"),
    [("hold", "Pending"), ("breach", "Breaching"), ("ignore", "NoData")],
)
def test_on_no_data_through_decide(on_no_data: str, state_after: str) -> None:
    spec = make_spec(
        monitoring={
            "prometheus": {"url": "http://p"},
            "metrics": [{"name": "accuracy", "query": "vector(1)", "min": 0.8, "for": "60s", "onNoData": on_no_data}],
        }
    )
    pending = rounds(monitoring_status(), (NOW, {"accuracy": Sample(0.5, NOW, version=1)}), spec=spec)
    assert rule(pending)["state"] == "Pending"
    later = rounds(pending, (NOW + 90, {"accuracy": Sample(None, NOW + 90, error="timed out", version=1)}), spec=spec)
    assert rule(later)["state"] == state_after


def test_no_data_is_never_a_breach_by_default() -> None:
    status = rounds(
        monitoring_status(),
        (NOW, accuracy(None, NOW, error="connection refused")),
        (NOW + 600, accuracy(None, NOW + 600, error="connection refused")),
    )
    assert rule(status)["state"] == "NoData" and status["phase"] == phases.MONITORING


def test_a_poll_taken_for_the_version_just_replaced_is_not_the_new_versions_evidence() -> None:
    """The poll asked for version 1's series; by the time its loop is reconciled, version 2 serves with its rules
    reset. Judged at poll time from the status then (the old design), it carried version 1's breach over."""
    breached_v1 = rounds(monitoring_status(), (NOW, accuracy(0.5, NOW)), (NOW + 60, accuracy(0.5, NOW + 60)))
    assert rule(breached_v1)["state"] == "Breaching"
    promoted = {
        **breached_v1,
        "currentVersion": 2,
        "metrics": [{**m, "state": "NoData", "breachSince": None} for m in breached_v1["metrics"]],
    }
    late = decide(world(promoted, samples=(accuracy(0.5, NOW + 90, version=1),), serving=serving(2), now=NOW + 95))
    assert rule(late.status)["state"] == "NoData" and rule(late.status)["breachSince"] is None
    assert not actions_of(late, StartTraining)
    fresh = decide(world(promoted, samples=(accuracy(0.5, NOW + 120, version=2),), serving=serving(2), now=NOW + 120))
    assert rule(fresh.status)["state"] == "Pending"  # version 2's own evidence starts its own `for`
