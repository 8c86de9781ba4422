"""Notifications (feedbackloop/notify.py): the payloads, the backoff, the queue bounds, the spec's rules, and
delivery to a real HTTP receiver on 127.0.0.1 that fails for a while."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from pydantic import ValidationError

from feedbackloop.core import api
from feedbackloop.core.api import Webhook, describe_validation_error, validate_spec
from feedbackloop.core.phases import Event
from feedbackloop.runtime import metrics, notify
from feedbackloop.runtime.notify import Notifier

LOOP = {"metadata": {"namespace": "team-a", "name": "churn", "uid": "uid-1"}}
T = 1_800_000_000.0
BREACH = Event("Warning", "BreachStarted", "accuracy 0.61 < 0.8 for 5m")


def counted(result: str) -> float:
    return metrics.NOTIFICATIONS.labels(result)._value.get()


# --- payloads ---------------------------------------------------------------------------------------


def test_the_generic_payload_names_the_loop_the_event_and_the_versions() -> None:
    status = {"phase": "Canary", "currentVersion": 3, "rollout": {"version": 4, "weight": 20}}
    payload = notify.generic_payload(LOOP, Event("Normal", "CanaryStarted", "version 4 at 20%"), status, T)
    assert payload == {
        "apiVersion": "feedbackloop.dev/v1alpha1",
        "id": payload["id"],
        "timestamp": "2027-01-15T08:00:00Z",
        "loop": {"namespace": "team-a", "name": "churn", "uid": "uid-1"},
        "type": "Normal",
        "reason": "CanaryStarted",
        "message": "version 4 at 20%",
        "phase": "Canary",
        "version": 4,
        "currentVersion": 3,
        "canary": {"version": 4, "weight": 20},
        "retrainingVersion": None,
    }
    assert len(payload["id"]) == 32


def test_the_id_is_stable_for_one_event_and_differs_for_the_next() -> None:
    first = notify.generic_payload(LOOP, BREACH, {}, T)["id"]
    assert notify.generic_payload(LOOP, BREACH, {"phase": "Breached"}, T)["id"] == first  # a retry, a 2nd receiver
    assert notify.generic_payload(LOOP, BREACH, {}, T + 60)["id"] != first  # the next breach, same words
    other = {"metadata": {**LOOP["metadata"], "uid": "uid-2"}}
    assert notify.generic_payload(other, BREACH, {}, T)["id"] != first  # a loop of the same name, recreated
    assert notify.generic_payload(LOOP, Event("Normal", "Recovered", BREACH.message), {}, T)["id"] != first


@pytest.mark.parametrize(
    ("reason", "status", "version"),
    [
        ("Promoted", {"currentVersion": 5, "history": [{"version": 4}, {"version": 5}]}, 5),
        ("RolledBack", {"currentVersion": 3, "history": [{"version": 4}]}, 4),
        ("CandidateRejected", {"currentVersion": 3, "history": [{"version": 6}]}, 6),
        ("RetrainingFailed", {"currentVersion": 3, "history": [{"version": 7}]}, 7),
        ("RetrainingStarted", {"currentVersion": 3, "retraining": {"version": 4}, "history": [{"version": 2}]}, 4),
        ("CanaryStarted", {"currentVersion": 3, "rollout": {"version": 4}}, 4),
        ("BreachStarted", {"currentVersion": 3, "retraining": {"version": 4}, "history": [{"version": 2}]}, 3),
        ("Recovered", {"currentVersion": 3, "rollout": {"version": 4}}, 3),
        ("CanaryStep", {"currentVersion": 3, "rollout": {"version": 4}}, 4),
        ("RetrainSkipped", {"currentVersion": 3}, 3),
        ("BreachStarted", {}, None),
    ],
)
def test_the_version_an_event_is_about(reason: str, status: dict[str, Any], version: int | None) -> None:
    assert notify.subject_version(reason, status) == version


def test_the_slack_payload_is_one_escaped_text() -> None:
    generic = notify.generic_payload(LOOP, Event("Warning", "RolledBack", "version 4: a < b & c > d"), {}, T)
    assert notify.slack_payload(generic) == {
        "text": ":warning: *team-a/churn* RolledBack: version 4: a &lt; b &amp; c &gt; d"
    }
    normal = notify.generic_payload(LOOP, Event("Normal", "Promoted", "version 4"), {}, T)
    assert notify.slack_payload(normal)["text"].startswith(":information_source: *team-a/churn* Promoted")


def test_render_follows_the_format() -> None:
    generic = notify.generic_payload(LOOP, BREACH, {}, T)
    assert json.loads(notify.render(Webhook(url="https://h.example/x"), generic)) == generic
    assert set(json.loads(notify.render(Webhook(url="https://h.example/x", format="slack"), generic))) == {"text"}


# --- backoff ----------------------------------------------------------------------------------------


def test_backoff_doubles_up_to_the_cap_and_jitters_within_half_to_full() -> None:
    ceilings = [notify.backoff_seconds(attempt, 1.0) for attempt in range(1, 10)]
    assert ceilings == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert notify.backoff_seconds(3, 0.0) == 2.0 and notify.backoff_seconds(3, 0.5) == 3.0
    assert notify.backoff_seconds(10_000, 0.0) == 30.0  # no overflow for a receiver down for days


# --- the spec ---------------------------------------------------------------------------------------


def spec_with(*webhooks: dict[str, Any]) -> dict[str, Any]:
    return {
        "model": {"name": "churn", "storage": {"hostPath": {"path": "/x"}}},
        "monitoring": {"prometheus": {"url": "http://prometheus:9090"}},
        "notifications": list(webhooks),
    }


def test_a_webhook_defaults_to_the_important_events_in_the_generic_format() -> None:
    spec = validate_spec(spec_with({"url": "https://hooks.example.com/mfl"}))
    assert spec.notifications[0].events == [
        "BreachStarted",
        "Recovered",
        "RetrainingStarted",
        "RetrainingFailed",
        "CandidateRejected",
        "CanaryStarted",
        "Promoted",
        "RolledBack",
    ]
    assert spec.notifications[0].format == "generic"
    assert validate_spec(spec_with()).notifications == []


@pytest.mark.parametrize(
    "url",
    [
        "http://receiver.team-a.svc:8080/hook",
        "http://receiver.team-a.svc.cluster.local/hook",
        "http://10.245.0.1:9000/",
        "https://hooks.slack.com/services/T/B/X",
    ],
)
def test_http_only_inside_the_cluster(url: str) -> None:
    assert validate_spec(spec_with({"url": url})).notifications[0].url == url


@pytest.mark.parametrize(
    "url",
    [
        "http://hooks.example.com/x",
        "http://8.8.8.8/x",
        "http://169.254.169.254/latest",
        "http://127.0.0.1:9000/",
        "http://0.0.0.0:80/",
        "http://svc.example.com/x",
        "https:///x",
        "ftp://x.svc/",
        "https://h.example.com:99999/",
    ],
)
def test_other_urls_are_refused_naming_the_field(url: str) -> None:
    with pytest.raises(ValidationError) as error:
        validate_spec(spec_with({"url": "https://ok.example.com"}, {"url": url}))
    assert "spec.notifications.1.url" in describe_validation_error(error.value)


def test_unknown_reasons_and_too_many_webhooks_are_refused() -> None:
    with pytest.raises(ValidationError, match="events"):
        validate_spec(spec_with({"url": "https://ok.example.com", "events": ["Promotd"]}))
    with pytest.raises(ValidationError, match="notifications"):
        validate_spec(spec_with(*[{"url": f"https://h{i}.example.com"} for i in range(6)]))


def test_the_crd_lists_the_reasons_a_webhook_may_ask_for() -> None:
    from feedbackloop import crdgen

    schema = crdgen.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    webhook = schema["properties"]["spec"]["properties"]["notifications"]["items"]
    assert set(webhook["properties"]["events"]["items"]["enum"]) == set(api.NotificationReason.__args__)
    assert webhook["properties"]["format"]["enum"] == ["generic", "slack", "teams", "cloudevents"]


# --- queueing and delivery with a fake sender ------------------------------------------------------


class FakeReceiver:
    """Fails the first `failures` tries, then answers 2xx; records (url, id) of every try."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.tries: list[tuple[str, str]] = []
        self.bodies: list[dict[str, Any]] = []

    async def send(self, url: str, body: bytes, headers: dict[str, str], timeout: float) -> int:
        self.tries.append((url, headers["X-MFL-Notification-Id"]))
        if len(self.tries) <= self.failures:
            return 503
        self.bodies.append(json.loads(body))
        return 200


