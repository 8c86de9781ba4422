"""Recovering from a breach: the champion is failing, so its successor must beat it, gets there sooner, and is
not kept waiting on a canary that is not failing.

- gate.py: `sign_test_p` (one-sided exact sign test) and `offline_gate(..., breached=True)`: superiority over
  the breached champion on the paired holdout counts (gate.superiorWhenBreached, gate.superiorityAlpha);
- phases.py: a Breach-triggered candidate shown superior starts a canary with `offlineSuperior`, promoted
  after its steps' pauses while its analysis is still Running (not when it fails, nor past confirmPromotion);
  `breach_retry_wait`: after rejected challengers a Breach retraining waits a share of the cooldown;
- resources.trainer_config carries spec.retraining.changePoint to the trainer; the CRD has the new fields.
Pure decisions over hand-made worlds (helpers of test_phases.py), and one pass through Engine.cycle.
"""

from __future__ import annotations

import json
import math
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from feedbackloop.core import api, phases, resources
from feedbackloop.core.canary import ArmCounts, CanaryObservation
from feedbackloop.core.gate import offline_gate, sign_test_p
from feedbackloop.core.phases import (
    AWAITING_CONFIRMATION,
    EnsureCanary,
    EnsureStable,
    JobObservation,
    RemoveCanary,
    StartTraining,
    awaiting_promotion,
    breach_retry_wait,
    decide,
    retrain_blocker,
)
from feedbackloop.core.timeutil import format_time
from mfl_trainer import config as trainer_config_module

from .fake_kube import FakeKube, FakePrometheus, Harness
from .test_engine_cycle import loop, reasons, serving_v1
from .test_phases import (
    NOW,
    actions_of,
    breached,
    condition,
    counts,
    events,
    healthy,
    make_spec,
    monitoring_status,
    retraining_status,
    serving,
    world,
)

ROOT = Path(__file__).resolve().parents[2]
CRD_FILE = ROOT / "crds" / "modelfeedbackloops.feedbackloop.dev.yaml"
COOLDOWN = 3600.0  # make_spec's "1h"


# --- the sign test -------------------------------------------------------------------------------------


def exact_tail(wins: int, losses: int) -> float:
    """P(at least `wins` heads in wins+losses fair flips), in exact rational arithmetic."""
    n = wins + losses
    if n == 0:
        return 1.0
    return float(Fraction(sum(math.comb(n, k) for k in range(wins, n + 1)), 2**n))


@pytest.mark.parametrize(
    ("wins", "losses", "expected"),
    [
        (10, 0, 1 / 1024),
        (5, 5, 638 / 1024),  # 0.623
        (0, 0, 1.0),  # no discordant row: nothing shown
        (0, 10, 1.0),
        (1, 0, 0.5),
        (15, 5, 21700 / 2**20),  # 0.0207: below 0.05
        (14, 6, 60460 / 2**20),  # 0.0577: above 0.05
    ],
)
def test_sign_test_exact_values(wins: int, losses: int, expected: float) -> None:
    assert sign_test_p(wins, losses) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize(("wins", "losses"), [(212, 31), (31, 212), (120, 100), (700, 650), (1500, 1400), (3, 2000)])
def test_sign_test_matches_exact_arithmetic_on_large_counts(wins: int, losses: int) -> None:
    assert sign_test_p(wins, losses) == pytest.approx(exact_tail(wins, losses), rel=1e-9, abs=1e-300)


def test_sign_test_is_monotone_and_its_tails_add_up() -> None:
    for losses in (0, 3, 10, 40):
        p = [sign_test_p(wins, losses) for wins in range(0, 60)]
        assert all(a > b for a, b in zip(p, p[1:])), losses  # more wins: stronger evidence
    for wins in (1, 5, 20):
        p = [sign_test_p(wins, losses) for losses in range(0, 40)]
        assert all(a < b for a, b in zip(p, p[1:])), wins  # more losses: weaker
    for wins, losses in ((7, 3), (12, 12), (1, 30), (212, 31)):
        # P(X >= w) + P(X <= w - 1) = 1, and P(X <= w - 1) = P(X >= n - w + 1) by symmetry
        assert sign_test_p(wins, losses) + sign_test_p(losses + 1, wins - 1) == pytest.approx(1.0)
    assert all(0.0 < sign_test_p(w, l) <= 1.0 for w in range(30) for l in range(30))  # noqa: E741


