"""monitoring.inputDrift: the PSI queries, the rule's verdicts and what decide makes of them (never a breach)."""

from __future__ import annotations

import pytest

from feedbackloop.core import api, inputdrift, promql
from feedbackloop.core.monitoring import Sample
from feedbackloop.core.phases import EnsureStable, StartTraining, decide
from feedbackloop.core.timeutil import format_time
from tests.operator.test_phases import NOW, actions_of, condition, events, healthy, make_spec, serving, world

SETTINGS = {"maxPsi": 0.2, "minRows": 100, "window": "10m", "for": "2m"}


def drift_spec(**settings):
    return make_spec(monitoring={"prometheus": {"url": "http://p"}, "inputDrift": {**SETTINGS, **settings}})


def status(**extra):
    return {"currentVersion": 1, "phase": "Monitoring", "lastRetrainAt": format_time(NOW - 7200), **extra}


def drift(value, at, rows=500.0, breakdown=None, version=1):
    return {inputdrift.RULE_NAME: Sample(value, at, samples=rows, version=version, breakdown=breakdown)}


def step(spec, previous_status, *rounds, now=NOW):
    w = world(previous_status, spec=spec, serving=serving(), samples=tuple(rounds), now=now)
    return decide(w)


# --- the queries ------------------------------------------------------------------------------------


def test_queries_are_valid_promql_and_batch_across_loops() -> None:
    settings = api.InputDrift.model_validate(SETTINGS)
    rule = inputdrift.rule(settings)
    for query in (rule.query, rule.samples_query, inputdrift.breakdown_query(settings)):
        assert promql.syntax_problem(promql.render(query, {"model": "m", "namespace": "n", "version": "1"})) == ""
        assert len(query) <= promql.MAX_QUERY_LENGTH
    loops = [{"model": "a", "namespace": "n", "version": "1"}, {"model": "b", "namespace": "n", "version": "4"}]
    assert promql.plan_batch(rule.query, loops) is not None
    assert promql.plan_batch(rule.samples_query, loops) is not None
    assert "[10m]" in rule.query and rule.max == 0.2 and rule.min_samples == 100


def test_the_check_is_polled_only_when_set() -> None:
    assert inputdrift.RULE_NAME not in [r.name for r in inputdrift.polled_rules(make_spec())]
    assert inputdrift.RULE_NAME in [r.name for r in inputdrift.polled_rules(drift_spec())]


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"maxPsi": 0}, "greater than 0"),
        ({"minRows": 10}, "greater than or equal to 50"),
        ({"window": "30s"}, "out of range"),
        ({"window": "8d"}, "out of range"),
        ({"for": "soon"}, "inputDrift.for"),
    ],
)
def test_bad_settings_name_the_field(settings, problem) -> None:
    with pytest.raises(Exception, match=problem):
        drift_spec(**settings)


def test_a_rule_may_not_take_the_checks_name() -> None:
    rule = {"name": "inputDrift", "query": "up", "max": 1}
    with pytest.raises(Exception, match="input-drift check's name"):
        make_spec(monitoring={"prometheus": {"url": "http://p"}, "metrics": [rule]})


def test_breakdown_only_above_the_threshold_on_enough_rows() -> None:
    settings = api.InputDrift.model_validate(SETTINGS)
    assert inputdrift.worth_a_breakdown(settings, Sample(0.5, NOW, samples=500))
    assert not inputdrift.worth_a_breakdown(settings, Sample(0.1, NOW, samples=500))
    assert not inputdrift.worth_a_breakdown(settings, Sample(0.5, NOW, samples=50))
    assert not inputdrift.worth_a_breakdown(settings, Sample(None, NOW, error="down"))
    series = [({"feature": "x"}, 0.3), ({"feature": "y"}, 0.9), ({"feature": "z"}, float("nan"))]
    assert inputdrift.ranked(series) == (("y", 0.9), ("x", 0.3))


# --- the verdicts -----------------------------------------------------------------------------------


