"""Leader election on a `coordination.k8s.io/v1` Lease: any number of replicas, one actor.

Every replica watches (kopf feeds its engine's view of the fleet); only the holder of the Lease runs the
engine, which acts and writes status. The rules are client-go's (tools/leaderelection), decided by the pure
functions of feedbackloop.core.election, which explains where they differ: expiry on the candidate's own
clock; a deleted or emptied Lease still held until its last known term expires, and for a lease duration
from when it was seen so; only a release by the holder itself taken at once; a Lease created from absence
acted on a lease duration later:

- A candidate takes the Lease when its holder released it, or when the last term it knows of expired.
- The holder renews every `retry` seconds. When it has not renewed for `renew_deadline` seconds
  (< the lease duration) it ends the process: it stops acting before anyone may take over, and in-flight
  API calls in worker threads die with it. A watchdog thread enforces this, so a busy event loop
  cannot delay it. The kubelet restarts the container, which comes back as a candidate.
- Writes to the Lease are optimistic (the read resourceVersion goes back with the replace): of two
  candidates that saw the same expired Lease, one write wins, the other gets 409.
- The holder that finds its Lease taken, deleted or cleared ends the process the same way.
- On shutdown (SIGTERM, a rolling update) the engine is stopped first, then the Lease is released (marked
  as released by its holder), so the standby takes over within a poll instead of a lease duration.

**Fencing** (the engine's writes, runtime/kube.py): a process can pause (SIGSTOP, a frozen VM, a long GC)
after its fence admitted a call and resume after a standby took over; its watchdog and a check at the
start of the call do not stop what it sends on resuming. So the fence is the term, not only the call's
start: every HTTP request of a fenced call is sent only while the term has at least MIN_REQUEST_SECONDS
left, with its timeout bounded by what is left, and its answer is not used when the term ended while it
was in flight (NotLeading). Every update and delete carries a resourceVersion precondition read in the
same call before the request's own check: a standby writes only after this term ended, so a write that
lands after a takeover is refused (409) when the standby wrote the object since. Creates cannot carry a
precondition; their names are deterministic (AlreadyExists), and they are sent only with time left.

**Timing** (defaults, MFL_LEASE_* variables): lease 7 s, renew deadline 5 s, renew every 1 s, a standby
looks every 0.5 s and again exactly when the term it waits for ends. The holder stops 2 s before a standby
may take over; a ready standby takes over within lease + a poll (with jitter) + two API round trips of the
kill: at most about 7.6 s plus those round trips (core/election.py has the argument;
tests/e2e/test_failover.py measures it).

Why not a library: kubernetes.leaderelection (the official client; LeaseLock only since 2026) blocks a
thread with time.sleep, runs once (no way back to candidate), calls sys.exit on a bad config, and has no
request timeout, so a hung renew can outlive the lease while the work runs on. kubernetes_asyncio's port
would add a second Kubernetes client. kopf's peering is not an election: replicas of equal priority all
freeze. What is left is small: pure rules (tested exhaustively) and a thin edge.

The identity is the Pod's name (stable across container restarts: a SIGKILLed leader restarted by the
kubelet in the same Pod finds the Lease its own and resumes at once; a Pod's container never runs twice
at the same time). Outside a cluster it is host/pid.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar, cast

from prometheus_client import Gauge

from feedbackloop.core.election import (
    Holding,
    Observation,
    Step,
    Timing,
    acts_from,
    holding_of,
    lease_body,
    next_step,
    observe,
    parse_micro_time,
    released_body,
    still_leading,
)
from feedbackloop.core.sharding import REPLICA_LEASE_LABEL, replica_lease_name
from feedbackloop.runtime import metrics

log = logging.getLogger(__name__)
DEFAULT_LEASE = "feedbackloop-operator"
DEFAULT_NAMESPACE = "feedbackloop-system"
MIN_REQUEST_SECONDS = 0.25  # a request is not sent with less of the term left: it could not finish in it
T = TypeVar("T")


@dataclass(frozen=True)
class Election:
    enabled: bool
    identity: str
    name: str
    namespace: str
    timing: Timing
    labels: Mapping[str, str] = field(default_factory=dict)  # written on the Lease (the replica Leases' label)


def replica_election(election: Election) -> Election:
    """The replica's own Lease when sharding (core/sharding.py): `mfl-replica-<identity>`, labelled so that the
    coordinator lists them, with the leader Lease's timing and namespace."""
    return replace(
        election,
        name=replica_lease_name(election.identity),
        labels={REPLICA_LEASE_LABEL: "true"},
    )