class NoSleep:
    def __init__(self) -> None:
        self.slept: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.slept.append(seconds)
        await asyncio.sleep(0)


def events(count: int) -> list[Event]:
    return [Event("Normal", "Promoted", f"version {n}") for n in range(count)]


async def deliver(notifier: Notifier, timeout: float = 10) -> None:
    task = asyncio.create_task(notifier.run())
    try:
        await asyncio.wait_for(notifier.idle(), timeout)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_only_the_events_a_webhook_asks_for_are_queued() -> None:
    notifier = Notifier(FakeReceiver().send)
    hooks = [Webhook(url="https://a.example"), Webhook(url="https://b.example", events=["Promoted"])]
    notifier.publish(LOOP, hooks, BREACH, {})
    notifier.publish(LOOP, hooks, Event("Normal", "CanaryStep", "50%"), {})  # not a default reason
    queued = {url: len(channel.queue) for (_, url), channel in notifier.channels.items()}
    assert queued == {"https://a.example": 1}


def test_a_full_queue_drops_its_oldest_and_counts_it() -> None:
    notifier = Notifier(FakeReceiver().send, queue_limit=3)
    before = counted("dropped")
    for event in events(5):
        notifier.publish(LOOP, [Webhook(url="https://a.example")], event, {})
    (channel,) = notifier.channels.values()
    assert [json.loads(n.body)["message"] for n in channel.queue] == ["version 2", "version 3", "version 4"]
    assert counted("dropped") - before == 2