def test_a_shift_held_for_for_warns_once_names_the_features_and_never_breaches() -> None:
    spec = drift_spec()
    first = step(spec, status(), drift(0.5, NOW - 150, breakdown=(("x1", 0.5),)))
    assert condition(first.status, "InputDrift")["status"] == "False"
    assert condition(first.status, "InputDrift")["reason"] == "ShiftPending"
    assert ("Warning", "InputDrift") not in events(first)
    second = step(spec, first.status, drift(0.6, NOW, breakdown=(("x1", 0.6), ("x7", 0.25))))
    cond_ = condition(second.status, "InputDrift")
    assert cond_["status"] == "True" and cond_["reason"] == "InputsShifted"
    assert "x1 (PSI 0.60)" in cond_["message"] and "x7 (PSI 0.25)" in cond_["message"]
    assert events(second).count(("Warning", "InputDrift")) == 1
    assert second.status["inputDrift"]["features"] == [{"name": "x1", "psi": 0.6}, {"name": "x7", "psi": 0.25}]
    assert not actions_of(second, StartTraining)
    assert second.status["phase"] == "Monitoring"
    assert all(c["status"] != "True" for c in second.status["conditions"] if c["type"] == "Breached")
    again = step(spec, second.status, drift(0.6, NOW + 30, breakdown=(("x1", 0.6),)), now=NOW + 30)
    assert ("Warning", "InputDrift") not in events(again)


def test_back_within_the_threshold_clears_with_a_normal_event() -> None:
    spec = drift_spec()
    shifted = step(spec, status(), drift(0.5, NOW - 200, breakdown=(("x", 0.5),)), drift(0.5, NOW))
    assert condition(shifted.status, "InputDrift")["status"] == "True"
    back = step(spec, shifted.status, drift(0.05, NOW + 30), now=NOW + 30)
    assert condition(back.status, "InputDrift")["reason"] == "InputsAsTrained"
    assert ("Normal", "InputDriftCleared") in events(back)
    assert back.status["inputDrift"]["features"] == []


def test_too_few_rows_or_no_profile_is_no_verdict_never_a_warning() -> None:
    spec = drift_spec()
    few = step(spec, status(), drift(3.0, NOW - 300, rows=20), drift(3.0, NOW, rows=20))
    assert condition(few.status, "InputDrift")["status"] == "Unknown"
    assert "minSamples 100" in condition(few.status, "InputDrift")["message"]
    none = step(spec, status(), drift(None, NOW))
    assert condition(none.status, "InputDrift")["reason"] == "AwaitingRows"
    assert not [e for e in events(few) + events(none) if e[1] == "InputDrift"]


def test_a_predecessors_samples_and_state_do_not_judge_a_new_version() -> None:
    spec = drift_spec()
    shifted = step(spec, status(), drift(0.5, NOW - 200), drift(0.5, NOW))
    promoted = {
        **shifted.status,
        "currentVersion": 2,
        "history": [{"version": 2, "outcome": "Promoted", "at": format_time(NOW + 10), "trigger": "Breach"}],
    }
    late = step(spec, promoted, drift(0.9, NOW + 20, version=1), now=NOW + 20)
    assert condition(late.status, "InputDrift")["status"] == "Unknown"
    fresh = step(spec, late.status, drift(0.5, NOW + 40, version=2), now=NOW + 40)
    assert condition(fresh.status, "InputDrift")["reason"] == "ShiftPending"  # `for` counts from version 2's data


def test_removing_the_setting_removes_what_it_said() -> None:
    shifted = step(drift_spec(), status(), drift(0.5, NOW - 200), drift(0.5, NOW))
    assert condition(shifted.status, "InputDrift")
    off = decide(world(shifted.status, spec=make_spec(), serving=serving(), samples=()))
    assert off.status["inputDrift"] is None
    assert all(c["type"] != "InputDrift" for c in off.status["conditions"])


def test_loops_without_the_setting_see_nothing_new() -> None:
    d = decide(world(status(), health=healthy(), serving=serving()))
    assert "inputDrift" not in d.status
    assert all(c["type"] != "InputDrift" for c in d.status["conditions"])
    assert [a for a in d.actions if isinstance(a, EnsureStable)] == [EnsureStable(1)]


def test_the_server_counts_inputs_only_for_loops_that_judge_them() -> None:
    from feedbackloop.core import resources

    def env_of(spec):
        loop = {"metadata": {"name": "churn", "namespace": "ns", "uid": "u"}}
        deployment = resources.server_deployment(loop, spec, 1, "stable", 2)
        return [e["name"] for c in deployment["spec"]["template"]["spec"]["containers"] for e in c.get("env", [])]

    assert "MFL_INPUT_DRIFT" in env_of(drift_spec())
    assert "MFL_INPUT_DRIFT" not in env_of(make_spec())