# --- the offline gate ----------------------------------------------------------------------------------


def gate_spec(**gate: Any) -> api.ModelFeedbackLoopSpec:
    task = "regression" if gate.get("metric") in ("mae", "rmse", "r2") else "classification"
    return api.validate_spec(
        {
            "model": {"name": "m", "task": task, "storage": {"hostPath": {"path": "/d"}}},
            "monitoring": {"prometheus": {"url": "http://p"}},
            "retraining": {"features": ["a"], "target": "y", "gate": gate},
        }
    )


def summary(challenger: float, champion: float | None, wins: int | None = None, losses: int | None = None,
            metric: str = "accuracy") -> dict[str, Any]:  # fmt: skip
    result: dict[str, Any] = {"ok": True, "challenger": {metric: challenger}, "rows": {"holdout": 640}}
    if champion is not None:
        result["champion"] = {metric: champion}
    if wins is not None and losses is not None:
        result["paired"] = {"challengerOnly": wins, "championOnly": losses}
    return result


SUPERIOR = summary(0.861, 0.52, 212, 31)  # the champion collapsed, the challenger learned the new concept
EQUAL = summary(0.80, 0.80, 30, 30)  # no worse, and no better


def test_breached_and_shown_superior_passes_as_superior() -> None:
    result = offline_gate(gate_spec(), SUPERIOR, first_version=False, breached=True)
    assert result.passed and result.superior
    assert "superior to the breached champion" in result.message and "sign test" in result.message
    assert "better on 212, worse on 31" in result.message and "vs champion 0.5200" in result.message


def test_breached_and_equal_is_rejected_naming_the_sign_test() -> None:
    result = offline_gate(gate_spec(), EQUAL, first_version=False, breached=True)
    assert not result.passed and not result.superior
    assert "sign test" in result.message and "must beat the champion" in result.message
    assert f"p={sign_test_p(30, 30):.3g}" in result.message and "> 0.05" in result.message


def test_superiority_alpha_is_the_boundary() -> None:
    just_below, just_above = summary(0.80, 0.70, 15, 5), summary(0.80, 0.72, 14, 6)  # p 0.0207, 0.0577
    assert offline_gate(gate_spec(), just_below, False, breached=True).superior
    above = offline_gate(gate_spec(), just_above, False, breached=True)
    assert not above.passed and "p=0.0577" in above.message
    looser = offline_gate(gate_spec(superiorityAlpha=0.1), just_above, False, breached=True)
    assert looser.passed and looser.superior
    stricter = offline_gate(gate_spec(superiorityAlpha=0.01), just_below, False, breached=True)
    assert not stricter.passed and "> 0.01" in stricter.message


def test_p_equal_to_alpha_passes() -> None:
    """`p <= alpha` is significant: (10, 0) gives p = 1/1024 exactly."""
    result = offline_gate(gate_spec(superiorityAlpha=1 / 1024), summary(0.9, 0.8, 10, 0), False, breached=True)
    assert result.passed and result.superior


@pytest.mark.parametrize("case", [SUPERIOR, EQUAL], ids=["superior", "equal"])
def test_not_breached_keeps_the_no_worse_rule(case: dict[str, Any]) -> None:
    result = offline_gate(gate_spec(), case, first_version=False, breached=False)
    assert result.passed and not result.superior
    assert "sign test" not in result.message and "vs champion" in result.message


def test_superior_when_breached_false_keeps_the_no_worse_rule_even_when_breached() -> None:
    spec = gate_spec(superiorWhenBreached=False)
    equal = offline_gate(spec, EQUAL, first_version=False, breached=True)
    assert equal.passed and not equal.superior and "sign test" not in equal.message
    better = offline_gate(spec, SUPERIOR, first_version=False, breached=True)
    assert better.passed and not better.superior  # so no early promotion either


