"""The loop's decisions, without a cluster: every transition of phases.decide."""

import json

import pytest

from feedbackloop.core import api, phases, resources
from feedbackloop.core.monitoring import BREACHING, HEALTHY, NO_DATA, RuleState, Sample, rule_state_to_status, summarize
from feedbackloop.core.phases import (
    EnsureCanary,
    EnsureStable,
    Event,
    InvalidWorld,
    JobObservation,
    RemoveCanary,
    ServingObservation,
    StartTraining,
    World,
    decide,
)
from feedbackloop.core.timeutil import format_time, parse_time

NOW = 1_800_000_000.0


def make_spec(**overrides):
    spec = {
        "model": {"name": "churn", "storage": {"hostPath": {"path": "/d"}}},
        "monitoring": {"prometheus": {"url": "http://p"}},
        "retraining": {"features": ["a"], "target": "y", "cooldown": "1h", "maxRetrainsPerDay": 2},
    }
    for key, value in overrides.items():
        spec[key] = value
    return api.validate_spec(spec)


def healthy():
    return summarize({"accuracy": RuleState(HEALTHY, 0.9)})


def breached():
    return summarize({"accuracy": RuleState(BREACHING, 0.5, breach_since=NOW - 300, message="accuracy low")})


def serving(version=1, ready=2):
    return ServingObservation(stable_version=version, stable_ready=ready, stable_replicas=2)


def world(status=None, spec=None, **kw):
    """A loop's world; `health=` puts those rule states in status.metrics as a poll with no new sample."""
    status = dict(status or {})
    health = kw.pop("health", None)
    if health is not None:
        status["metrics"] = [rule_state_to_status(name, state) for name, state in health.rules.items()]
        kw["samples"] = ()
    return World(
        now=kw.pop("now", NOW),
        name="churn",
        generation=kw.pop("generation", 3),
        spec=spec if spec is not None else make_spec(),
        status=status,
        **kw,
    )


def actions_of(decision, kind):
    return [a for a in decision.actions if isinstance(a, kind)]


def events(decision):
    return [(a.type, a.reason) for a in decision.actions if isinstance(a, Event)]


def condition(status, type_):
    return next(c for c in status["conditions"] if c["type"] == type_)


# --- validity ---------------------------------------------------------------------------------------


def test_invalid_spec_sets_conditions_and_warns_once():
    w = InvalidWorld(now=NOW, name="churn", generation=2, spec_error="spec.model.name: bad", status={})
    first = decide(w)
    assert first.status["phase"] == phases.INVALID
    ready = condition(first.status, "Ready")
    assert (ready["status"], ready["reason"], ready["observedGeneration"]) == ("False", "InvalidSpec", 2)
    assert condition(first.status, "Stalled")["status"] == "True"
    assert events(first) == [("Warning", "InvalidSpec")]
    again = decide(
        InvalidWorld(now=NOW + 30, name="churn", generation=2, spec_error="spec.model.name: bad", status=first.status)
    )
    assert events(again) == []  # not a hot loop of Events


# --- first version ----------------------------------------------------------------------------------


def test_a_new_loop_trains_its_first_version():
    d = decide(world(health=summarize({"accuracy": RuleState(NO_DATA)})))
    [start] = actions_of(d, StartTraining)
    assert (start.version, start.parent_version, start.trigger) == (1, None, "Initial")
    assert start.job_name == "churn-train-v1"
    assert d.status["phase"] == phases.RETRAINING
    assert condition(d.status, "Reconciling")["status"] == "True"


def test_initial_version_is_served_without_training():
    spec = make_spec(model={"name": "churn", "initialVersion": 4, "storage": {"hostPath": {"path": "/d"}}})
    d = decide(world(spec=spec, serving=ServingObservation()))
    assert d.status["currentVersion"] == 4
    assert actions_of(d, EnsureStable) == [EnsureStable(4)]
    assert not actions_of(d, StartTraining)


