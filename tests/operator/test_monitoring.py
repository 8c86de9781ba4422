import math

import pytest

from feedbackloop.core.api import MetricRule, Monitoring
from feedbackloop.core.monitoring import (
    BREACHING,
    HEALTHY,
    NO_DATA,
    PENDING,
    RuleState,
    Sample,
    default_rules,
    evaluate_rule,
    rule_state_from_status,
    rule_state_to_status,
    summarize,
)


def rule(**kw):
    base = {"name": "accuracy", "query": "q", "min": 0.8, "for": "60s"}
    base.update(kw)
    return MetricRule.model_validate(base)


def run(r, values, start=1000.0, step=10.0):
    state = RuleState()
    for i, value in enumerate(values):
        sample = value if isinstance(value, Sample) else Sample(value, start + i * step)
        if isinstance(value, Sample):
            sample = Sample(value.value, start + i * step, value.error, value.samples)
        state = evaluate_rule(r, state, sample)
    return state


def test_healthy_value():
    assert run(rule(), [0.9]).state == HEALTHY


def test_breach_pending_until_for_elapsed_then_breaching():
    r = rule()
    assert run(r, [0.5]).state == PENDING
    assert run(r, [0.5] * 6).state == PENDING  # 50 s
    state = run(r, [0.5] * 7)  # 60 s
    assert state.state == BREACHING and state.breach_since == 1000.0


def test_recovery_resets_the_breach():
    state = run(rule(), [0.5] * 7 + [0.9])
    assert state.state == HEALTHY and state.breach_since is None


def test_zero_for_breaches_at_once():
    assert run(rule(**{"for": "0s"}), [0.5]).state == BREACHING


def test_max_threshold():
    r = rule(min=None, max=0.5)
    assert run(r, [0.6] * 7).state == BREACHING
    assert run(r, [0.4]).state == HEALTHY


@pytest.mark.parametrize("bad", [Sample(None, 0), Sample(math.nan, 0), Sample(None, 0, error="timeout")])
def test_no_data_is_never_a_breach_by_default(bad):
    state = run(rule(), [bad] * 20)
    assert state.state == NO_DATA


def test_hold_keeps_a_pending_breach_without_firing_it():
    r = rule()
    state = run(r, [0.5, 0.5] + [Sample(None, 0)] * 20)
    assert state.state == PENDING and state.breach_since == 1000.0


def test_hold_keeps_a_breach_firing():
    state = run(rule(), [0.5] * 7 + [Sample(None, 0)])
    assert state.state == BREACHING


def test_ignore_resets():
    state = run(rule(onNoData="ignore"), [0.5] * 7 + [Sample(None, 0)])
    assert state.state == NO_DATA and state.breach_since is None


def test_breach_on_no_data():
    assert run(rule(onNoData="breach"), [Sample(None, 0)] * 7).state == BREACHING


def test_min_samples_guard_turns_thin_data_into_no_data():
    r = rule(minSamples=100, samplesQuery="s")
    assert run(r, [Sample(0.1, 0, samples=20)] * 10).state == NO_DATA
    assert run(r, [Sample(0.1, 0, samples=200)] * 7).state == BREACHING
    assert run(r, [Sample(0.1, 0, samples=None)]).state == NO_DATA


def test_for_survives_a_restart_through_status():
    r = rule()
    state = run(r, [0.5, 0.5, 0.5])
    entry = rule_state_to_status("accuracy", state)
    restored = rule_state_from_status(entry)
    state = evaluate_rule(r, restored, Sample(0.5, 1060.0))
    assert state.state == BREACHING and state.breach_since == 1000.0


def test_summarize():
    health = summarize({"a": RuleState(BREACHING, 0.1), "b": RuleState(NO_DATA)})
    assert health.breached and health.breaching == ["a"] and health.no_data == ["b"]


def test_default_rules_cover_accuracy_errors_latency():
    monitoring = Monitoring.model_validate({"prometheus": {"url": "http://p"}})
    assert [r.name for r in default_rules(monitoring, "classification")] == ["accuracy", "errorRate", "latencyP99"]
    assert [r.name for r in default_rules(monitoring, "regression")][0] == "meanAbsError"


def test_no_data_for_a_new_version_is_awaited_but_failures_and_lost_data_warn():
    from feedbackloop.core.monitoring import Health, RuleState, awaiting_first_data

    fresh = RuleState(message="accuracy: query returned no data; holding NoData")
    failed = RuleState(message="accuracy: connection refused; holding NoData", failed=True)
    lost = RuleState(sample_time=100.0, message="accuracy: query returned no data; holding NoData")
    assert awaiting_first_data(Health([], ["accuracy"], {"accuracy": fresh}))
    assert not awaiting_first_data(Health([], ["accuracy"], {"accuracy": failed}))
    assert not awaiting_first_data(Health([], ["accuracy"], {"accuracy": lost}))


def test_a_failed_query_is_marked_failed_and_an_empty_answer_is_not():
    from feedbackloop.core.api import MetricRule
    from feedbackloop.core.monitoring import RuleState, Sample, evaluate_rule

    rule = MetricRule(name="accuracy", query="q", min=0.8)
    assert evaluate_rule(rule, RuleState(), Sample(None, 1.0, error="HTTP 503")).failed
    assert not evaluate_rule(rule, RuleState(), Sample(None, 1.0)).failed
    assert not evaluate_rule(rule, RuleState(), Sample(0.9, 1.0)).failed
