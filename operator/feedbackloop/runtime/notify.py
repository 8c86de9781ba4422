"""Notifications: the loop's important Events, POSTed to the webhooks of `spec.notifications`.

    publish (act.py, after posting the Event)  builds the payload now, queues it, returns at once
    run     (the engine's run starts it)         one delivery task per receiver with work queued

Guarantees, while the operator runs: every notification is POSTed until a receiver answers 2xx
(at least once, in order per receiver), retried with capped, jittered exponential backoff, each try
bounded by a timeout. A receiver's outage delays only its own queue: each (loop, webhook) has its own
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

from feedbackloop.core import egress
from feedbackloop.core.api import Webhook
from feedbackloop.core.credentials import redact
from feedbackloop.core.phases import Event
from feedbackloop.core.tenancy import origin, tenant_of
from feedbackloop.core.timeutil import format_time
from feedbackloop.runtime import egress_net, metrics
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

# url, body, headers, timeout -> the HTTP status (raises when no answer came)
Sender = Callable[[str, bytes, dict[str, str], float], Awaitable[int]]


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


def render(webhook: Webhook, generic: dict[str, Any]) -> bytes:
    body = slack_payload(generic) if webhook.format == "slack" else generic
    return json.dumps(body, sort_keys=True).encode()


def backoff_seconds(attempt: int, rng: float) -> float:
    """After the attempt-th failure (1, 2, ...): base x 2^(attempt-1), capped, then jittered to half..full so
    receivers that failed together do not retry together."""
    ceiling = min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2.0 ** min(attempt - 1, 32))
    return ceiling * (0.5 + 0.5 * rng)


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
    url: str, payload: dict[str, Any], timeout: float = REQUEST_TIMEOUT_SECONDS, send: Sender = post_once
) -> bool:
    """rollout.confirmPromotion's answer: True on a 2xx only; no answer, an error or any other status is a no.
    A URL the egress policy refuses is never asked: EgressRefused is raised, for the loop's status to say so."""
    headers = {"Content-Type": "application/json", "User-Agent": "mfl-operator"}
    try:
        body = json.dumps(payload, sort_keys=True).encode()
        async with asyncio.timeout(timeout + 1):
            code = await send(url, body, headers, timeout)
    except egress_net.EgressRefused as error:  # never asked: a no, until the admin allows it
        log.warning("confirm-promotion webhook %s: %s", redact(url), error)
        raise
    except Exception as error:  # noqa: BLE001 - no answer is no approval; asked again at the next look
        log.info("confirm-promotion webhook %s did not answer: %s", redact(url), error)
        return False
    if not 200 <= code < 300:
        log.info("confirm-promotion webhook %s answered HTTP %d: holding", redact(url), code)
    return 200 <= code < 300


@dataclass(frozen=True)
class Notification:
    id: str
    url: str
    body: bytes
    created: float


@dataclass
class Channel:
    """One receiver of one loop: its own queue, delivered in order by its own task."""

    queue: deque[Notification] = field(default_factory=deque)


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
    ) -> None:
        self._send = send or self._post
        self.queue_limit, self.timeout = queue_limit, timeout
        self.slots = Lane("notifications", concurrency, per_tenant, per_host)
        self._clock, self._rng, self._sleep = clock, rng, sleep
        self.channels: dict[tuple[str, str], Channel] = {}
        self._workers: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None

    def publish(self, loop: dict[str, Any], webhooks: list[Webhook], event: Event, status: Mapping[str, Any]) -> None:
        """Queue the Event for each webhook that wants it; never waits (called inside a reconcile)."""
        now = self._clock()
        generic = generic_payload(loop, event, status, now)
        key = f"{loop['metadata']['namespace']}/{loop['metadata']['name']}"
        for webhook in webhooks:
            if event.reason not in webhook.events:
                continue
            channel = self.channels.setdefault((key, webhook.url), Channel())
            if len(channel.queue) >= self.queue_limit:
                dropped = channel.queue.popleft()
                metrics.NOTIFICATIONS.labels("dropped").inc()
                log.warning("notification queue of %s full: dropped %s", redact(webhook.url), dropped.id)
            channel.queue.append(Notification(generic["id"], webhook.url, render(webhook, generic), now))
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
        """Try the oldest notification until it is delivered, too old, or dropped by a full queue meanwhile."""
        head, attempt = channel.queue[0], 0
        while channel.queue and channel.queue[0] is head:
            async with self.slots.slot(tenant, origin(head.url)):  # the wait for a slot is not timed
                if not (channel.queue and channel.queue[0] is head):
                    return  # dropped by a full queue while it waited
                delivered = await self._try(head)
            if delivered:
                _remove(channel, head)
                metrics.NOTIFICATIONS.labels("delivered").inc()
                return
            if self._clock() - head.created > MAX_AGE_SECONDS:
                _remove(channel, head)
                metrics.NOTIFICATIONS.labels("dropped").inc()
                log.warning("notification %s to %s dropped after %d tries", head.id, redact(head.url), attempt + 1)
                return
            attempt += 1
            metrics.NOTIFICATIONS.labels("retried").inc()
            await self._sleep(backoff_seconds(attempt, self._rng()))

    async def _try(self, notification: Notification) -> bool:
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "mfl-operator",
            "X-MFL-Notification-Id": notification.id,
        }
        try:
            async with asyncio.timeout(self.timeout + 1):
                code = await self._send(notification.url, notification.body, headers, self.timeout)
        except Exception as error:  # noqa: BLE001 - any failure to get an answer is a retry, never a crash
            log.info("notification %s to %s failed: %s", notification.id, redact(notification.url), error)
            return False
        if 200 <= code < 300:
            return True
        log.info("notification %s to %s answered HTTP %d", notification.id, redact(notification.url), code)
        return False

    async def _post(self, url: str, body: bytes, headers: dict[str, str], timeout: float) -> int:
        if self._session is None:
            self._session = _new_session()
        # No redirects: a 3xx must not turn an https webhook into a plain http one, or send it elsewhere.
        async with self._session.post(
            url, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout), allow_redirects=False
        ) as response:
            return response.status