def test_first_version_is_promoted_directly_when_its_job_succeeds():
    status = decide(world()).status
    job = JobObservation("churn-train-v1", "Succeeded", summary={"ok": True, "challenger": {"accuracy": 0.9}})
    d = decide(world(status, job=job, serving=ServingObservation()))
    assert d.status["currentVersion"] == 1 and d.status["retraining"] is None
    assert EnsureStable(1) in d.actions
    assert d.status["history"][-1]["outcome"] == "Promoted"


# --- monitoring -------------------------------------------------------------------------------------


def monitoring_status():
    return {"currentVersion": 1, "phase": phases.MONITORING, "lastRetrainAt": format_time(NOW - 7200)}


def test_healthy_loop_is_ready_and_monitoring():
    d = decide(world(monitoring_status(), health=healthy(), serving=serving()))
    assert d.status["phase"] == phases.MONITORING
    assert condition(d.status, "Ready")["status"] == "True"
    assert condition(d.status, "Reconciling")["status"] == "False"
    assert condition(d.status, "Stalled")["status"] == "False"
    assert d.status["summary"] == "accuracy=0.900"
    # Nothing to do but keep the stable Deployment as the spec says (act writes only on drift).
    assert [a for a in d.actions if not isinstance(a, Event)] == [EnsureStable(1)]


def test_serving_not_ready_is_reported_and_redeployed_when_the_version_differs():
    d = decide(world(monitoring_status(), health=healthy(), serving=serving(version=None, ready=0)))
    assert condition(d.status, "Ready")["reason"] == "ServingNotReady"
    assert EnsureStable(1) in d.actions


def test_breach_starts_a_retraining_with_an_event():
    d = decide(world(monitoring_status(), health=breached(), serving=serving()))
    assert ("Warning", "BreachStarted") in events(d)
    [start] = actions_of(d, StartTraining)
    assert (start.version, start.parent_version, start.trigger) == (2, 1, "Breach")
    assert d.status["phase"] == phases.RETRAINING
    assert condition(d.status, "Breached")["status"] == "True"


def test_breach_without_retraining_spec_stays_breached():
    d = decide(world(monitoring_status(), spec=make_spec(retraining=None), health=breached(), serving=serving()))
    assert d.status["phase"] == phases.BREACHED
    assert condition(d.status, "Ready")["reason"] == "Breached"
    assert d.status["retrainBlockedBy"] == "retraining is disabled"


def test_recovery_emits_an_event():
    status = decide(
        world(monitoring_status(), spec=make_spec(retraining=None), health=breached(), serving=serving())
    ).status
    d = decide(world(status, spec=make_spec(retraining=None), health=healthy(), serving=serving()))
    assert ("Normal", "Recovered") in events(d) and d.status["phase"] == phases.MONITORING


def test_metrics_unavailable_event_once():
    failed = ({"accuracy": Sample(None, NOW, error="query failed")},)
    d = decide(world(monitoring_status(), samples=failed, serving=serving()))
    assert ("Warning", "MetricsUnavailable") in events(d)
    assert condition(d.status, "MetricsAvailable")["status"] == "False"
    again = decide(world(d.status, samples=failed, serving=serving()))
    assert ("Warning", "MetricsUnavailable") not in events(again)
    assert again.status["phase"] == phases.MONITORING  # no data is never a breach


def test_a_new_version_without_data_yet_is_awaited_not_warned():
    fresh = summarize({"accuracy": RuleState(NO_DATA, message="accuracy: query returned no data; holding NoData")})
    d = decide(world(monitoring_status(), health=fresh, serving=serving()))
    assert ("Normal", "AwaitingMetrics") in events(d)
    assert not [e for e in events(d) if e[0] == "Warning"]
    assert condition(d.status, "MetricsAvailable")["status"] == "False"  # the condition still says so


