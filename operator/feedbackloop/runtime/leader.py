"""Leader election on a `coordination.k8s.io/v1` Lease: any number of replicas, one actor.

Every replica watches (kopf feeds its engine's view of the fleet); only the holder of the Lease runs the
engine, which acts and writes status. The rules are client-go's (tools/leaderelection):

- A candidate takes the Lease when it is absent, released (no holder) or expired. Expiry is judged on
  the candidate's own monotonic clock: `leaseDurationSeconds` after it *saw* the Lease last change
  (its resourceVersion), never by comparing the holder's renewTime with its own wall clock, so clock
  skew between nodes cannot shorten a lease.
- The holder renews every `retry` seconds. When it has not renewed for `renew_deadline` seconds
  (< the lease duration) it ends the process: it stops acting before anyone may take over, and in-flight
  API calls in worker threads die with it. A watchdog thread enforces this, so a busy event loop
  cannot delay it. The kubelet restarts the container, which comes back as a candidate.
- Writes are optimistic (the read resourceVersion goes back with the replace): of two candidates that
  saw the same expired Lease, one write wins, the other gets 409.
- On shutdown (SIGTERM, a rolling update) the engine is stopped first, then the Lease is released, so
  the standby takes over within one retry period instead of a lease duration.

Why not a library: kubernetes.leaderelection (the official client; LeaseLock only since 2026) blocks a
thread with time.sleep, runs once (no way back to candidate), calls sys.exit on a bad config, and has no
request timeout, so a hung renew can outlive the lease while the work runs on. kubernetes_asyncio's port
would add a second Kubernetes client. kopf's peering is not an election: replicas of equal priority all
freeze. What is left is small: a pure step function (tested exhaustively) and a thin edge.

The identity is the Pod's name (stable across container restarts: a SIGKILLed leader restarted by the
kubelet in the same Pod finds the Lease its own and resumes at once; a Pod's container never runs twice
at the same time). Outside a cluster it is host/pid.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import random
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from feedbackloop.runtime import metrics

log = logging.getLogger(__name__)
DEFAULT_LEASE = "feedbackloop-operator"
DEFAULT_NAMESPACE = "feedbackloop-system"


# --- the pure part --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Timing:
    lease_seconds: int = 15  # a standby takes over this long after it saw the Lease last change
    renew_deadline_seconds: float = 10.0  # the holder stops acting when it has not renewed for this long
    retry_seconds: float = 2.0  # how often the holder renews and a standby looks

    def __post_init__(self) -> None:
        if not 0 < self.retry_seconds < self.renew_deadline_seconds < self.lease_seconds:
            raise ValueError(
                "leader election needs 0 < retry < renew deadline < lease duration, got "
                f"{self.retry_seconds} / {self.renew_deadline_seconds} / {self.lease_seconds} s"
            )


@dataclass(frozen=True)
class Holding:
    """What a Lease says, as far as the election is concerned."""

    holder: str  # "" when released
    lease_seconds: int  # 0 when absent
    version: str  # resourceVersion: every write changes it
    transitions: int
    acquire_time: str | None


@dataclass(frozen=True)
class Observation:
    """When this candidate first saw the Lease at `version` (its monotonic clock)."""

    version: str | None
    since: float


class Step(enum.Enum):
    CREATE = "create"  # no Lease: create it, holding it
    RENEW = "renew"  # ours: renew it
    ACQUIRE = "acquire"  # released, malformed or expired: take it over
    WAIT = "wait"  # another holder's, still valid


def holding_of(lease: Mapping[str, Any] | None) -> Holding | None:
    if lease is None:
        return None
    spec = lease.get("spec") or {}
    return Holding(
        holder=spec.get("holderIdentity") or "",
        lease_seconds=int(spec.get("leaseDurationSeconds") or 0),
        version=str((lease.get("metadata") or {}).get("resourceVersion") or ""),
        transitions=int(spec.get("leaseTransitions") or 0),
        acquire_time=spec.get("acquireTime"),
    )


def observe(previous: Observation | None, holding: Holding | None, now: float) -> Observation:
    """The observation after reading `holding` at `now`: its clock restarts only when the Lease changed."""
    version = holding.version if holding else None
    if previous is not None and previous.version == version:
        return previous
    return Observation(version, now)


def next_step(holding: Holding | None, me: str, observed: Observation, now: float) -> Step:
    if holding is None:
        return Step.CREATE
    if holding.holder == me:
        return Step.RENEW
    if not holding.holder or holding.lease_seconds <= 0:
        return Step.ACQUIRE
    if now >= observed.since + holding.lease_seconds:
        return Step.ACQUIRE
    return Step.WAIT


def still_leading(renewed_at: float | None, now: float, timing: Timing) -> bool:
    """`renewed_at`: when the last successful write *started* (the standby saw it no earlier)."""
    return renewed_at is not None and now < renewed_at + timing.renew_deadline_seconds


def micro_time(moment: datetime) -> str:
    """A MicroTime as the API server parses it: always six fraction digits (isoformat drops them at .0)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lease_body(
    step: Step, holding: Holding | None, me: str, timing: Timing, name: str, namespace: str, wall: datetime
) -> dict[str, Any]:
    """The Lease to write for `step` (CREATE, RENEW or ACQUIRE); carries the read resourceVersion."""
    now = micro_time(wall)
    keep_acquired = step is Step.RENEW and holding is not None and holding.acquire_time
    transitions = holding.transitions if holding else 0
    if step is Step.ACQUIRE:
        transitions += 1
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if holding is not None:
        metadata["resourceVersion"] = holding.version
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": metadata,
        "spec": {
            "holderIdentity": me,
            "leaseDurationSeconds": timing.lease_seconds,
            "acquireTime": holding.acquire_time if keep_acquired else now,
            "renewTime": now,
            "leaseTransitions": transitions,
        },
    }


