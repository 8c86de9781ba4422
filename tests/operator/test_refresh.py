"""retraining.refresh: a version trained on few rows since a change is retrained once many more exist, and kept
only if it beats the serving version (issue 24, item 2)."""

from __future__ import annotations

import pytest

from feedbackloop.core import phases
from feedbackloop.core.phases import JobObservation, StartTraining, decide, refresh_due
from feedbackloop.core.timeutil import format_time
from tests.operator.test_phases import NOW, actions_of, events, healthy, make_spec, serving, world

HOUR = 3600.0


def refresh_spec(**refresh):
    retraining = {"features": ["a"], "target": "y", "cooldown": "1h", "maxRetrainsPerDay": 5, "refresh": refresh}
    return make_spec(retraining=retraining)


def promoted(version=2, since=NOW - 10 * HOUR, until=NOW - 8 * HOUR, at=NOW - 7 * HOUR, trigger="Breach"):
    record = {"version": version, "trigger": trigger, "outcome": "Promoted", "at": format_time(at)}
    if since is not None:
        record["trainedOn"] = {"since": format_time(since), "until": format_time(until)}
    return record


def status_with(*history, current=2):
    return {
        "currentVersion": current,
        "phase": "Monitoring",
        "lastRetrainAt": format_time(NOW - 8 * HOUR),
        "history": list(history),
        "serving": {"version": current, "readyReplicas": 2, "replicas": 2, "since": format_time(NOW - 7 * HOUR)},
    }


def test_due_once_the_time_since_the_change_has_grown_growth_times() -> None:
    spec = refresh_spec(growth=3)
    # trained on 2 h of rows since the change; 3x is reached 6 h after the change (NOW - 4 h)
    assert refresh_due(spec, status_with(promoted()), NOW - 4 * HOUR - 1) == ""
    assert "growth 3" in refresh_due(spec, status_with(promoted()), NOW - 4 * HOUR)
    decision = decide(world(status_with(promoted()), spec=spec, health=healthy(), serving=serving(2)))
    started = actions_of(decision, StartTraining)
    assert [(s.version, s.trigger, s.parent_version) for s in started] == [(3, "Refresh", 2)]
    assert ("Normal", "RetrainingStarted") in events(decision)


def test_not_without_the_setting_a_cut_or_a_promotion_here() -> None:
    assert refresh_due(make_spec(), status_with(promoted()), NOW) == ""
    spec = refresh_spec()
    assert refresh_due(spec, status_with(promoted(since=None)), NOW) == ""  # trained without a cut
    adopted = status_with(promoted(version=1), current=2)  # the serving version was not promoted here
    assert refresh_due(spec, adopted, NOW) == ""
    assert refresh_due(spec, status_with(), NOW) == ""


def test_one_attempt_per_version_and_at_most_max_in_a_row() -> None:
    spec = refresh_spec(maxInARow=2)
    rejected = {"version": 3, "trigger": "Refresh", "outcome": "Rejected", "at": format_time(NOW - HOUR)}
    assert refresh_due(spec, status_with(promoted(), rejected), NOW) == ""
    twice = [promoted(version=3, trigger="Refresh"), promoted(version=4, trigger="Refresh")]
    assert refresh_due(spec, status_with(promoted(), *twice, current=4), NOW) == ""
    once = [promoted(version=3, trigger="Refresh")]
    assert refresh_due(spec, status_with(promoted(), *once, current=3), NOW)


def test_a_breach_comes_first_and_the_cooldown_holds() -> None:
    from tests.operator.test_phases import breached

    spec = refresh_spec()
    decision = decide(world(status_with(promoted()), spec=spec, health=breached(), serving=serving(2)))
    assert [s.trigger for s in actions_of(decision, StartTraining)] == ["Breach"]
    recent = status_with(promoted(at=NOW - 600))
    decision = decide(world(recent, spec=spec, health=healthy(), serving=serving(2)))
    assert not actions_of(decision, StartTraining)
    assert "cooldown" in decision.status["retrainBlockedBy"]


def running_refresh():
    status = status_with(promoted())
    status["retraining"] = {
        "version": 3,
        "jobName": phases.job_name("churn", 3),
        "trigger": "Refresh",
        "startedAt": format_time(NOW - 300),
        "parentVersion": 2,
    }
    return status


def summary(wins, losses, concept_since=NOW - 10 * HOUR):
    return {
        "ok": True,
        "version": 3,
        "metric": "accuracy",
        "challenger": {"accuracy": 0.9},
        "champion": {"accuracy": 0.88},
        "paired": {"challengerOnly": wins, "championOnly": losses},
        "conceptSince": concept_since,
    }