def test_condition_transition_time_moves_only_on_flips():
    first = decide(world(monitoring_status(), health=healthy(), serving=serving()))
    later = decide(world(first.status, health=healthy(), serving=serving(), now=NOW + 600))
    assert condition(later.status, "Ready")["lastTransitionTime"] == format_time(NOW)


# --- retraining policy ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "status_extra, trigger_blocked",
    [
        ({"lastRetrainAt": format_time(NOW - 60)}, "cooldown"),
        ({"retrainTimes": [format_time(NOW - 5000), format_time(NOW - 4000)]}, "daily budget"),
        ({"failureBackoffUntil": format_time(NOW + 60)}, "backing off"),
    ],
)
def test_policy_blocks_breach_retraining(status_extra, trigger_blocked):
    status = {**monitoring_status(), **status_extra}
    d = decide(world(status, health=breached(), serving=serving()))
    assert not actions_of(d, StartTraining)
    assert trigger_blocked in d.status["retrainBlockedBy"]
    assert d.status["phase"] == phases.BREACHED


def test_budget_counts_only_the_last_day():
    status = {**monitoring_status(), "retrainTimes": [format_time(NOW - 90000), format_time(NOW - 86500)]}
    assert actions_of(decide(world(status, health=breached(), serving=serving())), StartTraining)


def test_paused_loop_starts_nothing():
    d = decide(world(monitoring_status(), spec=make_spec(paused=True), health=breached(), serving=serving()))
    assert not actions_of(d, StartTraining) and d.status["phase"] == phases.PAUSED


def test_manual_request_skips_cooldown_and_is_handled_once():
    status = {**monitoring_status(), "lastRetrainAt": format_time(NOW - 60)}
    d = decide(world(status, health=healthy(), serving=serving(), requests={"retrain": "2026-11-28T10:00"}))
    [start] = actions_of(d, StartTraining)
    assert start.trigger == "Manual"
    assert d.status["handledRequests"]["retrain"] == "2026-11-28T10:00"


def test_manual_request_respects_the_budget_with_an_event():
    status = {**monitoring_status(), "retrainTimes": [format_time(NOW - 10)] * 2}
    d = decide(world(status, health=healthy(), serving=serving(), requests={"retrain": "x"}))
    assert not actions_of(d, StartTraining) and ("Warning", "RetrainSkipped") in events(d)
    again = decide(world(d.status, health=healthy(), serving=serving(), requests={"retrain": "x"}))
    assert ("Warning", "RetrainSkipped") not in events(again)


def test_schedule_triggers_once_per_slot():
    spec = make_spec(retraining={"features": ["a"], "target": "y", "schedule": "*/5 * * * *", "cooldown": "1m"})
    now = 1_800_000_000.0 - (1_800_000_000.0 % 300) + 30  # 30 s after a slot
    d = decide(world(monitoring_status(), spec=spec, health=healthy(), serving=serving(), now=now))
    [start] = actions_of(d, StartTraining)
    assert start.trigger == "Schedule"


# --- following the Job ------------------------------------------------------------------------------


def retraining_status(version=2):
    return {
        **monitoring_status(),
        "phase": phases.RETRAINING,
        "retraining": {
            "version": version,
            "jobName": f"churn-train-v{version}",
            "trigger": "Breach",
            "startedAt": format_time(NOW - 100),
            "parentVersion": 1,
        },
    }


def test_running_job_is_followed_without_actions():
    d = decide(world(retraining_status(), job=JobObservation("churn-train-v2", "Running"), serving=serving()))
    assert d.status["phase"] == phases.RETRAINING and not actions_of(d, StartTraining)


def test_missing_job_is_recreated_under_the_same_name():
    d = decide(world(retraining_status(), job=JobObservation("churn-train-v2", "Missing"), serving=serving()))
    assert actions_of(d, StartTraining) == [StartTraining(2, 1, "Breach", "churn-train-v2", NOW - 100)]