@pytest.mark.parametrize("paired", [None, "absent"])
def test_a_trainer_without_paired_counts_gets_the_no_worse_rule(paired: str | None) -> None:
    old = summary(0.80, 0.80)
    if paired is None:
        old["paired"] = None
    result = offline_gate(gate_spec(), old, first_version=False, breached=True)
    assert result.passed and not result.superior and "sign test" not in result.message


def test_a_worse_challenger_is_rejected_by_the_no_worse_rule_first() -> None:
    worse = summary(0.70, 0.80, 40, 5)  # paired counts that contradict the metric do not rescue it
    result = offline_gate(gate_spec(), worse, first_version=False, breached=True)
    assert not result.passed and "vs champion 0.8000" in result.message and "sign test" not in result.message


def test_the_first_version_is_unaffected() -> None:
    first = summary(0.9, None)
    first["paired"] = None
    result = offline_gate(gate_spec(), first, first_version=True, breached=True)
    assert result.passed and not result.superior and "no champion to compare" in result.message
    assert not offline_gate(gate_spec(minScore=0.95), first, first_version=True, breached=True).passed


def test_lower_is_better_metrics_are_judged_by_the_same_counts() -> None:
    spec = gate_spec(metric="mae")
    closer = summary(1.0, 1.6, 300, 120, metric="mae")  # challengerOnly: rows where its error is smaller
    assert offline_gate(spec, closer, False, breached=True).superior
    tied = summary(1.0, 1.0, 100, 100, metric="mae")
    assert not offline_gate(spec, tied, False, breached=True).passed


# --- decide: from the Job to the canary ----------------------------------------------------------------


def canary_spec(**rollout: Any) -> api.ModelFeedbackLoopSpec:
    return make_spec(
        rollout={
            "steps": [{"weight": 20, "pause": "1m"}, {"weight": 50, "pause": "1m"}],
            "analysis": {"latency": {"enabled": False}, "maxDuration": "1h"},
            **rollout,
        }
    )


def finished(trigger: str, result: dict[str, Any], spec: api.ModelFeedbackLoopSpec | None = None) -> phases.Decision:
    """A retraining of version 2 (from version 1) whose Job succeeded with `result`, at NOW."""
    status = retraining_status()
    status["retraining"]["trigger"] = trigger
    job = JobObservation("churn-train-v2", "Succeeded", summary=result)
    return decide(world(status, spec=spec or canary_spec(), job=job, serving=serving()))


NO_DATA_YET = CanaryObservation()  # the canary's labels have not arrived: its analysis stays Running
# ... but its requests are counted: it is seen serving (an offline-superior canary may then be promoted)
SERVING_NO_LABELS = CanaryObservation(availability=(ArmCounts(90.0, 90.0), ArmCounts(400.0, 400.0)))


def follow(status: dict[str, Any], spec: api.ModelFeedbackLoopSpec, observation: CanaryObservation,
           times: list[float], **kw: Any) -> list[phases.Decision]:  # fmt: skip
    """decide at each time in turn, the status carried over; stops after the canary ends."""
    seen = []
    for now in times:
        d = decide(world(status, spec=spec, serving=serving(), canary=observation, now=now, **kw))
        seen.append(d)
        status = d.status
        if not status.get("rollout"):
            break
    return seen


def test_a_breach_retraining_shown_superior_starts_an_offline_superior_canary() -> None:
    d = finished("Breach", SUPERIOR)
    [canary] = actions_of(d, EnsureCanary)
    assert canary.version == 2 and d.status["phase"] == phases.CANARY
    rollout = d.status["rollout"]
    assert rollout["offlineSuperior"] is True and rollout["trigger"] == "Breach"
    passed = [a.message for a in d.actions if isinstance(a, phases.Event) and a.reason == "CandidatePassedGate"]
    assert len(passed) == 1 and "superior to the breached champion" in passed[0]


@pytest.mark.parametrize(
    "unseen", [NO_DATA_YET, CanaryObservation(outage="connection refused")], ids=["no-requests", "outage"]
)
def test_an_offline_superior_canary_nobody_sees_serving_is_not_promoted(unseen: CanaryObservation) -> None:
    spec = canary_spec()
    start = finished("Breach", SUPERIOR, spec).status
    seen = follow(start, spec, unseen, [NOW + 60 * k for k in range(1, 6)])
    assert seen[-1].status["rollout"] is not None and seen[-1].status["currentVersion"] == 1