def election_from_env(env: Mapping[str, str]) -> Election:
    """MFL_LEADER_ELECTION, MFL_LEASE_NAME, MFL_LEASE_NAMESPACE (default the Pod's namespace),
    MFL_LEASE_DURATION_SECONDS, MFL_LEASE_RENEW_DEADLINE_SECONDS, MFL_LEASE_RETRY_SECONDS, MFL_LEASE_POLL_SECONDS.

    On by default in a Pod (POD_NAME from the downward API, as manifests/ sets it); off by default outside
    one (`make run`, the benchmarks' host process): one process by construction, often on a cluster with
    no operator namespace for a Lease. MFL_LEADER_ELECTION=true|false overrides either."""
    default = "true" if env.get("POD_NAME") else "false"
    enabled = env.get("MFL_LEADER_ELECTION", default).strip().lower() in ("true", "1", "yes", "on")
    timing = Timing(
        lease_seconds=int(env.get("MFL_LEASE_DURATION_SECONDS", Timing.lease_seconds)),
        renew_deadline_seconds=float(env.get("MFL_LEASE_RENEW_DEADLINE_SECONDS", Timing.renew_deadline_seconds)),
        retry_seconds=float(env.get("MFL_LEASE_RETRY_SECONDS", Timing.retry_seconds)),
        poll_seconds=float(env.get("MFL_LEASE_POLL_SECONDS", Timing.poll_seconds)),
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
        """`request_timeout`: each read or write's (the renew deadline: the elector bounds a renewal by what is
        left of it; a timeout of one retry period failed every renewal while the API server answered in 1-2 s).
        A client of its own without urllib3's retries: the elector tries again each period itself, and a re-sent
        write after a read timeout only spent the deadline."""
        from kubernetes import client

        configuration = client.Configuration.get_default_copy()
        configuration.retries = False
        self.api = client.CustomObjectsApi(client.ApiClient(configuration))
        self.name, self.namespace, self.timeout = name, namespace, request_timeout

    def read(self) -> dict[str, Any] | None:
        try:
            found = self.api.get_namespaced_custom_object(*self._where(), self.name, _request_timeout=self.timeout)
        except Exception as error:
            if getattr(error, "status", None) == 404:
                return None
            raise
        return dict(cast(dict[str, Any], found))

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
        self.acts_from = math.inf  # when this candidate may start acting (core.election.acts_from)
        self.other_holder = ""
        # Its own threads: a renewal never queues behind the engine's calls in the default executor.
        # Four: a renewal cut short by its deadline leaves its thread blocked until its request times out.
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="leader-lease")

    async def _call(self, function: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, function, *args)

    @property
    def timing(self) -> Timing:
        return self.election.timing

    def deadline(self) -> float:
        """When this candidate must stop acting (monotonic), unless it renews before."""
        return (self.renewed_at or self.clock()) + self.timing.renew_deadline_seconds

    def term_end(self) -> float:
        """When this candidate's term ends (monotonic): -inf when it does not lead (or may not act yet)."""
        if self.renewed_at is None or self.clock() < self.acts_from:
            return -math.inf
        return self.renewed_at + self.timing.renew_deadline_seconds

    async def acquire(self) -> None:
        """Return once this candidate holds the Lease and may act."""
        while True:
            while not await self._attempt():
                # A standby looks every poll (client-go's jitter), and once more right when the term it waits
                # for ends.
                wait = self.timing.poll_seconds * random.uniform(1.0, 1.2)
                if self.observed is not None and self.observed.until > self.clock():
                    wait = min(wait, self.observed.until - self.clock() + 0.001)
                await asyncio.sleep(wait)
            if await self._hold_until_it_may_act():
                return

    async def _hold_until_it_may_act(self) -> bool:
        """Renew without acting until `acts_from` (a Lease created from absence); False when lost meanwhile."""
        while self.clock() < self.acts_from:
            await asyncio.sleep(min(self.timing.retry_seconds, self.acts_from - self.clock()))
            if await self._attempt():
                continue
            if self.other_holder or not still_leading(self.renewed_at, self.clock(), self.timing):
                log.info("lost the leader Lease before acting on it")
                self.renewed_at, self.acts_from = None, math.inf
                return False
        return True

    async def keep(self, renewed: Callable[[float], None] = lambda deadline: None) -> None:
        """Renew every retry period, counted from each try's start (not its end: a slow answer must not push the
        next renewal towards the deadline), each try bounded by what is left of the renew deadline."""
        last_try = self.clock()
        while True:
            await asyncio.sleep(max(0.0, last_try + self.timing.retry_seconds - self.clock()))
            last_try = self.clock()
            remaining = self.deadline() - last_try
            try:
                async with asyncio.timeout(max(0.0, remaining)):
                    leading = await self._renew()
                    if leading is None:
                        leading = await self._attempt()
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
        body = released_body(
            self.holding, self.election.name, self.election.namespace, self.wall(), self.election.labels or None
        )
        try:
            # Up to a renew deadline, not a retry period: a loaded API server answers a write in more than 1 s,
            # and a release that lands late is still safe (it names our last version: after a takeover, a 409).
            async with asyncio.timeout(self.timing.renew_deadline_seconds):
                await self._call(self.leases.replace, body)
            log.info("released the leader Lease %s/%s", self.election.namespace, self.election.name)
        except Exception as error:  # the standby then waits for expiry: slower, still safe
            log.warning("could not release the leader Lease: %s", error)
        self.renewed_at = None

    async def attempt(self) -> bool:
        """One read-decide-write (the coordinator takes a dead replica's Lease this way, a step per round):
        True when this candidate holds a freshly written Lease; `may_act()` says whether it may act on it."""
        return await self._attempt()

    def may_act(self) -> bool:
        return self.term_end() > self.clock()

    def saw(self, lease: dict[str, Any] | None) -> None:
        """The Lease as a list just returned it: the observation (when its holder's term ends) starts from
        here, before this candidate tries to take it; `now` is after the list returned, so it errs late."""
        self.observed = observe(self.observed, holding_of(lease), self.clock(), self.timing)

    def _body(self, step: Step, holding: Holding | None) -> dict[str, Any]:
        """This candidate's Lease for `step`, now (core.election.lease_body)."""
        election = self.election
        return lease_body(
            step, holding, election.identity, self.timing, election.name, election.namespace, self.wall(),
            election.labels or None,
        )  # fmt: skip

    async def _renew(self) -> bool | None:
        """The holder's renewal as one write on the Lease as this candidate last wrote it (resourceVersion as the
        precondition): one request, not a read and a write, so a renewal survives twice the API server's latency.
        None when it cannot tell (someone wrote the Lease since: a 409): read and decide, as any attempt."""
        holding = self.holding
        if holding is None or holding.holder != self.election.identity or self.renewed_at is None:
            return None
        started = self.clock()
        try:
            written = await self._call(self.leases.replace, self._body(Step.RENEW, holding))
        except Conflict:
            return None
        except Exception as error:
            log.warning("renewing the leader Lease failed: %s", error)
            return False
        self.renewed_at, self.holding = started, holding_of(written)
        self.observed = observe(self.observed, self.holding, self.clock(), self.timing)
        return True

    async def _attempt(self) -> bool:
        """Read, decide, write once. True when this candidate holds a freshly written Lease."""
        started = self.clock()
        try:
            lease = await self._call(self.leases.read)
        except Exception as error:
            log.warning("reading the leader Lease failed: %s", error)
            return False
        seen = self.clock()  # after the read returned: the holder's renewal it shows started before
        holding = holding_of(lease)
        self.observed = observe(self.observed, holding, seen, self.timing)
        step = next_step(holding, self.election.identity, self.observed, seen)
        if step is Step.WAIT:
            if holding is not None and holding.holder:
                self.other_holder = holding.holder
            else:
                self.other_holder = "nobody: the Lease was " + ("deleted" if holding is None else "cleared")
            return False
        self.other_holder = ""
        body = self._body(step, holding)
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
        returned = self.clock()
        if step is not Step.RENEW:
            self.acts_from = acts_from(step, returned, self.timing)
        elif self.acts_from == math.inf:  # this process's first write: it resumes its Pod's Lease
            created_ago = None
            if holding is not None and holding.transitions == 0:  # created by this Pod, maybe not acted on yet
                acquired = parse_micro_time(holding.acquire_time)
                created_ago = (self.wall() - acquired).total_seconds() if acquired else 0.0
            self.acts_from = acts_from(step, returned, self.timing, created_ago)
        self.renewed_at, self.holding = started, holding_of(written)
        self.observed = observe(self.observed, self.holding, returned, self.timing)
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
    """An API call or request refused: this replica does not hold the Lease (or no longer knows that it
    does, or its term ended while the request was in flight)."""