LOOP = {"metadata": {"name": "churn", "namespace": "team-a", "uid": "u-1"}}


def built_jobs(decision, spec):
    """The Jobs the actor would create for the decision's StartTraining actions (runtime/act.py)."""
    return [
        resources.training_job(LOOP, spec, a.job_name, a.version, a.parent_version, a.trigger, started_at=a.started_at)
        for a in actions_of(decision, StartTraining)
    ]


def trainer_config_of(job):
    [container] = job["spec"]["template"]["spec"]["containers"]
    return next(var["value"] for var in container["env"] if var["name"] == "MFL_TRAINER_CONFIG")


def test_a_job_recreated_for_the_same_version_is_the_job_it_replaces():
    """Issue 22: the config carried the moment the Job was made, hashed by the trainer with its inputs, so a
    re-created Job always found its version "with different inputs". `now` is now the run's start."""
    spec = make_spec()
    started = decide(world(monitoring_status(), health=breached(), serving=serving()))
    [first] = built_jobs(started, spec)
    later = decide(
        world(started.status, job=JobObservation("churn-train-v2", "Missing"), serving=serving(), now=NOW + 3600)
    )
    [again] = built_jobs(later, spec)
    assert trainer_config_of(again) == trainer_config_of(first)
    config = json.loads(trainer_config_of(first))
    assert config["now"] == parse_time(started.status["retraining"]["startedAt"]) == NOW


@pytest.mark.parametrize("retraining", [None, {"features": ["a"], "target": "y", "enabled": False}])
def test_a_removed_retraining_whose_job_is_gone_settles(retraining):
    """Issue 22: the Missing Job was created again from a spec without retraining: every reconcile failed."""
    spec = make_spec(retraining=retraining)
    d = decide(
        world(retraining_status(), spec=spec, job=JobObservation("churn-train-v2", "Missing"), serving=serving())
    )
    assert built_jobs(d, spec) == []  # nothing the actor would fail to build
    assert d.status["retraining"] is None and d.status["phase"] == phases.MONITORING
    retraining_condition = condition(d.status, "Retraining")
    assert retraining_condition["status"] == "False" and retraining_condition["reason"] == "RetrainingRemoved"
    assert "spec.retraining" in retraining_condition["message"] and "churn-train-v2" in retraining_condition["message"]
    assert ("Warning", "RetrainingFailed") in events(d)
    assert d.status["history"][-1]["version"] == 2 and d.status["history"][-1]["outcome"] == "TrainingFailed"
    again = decide(world(d.status, spec=spec, serving=serving()))  # settled: quiet, and version 2 is never reused
    assert again.status["phase"] == phases.MONITORING and not events(again)
    assert actions_of(again, EnsureStable) == [EnsureStable(1)] and phases.next_version(again.status) == 3


def test_failed_job_backs_off_and_deploys_nothing():
    job = JobObservation("churn-train-v2", "Failed", "Job BackoffLimitExceeded: too few rows")
    d = decide(world(retraining_status(), job=job, serving=serving()))
    assert d.status["retraining"] is None and d.status["failureBackoffUntil"] == format_time(NOW + 600)
    assert ("Warning", "RetrainingFailed") in events(d)
    assert not actions_of(d, EnsureCanary) and actions_of(d, EnsureStable) == [EnsureStable(1)]  # stable stays
    assert d.status["history"][-1]["outcome"] == "TrainingFailed"
    assert d.status["currentVersion"] == 1


def test_rejected_candidate_is_recorded_with_evidence():
    job = JobObservation(
        "churn-train-v2",
        "Succeeded",
        summary={
            "ok": True,
            "challenger": {"accuracy": 0.80},
            "champion": {"accuracy": 0.85},
            "rows": {"holdout": 300},
        },
    )
    d = decide(world(retraining_status(), job=job, serving=serving()))
    assert ("Warning", "CandidateRejected") in events(d)
    record = d.status["history"][-1]
    assert record["outcome"] == "Rejected" and "vs champion 0.8500" in record["message"]
    assert d.status["currentVersion"] == 1 and not actions_of(d, EnsureCanary)