def test_an_offline_superior_canary_is_promoted_after_its_steps_while_still_running() -> None:
    spec = canary_spec()
    start = finished("Breach", SUPERIOR, spec).status
    seen = follow(start, spec, SERVING_NO_LABELS, [NOW + 30, NOW + 60, NOW + 119, NOW + 120])
    at_30, at_60, at_119, at_120 = seen
    assert at_30.status["rollout"]["step"] == 0 and at_30.status["rollout"]["analysisPhase"] == "Running"
    assert at_60.status["rollout"]["step"] == 1 and ("Normal", "CanaryStep") in events(at_60)
    assert at_119.status["rollout"] and at_119.status["currentVersion"] == 1  # the last step's pause is not over
    assert at_120.status["currentVersion"] == 2 and at_120.status["rollout"] is None
    assert EnsureStable(2) in at_120.actions and RemoveCanary() in at_120.actions
    [promoted] = [a.message for a in at_120.actions if isinstance(a, phases.Event) and a.reason == "Promoted"]
    assert "better than the breached champion" in promoted and "not failing" in promoted
    record = at_120.status["history"][-1]
    assert (record["version"], record["trigger"], record["outcome"]) == (2, "Breach", "Promoted")
    assert "better than the breached champion" in record["message"]


def test_an_offline_superior_canary_whose_analysis_fails_is_rolled_back() -> None:
    spec = canary_spec()
    start = finished("Breach", SUPERIOR, spec).status
    seen = follow(start, spec, counts(0.70, 0.90, 2000), [NOW + 60 * k for k in range(1, 6)])
    last = seen[-1]
    assert last.status["currentVersion"] == 1 and RemoveCanary() in last.actions
    assert last.status["history"][-1]["outcome"] == "RolledBack"
    assert not any(reason == "Promoted" for _, reason in events(last))


def test_an_offline_superior_canary_failing_at_the_moment_of_promotion_is_rolled_back() -> None:
    spec = canary_spec()
    start = finished("Breach", SUPERIOR, spec).status
    at_last_step = follow(start, spec, SERVING_NO_LABELS, [NOW + 60, NOW + 110])[-1].status
    assert at_last_step["rollout"]["step"] == 1
    d = follow(at_last_step, spec, counts(0.60, 0.90, 2000), [NOW + 120])[-1]  # the first labels: far worse
    assert d.status["currentVersion"] == 1 and d.status["history"][-1]["outcome"] == "RolledBack"
    assert ("Warning", "RolledBack") in events(d) and EnsureStable(2) not in d.actions


def test_an_offline_superior_canary_whose_queries_fail_is_rolled_back() -> None:
    spec = canary_spec()
    start = finished("Breach", SUPERIOR, spec).status
    seen = follow(start, spec, CanaryObservation(error="connection refused"), [NOW + 10 * k for k in range(1, 20)])
    assert seen[-1].status["history"][-1]["outcome"] == "RolledBack" and seen[-1].status["currentVersion"] == 1


@pytest.mark.parametrize("trigger", ["Schedule", "Manual"])
def test_other_triggers_set_no_offline_superiority_and_need_a_successful_analysis(trigger: str) -> None:
    spec = canary_spec()
    start = finished(trigger, SUPERIOR, spec).status
    assert start["rollout"]["offlineSuperior"] is False
    waiting = follow(start, spec, SERVING_NO_LABELS, [NOW + 60 * k for k in range(1, 11)])
    assert waiting[-1].status["rollout"] is not None and waiting[-1].status["currentVersion"] == 1
    assert waiting[-1].status["rollout"]["step"] == 1  # at its last step, held for its analysis
    proven = follow(start, spec, counts(0.90, 0.90, 20000), [NOW + 60 * k for k in range(1, 11)])
    assert proven[-1].status["currentVersion"] == 2
    [message] = [a.message for a in proven[-1].actions if isinstance(a, phases.Event) and a.reason == "Promoted"]
    assert "breached champion" not in message