def released_body(holding: Holding, name: str, namespace: str, wall: datetime) -> dict[str, Any]:
    """client-go's release: no holder, a one-second duration; transitions kept."""
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": name, "namespace": namespace, "resourceVersion": holding.version},
        "spec": {
            "leaseDurationSeconds": 1,
            "acquireTime": micro_time(wall),
            "renewTime": micro_time(wall),
            "leaseTransitions": holding.transitions,
        },
    }


@dataclass(frozen=True)
class Election:
    enabled: bool
    identity: str
    name: str
    namespace: str
    timing: Timing


def election_from_env(env: Mapping[str, str]) -> Election:
    """MFL_LEADER_ELECTION, MFL_LEASE_NAME, MFL_LEASE_NAMESPACE (default the Pod's namespace),
    MFL_LEASE_DURATION_SECONDS, MFL_LEASE_RENEW_DEADLINE_SECONDS, MFL_LEASE_RETRY_SECONDS.

    On by default in a Pod (POD_NAME from the downward API, as manifests/ sets it); off by default outside
    one (`make run`, the benchmarks' host process): one process by construction, often on a cluster with
    no operator namespace for a Lease. MFL_LEADER_ELECTION=true|false overrides either."""
    default = "true" if env.get("POD_NAME") else "false"
    enabled = env.get("MFL_LEADER_ELECTION", default).strip().lower() in ("true", "1", "yes", "on")
    timing = Timing(
        lease_seconds=int(env.get("MFL_LEASE_DURATION_SECONDS", Timing.lease_seconds)),
        renew_deadline_seconds=float(env.get("MFL_LEASE_RENEW_DEADLINE_SECONDS", Timing.renew_deadline_seconds)),
        retry_seconds=float(env.get("MFL_LEASE_RETRY_SECONDS", Timing.retry_seconds)),
    )
    return Election(
        enabled=enabled,
        identity=env.get("POD_NAME") or f"{socket.gethostname()}/{os.getpid()}",
        name=env.get("MFL_LEASE_NAME", DEFAULT_LEASE),
        namespace=env.get("MFL_LEASE_NAMESPACE") or env.get("POD_NAMESPACE") or DEFAULT_NAMESPACE,
        timing=timing,
    )


# --- the edge ---------------------------------------------------------------------------------------------
class Conflict(Exception):
    """The Lease changed since it was read (409), or was created meanwhile."""


class Leases(Protocol):
    """One Lease's reads and writes (KubeLease below; tests use an in-memory store)."""

    def read(self) -> dict[str, Any] | None: ...
    def create(self, body: dict[str, Any]) -> dict[str, Any]: ...  # the Lease as written
    def replace(self, body: dict[str, Any]) -> dict[str, Any]: ...