def test_passing_candidate_starts_a_canary():
    job = JobObservation(
        "churn-train-v2",
        "Succeeded",
        summary={"ok": True, "challenger": {"accuracy": 0.9}, "champion": {"accuracy": 0.85}},
    )
    d = decide(world(retraining_status(), job=job, serving=serving()))
    [canary] = actions_of(d, EnsureCanary)
    assert canary.version == 2 and canary.canary_replicas == 1
    assert d.status["phase"] == phases.CANARY and d.status["rollout"]["step"] == 0
    assert d.status["candidate"]["challenger"] == {"accuracy": 0.9}


def test_version_numbers_never_repeat():
    status = {**monitoring_status(), "history": [{"version": 5, "outcome": "Rejected"}]}
    assert phases.next_version(status) == 6


def test_job_names_fit_kubernetes_limits():
    assert len(phases.job_name("x" * 80, 123)) <= 63


# --- manual canary overrides ------------------------------------------------------------------------


def canary_status(step=0, started=NOW - 100):
    return {
        **monitoring_status(),
        "phase": phases.CANARY,
        "rollout": {
            "version": 2,
            "step": step,
            "weight": 33,
            "startedAt": format_time(started),
            "stepStartedAt": format_time(started),
            "analysisPhase": "Running",
            "consecutiveErrors": 0,
            "evidence": [],
            "paused": False,
        },
    }


def test_abort_request_rolls_back_and_keeps_stable():
    d = decide(world(canary_status(), serving=serving(), requests={"abort": "now"}))
    assert RemoveCanary() in d.actions and actions_of(d, EnsureStable) == [EnsureStable(1)]  # stable stays
    assert d.status["currentVersion"] == 1 and d.status["rollout"] is None
    assert d.status["history"][-1]["outcome"] == "RolledBack"


def test_promote_request_promotes():
    d = decide(world(canary_status(), serving=serving(), requests={"promote": "now"}))
    assert EnsureStable(2) in d.actions and RemoveCanary() in d.actions
    assert d.status["currentVersion"] == 2 and d.status["phase"] == phases.MONITORING


def test_pause_request_holds_the_rollout():
    d = decide(world(canary_status(), serving=serving(), requests={"pause": "p1"}))
    assert d.status["rollout"]["paused"] is True and ("Normal", "RolloutPaused") in events(d)


# --- the canary analysis through decide -------------------------------------------------------------

from feedbackloop.core.canary import ArmCounts, CanaryObservation, replica_split  # noqa: E402


def counts(canary_acc, stable_acc, n):
    return CanaryObservation(
        accuracy=(ArmCounts(canary_acc * n, n), ArmCounts(stable_acc * n, n)),
        availability=(ArmCounts(n, n), ArmCounts(n, n)),
    )


def fast_spec():
    return make_spec(
        rollout={
            "steps": [{"weight": 20, "pause": "1m"}, {"weight": 50, "pause": "1m"}],
            "analysis": {"latency": {"enabled": False}, "maxDuration": "1h"},
        }
    )


def run_canary(observation, looks, spec=None, step_seconds=60.0):
    spec = spec or fast_spec()
    status = canary_status(started=NOW)
    d = None
    for look in range(1, looks + 1):
        d = decide(world(status, spec=spec, serving=serving(), canary=observation, now=NOW + look * step_seconds))
        status = d.status
        if status.get("rollout") is None:
            break
    return d


def test_clear_regression_is_rolled_back_with_evidence():
    d = run_canary(counts(0.70, 0.90, 2000), looks=3)
    assert RemoveCanary() in d.actions and d.status["currentVersion"] == 1
    record = d.status["history"][-1]
    assert record["outcome"] == "RolledBack"
    accuracy = next(e for e in record["evidence"] if e["name"] == "accuracy")
    assert accuracy["decision"] == "Fail" and accuracy["values"]