def test_a_paused_offline_superior_canary_holds() -> None:
    spec = canary_spec()
    start = finished("Breach", SUPERIOR, spec).status
    held = follow(start, spec, SERVING_NO_LABELS, [NOW + 60, NOW + 61], requests={"pause": "p1"})
    later = follow(held[-1].status, spec, SERVING_NO_LABELS, [NOW + 300, NOW + 600], requests={"pause": "p1"})
    assert later[-1].status["rollout"]["paused"] is True and later[-1].status["currentVersion"] == 1


def test_confirm_promotion_still_holds_an_offline_superior_canary() -> None:
    spec = canary_spec(confirmPromotion={"url": "https://approvals.example.com/mfl"})
    start = finished("Breach", SUPERIOR, spec).status
    seen = follow(start, spec, SERVING_NO_LABELS, [NOW + 60, NOW + 120, NOW + 180])
    held = seen[-1].status
    assert held["rollout"] and held["currentVersion"] == 1 and held["rollout"]["analysisPhase"] == "Running"
    assert awaiting_promotion(spec, held["rollout"], NOW + 180)
    reconciling = condition(held, "Reconciling")
    assert (reconciling["status"], reconciling["reason"]) == ("True", AWAITING_CONFIRMATION)
    asked = [reason for d in seen for _, reason in events(d)]
    assert asked.count("PromotionAwaitingConfirmation") == 1 and "Promoted" not in asked
    confirmed = follow(held, spec, SERVING_NO_LABELS, [NOW + 240], promotion_confirmed=True)[-1]
    assert confirmed.status["currentVersion"] == 2 and ("Normal", "Promoted") in events(confirmed)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({}, True),
        ({"offlineSuperior": False}, False),  # Running, and not shown superior: not yet
        ({"analysisPhase": "Failed"}, False),
        ({"analysisPhase": "Error"}, False),
        ({"analysisPhase": "Inconclusive"}, False),
        ({"analysisPhase": "Successful", "offlineSuperior": False}, True),
        ({"step": 0}, False),
        ({"stepStartedAt": format_time(NOW + 30)}, False),
        ({"paused": True}, False),
        ({"evidence": []}, False),  # never looked at: not observed
        ({"evidence": [{"name": "accuracy", "decision": "Error", "message": "query failed"}]}, False),
        (  # a Prometheus outage: every check is no data
            {"evidence": [{"name": "availability", "decision": "Pending", "message": "Prometheus unavailable"}]},
            False,
        ),
    ],
)
def test_awaiting_promotion_of_an_offline_superior_canary(change: dict[str, Any], expected: bool) -> None:
    rollout = {
        "version": 2,
        "step": 1,
        "weight": 50,
        "startedAt": format_time(NOW - 60),
        "stepStartedAt": format_time(NOW),
        "analysisPhase": "Running",
        "offlineSuperior": True,
        "evidence": [
            {"name": "accuracy", "decision": "Pending", "message": "no labelled feedback in one of the arms yet"},
            {"name": "availability", "decision": "Pending", "message": "waiting for samples", "values": {"n": 90}},
        ],
    }
    assert awaiting_promotion(canary_spec(), {**rollout, **change}, NOW + 60) is expected


# --- the cooldown after rejected challengers while breached --------------------------------------------

# Share of the cooldown a Breach retraining waits after k Rejected outcomes in a row (phases.breach_retry_wait).
SHARE_AFTER_REJECTIONS = {1: 1 / 2, 2: 1.0, 3: 1.0, 4: 1.0, 5: 1.0, 9: 1.0}


def rejections(k: int, last_at: float, then: str | None = None) -> list[dict[str, Any]]:
    """k Rejected outcomes of Breach retrainings, an hour apart, the last at `last_at`; with `then`, one more
    outcome ten minutes later."""
    records = [
        {"version": 2 + i, "trigger": "Breach", "outcome": "Rejected", "at": format_time(last_at - 3600 * (k - 1 - i))}
        for i in range(k)
    ]
    if then:
        records.append({"version": 2 + k, "trigger": "Breach", "outcome": then, "at": format_time(last_at + 600)})
    return records


