"""Notifications: the loop's important Events, POSTed to the webhooks of `spec.notifications`.

    publish (act.py, after posting the Event)  builds the payload now, queues it, returns at once
    run     (the engine's run starts it)         one delivery task per receiver with work queued

Guarantees, while the operator runs: every notification is POSTed until a receiver answers 2xx
(at least once, in order per receiver), retried with capped, jittered exponential backoff (tenacity), each
try bounded by a timeout. A receiver's outage delays only its own queue: each (loop, webhook) has its own
bounded queue and task, and nothing here is awaited by a reconcile. One tenant's dead receivers delay no
other tenant: a try first takes a slot of its tenant (the loop's namespace; PER_TENANT in flight), then
of its receiver's host (PER_HOST connections), then one in all (CONCURRENCY), each a FIFO queue
(runtime/slots.py), and only then does its timeout start: waiting for a connection is never part of a
try's time. The connection pool itself has no limit of its own that could make a try wait inside it.
A queue that is full drops its oldest notification; one undelivered for MAX_AGE_SECONDS is dropped too
(both counted). The queues live in memory: what is queued when the operator stops is lost
(docs/operations.md, Notifications).

Every payload carries an `id`, the same on every retry and for every receiver of one Event, so a
receiver that may see a notification twice (a 2xx lost on the way back) can drop the repeat.

A receiver named by a Secret (urlFrom, headers[].valueFrom) is read from the loop's namespace before each try,
outside its timeout and its slots, and held only for that try: a rotated Secret is used at the next try, and no
Secret's value is kept, logged, or written to a status or an Event (messages name the Secret and key). A
Secret that is missing, lacks its key or holds no usable value fails the try as an unanswered POST would (the
notification waits, retried, dropped after MAX_AGE_SECONDS) and posts one Warning Event on the loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from tenacity import AsyncRetrying, RetryCallState, retry_if_result
from tenacity.wait import wait_exponential

from feedbackloop.core import api, egress
from feedbackloop.core.api import ReceiverEndpoint, Webhook
from feedbackloop.core.credentials import header_refusal, redact
from feedbackloop.core.phases import Event
from feedbackloop.core.tenancy import origin, tenant_of
from feedbackloop.core.text import inert
from feedbackloop.core.timeutil import format_time
from feedbackloop.runtime import egress_net, metrics
from feedbackloop.runtime.kube import KubeAPI
from feedbackloop.runtime.slots import Lane

log = logging.getLogger(__name__)
QUEUE_LIMIT = 100  # per receiver of a loop: a day of a busy loop's important Events
REQUEST_TIMEOUT_SECONDS = 10.0
BACKOFF_BASE_SECONDS = 1.0
BACKOFF_CAP_SECONDS = 60.0
MAX_AGE_SECONDS = 24 * 3600.0  # a receiver down for a day gets the news of that day, not of last week
PER_TENANT = 4  # tries in flight for one namespace's loops: its dead receivers hold these, nobody else's
PER_HOST = 8  # connections to one receiver host (scheme, host, port), whatever the tenants and paths
CONCURRENCY = 64  # tries in flight in all
PAYLOAD_VERSION = "feedbackloop.dev/v1alpha1"
# Outcomes: the status no longer names the version (it was just cleared); history's last record does.
FROM_HISTORY = ("Promoted", "RolledBack", "CandidateRejected", "RetrainingFailed")
# About the serving version, even when a retraining starts in the same round.
SERVING = ("Adopted", "BreachStarted", "Recovered", "AwaitingMetrics", "MetricsUnavailable")

SECRET_UNUSABLE = "NotificationSecretUnusable"  # the Warning Event's reason
JSON = "application/json"
CLOUDEVENTS_JSON = "application/cloudevents+json"
CLOUDEVENTS_TYPE_PREFIX = "dev.feedbackloop."

# url, body, headers, timeout -> the HTTP status (raises when no answer came)
Sender = Callable[[str, bytes, dict[str, str], float], Awaitable[int]]
# namespace, Secret, key -> the key's value and the Secret's annotations (KubeAPI.read_secret_key, in a thread)
SecretReader = Callable[[str, str, str], Awaitable[tuple[str, dict[str, str]]]]


# --- pure: what is sent ----------------------------------------------------------------------------


def subject_version(reason: str, status: Mapping[str, Any]) -> int | None:
    """The version an Event is about, read from the status decided with it."""
    version: Any = status.get("currentVersion")
    if reason in FROM_HISTORY and status.get("history"):
        version = status["history"][-1].get("version")
    elif reason not in SERVING:
        for part in ("rollout", "retraining", "candidate"):
            if status.get(part):
                version = status[part].get("version")
                break
    return int(version) if isinstance(version, int) else None


def notification_id(uid: str, event: Event, timestamp: float) -> str:
    """Stable for one Event: the same for every retry and every receiver, different for the next Event."""
    text = "\0".join((uid, event.reason, event.message, repr(timestamp)))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def generic_payload(loop: dict[str, Any], event: Event, status: Mapping[str, Any], timestamp: float) -> dict[str, Any]:
    """The documented JSON payload (docs/operations.md, Notifications)."""
    metadata = loop["metadata"]
    rollout, retraining = status.get("rollout") or {}, status.get("retraining") or {}
    return {
        "apiVersion": PAYLOAD_VERSION,
        "id": notification_id(metadata.get("uid", ""), event, timestamp),
        "timestamp": format_time(timestamp),
        "loop": {"namespace": metadata["namespace"], "name": metadata["name"], "uid": metadata.get("uid", "")},
        "type": event.type,
        "reason": event.reason,
        "message": event.message,
        "phase": status.get("phase", ""),
        "version": subject_version(event.reason, status),
        "currentVersion": status.get("currentVersion"),
        "canary": {"version": rollout["version"], "weight": rollout.get("weight", 0)} if rollout else None,
        "retrainingVersion": retraining.get("version"),
    }


def _slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_payload(generic: dict[str, Any]) -> dict[str, Any]:
    """What a Slack incoming webhook (and Mattermost, Rocket.Chat, Teams' Slack-compatible ones) accepts."""
    loop = generic["loop"]
    icon = ":warning:" if generic["type"] == "Warning" else ":information_source:"
    text = f"{icon} *{loop['namespace']}/{loop['name']}* {generic['reason']}: {generic['message']}"
    return {"text": _slack_escape(text)}


def teams_payload(generic: dict[str, Any]) -> dict[str, Any]:
    """A message with one Adaptive Card, as a Microsoft Teams Workflows webhook ("Post to a channel when a webhook
    request is received") and the older incoming webhooks accept."""
    loop, canary = generic["loop"], generic.get("canary")
    facts = [
        {"title": "Phase", "value": generic.get("phase") or "-"},
        {"title": "Version", "value": str(generic["version"]) if generic.get("version") is not None else "-"},
        {"title": "Serving", "value": str(generic["currentVersion"]) if generic.get("currentVersion") else "-"},
    ]
    if canary:
        facts.append({"title": "Canary", "value": f"version {canary['version']} at {canary['weight']}%"})
    card = {
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "msteams": {"width": "Full"},
        "body": [
            {
                "type": "TextBlock",
                "text": f"{loop['namespace']}/{loop['name']}: {generic['reason']}",
                "weight": "Bolder",
                "size": "Medium",
                "color": "Attention" if generic["type"] == "Warning" else "Default",
                "wrap": True,
            },
            {"type": "TextBlock", "text": generic["message"], "wrap": True},
            {"type": "FactSet", "facts": facts},
            {"type": "TextBlock", "text": f"{generic['timestamp']} · id {generic['id']}", "isSubtle": True,
             "size": "Small", "wrap": True},
        ],
    }  # fmt: skip
    return {
        "type": "message",
        "attachments": [
            {"contentType": "application/vnd.microsoft.card.adaptive", "contentUrl": None, "content": card}
        ],
    }


def cloudevent(generic: dict[str, Any]) -> dict[str, Any]:
    """A CloudEvents 1.0 event in structured mode (sent as application/cloudevents+json): id is the notification's
    (a retry is the same event), source the loop's API path, subject namespace/name, data the generic payload."""
    loop = generic["loop"]
    return {
        "specversion": "1.0",
        "id": generic["id"],
        "source": f"/apis/{api.GROUP}/{api.VERSION}/namespaces/{loop['namespace']}/{api.PLURAL}/{loop['name']}",
        "type": CLOUDEVENTS_TYPE_PREFIX + generic["reason"],
        "subject": f"{loop['namespace']}/{loop['name']}",
        "time": generic["timestamp"],
        "datacontenttype": JSON,
        "data": generic,
    }


FORMATS: dict[str, tuple[Callable[[dict[str, Any]], dict[str, Any]], str]] = {
    "generic": (lambda generic: generic, JSON),
    "slack": (slack_payload, JSON),
    "teams": (teams_payload, JSON),
    "cloudevents": (cloudevent, CLOUDEVENTS_JSON),
}


def render(webhook: Webhook, generic: dict[str, Any]) -> bytes:
    return json.dumps(FORMATS[webhook.format][0](generic), sort_keys=True).encode()


def content_type(webhook: Webhook) -> str:
    return FORMATS[webhook.format][1]


class Backoff(wait_exponential):
    """tenacity's capped exponential wait (base x 2^(attempt-1), at most the cap), jittered to half..full of it
    so receivers that failed together do not retry together, yet never retry sooner than half the step."""

    def __init__(self, rng: Callable[[], float] = random.random) -> None:
        super().__init__(multiplier=BACKOFF_BASE_SECONDS, max=BACKOFF_CAP_SECONDS)
        self._rng = rng

    def __call__(self, retry_state: RetryCallState) -> float:
        return float(super().__call__(retry_state)) * (0.5 + 0.5 * self._rng())


def backoff_seconds(attempt: int, rng: float) -> float:
    """The wait after the attempt-th failure (1, 2, ...), as the Notifier's Backoff computes it."""
    state = RetryCallState(AsyncRetrying(), None, (), {})
    state.attempt_number = attempt
    return Backoff(lambda: rng)(state)


# --- receivers named by Secrets --------------------------------------------------------------------


class SecretUnusable(Exception):
    """A receiver's Secret cannot be used: the message names the Secret and key, never a value."""


async def _secret_value(
    read: SecretReader | None, namespace: str, ref: api.SecretKeyRef, what: str
) -> tuple[str, dict[str, str]]:
    where = f"Secret {namespace}/{ref.name}"
    if read is None:
        raise SecretUnusable(f"{where} key {ref.key} ({what}): no Kubernetes client to read it with")
    try:
        return await read(namespace, ref.name, ref.key)
    except KeyError:
        raise SecretUnusable(f"{where} has no key {ref.key} ({what}): add it") from None
    except Exception as error:  # noqa: BLE001 - the API's answer; a 404 is the common one
        if getattr(error, "status", None) == 404:
            raise SecretUnusable(f"{where} ({what}) does not exist: create it with the key {ref.key}") from None
        reason = getattr(error, "reason", None) or type(error).__name__
        raise SecretUnusable(f"cannot read {where} ({what}): {reason}") from None


async def resolve(endpoint: ReceiverEndpoint, namespace: str, read: SecretReader | None) -> tuple[str, dict[str, str]]:
    """The URL and extra headers to use now, read from the loop's own namespace only (SecretUnusable when a
    Secret cannot be used). A URL from a Secret must satisfy the spec's rules for url (api.receiver_url); the
    egress policy then judges the address it connects to, as for any receiver."""
    url = endpoint.url or ""
    if endpoint.url_from is not None:
        ref = endpoint.url_from.secret_key_ref
        value = (await _secret_value(read, namespace, ref, "urlFrom"))[0].strip()
        try:
            url = api.receiver_url(value)
        except ValueError:  # its message quotes the URL: never shown
            raise SecretUnusable(
                f"Secret {namespace}/{ref.name} key {ref.key} (urlFrom) holds no URL a receiver may have: https, or "
                "http to an in-cluster host; never loopback, link-local or cloud metadata"
            ) from None
    headers: dict[str, str] = {}
    for header in endpoint.headers:
        if header.value_from is None:
            headers[header.name] = header.value
            continue
        ref = header.value_from.secret_key_ref
        value, annotations = await _secret_value(read, namespace, ref, f"header {header.name}")
        refused = header_refusal(url, f"{namespace}/{ref.name}", ref.key, annotations)
        if refused:
            raise SecretUnusable(refused)
        if any(c in value for c in "\r\n\0") or len(value) > api.MAX_HEADER_VALUE:
            raise SecretUnusable(f"Secret {namespace}/{ref.name} key {ref.key} (header {header.name}) is no header "
                                 f"value: one line of at most {api.MAX_HEADER_VALUE} characters")  # fmt: skip
        headers[header.name] = value
    return url, headers


def kube_secret_reader(kube: KubeAPI) -> SecretReader:
    """Reads one key of one Secret through the API at each call (no cache: a rotated Secret is used at once)."""

    async def read(namespace: str, name: str, key: str) -> tuple[str, dict[str, str]]:
        return await asyncio.to_thread(kube.read_secret_key, namespace, name, key)

    return read


def promotion_request(loop: dict[str, Any], status: Mapping[str, Any], timestamp: float) -> dict[str, Any]:
    """What rollout.confirmPromotion's webhook is asked with: the candidate, its canary and the evidence."""
    metadata, rollout = loop["metadata"], status.get("rollout") or {}
    return {
        "apiVersion": PAYLOAD_VERSION,
        "kind": "PromotionRequest",
        "timestamp": format_time(timestamp),
        "loop": {"namespace": metadata["namespace"], "name": metadata["name"], "uid": metadata.get("uid", "")},
        "version": rollout.get("version"),
        "currentVersion": status.get("currentVersion"),
        "candidate": status.get("candidate"),
        "canary": {
            k: rollout.get(k) for k in ("step", "weight", "startedAt", "stepStartedAt", "trigger", "offlineSuperior")
        },
        "analysis": {
            "phase": rollout.get("analysisPhase"),
            "message": (rollout.get("analysis") or {}).get("message", ""),
            "evidence": rollout.get("evidence") or [],
        },
    }


# --- the edge: delivery ----------------------------------------------------------------------------


def _new_session() -> aiohttp.ClientSession:
    """Every HTTP session of this module is made here. Its connector has no connection limit: the Notifier's
    slots (per tenant, per receiver host, in all) bound the connections, and are taken before a try's timer
    starts; a pool limit would make a try wait for a connection inside its timeout, behind other tenants.
    It connects only where the egress policy lets a receiver go (runtime/egress_net.py, docs/security.md)."""
    return aiohttp.ClientSession(connector=egress_net.connector(egress.RECEIVER, limit=0, limit_per_host=0))


async def post_once(url: str, body: bytes, headers: dict[str, str], timeout: float) -> int:
    """One POST, no redirects (a 3xx must not turn https into http, or send the body elsewhere)."""
    limit = aiohttp.ClientTimeout(total=timeout)
    async with (
        _new_session() as session,
        session.post(url, data=body, headers=headers, timeout=limit, allow_redirects=False) as response,
    ):
        return response.status


async def confirm_promotion(
    url: str,
    payload: dict[str, Any],
    headers: Mapping[str, str] | None = None,
    timeout: float = REQUEST_TIMEOUT_SECONDS,
    send: Sender = post_once,
    shown: str | None = None,
) -> bool:
    """rollout.confirmPromotion's answer: True on a 2xx only; no answer, an error or any other status is a no.
    A URL the egress policy refuses is never asked: EgressRefused is raised, for the loop's status to say so.
    `headers`: the spec's extra headers (resolved); `shown`: how logs name the receiver (default: the URL,
    redacted; a URL from a Secret is named by its Secret)."""
    label = shown or redact(url)
    sent = {**(headers or {}), "Content-Type": JSON, "User-Agent": "mfl-operator"}
    try:
        body = json.dumps(payload, sort_keys=True).encode()
        async with asyncio.timeout(timeout + 1):
            code = await send(url, body, sent, timeout)
    except egress_net.EgressRefused as error:  # never asked: a no, until the admin allows it
        log.warning("confirm-promotion webhook %s: %s", label, error)
        raise
    except Exception as error:  # noqa: BLE001 - no answer is no approval; asked again at the next look
        log.info("confirm-promotion webhook %s did not answer: %s", label, type(error).__name__ if shown else error)
        return False
    if not 200 <= code < 300:
        log.info("confirm-promotion webhook %s answered HTTP %d: holding", label, code)
    return 200 <= code < 300


@dataclass(frozen=True)
class Notification:
    id: str
    endpoint: ReceiverEndpoint
    body: bytes
    created: float
    content_type: str = JSON

    @property
    def shown(self) -> str:
        """How logs name the receiver: the spec's URL redacted, or the Secret that holds it."""
        return self.endpoint.shown()


@dataclass
class Channel:
    """One receiver of one loop: its own queue, delivered in order by its own task."""

    loop: dict[str, Any] = field(default_factory=dict)  # the loop's body, for its namespace and a Warning Event
    queue: deque[Notification] = field(default_factory=deque)
    secret_problem: str = ""  # what was last wrong with its Secrets ('' when nothing): one Event per problem


def _remove(channel: Channel, head: Notification) -> None:
    """Take a tried notification off its queue, unless a full queue dropped it while it was in flight."""
    if channel.queue and channel.queue[0] is head:
        channel.queue.popleft()


class Notifier:
    def __init__(
        self,
        send: Sender | None = None,
        *,
        queue_limit: int = QUEUE_LIMIT,
        timeout: float = REQUEST_TIMEOUT_SECONDS,
        clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        concurrency: int = CONCURRENCY,
        per_tenant: int = PER_TENANT,
        per_host: int = PER_HOST,
        kube: KubeAPI | None = None,
    ) -> None:
        self._send = send or self._post
        self.queue_limit, self.timeout = queue_limit, timeout
        self.slots = Lane("notifications", concurrency, per_tenant, per_host)
        self._clock, self._rng, self._sleep = clock, rng, sleep
        self.kube = kube  # reads the Secrets receivers name, posts the Warning Event when one is unusable
        self.read_secret: SecretReader | None = kube_secret_reader(kube) if kube is not None else None
        self.channels: dict[tuple[str, str], Channel] = {}
        self._workers: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None

    def publish(self, loop: dict[str, Any], webhooks: list[Webhook], event: Event, status: Mapping[str, Any]) -> None:
        """Queue the Event for each webhook that wants it; never waits (called inside a reconcile). A receiver
        is queued by what names it (its URL, or its Secret and key): a Secret is read only when it is tried."""
        now = self._clock()
        generic = generic_payload(loop, event, status, now)
        key = f"{loop['metadata']['namespace']}/{loop['metadata']['name']}"
        for webhook in webhooks:
            if event.reason not in webhook.events:
                continue
            channel = self.channels.setdefault((key, webhook.target()), Channel())
            channel.loop = loop
            if len(channel.queue) >= self.queue_limit:
                dropped = channel.queue.popleft()
                metrics.NOTIFICATIONS.labels("dropped").inc()
                log.warning("notification queue of %s full: dropped %s", webhook.shown(), dropped.id)
            body = render(webhook, generic)
            channel.queue.append(Notification(generic["id"], webhook, body, now, content_type(webhook)))
        self._wake.set()

    async def run(self) -> None:
        """The notifier's task: a delivery task per receiver with work, all stopped when this one is."""
        self._wake.set()  # what a previous run left queued (leadership lost, then won back) goes out too
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                for key, channel in self.channels.items():
                    if channel.queue and key not in self._workers:
                        self._workers[key] = asyncio.create_task(self._deliver(key, channel), name=f"notify {key}")
        finally:
            workers = list(self._workers.values())
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            self._workers.clear()
            if self._session is not None:
                await self._session.close()
                self._session = None

    async def idle(self) -> None:
        """Until every queue is empty (tests; `run` must be running)."""
        while any(channel.queue for channel in self.channels.values()) or self._workers:
            await asyncio.sleep(0.01)

    async def _deliver(self, key: tuple[str, str], channel: Channel) -> None:
        try:
            while channel.queue:
                await self._deliver_head(tenant_of(key[0]), channel)
        finally:
            self._workers.pop(key, None)
            if not channel.queue:
                self.channels.pop(key, None)

    async def _deliver_head(self, tenant: str, channel: Channel) -> None:
        """Try the oldest notification until it is delivered, too old, or dropped by a full queue meanwhile:
        tenacity runs the tries (one `_attempt` each: a slot, then one timed POST) and the jittered backoff
        between them, during which no slot is held."""
        head = channel.queue[0]

        def settled(state: RetryCallState) -> bool:  # stop retrying: not ours any more, or too old
            return not (channel.queue and channel.queue[0] is head) or self._clock() - head.created > MAX_AGE_SECONDS

        def retried(state: RetryCallState) -> None:
            metrics.NOTIFICATIONS.labels("retried").inc()

        retrying = AsyncRetrying(
            sleep=self._sleep,
            wait=Backoff(self._rng),
            retry=retry_if_result(lambda delivered: delivered is False),  # None: dropped meanwhile, no retry
            stop=settled,
            before_sleep=retried,
            retry_error_callback=lambda state: False,  # stopped undelivered: the last try's no, not a RetryError
        )
        delivered: bool | None = await retrying(self._attempt, tenant, channel, head)
        if delivered:
            _remove(channel, head)
            metrics.NOTIFICATIONS.labels("delivered").inc()
        elif channel.queue and channel.queue[0] is head:  # stopped by its age
            _remove(channel, head)
            metrics.NOTIFICATIONS.labels("dropped").inc()
            log.warning("notification %s to %s dropped after %d hours of tries", head.id, head.shown,
                        MAX_AGE_SECONDS // 3600)  # fmt: skip

    async def _attempt(self, tenant: str, channel: Channel, head: Notification) -> bool | None:
        """One try: True delivered, False not (tried again), None dropped by a full queue while it waited. The
        Secrets are read first, then a slot is waited for; neither is part of the try's timeout."""
        target = await self._target(channel, head)
        if target is None:
            return False
        url, headers = target
        async with self.slots.slot(tenant, origin(url)):  # the wait for a slot is not timed
            if not (channel.queue and channel.queue[0] is head):
                return None  # dropped by a full queue while it waited
            return await self._try(head, url, headers)

    async def _target(self, channel: Channel, head: Notification) -> tuple[str, dict[str, str]] | None:
        """The URL and headers for this try (None: a Secret cannot be used, said once per problem by an Event)."""
        endpoint = head.endpoint
        if endpoint.url_from is None and not any(h.value_from for h in endpoint.headers):
            return endpoint.url or "", {h.name: h.value for h in endpoint.headers}
        namespace = channel.loop.get("metadata", {}).get("namespace", "")
        try:
            target = await resolve(endpoint, namespace, self.read_secret)
        except SecretUnusable as error:
            problem = str(error)
            log.warning("notification %s to %s not sent: %s", head.id, head.shown, problem)
            if problem != channel.secret_problem:
                channel.secret_problem = problem
                await self._warn(channel.loop, f"notifications to {head.shown} wait: {problem}")
            return None
        if channel.secret_problem:
            channel.secret_problem = ""
            log.info("notifications to %s: its Secrets are usable again", head.shown)
        return target

    async def _warn(self, loop: dict[str, Any], message: str) -> None:
        if self.kube is None or not loop:
            return
        metrics.EVENTS.labels(SECRET_UNUSABLE).inc()
        try:
            await asyncio.to_thread(self.kube.event, loop, "Warning", SECRET_UNUSABLE, inert(message, 1024))
        except Exception as error:  # noqa: BLE001 - the log above said it already; delivery goes on
            log.info("could not post the %s Event: %s", SECRET_UNUSABLE, error)

    async def _try(self, notification: Notification, url: str, extra: dict[str, str]) -> bool:
        headers = {
            **extra,
            "Content-Type": notification.content_type,
            "User-Agent": "mfl-operator",
            "X-MFL-Notification-Id": notification.id,
        }
        shown = notification.shown
        try:
            async with asyncio.timeout(self.timeout + 1):
                code = await self._send(url, notification.body, headers, self.timeout)
        except Exception as error:  # noqa: BLE001 - any failure to get an answer is a retry, never a crash
            # aiohttp's errors may quote the URL: for one from a Secret, only the error's kind is logged
            said = type(error).__name__ if notification.endpoint.url_from is not None else error
            log.info("notification %s to %s failed: %s", notification.id, shown, said)
            return False
        if 200 <= code < 300:
            return True
        log.info("notification %s to %s answered HTTP %d", notification.id, shown, code)
        return False

    async def _post(self, url: str, body: bytes, headers: dict[str, str], timeout: float) -> int:
        if self._session is None:
            self._session = _new_session()
        # No redirects: a 3xx must not turn an https webhook into a plain http one, or send it elsewhere.
        async with self._session.post(
            url, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout), allow_redirects=False
        ) as response:
            return response.status
