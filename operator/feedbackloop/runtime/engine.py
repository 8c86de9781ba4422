"""The fleet engine: one asyncio task that, for every due loop, observes, decides, acts and records.

    observe (observe.py)  the watch cache, the Job, Prometheus        -> phases.World
    decide  (phases.py)   a pure function                             -> phases.Decision (actions + status)
    act     (act.py)      idempotent writes to the Kubernetes API
    record  (record.py)   the status, as a merge patch, when it changed

Why one task and not a kopf timer or daemon per loop: a timer's interval is fixed at decoration (each
loop has its own `monitoring.interval`), and a daemon per loop costs a task per loop and a Prometheus
query per loop per rule. One engine over an in-memory view of all loops (fed by kopf's watch) polls
each template once for all due loops together, and writes status only when something changed.

The engine is the only writer of `status`. It keeps the status it last wrote, so a watch event that
lags behind its own write never makes it act twice; after a restart it starts from the status that
the API server holds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from feedbackloop.core import phases, resources, sharding
from feedbackloop.core.fleet import Fleet, LoopMemory
from feedbackloop.core.monitoring import Round
from feedbackloop.core.settings import AdminSettings
from feedbackloop.core.validation import parse_spec
from feedbackloop.runtime import metrics
from feedbackloop.runtime.act import Actor
from feedbackloop.runtime.kube import KubeAPI
from feedbackloop.runtime.notify import Notifier
from feedbackloop.runtime.observe import Observer
from feedbackloop.runtime.poller import FleetPoller, PrometheusClients
from feedbackloop.runtime.record import StatusRecorder

log = logging.getLogger(__name__)
ACTIVE_PHASES = (phases.RETRAINING, phases.CANARY)
# Polls of one loop kept while its reconcile waits (each steps its rules in `decide`, oldest first): enough to
# cover any `for` at the shortest interval while a reconcile is slow, bounded however long it is stuck.
MAX_UNRECONCILED_POLLS = 16


@dataclass
class Settings:
    tick_seconds: float = 1.0
    active_reconcile_seconds: float = 5.0  # Retraining/Canary loops: follow Jobs and canaries this often
    status_refresh_seconds: float = 300.0  # rewrite live metric values at most this often
    concurrency: int = 16
    job_extra_config: dict[str, Any] = field(default_factory=dict)  # e.g. labelNoise in tests
    admin: AdminSettings = field(default_factory=AdminSettings)  # the admin's policy (core/settings.py)
    shard: str | None = None  # sharding (core/sharding.py): this replica's identity; it acks drains of its loops


class Engine:
    def __init__(
        self, kube: KubeAPI, settings: Settings | None = None, clients: PrometheusClients | None = None
    ) -> None:
        self.settings = settings or Settings()
        self.fleet = Fleet()
        clients = clients or PrometheusClients()
        poller = FleetPoller(  # fair shares of Prometheus: the admin's (core/settings.py), per tenant, host and in all
            clients.query,
            self.settings.admin.prometheus_concurrency,
            per_tenant=self.settings.admin.prometheus_per_tenant,
            per_host=self.settings.admin.prometheus_per_host,
        )
        self.kube = kube
        self.observer = Observer(kube, self.fleet, poller)
        self.notifier = Notifier(kube=kube)  # kube: the Secrets receivers name (urlFrom, valueFrom)
        self.actor = Actor(kube, self.fleet, self.settings.job_extra_config, self.notifier, lambda: self.settings.shard)
        self.recorder = StatusRecorder(kube, self.settings.status_refresh_seconds)
        self.wake = asyncio.Event()
        self._semaphore = asyncio.Semaphore(self.settings.concurrency)
        # (namespace, Prometheus URL) -> its poll in flight: a tenant naming another's URL never delays its samples
        self._polls: dict[str, asyncio.Task[None]] = {}
        self._reconciles: dict[str, asyncio.Task[None]] = {}  # loop -> its reconcile in flight
        self._fresh: dict[str, list[Round]] = {}  # loop -> its polls not yet reconciled, oldest first
        self._deleted_routes: list[tuple[dict[str, Any], str]] = []  # (deleted loop, its HTTPRoute) to reset
        self._cleanups: set[asyncio.Task[None]] = set()
        self._acks: dict[str, asyncio.Task[None]] = {}  # loop -> its drain's ack in flight (sharding)
        self._released: dict[str, str] = {}  # loop -> the resourceVersion of our ack: older events are stale
        self._adopted: set[str] = set()  # loops whose Deployments this replica's watch sees (sharding)

    @property
    def loops(self) -> dict[str, dict[str, Any]]:
        return self.fleet.loops

    # --- fed by kopf's watch ----------------------------------------------------------------------
    def observe_loop(self, event_type: str | None, body: dict[str, Any]) -> None:
        """A watch event. DELETED means the loop left this watch: deleted, or (sharding) moved off this
        replica's label selector; either way this replica stops acting on it at once, and only a real
        deletion (checked by a GET in the cycle) resets its HTTPRoute."""
        key = f"{body['metadata']['namespace']}/{body['metadata']['name']}"
        if event_type == "DELETED":
            self._released.pop(key, None)
            self._adopted.discard(key)
            self.fleet.loops.pop(key, None)
            self._fresh.pop(key, None)
            memory = self.fleet.memory.pop(key, None)
            route = memory.spec.rollout.traffic_routing.http_route if memory and memory.spec else None
            if route is not None:  # the user's HTTPRoute: its weights must not keep pointing at a canary
                self._deleted_routes.append((body, route.name))
                self.wake.set()
            return
        if key in self._released:
            if not newer(body, self._released[key]):
                return  # from before our own ack: this replica let it go
            del self._released[key]  # assigned back to this replica since
        self.fleet.loops[key] = body
        if self._draining(body):
            self.wake.set()  # finish what is in flight, then let it go
        memory = self.fleet.memory.setdefault(key, LoopMemory())
        seen = (body["metadata"].get("generation"), body["metadata"].get("annotations"))
        if seen != memory.seen_metadata:  # a spec change or a request annotation: act now
            memory.seen_metadata = seen
            memory.dirty = True
            self.wake.set()

    def observe_deployment(self, event_type: str | None, body: dict[str, Any]) -> None:
        namespace = body["metadata"]["namespace"]
        key = f"{namespace}/{body['metadata']['name']}"
        if event_type == "DELETED":
            self.fleet.deployments.pop(key, None)
        else:
            self.fleet.deployments[key] = body
        loop = (body["metadata"].get("labels") or {}).get(resources.LOOP_LABEL)
        memory = self.fleet.memory.get(f"{namespace}/{loop}") if loop else None
        if memory is not None:
            memory.dirty = True
            self.wake.set()

    # --- the cycle --------------------------------------------------------------------------------
    async def run(self) -> None:
        notifier = asyncio.create_task(self.notifier.run(), name="notifier")  # delivers on its own, never awaited
        metrics.LOOP_SERIES.source = self.loop_statuses  # only an engine that acts exports its loops
        try:
            await self._run_cycles()
        finally:
            if metrics.LOOP_SERIES.source == self.loop_statuses:
                metrics.LOOP_SERIES.source = None
            notifier.cancel()
            await asyncio.gather(notifier, return_exceptions=True)

    def loop_statuses(self) -> list[tuple[str, str, Any]]:
        """(namespace, loop, status) of every loop this engine holds, for the per-loop metrics (metrics.LOOP_SERIES):
        a deleted loop, or one let go to another replica (sharding), has left `fleet.loops`. Called from the
        metrics server's thread: it reads a copy of the keys and statuses the engine replaces, never mutates."""
        found = []
        for key, body in list(self.fleet.loops.items()):
            memory = self.fleet.memory.get(key)
            written = memory.written_status if memory is not None else None
            namespace, _, name = key.partition("/")
            found.append((namespace, name, written if written is not None else body.get("status") or {}))
        return found

    async def _run_cycles(self) -> None:
        while True:
            try:
                async with asyncio.timeout(self._sleep_seconds(time.time())):
                    await self.wake.wait()
            except TimeoutError:
                pass
            self.wake.clear()
            try:
                await self.cycle(time.time())
            except Exception:  # one bad cycle must not end the engine
                log.exception("engine cycle failed")

    def _sleep_seconds(self, now: float) -> float:
        """Until the next poll falls due (polls start on time, not on the next tick), at most a tick."""
        due = min((m.next_poll for m in self.fleet.memory.values() if m.spec is not None), default=now + 60)
        return min(self.settings.tick_seconds, max(0.01, due - now))

    async def cycle(self, now: float) -> None:
        """One pass over the fleet: parse changed specs, start the due polls and reconciles, return.

        Nothing here waits for Prometheus or for a reconcile: polls run per Prometheus URL and
        reconciles per loop as tasks of their own (at most one in flight each), so a tenant's slow or
        black-hole Prometheus costs its own loops their poll, not the fleet its cycle. A finished
        poll wakes the engine, and the next cycle reconciles those loops with their new rule states.
        """
        while self._deleted_routes:
            loop, route = self._deleted_routes.pop()
            task = asyncio.create_task(self._release_route_if_gone(loop, route), name=f"release {route}")
            self._cleanups.add(task)
            task.add_done_callback(self._cleanups.discard)
        due_poll: dict[str, list[str]] = {}
        due = []
        for key, body in list(self.fleet.loops.items()):
            if self._draining(body):
                if key not in self._reconciles and key not in self._acks:  # its reconcile in flight ended
                    self._acks[key] = asyncio.create_task(self._ack(key, body), name=f"ack {key}")
                continue
            memory = self.fleet.memory.setdefault(key, LoopMemory())
            self._parse(body, memory)
            if memory.spec is not None and now >= memory.next_poll:
                due_poll.setdefault(f"{key.split('/')[0]} {memory.spec.monitoring.prometheus.url}", []).append(key)
            elif (
                memory.dirty
                or key in self._fresh
                or (self.fleet.phase(key) in ACTIVE_PHASES and now >= memory.next_reconcile)
            ):
                due.append(key)
        for url, keys in due_poll.items():
            if url not in self._polls:
                self._polls[url] = asyncio.create_task(self._poll(url, keys, now), name=f"poll {url}")
        started = 0
        for key in due:
            if key not in self._reconciles:
                polls = self._fresh.pop(key, None)
                self._reconciles[key] = asyncio.create_task(self._reconcile_task(key, polls, now), name=key)
                started += 1
        metrics.LOOPS_DUE.set(started)
        metrics.observe_phases(self.fleet.phase(key) for key in self.fleet.loops)

    async def settle(self) -> None:
        """Wait for every poll and reconcile in flight (tests and shutdown; the run loop never waits)."""
        while self._polls or self._reconciles or self._cleanups or self._acks:
            tasks = [*self._polls.values(), *self._reconciles.values(), *self._cleanups, *self._acks.values()]
            await asyncio.gather(*tasks, return_exceptions=True)

    # --- a loop that left: deleted, or moved to another replica (sharding) ------------------------------
    async def _release_route_if_gone(self, loop: dict[str, Any], route: str) -> None:
        """Reset the loop's HTTPRoute only when the loop is really gone: a loop that merely left this
        replica's shard keeps the user's weights (its new owner carries on with them)."""
        meta = loop["metadata"]
        try:
            gone = await asyncio.to_thread(self.kube.loop_gone, meta["namespace"], meta["name"], meta.get("uid"))
        except Exception as error:  # the new owner (or a restart) sets the weights again; a wrong reset would not
            log.warning("could not tell whether %s/%s was deleted; its HTTPRoute %s is left as it is: %s",
                        meta["namespace"], meta["name"], route, error)  # fmt: skip
            return
        if gone:
            await self.actor.release_route(loop, route)
        else:
            log.info("%s/%s left this replica's shard; its HTTPRoute %s stays", meta["namespace"], meta["name"], route)

    def _draining(self, body: dict[str, Any]) -> bool:
        if self.settings.shard is None:
            return False
        labels = body["metadata"].get("labels") or {}
        return labels.get(sharding.SHARD_LABEL) == self.settings.shard and bool(labels.get(sharding.DRAIN_LABEL))

    async def _adopt(self, key: str) -> None:
        """Sharding: before this replica first acts on a loop, its Deployments come into this replica's watch (our
        shard label on them: the watch selects it) and their state into the fleet now, from the same call: acting
        without them would look like Deployments to create. A failure raises: the reconcile is retried."""
        namespace, name = key.split("/", 1)
        shard = str(self.settings.shard)
        found = await asyncio.to_thread(self.kube.adopt_deployments, namespace, resources.loop_label(name), shard)
        for deployment in found:
            known = self.fleet.deployments.get(f"{namespace}/{deployment['metadata']['name']}")
            if known is None or not newer(known, str(deployment["metadata"].get("resourceVersion") or "")):
                self.fleet.deployments[f"{namespace}/{deployment['metadata']['name']}"] = deployment
        self._adopted.add(key)

    async def _ack(self, key: str, body: dict[str, Any]) -> None:
        """Let a drained loop go (sharding): both labels off in one fenced patch on the version that asked
        for it. From then on this replica does nothing for it (its watch's DELETED follows)."""
        meta = body["metadata"]
        try:
            version = await asyncio.to_thread(
                self.kube.ack_shard, meta["namespace"], meta["name"], str(meta.get("resourceVersion") or "")
            )
        except Exception as error:  # a 409: the watch brings the loop as it is now; the next cycle tries again
            log.info("could not let %s go yet: %s", key, getattr(error, "reason", None) or error)
            return
        finally:
            self._acks.pop(key, None)
        if self.fleet.loops.get(key) is not None and not newer(self.fleet.loops[key], version):
            self.fleet.loops.pop(key, None)
        self.fleet.memory.pop(key, None)
        self._adopted.discard(key)
        self._fresh.pop(key, None)
        self._released[key] = version
        metrics.SHARD_MOVES.labels("acked").inc()
        log.info("let %s go (drained to %s)", key, (meta.get("labels") or {}).get(sharding.DRAIN_LABEL))

    async def _poll(self, url: str, keys: list[str], now: float) -> None:
        try:
            for key, samples in (await self.observer.poll(keys, now)).items():
                polls = self._fresh.setdefault(key, [])
                polls.append(samples)
                del polls[:-MAX_UNRECONCILED_POLLS]
        except Exception:  # the observer isolates loops; this is a bug, and must not end the task silently
            log.exception("polling %s failed", url)
        finally:
            self._polls.pop(url, None)
            self.wake.set()

    async def _reconcile_task(self, key: str, polls: list[Round] | None, now: float) -> None:
        try:
            await self._reconcile_guarded(key, polls, now)
        finally:
            self._reconciles.pop(key, None)

    def _parse(self, body: dict[str, Any], memory: LoopMemory) -> None:
        """Parse a loop's spec once per generation; a spec that fails is InvalidSpec for that loop only."""
        generation = body["metadata"].get("generation")
        if generation == memory.parsed_generation:
            return
        memory.parsed_generation = generation
        try:
            memory.spec, memory.spec_error = parse_spec(body.get("spec") or {}, self.settings.admin)
        except Exception as error:  # a bug in validation must still cost only this loop
            log.exception("parsing the spec of %s/%s failed", body["metadata"]["namespace"], body["metadata"]["name"])
            memory.spec, memory.spec_error = None, f"spec: {type(error).__name__}: {error}"
        memory.next_poll = 0.0

    # --- one loop: observe -> decide -> act -> record ------------------------------------------------
    async def _reconcile_guarded(self, key: str, polls: list[Round] | None, now: float) -> None:
        async with self._semaphore:
            try:
                await self._reconcile(key, polls, now)
            except Exception:
                metrics.RECONCILE_ERRORS.inc()
                log.exception("reconcile of %s failed", key)
                memory = self.fleet.memory.get(key)
                if memory is not None:
                    memory.next_reconcile = now + self.settings.active_reconcile_seconds

    async def _reconcile(self, key: str, polls: list[Round] | None, now: float) -> None:
        body, memory = self.fleet.loops.get(key), self.fleet.memory.get(key)
        if body is None or memory is None:
            return  # deleted since the cycle began
        if self._draining(body):
            return  # to be let go: no new reconcile (one queued before the drain was seen does nothing)
        if body["metadata"].get("deletionTimestamp"):
            return  # going away (its namespace too, perhaps): nothing to create, garbage collection does the rest
        if self.settings.shard is not None and key not in self._adopted:
            await self._adopt(key)
        memory.dirty = False
        memory.next_reconcile = now + self.settings.active_reconcile_seconds
        before = self.fleet.status(key)
        world = await self.observer.world(key, before, polls, now)
        decision = phases.decide(world)
        await self.actor.act(body, memory.spec, decision)
        await self.recorder.record(body, memory, before, decision.status, now)


def newer(body: dict[str, Any], version: str) -> bool:
    """Whether `body` is a later version of the loop than `version` (resourceVersions are etcd revisions,
    compared as integers; when either is not one, not newer: a DELETED event then clears the mark)."""
    current = str(body["metadata"].get("resourceVersion") or "")
    return current.isdigit() and version.isdigit() and int(current) > int(version)