def breached_status(history: list[dict[str, Any]]) -> dict[str, Any]:
    return {**monitoring_status(), "phase": phases.BREACHED, "history": history}


def starts(status: dict[str, Any], now: float, health: Any = None) -> list[StartTraining]:
    return actions_of(decide(world(status, health=health or breached(), serving=serving(), now=now)), StartTraining)


@pytest.mark.parametrize(("rejected", "share"), SHARE_AFTER_REJECTIONS.items())
def test_breach_retries_wait_a_share_of_the_cooldown_growing_with_rejections(rejected: int, share: float) -> None:
    last = NOW - 5000
    status = breached_status(rejections(rejected, last))
    wait = COOLDOWN * share
    assert breach_retry_wait(status, COOLDOWN) == pytest.approx(wait)
    before = decide(world(status, health=breached(), serving=serving(), now=last + wait - 1))
    assert not actions_of(before, StartTraining) and "cooldown" in before.status["retrainBlockedBy"]
    assert f"cooldown {wait:.0f}s" in before.status["retrainBlockedBy"]
    [start] = starts(status, last + wait + 1)
    assert (start.trigger, start.version) == ("Breach", 2 + rejected)


@pytest.mark.parametrize("outcome", ["Promoted", "RolledBack", "TrainingFailed"])
def test_after_another_outcome_the_whole_cooldown_applies(outcome: str) -> None:
    last = NOW - 5000
    status = breached_status(rejections(1, last - 600, then=outcome))  # the other outcome at `last`
    assert breach_retry_wait(status, COOLDOWN) == COOLDOWN
    assert not starts(status, last + COOLDOWN - 1) and starts(status, last + COOLDOWN + 1)


def test_no_history_waits_the_whole_cooldown_from_the_last_start() -> None:
    status = {**breached_status([]), "lastRetrainAt": format_time(NOW - 100)}
    assert breach_retry_wait(status, COOLDOWN) == COOLDOWN
    assert not starts(status, NOW) and starts(status, NOW - 100 + COOLDOWN + 1)


@pytest.mark.parametrize("rejected", [1, 2, 3, 4, 5])
def test_a_schedule_trigger_always_waits_the_whole_cooldown(rejected: int) -> None:
    spec = make_spec()
    last = NOW - 5000
    status = {**monitoring_status(), "history": rejections(rejected, last)}
    assert "cooldown" in retrain_blocker(spec, status, last + COOLDOWN * SHARE_AFTER_REJECTIONS[1] + 1, "Schedule")
    assert "cooldown" in retrain_blocker(spec, status, last + COOLDOWN - 1, "Schedule")
    assert retrain_blocker(spec, status, last + COOLDOWN + 1, "Schedule") == ""
    breach_wait = breach_retry_wait(status, COOLDOWN)
    assert breach_wait == COOLDOWN * SHARE_AFTER_REJECTIONS[rejected]
    assert retrain_blocker(spec, status, last + breach_wait + 1, "Breach") == ""  # the same history, breached


def test_a_schedule_slot_after_a_rejection_is_skipped_but_a_breach_retries() -> None:
    spec = make_spec(
        retraining={
            "features": ["a"],
            "target": "y",
            "schedule": "*/5 * * * *",
            "cooldown": "1h",
            "maxRetrainsPerDay": 5,
        }
    )
    now = NOW - (NOW % 300) + 30  # 30 s after a slot
    since = COOLDOWN * SHARE_AFTER_REJECTIONS[1] + 50  # past the breach wait, within the cooldown
    status = {**monitoring_status(), "history": rejections(1, now - since)}
    skipped = decide(world(status, spec=spec, health=healthy(), serving=serving(), now=now))
    assert not actions_of(skipped, StartTraining) and ("Warning", "RetrainSkipped") in events(skipped)
    assert "cooldown" in skipped.status["retrainBlockedBy"]
    retried = decide(world(status, spec=spec, health=breached(), serving=serving(), now=now))
    [start] = actions_of(retried, StartTraining)
    assert start.trigger == "Breach"