def test_a_queue_overflowing_while_its_head_is_in_flight_loses_only_what_it_dropped() -> None:
    receiver = FakeReceiver()
    hook = [Webhook(url="https://a.example")]
    first, second, third = events(3)

    async def send(url: str, body: bytes, headers: dict[str, str], timeout: float) -> int:
        if not receiver.tries:  # while the first is in flight, two more arrive: the queue of 2 drops the first
            notifier.publish(LOOP, hook, second, {})
            notifier.publish(LOOP, hook, third, {})
        return await receiver.send(url, body, headers, timeout)

    notifier = Notifier(send, queue_limit=2)
    notifier.publish(LOOP, hook, first, {})
    asyncio.run(deliver(notifier))
    assert [body["message"] for body in receiver.bodies] == ["version 0", "version 1", "version 2"]


def test_failures_are_retried_with_backoff_in_order_until_delivered() -> None:
    receiver, sleep = FakeReceiver(failures=3), NoSleep()
    notifier = Notifier(receiver.send, sleep=sleep, rng=lambda: 1.0)
    before = {result: counted(result) for result in ("delivered", "retried")}
    for event in events(3):
        notifier.publish(LOOP, [Webhook(url="https://a.example")], event, {})
    asyncio.run(deliver(notifier))
    assert [body["message"] for body in receiver.bodies] == ["version 0", "version 1", "version 2"]
    assert sleep.slept == [1.0, 2.0, 4.0]  # three failures of the first, then each at once
    assert [i for _, i in receiver.tries[:4]] == [receiver.bodies[0]["id"]] * 4  # the same id on every retry
    assert counted("delivered") - before["delivered"] == 3 and counted("retried") - before["retried"] == 3
    assert notifier.channels == {}  # nothing left behind for a quiet loop


def test_a_notification_too_old_is_dropped_and_the_next_one_goes() -> None:
    clock = [T]
    receiver = FakeReceiver(failures=2)

    async def aging_sleep(seconds: float) -> None:
        clock[0] += notify.MAX_AGE_SECONDS + 1  # the receiver was down for over a day
        await asyncio.sleep(0)

    notifier = Notifier(receiver.send, clock=lambda: clock[0], sleep=aging_sleep)
    for event in events(2):
        notifier.publish(LOOP, [Webhook(url="https://a.example")], event, {})
    before = counted("dropped")
    asyncio.run(deliver(notifier))
    assert [body["message"] for body in receiver.bodies] == ["version 1"] and counted("dropped") - before == 1


def test_a_receiver_that_never_answers_delays_no_other_receiver() -> None:
    delivered: list[str] = []
    release = asyncio.Event()

    async def send(url: str, body: bytes, headers: dict[str, str], timeout: float) -> int:
        if "black-hole" in url:
            await release.wait()  # longer than any timeout
        delivered.append(url)
        return 200

    async def scenario() -> None:
        notifier = Notifier(send, timeout=0.2, sleep=NoSleep())
        hooks = [Webhook(url="https://black-hole.example"), Webhook(url="https://ok.example")]
        task = asyncio.create_task(notifier.run())
        started = time.monotonic()
        for event in events(3):
            notifier.publish(LOOP, hooks, event, {})
        while delivered.count("https://ok.example") < 3:
            await asyncio.sleep(0.01)
        assert time.monotonic() - started < 0.5  # not after the black hole's timeout
        assert "https://black-hole.example" not in delivered
        release.set()
        await asyncio.wait_for(notifier.idle(), 5)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(scenario())
    assert delivered.count("https://black-hole.example") >= 3  # retried after its timeouts, then delivered


