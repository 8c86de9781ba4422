"""Notifications through `Engine.cycle()` against the in-memory API (fake_kube.py): one drift story, from the
first version through a breach, a retraining and a canary to its promotion, as two receivers see it."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from feedbackloop.runtime.notify import Notifier

from .fake_kube import FakeKube, FakePrometheus, Harness
from .test_engine_cycle import T0, loop, trained

HOOKS = [
    {"url": "https://hooks.example.com/mfl"},
    {"url": "http://chat-relay.ops.svc:8080/slack", "format": "slack", "events": ["Promoted", "RolledBack"]},
]
STORY = ["RetrainingStarted", "Promoted", "BreachStarted", "RetrainingStarted", "CanaryStarted", "Promoted"]
BREACHING = [({"model": "churn", "namespace": "team-a"}, 0.6)]


class Receivers:
    """Records every POST by URL; fails the first `failures` of each receiver."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.got: dict[str, list[dict[str, Any]]] = {}
        self.tries: dict[str, int] = {}

    async def send(self, url: str, body: bytes, headers: dict[str, str], timeout: float) -> int:
        self.tries[url] = self.tries.get(url, 0) + 1
        if self.tries[url] <= self.failures:
            return 502
        self.got.setdefault(url, []).append(json.loads(body))
        return 204


def deliver(bed: Harness) -> None:
    async def run_until_idle(notifier: Notifier) -> None:
        task = asyncio.create_task(notifier.run())
        await asyncio.wait_for(notifier.idle(), 10)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    bed.runner.run(run_until_idle(bed.engine.notifier))


def story(bed: Harness, notifications: list[dict[str, Any]]) -> None:
    """Version 1 trained and served; a breach; version 2 retrained, canaried and promoted by request."""
    bed.apply(loop(notifications=notifications))
    bed.cycle(T0)
    bed.kube.finish_job("team-a/churn-train-v1", True, trained(1, 0.93))
    bed.cycle(T0 + 5)
    now = T0 + 10
    bed.cycle(now)
    bed.prometheus.answer("accuracy_of", BREACHING)
    for step in range(1, 6):  # `for: 20s` at a 10 s interval, then the retraining starts
        bed.cycle(now + 10 * step)
    assert bed.status()["retraining"]["version"] == 2
    bed.kube.finish_job("team-a/churn-train-v2", True, trained(2, 0.95, champion=0.93))
    bed.cycle(now + 55)
    assert bed.status()["phase"] == "Canary"
    bed.apply(loop(annotations={"feedbackloop.dev/promote": "p1"}, notifications=notifications))
    bed.cycle(now + 56)
    assert bed.status()["currentVersion"] == 2


def test_one_drift_story_notifies_each_receiver_of_what_it_asked_for() -> None:
    bed = Harness(FakeKube(), FakePrometheus())
    bed.prometheus.answer("accuracy_of", [({"model": "churn", "namespace": "team-a"}, 0.95)])
    receivers = Receivers()
    bed.engine.notifier._send = receivers.send
    story(bed, HOOKS)
    assert bed.engine.notifier.channels  # the cycles only queued: nothing was sent inside a reconcile
    assert receivers.tries == {}
    deliver(bed)

    generic = receivers.got["https://hooks.example.com/mfl"]
    assert [(n["reason"], n["version"]) for n in generic] == [
        ("RetrainingStarted", 1),
        ("Promoted", 1),
        ("BreachStarted", 1),
        ("RetrainingStarted", 2),
        ("CanaryStarted", 2),
        ("Promoted", 2),
    ]
    assert {n["loop"]["name"] for n in generic} == {"churn"} and len({n["id"] for n in generic}) == 6
    assert generic[4]["canary"] == {"version": 2, "weight": 50} and generic[4]["currentVersion"] == 1
    assert generic[5]["phase"] in ("Monitoring", "Breached") and generic[5]["currentVersion"] == 2
    slack = receivers.got["http://chat-relay.ops.svc:8080/slack"]
    assert [n["text"].split(" version ")[0] for n in slack] == [":information_source: *team-a/churn* Promoted:"] * 2


def test_a_receiver_failing_for_a_while_still_gets_the_whole_story_in_order() -> None:
    bed = Harness(FakeKube(), FakePrometheus())
    bed.prometheus.answer("accuracy_of", [({"model": "churn", "namespace": "team-a"}, 0.95)])
    receivers = Receivers(failures=3)
    notifier = bed.engine.notifier
    notifier._send, notifier._sleep = receivers.send, no_sleep
    story(bed, HOOKS[:1])
    deliver(bed)
    reasons = [n["reason"] for n in receivers.got["https://hooks.example.com/mfl"]]
    assert reasons == STORY
    assert receivers.tries["https://hooks.example.com/mfl"] == 6 + 3


def test_a_loop_without_notifications_queues_nothing() -> None:
    bed = Harness(FakeKube(), FakePrometheus())
    bed.prometheus.answer("accuracy_of", [({"model": "churn", "namespace": "team-a"}, 0.95)])
    story(bed, [])
    assert bed.engine.notifier.channels == {}


async def no_sleep(seconds: float) -> None:
    await asyncio.sleep(0)


def test_the_engine_run_delivers_on_its_own_and_stops_the_notifier_with_it() -> None:
    bed = Harness(FakeKube(), FakePrometheus())
    receivers = Receivers()
    bed.engine.notifier._send = receivers.send
    bed.apply(loop(notifications=HOOKS[:1]))  # a new loop: its first retraining starts at once

    async def scenario() -> None:
        run = asyncio.create_task(bed.engine.run())
        for _ in range(500):
            if receivers.got:
                break
            await asyncio.sleep(0.01)
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
        await bed.engine.settle()

    bed.runner.run(scenario())
    assert [n["reason"] for n in receivers.got["https://hooks.example.com/mfl"]] == ["RetrainingStarted"]
    assert bed.engine.notifier._workers == {}