def test_a_manual_request_still_skips_any_cooldown() -> None:
    status = breached_status(rejections(1, NOW - 10))
    d = decide(world(status, health=breached(), serving=serving(), requests={"retrain": "r1"}))
    [start] = actions_of(d, StartTraining)
    assert start.trigger == "Manual"


# --- the spec: the trainer's config and the CRD --------------------------------------------------------

LOOP = {"metadata": {"name": "churn", "namespace": "team-a"}}


def retraining_spec(**retraining: Any) -> api.ModelFeedbackLoopSpec:
    return make_spec(retraining={"features": ["a"], "target": "y", **retraining})


def test_trainer_config_carries_the_change_point_settings() -> None:
    spec = retraining_spec(changePoint={"enabled": False, "alpha": 0.02, "minRows": 50})
    config = resources.trainer_config(LOOP, spec, 2, 1, now=NOW)
    assert (config["changePoint"], config["changePointAlpha"], config["changePointMinRows"]) == (False, 0.02, 50)
    defaults = resources.trainer_config(LOOP, retraining_spec(), 2, 1, now=NOW)
    assert (defaults["changePoint"], defaults["changePointAlpha"], defaults["changePointMinRows"]) == (True, 0.01, 100)


def test_the_trainer_reads_what_the_operator_writes() -> None:
    spec = retraining_spec(changePoint={"enabled": False, "alpha": 0.2, "minRows": 10})
    parsed = trainer_config_module.parse_config(resources.trainer_config(LOOP, spec, 2, 1, now=NOW), env={})
    assert (parsed.change_point, parsed.change_point_alpha, parsed.change_point_min_rows) == (False, 0.2, 10)
    assert not {"changePoint", "changePointAlpha", "changePointMinRows"} & set(parsed.ignored_keys)
    defaults = trainer_config_module.parse_config({"model": "m", "version": 1, "target": "y"}, env={})
    spec_defaults = api.ChangePoint()
    assert (defaults.change_point, defaults.change_point_alpha, defaults.change_point_min_rows) == (
        spec_defaults.enabled,
        spec_defaults.alpha,
        spec_defaults.min_rows,
    )


def test_the_gate_and_change_point_defaults() -> None:
    retraining = retraining_spec().retraining
    assert retraining is not None
    assert (retraining.gate.superior_when_breached, retraining.gate.superiority_alpha) == (True, 0.05)
    assert (retraining.change_point.enabled, retraining.change_point.alpha, retraining.change_point.min_rows) == (
        True,
        0.01,
        100,
    )


@pytest.mark.parametrize(
    ("retraining", "field"),
    [
        ({"gate": {"superiorityAlpha": 0}}, "superiorityAlpha"),
        ({"gate": {"superiorityAlpha": 0.5}}, "superiorityAlpha"),
        ({"gate": {"superiorWhenBreached": "sometimes"}}, "superiorWhenBreached"),
        ({"changePoint": {"alpha": 0}}, "changePoint.alpha"),
        ({"changePoint": {"alpha": 0.5}}, "changePoint.alpha"),
        ({"changePoint": {"minRows": 9}}, "changePoint.minRows"),
        ({"changePoint": {"minRows": 100001}}, "changePoint.minRows"),
        ({"changePoint": {"cutAt": 5}}, "changePoint.cutAt"),
    ],
)
def test_out_of_range_settings_are_refused_naming_the_field(retraining: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        retraining_spec(**retraining)
    assert field in api.describe_validation_error(caught.value)


def committed_schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD_FILE.read_text())
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]


