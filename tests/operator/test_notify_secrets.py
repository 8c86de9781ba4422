"""Receivers named by Secrets (urlFrom, headers[].valueFrom), the Teams and CloudEvents formats, and the retries
run by tenacity: what is sent, what the spec accepts, how a Secret is read (the loop's namespace only, at each
try, never shown), what an unusable Secret does (a Warning Event, the notification waits), and the whole path
through the engine to a real aiohttp receiver whose URL lives only in a Secret."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.test_utils import TestServer
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from feedbackloop.core import api
from feedbackloop.core.api import ConfirmPromotion, Webhook, describe_validation_error, validate_spec
from feedbackloop.core.phases import Event
from feedbackloop.runtime import notify
from feedbackloop.runtime.notify import Notifier, SecretUnusable

from .fake_kube import FakeKube, FakePrometheus, Harness
from .test_confirm_promotion import Approver, arms
from .test_engine_cycle import T0, loop, trained
from .test_notify import BREACH, LOOP, FakeReceiver, NoSleep, T, deliver, spec_with

URL_FROM = {"urlFrom": {"secretKeyRef": {"name": "hooks", "key": "url"}}}
TOKEN_FROM = {"name": "Authorization", "valueFrom": {"secretKeyRef": {"name": "hooks", "key": "token"}}}


# --- payloads: Teams and CloudEvents ----------------------------------------------------------------


def test_the_teams_payload_is_a_message_with_one_adaptive_card() -> None:
    status = {"phase": "Canary", "currentVersion": 3, "rollout": {"version": 4, "weight": 20}}
    generic = notify.generic_payload(LOOP, Event("Warning", "RolledBack", "version 4: errors"), status, T)
    payload = notify.teams_payload(generic)
    assert payload["type"] == "message" and len(payload["attachments"]) == 1
    attachment = payload["attachments"][0]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive" and attachment["contentUrl"] is None
    card = attachment["content"]
    assert card["type"] == "AdaptiveCard" and card["version"] == "1.4"
    assert card["$schema"] == "http://adaptivecards.io/schemas/adaptive-card.json"
    title, message, facts, footer = card["body"]
    assert title == {
        "type": "TextBlock",
        "text": "team-a/churn: RolledBack",
        "weight": "Bolder",
        "size": "Medium",
        "color": "Attention",
        "wrap": True,
    }
    assert message == {"type": "TextBlock", "text": "version 4: errors", "wrap": True}
    assert facts["type"] == "FactSet"
    assert {f["title"]: f["value"] for f in facts["facts"]} == {
        "Phase": "Canary",
        "Version": "4",
        "Serving": "3",
        "Canary": "version 4 at 20%",
    }
    assert generic["id"] in footer["text"] and generic["timestamp"] in footer["text"]
    quiet = notify.teams_payload(notify.generic_payload(LOOP, Event("Normal", "Promoted", "v"), {}, T))
    card = quiet["attachments"][0]["content"]
    assert card["body"][0]["color"] == "Default"
    assert all(isinstance(f["value"], str) and f["value"] for f in card["body"][2]["facts"])  # Teams needs text


def test_the_cloudevent_is_structured_mode_json_with_the_notification_id() -> None:
    generic = notify.generic_payload(LOOP, BREACH, {"phase": "Breached", "currentVersion": 3}, T)
    event = notify.cloudevent(generic)
    assert event == {
        "specversion": "1.0",
        "id": generic["id"],
        "source": "/apis/feedbackloop.dev/v1alpha1/namespaces/team-a/modelfeedbackloops/churn",
        "type": "dev.feedbackloop.BreachStarted",
        "subject": "team-a/churn",
        "time": "2027-01-15T08:00:00Z",
        "datacontenttype": "application/json",
        "data": generic,
    }
    # CloudEvents 1.0: attribute names are lower-case letters or digits, at most 20 characters; the required
    # attributes are non-empty strings
    assert all(re.fullmatch(r"[a-z0-9]{1,20}", name) for name in event)
    assert all(isinstance(event[a], str) and event[a] for a in ("id", "source", "specversion", "type"))
    hook = Webhook(url="https://events.example.com/", format="cloudevents")
    assert notify.content_type(hook) == "application/cloudevents+json"
    assert json.loads(notify.render(hook, generic)) == event


def test_each_format_is_sent_with_its_content_type() -> None:
    receiver, seen = FakeReceiver(), []

    async def send(url: str, body: bytes, headers: dict[str, str], timeout: float) -> int:
        seen.append((url, headers["Content-Type"], set(json.loads(body))))
        return await receiver.send(url, body, headers, timeout)

    notifier = Notifier(send)
    hooks = [Webhook(url=f"https://{f}.example/", format=f) for f in ("generic", "slack", "teams", "cloudevents")]
    notifier.publish(LOOP, hooks, BREACH, {})
    asyncio.run(deliver(notifier))
    assert sorted(seen) == [
        ("https://cloudevents.example/", "application/cloudevents+json",
         {"specversion", "id", "source", "type", "subject", "time", "datacontenttype", "data"}),
        ("https://generic.example/", "application/json", set(notify.generic_payload(LOOP, BREACH, {}, T))),
        ("https://slack.example/", "application/json", {"text"}),
        ("https://teams.example/", "application/json", {"type", "attachments"}),
    ]  # fmt: skip


# --- the spec ---------------------------------------------------------------------------------------


def test_a_webhook_takes_its_url_from_a_secret_and_its_headers_from_values_or_secrets() -> None:
    hook = {**URL_FROM, "format": "teams", "headers": [TOKEN_FROM, {"name": "X-Team", "value": "a"}]}
    (webhook,) = validate_spec(spec_with(hook)).notifications
    assert webhook.url is None and webhook.url_from is not None
    assert webhook.target() == "secret:hooks/url" and webhook.shown() == "the URL in Secret hooks key url"
    assert [h.name for h in webhook.headers] == ["Authorization", "X-Team"]
    spec = spec_with()
    spec["rollout"] = {"confirmPromotion": {**URL_FROM, "headers": [TOKEN_FROM]}}
    gate = validate_spec(spec).rollout.confirm_promotion
    assert gate is not None and gate.shown() == "the URL in Secret hooks key url"


@pytest.mark.parametrize(
    ("hook", "says"),
    [
        ({}, "exactly one of url or urlFrom"),
        ({"url": "https://h.example/", **URL_FROM}, "exactly one of url or urlFrom"),
        ({"urlFrom": {"secretKeyRef": {"name": "hooks", "key": "url", "namespace": "other"}}}, "namespace"),
        ({"urlFrom": {"secretKeyRef": {"name": "hooks"}}}, "key"),
        ({**URL_FROM, "headers": [{"name": "Authorization"}]}, "exactly one of value or valueFrom"),
        ({**URL_FROM, "headers": [{**TOKEN_FROM, "value": "x"}]}, "exactly one of value or valueFrom"),
        ({**URL_FROM, "headers": [{"name": "Content-Type", "value": "text/plain"}]}, "set by the operator"),
        ({**URL_FROM, "headers": [{"name": "x-mfl-notification-id", "value": "1"}]}, "set by the operator"),
        ({**URL_FROM, "headers": [{"name": "X-A", "value": "1"}, {"name": "x-a", "value": "2"}]}, "at most once"),
        ({**URL_FROM, "headers": [{"name": "X-A", "value": "1\r\nHost: evil"}]}, "value"),
        ({**URL_FROM, "headers": [{"name": "Bad Name", "value": "1"}]}, "name"),
        ({**URL_FROM, "format": "msteams"}, "format"),
    ],
)
def test_receivers_that_are_refused_naming_the_field(hook: dict[str, Any], says: str) -> None:
    with pytest.raises(ValidationError) as error:
        validate_spec(spec_with({"url": "https://ok.example.com"}, hook))
    text = describe_validation_error(error.value)
    assert "spec.notifications.1" in text and says in text, text


def test_a_confirm_promotion_needs_exactly_one_of_url_and_url_from() -> None:
    with pytest.raises(ValidationError, match="exactly one of url or urlFrom"):
        ConfirmPromotion.model_validate({"url": "https://a.example/", **URL_FROM})
    with pytest.raises(ValidationError, match="exactly one of url or urlFrom"):
        ConfirmPromotion.model_validate({})


def test_the_crd_carries_the_secret_references_and_the_formats() -> None:
    from feedbackloop import crdgen

    spec = crdgen.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    for receiver in (spec["notifications"]["items"], spec["rollout"]["properties"]["confirmPromotion"]):
        properties = receiver["properties"]
        assert "url" not in receiver.get("required", [])
        assert properties["urlFrom"]["properties"]["secretKeyRef"]["required"] == ["name", "key"]
        assert "namespace" not in properties["urlFrom"]["properties"]["secretKeyRef"]["properties"]
        header = properties["headers"]["items"]["properties"]
        assert header["valueFrom"]["properties"]["secretKeyRef"]["required"] == ["name", "key"]
    assert spec["notifications"]["items"]["properties"]["format"]["enum"] == [
        "generic",
        "slack",
        "teams",
        "cloudevents",
    ]


# --- reading the Secrets -----------------------------------------------------------------------------


class Secrets:
    """A SecretReader over `{(namespace, name): ({key: value}, annotations)}`; records every read."""

    def __init__(self, held: dict[tuple[str, str], tuple[dict[str, str], dict[str, str]]]) -> None:
        self.held = held
        self.reads: list[tuple[str, str, str]] = []

    async def read(self, namespace: str, name: str, key: str) -> tuple[str, dict[str, str]]:
        self.reads.append((namespace, name, key))
        if (namespace, name) not in self.held:
            raise ApiException(status=404, reason="Not Found")
        data, annotations = self.held[(namespace, name)]
        if key not in data:
            raise KeyError(key)
        return data[key], annotations


SLACK = "https://hooks.slack.com/services/T000/B000/XXXXSECRETXXXX"
BOUND = {api.WEBHOOK_HOSTS: "hooks.slack.com"}


def webhook(**fields: Any) -> Webhook:
    return Webhook.model_validate({**URL_FROM, **fields})


def test_the_url_and_header_are_read_from_the_loops_own_namespace() -> None:
    secrets = Secrets({("team-a", "hooks"): ({"url": f" {SLACK}\n", "token": "Bearer t0k3n"}, BOUND)})
    hook = webhook(headers=[TOKEN_FROM, {"name": "X-Team", "value": "a"}])
    url, headers = asyncio.run(notify.resolve(hook, "team-a", secrets.read))
    assert url == SLACK and headers == {"Authorization": "Bearer t0k3n", "X-Team": "a"}
    assert {namespace for namespace, _, _ in secrets.reads} == {"team-a"}
    with pytest.raises(SecretUnusable, match="Secret team-b/hooks"):  # another tenant's loop: its own namespace
        asyncio.run(notify.resolve(hook, "team-b", secrets.read))


@pytest.mark.parametrize(
    ("held", "hook", "says"),
    [
        ({}, {}, "Secret team-a/hooks (urlFrom) does not exist: create it with the key url"),
        ({"other": "x"}, {}, "Secret team-a/hooks has no key url (urlFrom): add it"),
        ({"url": "http://169.254.169.254/latest/XXXXSECRETXXXX"}, {}, "holds no URL a receiver may have"),
        ({"url": "http://hooks.example.com/XXXXSECRETXXXX"}, {}, "holds no URL a receiver may have"),
        ({"url": "not a url XXXXSECRETXXXX"}, {}, "holds no URL a receiver may have"),
        ({"url": SLACK}, {"headers": [TOKEN_FROM]}, "Secret team-a/hooks has no key token (header Authorization)"),
        ({"url": SLACK, "token": "Bearer XXXXSECRETXXXX\r\nX-Evil: 1"}, {"headers": [TOKEN_FROM]}, "no header value"),
    ],
)
def test_an_unusable_secret_is_named_with_its_key_never_with_its_value(
    held: dict[str, str], hook: dict[str, Any], says: str
) -> None:
    secrets = Secrets({("team-a", "hooks"): (held, BOUND)} if held else {})
    with pytest.raises(SecretUnusable) as error:
        asyncio.run(notify.resolve(webhook(**hook), "team-a", secrets.read))
    assert says in str(error.value) and "XXXXSECRETXXXX" not in str(error.value)


def test_a_header_from_a_secret_goes_only_to_a_host_the_secret_names() -> None:
    unbound = Secrets({("team-a", "hooks"): ({"url": SLACK, "token": "t0k3n"}, {})})
    with pytest.raises(SecretUnusable) as error:
        asyncio.run(notify.resolve(webhook(headers=[TOKEN_FROM]), "team-a", unbound.read))
    assert str(error.value) == (
        "Secret team-a/hooks (key token, a header's value) does not say where its values may go, not "
        "hooks.slack.com: annotate it feedbackloop.dev/webhook-hosts=hooks.slack.com"
    )
    elsewhere = Secrets({("team-a", "hooks"): ({"token": "t0k3n"}, {api.WEBHOOK_HOSTS: "ci.example.com"})})
    spec_url = Webhook.model_validate({"url": "https://attacker.example/", "headers": [TOKEN_FROM]})
    with pytest.raises(SecretUnusable, match="allows its values only to ci.example.com, not attacker.example"):
        asyncio.run(notify.resolve(spec_url, "team-a", elsewhere.read))


# --- the Notifier with a Secret ------------------------------------------------------------------------


def test_a_missing_secret_holds_the_notification_says_so_once_then_it_goes_out_when_created() -> None:
    kube, receiver = FakeKube(), FakeReceiver()
    body = {"apiVersion": "feedbackloop.dev/v1alpha1", "kind": "ModelFeedbackLoop", **LOOP}

    class CreateAfterThree(NoSleep):
        async def __call__(self, seconds: float) -> None:
            await super().__call__(seconds)
            if len(self.slept) == 3:
                kube.secrets["team-a/hooks"] = {"url": SLACK}

    sleep = CreateAfterThree()
    notifier = Notifier(receiver.send, kube=kube, sleep=sleep, rng=lambda: 1.0)
    notifier.publish(body, [webhook()], BREACH, {})
    asyncio.run(deliver(notifier))
    assert receiver.tries == [(SLACK, receiver.bodies[0]["id"])]  # nothing sent before the Secret existed
    assert sleep.slept == [1.0, 2.0, 4.0]  # retried with the backoff, never dropped
    assert kube.event_messages == [  # the fake API answers a missing Secret as one without the key
        "NotificationSecretUnusable: notifications to the URL in Secret hooks key url wait: Secret team-a/hooks "
        "has no key url (urlFrom): add it"
    ]  # once, not at each of the three tries
    assert ("event", "Warning NotificationSecretUnusable") in kube.actions


def test_the_secret_is_read_at_each_try_so_a_rotated_url_is_used_at_once() -> None:
    kube, receiver = FakeKube(), FakeReceiver()
    kube.secrets["team-a/hooks"] = {"url": "https://old.example.com/x"}
    notifier = Notifier(receiver.send, kube=kube)

    async def scenario() -> None:
        task = asyncio.create_task(notifier.run())
        notifier.publish(LOOP, [webhook()], BREACH, {})
        await asyncio.wait_for(notifier.idle(), 5)
        kube.secrets["team-a/hooks"] = {"url": "https://new.example.com/x"}  # rotated
        notifier.publish(LOOP, [webhook()], Event("Normal", "Recovered", "ok"), {})
        await asyncio.wait_for(notifier.idle(), 5)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(scenario())
    assert [url for url, _ in receiver.tries] == ["https://old.example.com/x", "https://new.example.com/x"]


def test_a_confirm_promotion_url_from_a_secret_is_asked_with_its_headers() -> None:
    secrets = Secrets({("team-a", "gate"): ({"url": SLACK, "token": "Bearer t"}, BOUND)})
    gate = ConfirmPromotion.model_validate(
        {"urlFrom": {"secretKeyRef": {"name": "gate", "key": "url"}},
         "headers": [{"name": "Authorization", "valueFrom": {"secretKeyRef": {"name": "gate", "key": "token"}}}]}
    )  # fmt: skip
    asked: list[tuple[str, dict[str, str]]] = []

    async def send(url: str, body: bytes, headers: dict[str, str], timeout: float) -> int:
        asked.append((url, headers))
        return 204

    async def ask() -> bool:
        url, headers = await notify.resolve(gate, "team-a", secrets.read)
        return await notify.confirm_promotion(url, {"version": 2}, headers, send=send, shown=gate.shown())

    assert asyncio.run(ask()) is True
    assert asked == [
        (SLACK, {"Authorization": "Bearer t", "Content-Type": "application/json", "User-Agent": "mfl-operator"})
    ]


# --- Done when: a webhook whose URL lives only in a Secret delivers; spec and status never contain it ------


class ClusterDNS(AbstractResolver):
    """Resolves the receiver's Service name to the aiohttp test server on 127.0.0.1 (as the cluster's DNS would
    resolve it to its ClusterIP); the egress policy still judges the address (loopback: allowed by the test's
    admin only, `loopback_receivers`)."""

    async def resolve(self, host: str, port: int = 0, family: Any = 0) -> list[ResolveResult]:
        assert host == "receiver.team-a.svc", host
        return [{"hostname": host, "host": "127.0.0.1", "port": port, "family": 2, "proto": 6, "flags": 0}]

    async def close(self) -> None:
        return None


@pytest.fixture
def cluster_dns(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(aiohttp, "ThreadedResolver", ClusterDNS)  # EgressResolver's inner resolver
    yield


class AiohttpReceiver:
    """A real HTTP receiver (aiohttp's TestServer) recording each POST's headers and JSON body."""

    def __init__(self) -> None:
        self.got: list[tuple[dict[str, str], dict[str, Any]]] = []
        app = web.Application()
        app.router.add_post("/services/{token}", self.post)
        self.server = TestServer(app, host="127.0.0.1")

    async def post(self, request: web.Request) -> web.Response:
        self.got.append((dict(request.headers), json.loads(await request.read())))
        return web.Response(status=204)


def test_a_webhook_whose_url_lives_only_in_a_secret_delivers_and_spec_status_events_logs_never_hold_it(
    loopback_receivers: None, cluster_dns: None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    bed = Harness(FakeKube(), FakePrometheus())
    receiver = AiohttpReceiver()
    bed.runner.run(receiver.server.start_server())
    secret_path, token = "T0KEN-IN-THE-PATH", "Bearer s3cr3t-t0k3n"
    url = f"http://receiver.team-a.svc:{receiver.server.port}/services/{secret_path}"
    bed.kube.secrets["team-a/chat-webhook"] = {"url": url, "token": token}
    bed.kube.secret_annotations["team-a/chat-webhook"] = {api.WEBHOOK_HOSTS: "receiver.team-a.svc"}
    ref = {"name": "chat-webhook"}
    hook = {
        "urlFrom": {"secretKeyRef": {**ref, "key": "url"}},
        "headers": [{"name": "Authorization", "valueFrom": {"secretKeyRef": {**ref, "key": "token"}}}],
        "format": "cloudevents",
    }
    try:
        bed.apply(loop(notifications=[hook]))
        bed.cycle(T0)  # a new loop: its first retraining starts, RetrainingStarted is queued
        assert bed.status()["retraining"]["version"] == 1

        async def run_until_idle() -> None:
            task = asyncio.create_task(bed.engine.notifier.run())
            await asyncio.wait_for(bed.engine.notifier.idle(), 10)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

        bed.runner.run(run_until_idle())
    finally:
        bed.runner.run(receiver.server.close())
    assert len(receiver.got) == 1
    headers, event = receiver.got[0]
    assert headers["Content-Type"] == "application/cloudevents+json" and headers["Authorization"] == token
    assert event["type"] == "dev.feedbackloop.RetrainingStarted" and event["subject"] == "team-a/churn"
    assert headers["X-MFL-Notification-Id"] == event["id"] == event["data"]["id"]
    stored = json.dumps(bed.kube.loops["team-a/churn"])  # the spec and the status, as the API server holds them
    logged = [r.getMessage() for r in caplog.records if r.name.startswith("feedbackloop")]  # not the receiver's
    seen = [stored, *bed.kube.event_messages, *logged]
    for secret in (secret_path, token, "s3cr3t", url):
        assert not any(secret in text for text in seen), secret
    assert "chat-webhook" in stored  # the spec names the Secret, nothing more


def test_a_url_from_a_secret_is_judged_by_the_egress_policy_like_any_receivers(cluster_dns: None) -> None:
    """Without the admin's allowance, the name the Secret's URL holds resolves to loopback: never connected."""
    kube = FakeKube()
    kube.secrets["team-a/hooks"] = {"url": "http://receiver.team-a.svc:9/services/x"}
    refused: list[str] = []

    async def scenario() -> None:
        notifier = Notifier(kube=kube, sleep=NoSleep())
        original = notifier._try

        async def spy(notification: notify.Notification, url: str, headers: dict[str, str]) -> bool:
            delivered = await original(notification, url, headers)
            refused.append(url)
            return delivered

        notifier._try = spy  # type: ignore[method-assign]
        notifier.publish(LOOP, [webhook()], BREACH, {})
        task = asyncio.create_task(notifier.run())
        while len(refused) < 2:
            await asyncio.sleep(0.01)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    with pytest.raises(Exception) as connect:  # the same connector (egress_net) every receiver's POST goes through
        asyncio.run(notify.post_once("http://receiver.team-a.svc:9/services/x", b"{}", {}, 1.0))
    assert "127.0.0.1 is loopback" in str(connect.value)
    asyncio.run(asyncio.wait_for(scenario(), 10))
    assert refused[:2] == ["http://receiver.team-a.svc:9/services/x"] * 2  # tried, refused, retried: not delivered


# --- confirmPromotion through the engine ----------------------------------------------------------------

GATE_FROM = {
    "steps": [{"weight": 50, "pause": "30s"}],
    "analysis": {"interval": "10s", "minSamples": 50, "maxDuration": "5m", "latency": {"enabled": False}},
    "confirmPromotion": {"urlFrom": {"secretKeyRef": {"name": "approvals", "key": "url"}}},
}
GATE_URL = "http://approvals.ops.svc:8080/confirm/T0KEN-IN-THE-PATH"


def test_a_confirm_url_whose_secret_lacks_its_key_holds_the_canary_says_which_in_status_then_is_asked() -> None:

    approver = Approver([True])
    bed = Harness(FakeKube(), FakePrometheus())
    bed.engine.observer.confirm = approver.confirm
    bed.kube.secrets["team-a/approvals"] = {"other": "x"}
    bed.prometheus.answer("accuracy_of", [({"model": "churn", "namespace": "team-a"}, 0.95)])
    bed.apply(loop(rollout=GATE_FROM))
    bed.cycle(T0)
    bed.kube.finish_job("team-a/churn-train-v1", True, trained(1, 0.93))
    bed.cycle(T0 + 5)
    bed.apply(loop(annotations={"feedbackloop.dev/retrain": "r1"}, rollout=GATE_FROM))
    bed.cycle(T0 + 6)
    bed.kube.finish_job("team-a/churn-train-v2", True, trained(2, 0.95, champion=0.93))
    bed.cycle(T0 + 11)
    bed.prometheus.answer("mfl_feedback_total", arms(20000, 20000))
    bed.prometheus.answer("mfl_feedback_correct_total", arms(18800, 18800))
    bed.prometheus.answer("mfl_http_requests_total", arms(20000, 20000))
    bed.prometheus.answer('code=~"5.."', [])
    for look in range(1, 5):
        bed.cycle(T0 + 11 + 10 * look)
    status = bed.status()
    assert status["phase"] == "Canary" and status["currentVersion"] == 1 and approver.asked == []
    reconciling = next(c for c in status["conditions"] if c["type"] == "Reconciling")
    assert reconciling["reason"] == "AwaitingConfirmation"
    assert "waiting for the URL in Secret approvals key url to confirm" in reconciling["message"]
    assert "not asked: Secret team-a/approvals has no key url (urlFrom): add it" in reconciling["message"]
    bed.kube.secrets["team-a/approvals"] = {"url": GATE_URL}  # fixed: read at the next look, no restart
    bed.cycle(T0 + 11 + 10 * 5)
    assert [asked["url"] for asked in approver.asked] == [GATE_URL]
    assert bed.status()["currentVersion"] == 2
    assert "T0KEN-IN-THE-PATH" not in json.dumps(bed.kube.loops["team-a/churn"]) + "".join(bed.kube.event_messages)
