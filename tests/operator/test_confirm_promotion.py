"""rollout.confirmPromotion: a canary that passed its analysis is promoted only once a webhook answers 2xx.

The decision (phases.py) over hand-made worlds, then the whole path through Engine.cycle with the fakes
(fake_kube.py): the observer asks at each look, the loop holds, then promotes or, at maxDuration, rolls back.
"""

from __future__ import annotations

import asyncio
import ipaddress
from typing import Any

import pytest
from pydantic import ValidationError

from feedbackloop.core import api
from feedbackloop.core.phases import AWAITING_CONFIRMATION, EnsureStable, RemoveCanary, awaiting_promotion, decide
from feedbackloop.core.timeutil import format_time
from feedbackloop.runtime import egress_net, notify

from .fake_kube import FakeKube, FakePrometheus, Harness
from .test_engine_cycle import T0, loop, reasons, trained
from .test_phases import NOW, canary_status, condition, counts, events, make_spec, serving, world

GATE = "https://approvals.example.com/mfl?token=abc"


def gated_spec(max_duration: str = "1h", gate: str | None = GATE) -> api.ModelFeedbackLoopSpec:
    rollout: dict[str, Any] = {
        "steps": [{"weight": 20, "pause": "1m"}, {"weight": 50, "pause": "1m"}],
        "analysis": {"latency": {"enabled": False}, "maxDuration": max_duration},
    }
    if gate:
        rollout["confirmPromotion"] = {"url": gate}
    return make_spec(rollout=rollout)


def passed(spec: api.ModelFeedbackLoopSpec, looks: int = 6) -> tuple[dict[str, Any], float]:
    """A canary walked through both steps by an equal candidate, its analysis Successful; and the time."""
    status, now = canary_status(started=NOW), NOW
    for look in range(1, looks + 1):
        now = NOW + look * 60
        status = decide(world(status, spec=spec, serving=serving(), canary=counts(0.9, 0.9, 20000), now=now)).status
    assert status["rollout"] and status["rollout"]["analysisPhase"] == "Successful"
    return status, now


# --- the decision -----------------------------------------------------------------------------------


def test_without_a_gate_a_passed_canary_is_promoted_as_before() -> None:
    status, spec = canary_status(started=NOW), gated_spec(gate=None)
    for look in range(1, 6):
        observed = world(status, spec=spec, serving=serving(), canary=counts(0.9, 0.9, 20000), now=NOW + look * 60)
        status = decide(observed).status
    assert status["currentVersion"] == 2


def test_a_passed_canary_is_held_until_confirmed_and_says_so_once() -> None:
    spec = gated_spec()
    status, now = passed(spec)
    reconciling = condition(status, "Reconciling")
    assert (reconciling["status"], reconciling["reason"]) == ("True", AWAITING_CONFIRMATION)
    assert "https://approvals.example.com/mfl?token=abc" in reconciling["message"]
    assert status["phase"] == "Canary" and status["currentVersion"] == 1

    refused = decide(world(status, spec=spec, serving=serving(), canary=counts(0.9, 0.9, 20000), now=now + 60,
                           promotion_confirmed=False))  # fmt: skip
    assert refused.status["rollout"] and events(refused) == []  # still held, and no second Event
    assert EnsureStable(2) not in refused.actions and RemoveCanary() not in refused.actions

    confirmed = decide(world(refused.status, spec=spec, serving=serving(), canary=counts(0.9, 0.9, 20000),
                             now=now + 120, promotion_confirmed=True))  # fmt: skip
    assert confirmed.status["currentVersion"] == 2 and ("Normal", "Promoted") in events(confirmed)
    assert EnsureStable(2) in confirmed.actions and RemoveCanary() in confirmed.actions


def test_the_hold_starts_with_one_event() -> None:
    spec = gated_spec()
    status = canary_status(started=NOW)
    seen = []
    for look in range(1, 10):
        d = decide(world(status, spec=spec, serving=serving(), canary=counts(0.9, 0.9, 20000), now=NOW + look * 60))
        seen += [reason for _, reason in events(d)]
        status = d.status
    assert seen.count("PromotionAwaitingConfirmation") == 1 and "Promoted" not in seen


def test_no_confirmation_by_max_duration_rolls_the_canary_back() -> None:
    spec = gated_spec(max_duration="10m")
    status, now = passed(spec)
    d = decide(world(status, spec=spec, serving=serving(), canary=counts(0.9, 0.9, 20000), now=NOW + 600,
                     promotion_confirmed=False))  # fmt: skip
    assert RemoveCanary() in d.actions and d.status["rollout"] is None and d.status["currentVersion"] == 1
    record = d.status["history"][-1]
    assert record["outcome"] == "RolledBack" and "not confirmed" in record["message"]
    assert "token=abc" in record["message"]  # redact() hides user:password@ only; a query token is the user's


def test_a_promote_request_needs_no_confirmation() -> None:
    spec = gated_spec()
    status, now = passed(spec)
    d = decide(world(status, spec=spec, serving=serving(), requests={"promote": "p1"}, now=now + 1))
    assert d.status["currentVersion"] == 2


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({}, True),
        ({"analysisPhase": "Running"}, False),
        ({"step": 0}, False),
        ({"stepStartedAt": format_time(NOW + 30)}, False),  # the last step's pause has not passed
        ({"paused": True}, False),
    ],
)
def test_awaiting_promotion(change: dict[str, Any], expected: bool) -> None:
    rollout = {**canary_status()["rollout"], "analysisPhase": "Successful", "step": 1}
    rollout["stepStartedAt"] = format_time(NOW)
    assert awaiting_promotion(gated_spec(), {**rollout, **change}, NOW + 60) is expected