def test_the_committed_crd_has_the_new_spec_fields() -> None:
    retraining = committed_schema()["spec"]["properties"]["retraining"]["properties"]
    gate = retraining["gate"]["properties"]
    assert gate["superiorWhenBreached"]["type"] == "boolean" and gate["superiorWhenBreached"]["default"] is True
    alpha = gate["superiorityAlpha"]
    assert (alpha["type"], alpha["default"], alpha["minimum"], alpha["maximum"]) == ("number", 0.05, 0, 0.5)
    assert alpha["exclusiveMinimum"] is True and alpha["exclusiveMaximum"] is True
    change = retraining["changePoint"]
    assert change["type"] == "object" and change["description"]
    fields = change["properties"]
    assert (fields["enabled"]["type"], fields["enabled"]["default"]) == ("boolean", True)
    assert (fields["alpha"]["type"], fields["alpha"]["default"]) == ("number", 0.01)
    assert fields["alpha"]["exclusiveMinimum"] is True and fields["alpha"]["exclusiveMaximum"] is True
    min_rows = fields["minRows"]
    assert (min_rows["type"], min_rows["default"], min_rows["minimum"], min_rows["maximum"]) == (
        "integer",
        100,
        10,
        100000,
    )


def test_the_committed_crd_keeps_offline_superior_in_the_status() -> None:
    """A status field missing from the schema is pruned by the API server: the canary would lose it."""
    rollout = committed_schema()["status"]["properties"]["rollout"]["properties"]
    assert rollout["offlineSuperior"]["type"] == "boolean"


# --- through Engine.cycle: the status round trip keeps offlineSuperior --------------------------------


def superior_termination(version: int) -> str:
    return "training done\n" + json.dumps({**SUPERIOR, "version": version})


def test_the_engine_promotes_an_offline_superior_canary_without_canary_labels() -> None:
    bed = Harness(FakeKube(), FakePrometheus())
    bed.prometheus.answer("accuracy_of", [({"model": "churn", "namespace": "team-a"}, 0.95)])
    now = serving_v1(bed)
    bed.prometheus.answer("accuracy_of", [({"model": "churn", "namespace": "team-a"}, 0.5)])
    for step in range(1, 6):  # `for: 20s` at a 10 s interval
        bed.cycle(now + 10 * step)
    assert bed.status()["retraining"]["trigger"] == "Breach"
    bed.kube.finish_job("team-a/churn-train-v2", True, superior_termination(2))
    requests = [({"track": "canary", "version": "2"}, 90.0), ({"track": "stable", "version": "1"}, 400.0)]
    bed.prometheus.answer('endpoint=~"predict|infer"}[', requests)  # served and counted, no labels yet
    now += 60
    bed.cycle(now)
    status = bed.status()
    assert status["phase"] == "Canary" and status["rollout"]["offlineSuperior"] is True
    seen = []
    for look in range(1, 8):  # one 30 s step (test_engine_cycle.loop), no canary labels at all
        seen += reasons(bed.cycle(now + 10 * look))
        if bed.status().get("currentVersion") == 2:
            break
    assert bed.status()["currentVersion"] == 2 and "Normal Promoted" in seen
    assert bed.status()["history"][-1]["trigger"] == "Breach"
    assert loop()["spec"]["rollout"]["steps"] == [{"weight": 50, "pause": "30s"}]  # what the timing assumes


ONE_LONG_STEP = {"steps": [{"weight": 50, "pause": "20m"}],
                 "analysis": {"latency": {"enabled": False}, "maxDuration": "1h", "minSamples": 20}}  # fmt: skip
NO_NEW_LABELS = counts(0.90, 0.90, 100)  # an equal canary whose labels stopped coming: undecidable


def test_an_offline_superior_canary_is_not_ended_for_want_of_its_own_labels() -> None:
    spec = canary_spec(**ONE_LONG_STEP)
    start = finished("Breach", SUPERIOR, spec).status
    seen = follow(start, spec, NO_NEW_LABELS, [NOW + 60 * k for k in range(1, 21)])
    assert all(d.status["rollout"]["analysisPhase"] == "Running" for d in seen[:-1])
    assert seen[-1].status["currentVersion"] == 2  # promoted after its step, as without the early end


def test_the_same_canary_not_shown_superior_ends_early_instead() -> None:
    spec = canary_spec(**ONE_LONG_STEP)
    start = finished("Manual", SUPERIOR, spec).status
    last = follow(start, spec, NO_NEW_LABELS, [NOW + 60 * k for k in range(1, 21)])[-1]
    assert last.status["currentVersion"] == 1 and last.status["rollout"] is None
    assert "undecidable before the deadline" in last.status["history"][-1]["message"]