def test_stopping_the_notifier_stops_its_deliveries() -> None:
    async def never(url: str, body: bytes, headers: dict[str, str], timeout: float) -> int:
        await asyncio.sleep(3600)
        return 200

    async def scenario() -> None:
        notifier = Notifier(never)
        notifier.publish(LOOP, [Webhook(url="https://a.example")], BREACH, {})
        task = asyncio.create_task(notifier.run())
        await asyncio.sleep(0.05)
        assert notifier._workers
        task.cancel()
        await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 2)
        assert not notifier._workers

    asyncio.run(scenario())


def test_what_a_stopped_notifier_left_queued_goes_out_when_it_runs_again() -> None:
    receiver = FakeReceiver()
    hold = asyncio.Event()

    async def send(url: str, body: bytes, headers: dict[str, str], timeout: float) -> int:
        await hold.wait()  # the first run stops while its try is in flight
        return await receiver.send(url, body, headers, timeout)

    async def scenario() -> None:
        notifier = Notifier(send, sleep=NoSleep())
        notifier.publish(LOOP, [Webhook(url="https://a.example")], BREACH, {})
        first = asyncio.create_task(notifier.run())
        await asyncio.sleep(0.05)
        first.cancel()  # leadership lost
        await asyncio.gather(first, return_exceptions=True)
        assert receiver.bodies == [] and notifier.channels
        hold.set()
        await deliver(notifier)  # leadership won back: nothing new published, the queue goes out anyway

    asyncio.run(scenario())
    assert [body["reason"] for body in receiver.bodies] == ["BreachStarted"]


# --- a real HTTP receiver ---------------------------------------------------------------------------


class Receiver:
    """An HTTP server on 127.0.0.1 that answers 500 to its first `failures` requests, and dedups by id. Loopback is
    no receiver's address a spec may name, nor one the egress policy allows by default: a test using it takes
    the `loopback_receivers` fixture and builds its Webhook with `Webhook.model_construct`."""

    def __init__(self, failures: int = 0, slow_first: float = 0.0) -> None:
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server API
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with receiver.lock:
                    receiver.requests.append(body)
                    receiver.headers.append(dict(self.headers))
                    count = len(receiver.requests)
                if count == 1 and slow_first:
                    time.sleep(slow_first)  # the 2xx comes after the operator stopped waiting
                self.send_response(500 if count <= failures else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def unique(self) -> dict[str, dict[str, Any]]:
        """What a receiver keeps after dropping repeats by id (first copy wins)."""
        kept: dict[str, dict[str, Any]] = {}
        for body in self.requests:
            kept.setdefault(body["id"], body)
        return kept

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def short_sleep() -> NoSleep:
    return NoSleep()


def test_a_real_receiver_failing_for_a_while_gets_every_notification_once_by_id(
    short_sleep: NoSleep, loopback_receivers: None
) -> None:
    receiver = Receiver(failures=4)
    try:
        notifier = Notifier(sleep=short_sleep, timeout=5)
        published = []
        for n, event in enumerate(events(5)):
            status = {"currentVersion": n, "history": [{"version": n}]}
            notifier.publish(LOOP, [Webhook.model_construct(url=receiver.url)], event, status)
            published.append(next(iter(notifier.channels.values())).queue[-1].id)
        asyncio.run(deliver(notifier))
    finally:
        receiver.close()
    kept = receiver.unique()
    assert list(kept) == published  # every one, in order, under the id it was published with
    assert [body["version"] for body in kept.values()] == [0, 1, 2, 3, 4]
    assert len(receiver.requests) == 5 + 4  # at least once: the four 500s were answered by retries
    assert {body["id"] for body in receiver.requests[:5]} == {published[0]}  # the head retried, same id
    assert all(h["Content-Type"] == "application/json" for h in receiver.headers)
    assert [h["X-MFL-Notification-Id"] for h in receiver.headers] == [b["id"] for b in receiver.requests]
    assert short_sleep.slept and all(0.5 <= s <= 60 for s in short_sleep.slept)


def test_a_2xx_lost_to_the_timeout_is_sent_again_under_the_same_id(
    short_sleep: NoSleep, loopback_receivers: None
) -> None:
    receiver = Receiver(slow_first=1.0)
    try:
        notifier = Notifier(sleep=short_sleep, timeout=0.3)
        notifier.publish(LOOP, [Webhook.model_construct(url=receiver.url, format="slack")], BREACH, {})
        asyncio.run(deliver(notifier))
    finally:
        receiver.close()
    assert len(receiver.requests) >= 2 and receiver.requests[0] == receiver.requests[-1]
    assert list(receiver.requests[0]) == ["text"]
    assert len({h["X-MFL-Notification-Id"] for h in receiver.headers}) == 1  # the receiver can drop the repeat