def test_the_gate_url_follows_the_webhook_rules() -> None:
    with pytest.raises(ValidationError, match="plain http"):
        gated_spec(gate="http://approvals.example.com/")
    assert gated_spec(gate="http://approvals.ops.svc:8080/").rollout.confirm_promotion is not None


def test_confirm_promotion_is_a_2xx_and_nothing_else() -> None:
    async def answer(code: int | Exception):  # noqa: ANN202
        async def send(url: str, body: bytes, headers: dict[str, str], timeout: float) -> int:
            if isinstance(code, Exception):
                raise code
            return code

        return await notify.confirm_promotion(GATE, {"version": 2}, send=send)

    assert [asyncio.run(answer(c)) for c in (200, 204, 302, 403, 500, ConnectionError("refused"))] == [
        True,
        True,
        False,
        False,
        False,
        False,
    ]


# --- through Engine.cycle ---------------------------------------------------------------------------

ROLLOUT = {
    "steps": [{"weight": 50, "pause": "30s"}],
    "analysis": {"interval": "10s", "minSamples": 50, "maxDuration": "5m", "latency": {"enabled": False}},
    "confirmPromotion": {"url": "http://approvals.ops.svc:8080/confirm"},
}


def arms(canary: float, stable: float) -> list[tuple[dict[str, str], float]]:
    return [({"track": "canary", "version": "2"}, canary), ({"track": "stable", "version": "1"}, stable)]


class Approver:
    def __init__(self, answers: list[bool]) -> None:
        self.answers = answers
        self.asked: list[dict[str, Any]] = []

    async def confirm(self, url: str, payload: dict[str, Any], headers: Any = None, shown: Any = None) -> bool:
        self.asked.append({"url": url, **payload})
        return self.answers[min(len(self.asked), len(self.answers)) - 1]


def canary_of_an_equal_candidate(approver: Approver) -> tuple[Harness, float]:
    bed = Harness(FakeKube(), FakePrometheus())
    bed.engine.observer.confirm = approver.confirm
    bed.prometheus.answer("accuracy_of", [({"model": "churn", "namespace": "team-a"}, 0.95)])
    bed.apply(loop(rollout=ROLLOUT))
    bed.cycle(T0)
    bed.kube.finish_job("team-a/churn-train-v1", True, trained(1, 0.93))
    bed.cycle(T0 + 5)
    bed.apply(loop(annotations={"feedbackloop.dev/retrain": "r1"}, rollout=ROLLOUT))
    bed.cycle(T0 + 6)
    bed.kube.finish_job("team-a/churn-train-v2", True, trained(2, 0.95, champion=0.93))
    bed.cycle(T0 + 11)
    assert bed.status()["phase"] == "Canary"
    bed.prometheus.answer("mfl_feedback_total", arms(20000, 20000))
    bed.prometheus.answer("mfl_feedback_correct_total", arms(18800, 18800))
    bed.prometheus.answer("mfl_http_requests_total", arms(20000, 20000))
    bed.prometheus.answer('code=~"5.."', [])
    return bed, T0 + 11


def test_the_engine_asks_at_each_look_holds_then_promotes_on_a_2xx() -> None:
    approver = Approver([False, False, True])
    bed, now = canary_of_an_equal_candidate(approver)
    actions = []
    for look in range(1, 12):
        actions += bed.cycle(now + 10 * look)
        if bed.status().get("currentVersion") == 2:
            break
    assert len(approver.asked) == 3  # once per look (10 s) while held, until the 2xx
    asked = approver.asked[0]
    assert asked["url"] == "http://approvals.ops.svc:8080/confirm" and asked["kind"] == "PromotionRequest"
    assert asked["version"] == 2 and asked["currentVersion"] == 1 and asked["analysis"]["phase"] == "Successful"
    assert asked["candidate"]["challenger"] == {"accuracy": 0.95}
    assert reasons(actions).count("Normal PromotionAwaitingConfirmation") == 1
    assert "Normal Promoted" in reasons(actions) and bed.status()["currentVersion"] == 2


def test_the_engine_rolls_back_a_canary_never_confirmed_by_max_duration() -> None:
    approver = Approver([False])
    bed, now = canary_of_an_equal_candidate(approver)
    for look in range(1, 40):
        bed.cycle(now + 10 * look)
        if not bed.status().get("rollout"):
            break
    status = bed.status()
    assert status["currentVersion"] == 1 and status["history"][-1]["outcome"] == "RolledBack"
    assert "not confirmed by http://approvals.ops.svc:8080/confirm" in status["history"][-1]["message"]
    assert len(approver.asked) >= 20  # asked all along, refused each time


def test_a_confirm_url_the_egress_policy_refuses_holds_the_canary_and_says_why_in_status() -> None:
    class Refusing(Approver):
        async def confirm(self, url: str, payload: dict[str, Any], headers: Any = None, shown: Any = None) -> bool:
            self.asked.append({"url": url, **payload})
            raise egress_net.EgressRefused("approvals.ops.svc", ipaddress.ip_address("10.0.0.7"), "a private address")

    approver = Refusing([])
    bed, now = canary_of_an_equal_candidate(approver)
    for look in range(1, 4):
        bed.cycle(now + 10 * look)
    status = bed.status()
    assert status["phase"] == "Canary" and status["currentVersion"] == 1  # never promoted unconfirmed
    reconciling = next(c for c in status["conditions"] if c["type"] == "Reconciling")
    assert reconciling["reason"] == "AwaitingConfirmation"
    assert "not asked: not connected: 10.0.0.7 is a private address" in reconciling["message"], reconciling
    assert "MFL_EGRESS_ALLOW" in reconciling["message"]