def test_equal_canary_walks_the_steps_then_is_promoted():
    d = run_canary(counts(0.90, 0.90, 20000), looks=5)
    assert d.status["currentVersion"] == 2 and d.status["history"][-1]["outcome"] == "Promoted"
    assert ("Normal", "Promoted") in events(d)


def test_no_data_waits_and_never_fails_until_the_deadline():
    empty = CanaryObservation()
    d = run_canary(empty, looks=10)
    assert d.status["rollout"] is not None and d.status["rollout"]["analysisPhase"] == "Running"
    d = run_canary(empty, looks=2, step_seconds=3700)
    assert d.status["history"][-1]["outcome"] == "RolledBack"
    assert "inconclusive" in d.status["history"][-1]["message"]


def test_query_errors_end_in_error_after_the_limit():
    broken = CanaryObservation(error="connection refused")
    d = run_canary(broken, looks=3)
    assert d.status["rollout"]["consecutiveErrors"] == 3
    d = run_canary(broken, looks=4)
    assert d.status["history"][-1]["outcome"] == "RolledBack"


def test_the_analysis_state_survives_in_status():
    d = run_canary(counts(0.90, 0.90, 300), looks=1)
    assert d.status["rollout"]["analysis"]["looks"] == 1


def slow_equal_canary(steps, minutes):
    """An equal canary whose labels arrive at 5 a minute per arm: too slow to decide in maxDuration 1h."""
    spec = make_spec(
        rollout={"steps": steps, "analysis": {"latency": {"enabled": False}, "maxDuration": "1h", "minSamples": 20}}
    )
    status, d = canary_status(started=NOW), None
    for minute in range(1, minutes + 1):
        d = decide(
            world(status, spec=spec, serving=serving(), canary=counts(0.9, 0.9, 5 * minute), now=NOW + 60 * minute)
        )
        status = d.status
        if status.get("rollout") is None:
            return d, minute
    return d, minutes


def test_an_undecidable_canary_at_its_last_step_ends_early_and_frees_the_loop():
    d, minute = slow_equal_canary([{"weight": 50, "pause": "1h"}], minutes=60)
    assert minute == 10 and d.status["rollout"] is None and d.status["currentVersion"] == 1
    record = d.status["history"][-1]
    assert record["outcome"] == "RolledBack" and "undecidable before the deadline" in record["message"]
    accuracy = next(e for e in record["evidence"] if e["name"] == "accuracy")
    assert accuracy["decision"] == "Inconclusive" and accuracy["values"]["decisionProbability"] < 0.1


def test_an_undecidable_canary_is_not_ended_before_its_last_step():
    d, _ = slow_equal_canary([{"weight": 20, "pause": "1h"}, {"weight": 50, "pause": "1h"}], minutes=59)
    assert d.status["rollout"]["analysisPhase"] == "Running" and d.status["rollout"]["step"] == 0


@pytest.mark.parametrize(
    "replicas, weight, expected",
    [(2, 20, (1, 33)), (4, 20, (1, 20)), (2, 50, (2, 50)), (10, 10, (2, 17)), (3, 100, (3, 50))],
)
def test_replica_split(replicas, weight, expected):
    assert replica_split(replicas, weight) == expected


def test_cooldown_also_runs_from_the_last_outcome():
    status = {**monitoring_status(), "history": [{"version": 1, "outcome": "Promoted", "at": format_time(NOW - 30)}]}
    d = decide(world(status, health=breached(), serving=serving()))
    assert not actions_of(d, StartTraining) and "cooldown" in d.status["retrainBlockedBy"]