def test_a_refresh_no_better_than_the_serving_version_is_rejected() -> None:
    job = JobObservation(phases.job_name("churn", 3), "Succeeded", summary=summary(wins=20, losses=18))
    decision = decide(world(running_refresh(), spec=refresh_spec(), health=healthy(), serving=serving(2), job=job))
    assert ("Warning", "CandidateRejected") in events(decision)
    record = decision.status["history"][-1]
    assert record["outcome"] == "Rejected" and record["trigger"] == "Refresh"
    assert record["trainedOn"]["since"] == format_time(NOW - 10 * HOUR)
    assert refresh_due(refresh_spec(), decision.status, NOW + 100 * HOUR) == ""  # its refreshes end


def test_a_superior_refresh_is_canaried_and_its_span_kept_through_promotion() -> None:
    job = JobObservation(phases.job_name("churn", 3), "Succeeded", summary=summary(wins=60, losses=10))
    decision = decide(world(running_refresh(), spec=refresh_spec(), health=healthy(), serving=serving(2), job=job))
    assert decision.status["rollout"]["offlineSuperior"] is True
    assert decision.status["candidate"]["trainedOn"] == {
        "since": format_time(NOW - 10 * HOUR),
        "until": format_time(NOW - 300),
    }
    later = decide(
        world(decision.status, spec=refresh_spec(), serving=serving(2), requests={"promote": "now"}, now=NOW + 60)
    )
    record = later.status["history"][-1]
    assert record["outcome"] == "Promoted" and record["trainedOn"]["until"] == format_time(NOW - 300)


def test_a_revived_past_version_is_named_in_the_gates_verdict() -> None:
    revived = {**summary(wins=60, losses=10), "revivedFrom": 1}
    job = JobObservation(phases.job_name("churn", 3), "Succeeded", summary=revived)
    decision = decide(world(running_refresh(), spec=refresh_spec(), health=healthy(), serving=serving(2), job=job))
    assert decision.status["candidate"]["gate"].startswith("version 1's model revived; ")


# --- item 5: an offline-superior canary's pauses scale with the evidence --------------------------------


def canary_spec(pause="10m", interval="30s"):
    return make_spec(
        retraining={"features": ["a"], "target": "y", "gate": {"superiorityAlpha": 0.05}},
        rollout={
            "steps": [{"weight": 20, "pause": pause}, {"weight": 50, "pause": pause}],
            "analysis": {"interval": interval},
        },
    )


def test_pauses_shrink_with_the_gates_evidence_down_to_a_floor() -> None:
    spec = canary_spec()
    plain = {"offlineSuperior": False, "offlinePValue": 1e-9}
    assert phases.step_pause(spec, plain, 0) == 600
    assert phases.step_pause(spec, {"offlineSuperior": True, "offlinePValue": 0.05}, 0) == pytest.approx(600)
    assert phases.step_pause(spec, {"offlineSuperior": True, "offlinePValue": 0.0025}, 0) == pytest.approx(300)
    assert phases.step_pause(spec, {"offlineSuperior": True, "offlinePValue": 1e-30}, 1) == pytest.approx(150)
    assert phases.step_pause(spec, {"offlineSuperior": True}, 0) == 600  # a canary started before the field
    short = canary_spec(pause="90s", interval="30s")
    assert phases.step_pause(short, {"offlineSuperior": True, "offlinePValue": 1e-30}, 0) == 60  # two looks


def test_a_breach_challenger_carries_its_p_value_into_the_canary() -> None:
    status = running_refresh()
    job = JobObservation(phases.job_name("churn", 3), "Succeeded", summary=summary(wins=60, losses=10))
    decision = decide(world(status, spec=refresh_spec(), health=healthy(), serving=serving(2), job=job))
    rollout = decision.status["rollout"]
    assert rollout["offlineSuperior"] and 0 < rollout["offlinePValue"] < 1e-6


def test_a_refresh_does_not_hold_back_the_response_to_a_breach() -> None:
    from tests.operator.test_phases import breached

    refreshed = status_with(promoted(), promoted(version=3, trigger="Refresh", at=NOW - 60), current=3)
    refreshed["lastRetrainAt"] = format_time(NOW - 600)
    decision = decide(world(refreshed, spec=refresh_spec(), health=breached(), serving=serving(3)))
    assert [s.trigger for s in actions_of(decision, StartTraining)] == ["Breach"]
    after_breach = status_with(promoted(), promoted(version=3, trigger="Breach", at=NOW - 60), current=3)
    after_breach["lastRetrainAt"] = format_time(NOW - 600)
    held = decide(world(after_breach, spec=refresh_spec(), health=breached(), serving=serving(3)))
    assert not actions_of(held, StartTraining) and "cooldown" in held.status["retrainBlockedBy"]