class KubeLease:
    """The official client's generic object calls, dicts in and out: its V1Lease model would write
    MicroTime through datetime.isoformat(), which drops the fraction at .000000 and the API server
    (Go's RFC3339Micro layout) then refuses the Lease."""

    GROUP, VERSION, PLURAL = "coordination.k8s.io", "v1", "leases"

    def __init__(self, name: str, namespace: str, request_timeout: float) -> None:
        from kubernetes import client

        self.api = client.CustomObjectsApi()
        self.name, self.namespace, self.timeout = name, namespace, request_timeout

    def read(self) -> dict[str, Any] | None:
        try:
            return dict(self.api.get_namespaced_custom_object(*self._where(), self.name, _request_timeout=self.timeout))
        except Exception as error:
            if getattr(error, "status", None) == 404:
                return None
            raise

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._write(self.api.create_namespaced_custom_object, *self._where(), body)

    def replace(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._write(self.api.replace_namespaced_custom_object, *self._where(), self.name, body)

    def _where(self) -> tuple[str, str, str, str]:
        return self.GROUP, self.VERSION, self.namespace, self.PLURAL

    def _write(self, call: Callable[..., Any], *args: Any) -> dict[str, Any]:
        try:
            return dict(call(*args, _request_timeout=self.timeout))
        except Exception as error:
            if getattr(error, "status", None) == 409:
                raise Conflict(str(error)) from None
            raise


class Elector:
    """One candidate. `acquire` returns once it leads; `keep` renews and returns when it no longer does."""

    def __init__(
        self,
        leases: Leases,
        election: Election,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.leases, self.election, self.clock, self.wall = leases, election, clock, wall
        self.observed: Observation | None = None
        self.holding: Holding | None = None
        self.renewed_at: float | None = None
        self.other_holder = ""
        # Its own threads: a renewal never queues behind the engine's calls in the default executor.
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="leader-lease")

    async def _call(self, function: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, function, *args)

    @property
    def timing(self) -> Timing:
        return self.election.timing

    def deadline(self) -> float:
        """When this candidate must stop acting (monotonic), unless it renews before."""
        return (self.renewed_at or self.clock()) + self.timing.renew_deadline_seconds

    async def acquire(self) -> None:
        while not await self._attempt():
            await asyncio.sleep(self.timing.retry_seconds * random.uniform(1.0, 1.2))  # client-go's jitter

    async def keep(self, renewed: Callable[[float], None] = lambda deadline: None) -> None:
        while True:
            await asyncio.sleep(self.timing.retry_seconds)
            remaining = self.deadline() - self.clock()
            try:
                leading = await asyncio.wait_for(self._attempt(), timeout=max(0.0, remaining))
            except TimeoutError:
                leading = False
            if leading:
                renewed(self.deadline())
            elif self.other_holder or not still_leading(self.renewed_at, self.clock(), self.timing):
                return

    async def release(self) -> None:
        """Hand the Lease over at once (only ours, only as last read): best effort, bounded."""
        if self.holding is None or self.renewed_at is None or self.other_holder:
            return
        body = released_body(self.holding, self.election.name, self.election.namespace, self.wall())
        try:
            await asyncio.wait_for(self._call(self.leases.replace, body), self.timing.retry_seconds)
            log.info("released the leader Lease %s/%s", self.election.namespace, self.election.name)
        except Exception as error:  # the standby then waits for expiry: slower, still safe
            log.warning("could not release the leader Lease: %s", error)
        self.renewed_at = None

    async def _attempt(self) -> bool:
        """Read, decide, write once. True when this candidate holds a freshly written Lease."""
        started = self.clock()
        try:
            lease = await self._call(self.leases.read)
        except Exception as error:
            log.warning("reading the leader Lease failed: %s", error)
            return False
        holding = holding_of(lease)
        self.observed = observe(self.observed, holding, started)
        step = next_step(holding, self.election.identity, self.observed, started)
        self.other_holder = holding.holder if step is Step.WAIT and holding else ""
        if step is Step.WAIT:
            return False
        body = lease_body(
            step, holding, self.election.identity, self.timing, self.election.name, self.election.namespace, self.wall()
        )
        try:
            written = await self._call(self.leases.create if step is Step.CREATE else self.leases.replace, body)
        except Conflict:
            return False  # someone wrote first: read again next time
        except Exception as error:
            log.warning("writing the leader Lease (%s) failed: %s", step.value, error)
            return False
        if step is not Step.RENEW:
            log.info("%s leads (%s of Lease %s/%s)", self.election.identity, step.value, self.election.namespace,
                     self.election.name)  # fmt: skip
        self.renewed_at, self.holding = started, holding_of(written)
        self.observed = observe(self.observed, self.holding, started)
        return True


class Watchdog:
    """Calls `expire` (from its own thread) once the armed deadline passes without being pushed back."""

    def __init__(self, expire: Callable[[], None], clock: Callable[[], float] = time.monotonic) -> None:
        self.expire, self.clock = expire, clock
        self._deadline: float | None = None
        self._changed = threading.Condition()
        threading.Thread(target=self._watch, name="leader-watchdog", daemon=True).start()

    def arm(self, deadline: float) -> None:
        with self._changed:
            self._deadline = deadline
            self._changed.notify()

    def disarm(self) -> None:
        with self._changed:
            self._deadline = None
            self._changed.notify()

    def _watch(self) -> None:
        with self._changed:
            while True:
                if self._deadline is None:
                    self._changed.wait()
                    continue
                left = self._deadline - self.clock()
                if left <= 0:
                    self._deadline = None
                    self.expire()
                    continue
                self._changed.wait(left)


class NotLeading(RuntimeError):
    """An API call refused: this replica does not hold the Lease (or no longer knows that it does)."""


class Fence:
    """The engine's Kubernetes API behind a fence: a call starts only while `may_act()`, and calls in
    flight (in worker threads, which cancelling the engine does not stop) are counted, so the Lease is
    released on shutdown only once none is left (client-go's ReleaseOnCancel caveat). Reads are fenced
    too: a standby's engine has no business with the API at all."""

    def __init__(self, target: Any) -> None:
        self._target = target
        self.may_act: Callable[[], bool] = lambda: False
        self._busy = 0
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._target, name)
        if not callable(attribute):
            return attribute

        def fenced(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                if not self.may_act():
                    raise NotLeading(f"{name}: this replica does not hold the leader Lease")
                self._busy += 1
            try:
                return attribute(*args, **kwargs)
            finally:
                with self._lock:
                    self._busy -= 1

        return fenced

    def close(self) -> None:
        self.may_act = lambda: False

    async def drained(self, timeout: float, poll: float = 0.05) -> bool:
        """Whether every call in flight has returned within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while self._busy and time.monotonic() < deadline:
            await asyncio.sleep(poll)
        return not self._busy


def exit_process() -> None:
    """Leadership lost: end at once, threads and in-flight API calls included; the kubelet restarts us."""
    log.critical("lost the leader Lease: exiting so that no two replicas act")
    logging.shutdown()
    os._exit(1)


async def lead(
    elector: Elector, work: Callable[[], Awaitable[None]], fence: Fence, lost: Callable[[], None] = exit_process
) -> None:
    """Wait to lead, then run `work` while leading, its API calls allowed through `fence` only until the
    renew deadline. Leadership lost (not renewed in time, another holder, or `work` ended): `lost()`
    without releasing (the Lease expires after we are gone). Cancelled (shutdown): stop `work`, wait for
    its calls in flight, then release the Lease, so that the standby takes over at once and never overlaps."""
    await elector.acquire()
    fence.may_act = lambda: still_leading(elector.renewed_at, elector.clock(), elector.timing)
    metrics.LEADER.set(1)
    watchdog = Watchdog(lost, elector.clock)
    watchdog.arm(elector.deadline())
    worker = asyncio.create_task(work(), name="leader-work")
    keeper = asyncio.create_task(elector.keep(watchdog.arm), name="leader-renew")
    try:
        await asyncio.wait({worker, keeper}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        await _stop(fence, worker, keeper)
        if await fence.drained(elector.timing.renew_deadline_seconds / 2):
            await elector.release()
        watchdog.disarm()
        raise
    engine_ended = worker.done()
    await _stop(fence, worker, keeper)
    watchdog.disarm()
    if engine_ended:
        log.error("the engine ended while leading")
    elif elector.other_holder:
        log.error("the leader Lease is held by %s now", elector.other_holder)
    else:
        log.error("the leader Lease was not renewed within %ss", elector.timing.renew_deadline_seconds)
    lost()


async def _stop(fence: Fence, *tasks: asyncio.Task[Any]) -> None:
    fence.close()
    metrics.LEADER.set(0)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def unelected(work: Callable[[], Awaitable[None]], fence: Fence) -> None:
    """MFL_LEADER_ELECTION=false: one replica only (e.g. `make run`), leading by declaration."""
    fence.may_act = lambda: True
    metrics.LEADER.set(1)
    try:
        await work()
    finally:
        metrics.LEADER.set(0)