def test_a_promoted_version_starts_with_fresh_rules():
    status = {
        **canary_status(),
        "metrics": [{"name": "accuracy", "state": "Breaching", "value": 0.5, "breachSince": format_time(NOW - 100)}],
    }
    d = decide(world(status, serving=serving(), requests={"promote": "now"}))
    assert d.status["metrics"][0]["state"] == "NoData" and d.status["metrics"][0]["breachSince"] is None
    assert condition(d.status, "Breached")["reason"] == "NewVersion"


def test_retraining_condition_tracks_the_job():
    start = decide(world(monitoring_status(), health=breached(), serving=serving()))
    assert condition(start.status, "Retraining")["status"] == "Unknown"
    job = JobObservation("churn-train-v2", "Failed", "Job BackoffLimitExceeded: no rows")
    failed = decide(world(start.status, job=job, serving=serving()))
    assert (condition(failed.status, "Retraining")["status"], condition(failed.status, "Retraining")["reason"]) == (
        "False",
        "TrainingFailed",
    )


# --- a slow rollout of the promoted version (MLServer Pods take tens of seconds each) -----------------


def promoted_status(at: float) -> dict:
    """Version 2 promoted at `at`; the stable Deployment was last seen serving version 1."""
    return {
        "currentVersion": 2,
        "phase": phases.MONITORING,
        "lastRetrainAt": format_time(at - 600),
        "history": [{"version": 2, "outcome": "Promoted", "at": format_time(at)}],
        "serving": {"version": 1, "readyReplicas": 2, "replicas": 2, "since": format_time(at - 7200)},
    }


def test_a_breach_while_the_promoted_version_rolls_out_does_not_retrain():
    """The labels that breach are the predecessor's while its Pods still answer: no retraining until every
    replica serves the new version, for rollout.readyTimeout (5m) after the promotion at most: a version that
    never gets ready must not hold retraining for ever."""
    spec = make_spec(retraining={"features": ["a"], "target": "y", "cooldown": "1m", "maxRetrainsPerDay": 2})
    status = promoted_status(NOW - 120)  # past the cooldown
    for observed in (serving(version=1), serving(version=2, ready=1)):
        d = decide(world(status, spec=spec, health=breached(), serving=observed))
        assert not actions_of(d, StartTraining)
        assert d.status["retrainBlockedBy"] == "the stable Deployment is still rolling out version 2"
        assert d.status["serving"]["since"] == (status["serving"]["since"] if observed.stable_version == 1 else None)
    late = decide(world(promoted_status(NOW - 301), spec=spec, health=breached(), serving=serving(version=2, ready=0)))
    assert [a.trigger for a in actions_of(late, StartTraining)] == ["Breach"]


def test_the_cooldown_counts_from_when_every_replica_serves_the_promoted_version():
    status = promoted_status(NOW - 7200)
    status["history"][-1]["at"] = format_time(NOW - 120)  # the rollout takes its time
    rolling = decide(world(status, health=breached(), serving=serving(version=2, ready=1), now=NOW - 60)).status
    done = decide(world(rolling, health=breached(), serving=serving(version=2), now=NOW)).status
    assert done["serving"]["since"] == format_time(NOW)
    soon = decide(world(done, health=breached(), serving=serving(version=2), now=NOW + 3599))
    assert not actions_of(soon, StartTraining) and "cooldown" in soon.status["retrainBlockedBy"]
    # a Pod restart later neither restarts the clock nor blocks
    dip = decide(world(soon.status, health=breached(), serving=serving(version=2, ready=1), now=NOW + 3600))
    assert dip.status["serving"]["since"] == format_time(NOW)
    [start] = actions_of(dip, StartTraining)
    assert start.trigger == "Breach"


def test_a_loop_first_seen_serving_is_not_held_back():
    """No rollout witnessed (a new operator, or its first look): no clock starts, the cooldown is as before."""
    d = decide(world(monitoring_status(), health=breached(), serving=serving()))
    assert d.status["serving"]["since"] is None
    assert [a.trigger for a in actions_of(d, StartTraining)] == ["Breach"]