class Term(Protocol):
    """The leadership term a fenced call runs in (a Fence): runtime/kube.py sends each request only with
    time left in it."""

    def remaining(self) -> float: ...


# The term of the fenced call running in this thread (None outside a fenced call): set by Fence for the
# duration of each call, read by runtime/kube.py before and after each HTTP request.
TERM: ContextVar[Term | None] = ContextVar("feedbackloop_leader_term", default=None)


def _not_leading() -> float:
    return -math.inf


def _declared() -> float:
    return math.inf


class Fence:
    """The engine's Kubernetes API behind a fence: a call starts only while the term lasts (`may_act()`),
    and every request it sends is checked against the term again (TERM, runtime/kube.py), so a call
    admitted before a pause sends nothing after the term ended. Calls in flight (in worker threads, which
    cancelling the engine does not stop) are counted, so the Lease is released on shutdown only once none
    is left (client-go's ReleaseOnCancel caveat); `close()` ends the term for them too. Reads are fenced
    too: a standby's engine has no business with the API at all."""

    def __init__(self, target: Any, clock: Callable[[], float] = time.monotonic) -> None:
        self._target = target
        self.clock = clock
        self._term_end: Callable[[], float] = _not_leading
        self._busy = 0
        self._lock = threading.Lock()

    def open(self, term_end: Callable[[], float]) -> None:
        """Admit calls until `term_end()` (monotonic, re-read at every check: renewals push it back)."""
        self._term_end = term_end

    def close(self) -> None:
        self._term_end = _not_leading

    def remaining(self) -> float:
        return self._term_end() - self.clock()

    def may_act(self) -> bool:
        return self.remaining() > 0

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._target, name)
        if not callable(attribute):
            return attribute

        def fenced(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                if not self.may_act():
                    raise NotLeading(f"{name}: this replica does not hold the leader Lease")
                self._busy += 1
            token = TERM.set(self)
            try:
                return attribute(*args, **kwargs)
            finally:
                TERM.reset(token)
                with self._lock:
                    self._busy -= 1

        return fenced

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
    elector: Elector,
    work: Callable[[], Coroutine[Any, Any, None]],
    fence: Fence,
    lost: Callable[[], None] = exit_process,
    gauge: Gauge = metrics.LEADER,
) -> None:
    """Wait to lead, then run `work` while leading, its API calls allowed through `fence` only until the
    renew deadline. Leadership lost (not renewed in time, another holder, or `work` ended): `lost()`
    without releasing (the Lease expires after we are gone). Cancelled (shutdown): stop `work`, wait for
    its calls in flight, then release the Lease, so that the standby takes over at once and never overlaps."""
    await elector.acquire()
    fence.open(elector.term_end)
    gauge.set(1)
    watchdog = Watchdog(lost, elector.clock)
    watchdog.arm(elector.deadline())
    worker = asyncio.create_task(work(), name="leader-work")
    keeper = asyncio.create_task(elector.keep(watchdog.arm), name="leader-renew")
    try:
        await asyncio.wait({worker, keeper}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        # Shutdown: no new call, the engine stopped, and the Lease still renewed while the calls in flight drain
        # (they end with the term at the latest: each request's timeout is capped by it), so that the release
        # follows the last renewal at once and the standby's wait is the release's write, not the drain.
        await _stop(fence, gauge, worker)
        drained = await fence.drained(elector.timing.renew_deadline_seconds)
        await _stop(fence, gauge, keeper)
        if drained:
            await elector.release()
        watchdog.disarm()
        raise
    engine_ended = worker.done()
    await _stop(fence, gauge, worker, keeper)
    watchdog.disarm()
    if engine_ended:
        log.error("the engine ended while leading")
    elif elector.other_holder:
        log.error("the leader Lease is now held by %s", elector.other_holder)
    else:
        log.error("the leader Lease was not renewed within %ss", elector.timing.renew_deadline_seconds)
    lost()


async def _stop(fence: Fence, gauge: Gauge, *tasks: asyncio.Task[Any]) -> None:
    fence.close()
    gauge.set(0)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def unelected(work: Callable[[], Coroutine[Any, Any, None]], fence: Fence) -> None:
    """MFL_LEADER_ELECTION=false: one replica only (e.g. `make run`), leading by declaration."""
    fence.open(_declared)
    metrics.LEADER.set(1)
    try:
        await work()
    finally:
        metrics.LEADER.set(0)
