"""Leader election (feedbackloop.runtime.leader): the pure step function over every combination of its inputs, a
seeded simulation of crashes, outages and slow writes that never finds two actors, and the asyncio edge
against an in-memory Lease store with the API server's optimistic concurrency."""

from __future__ import annotations

import asyncio
import copy
import functools
import itertools
import random
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest

from feedbackloop.runtime import leader, metrics
from feedbackloop.runtime.leader import Holding, Observation, Step, Timing

ME, OTHER = "feedbackloop-operator-abc", "feedbackloop-operator-xyz"


# --- pure ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "lease, renew, retry, valid",
    [
        (15, 10, 2, True),
        (1, 0.5, 0.1, True),
        (15, 15, 2, False),
        (15, 10, 10, False),
        (15, 20, 2, False),
        (15, 10, 0, False),
        (0, 0, 0, False),
        (15, 2, 10, False),
    ],  # fmt: skip
)
def test_timing_needs_retry_below_renew_deadline_below_lease(
    lease: int, renew: float, retry: float, valid: bool
) -> None:
    if valid:
        Timing(lease, renew, retry)
    else:
        with pytest.raises(ValueError, match="retry < renew deadline < lease duration"):
            Timing(lease, renew, retry)


def lease_dict(holder: str | None, seconds: int | None = 15, version: str = "7", transitions: int = 2) -> dict:
    spec: dict[str, Any] = {"leaseTransitions": transitions, "acquireTime": "2026-12-02T03:00:00.000000Z"}
    if holder is not None:
        spec["holderIdentity"] = holder
    if seconds is not None:
        spec["leaseDurationSeconds"] = seconds
    return {"metadata": {"name": "l", "resourceVersion": version}, "spec": spec}


def test_holding_of_reads_the_fields_the_election_needs() -> None:
    assert leader.holding_of(None) is None
    assert leader.holding_of(lease_dict(OTHER)) == Holding(OTHER, 15, "7", 2, "2026-12-02T03:00:00.000000Z")
    released = leader.holding_of({"metadata": {"resourceVersion": "9"}, "spec": {"leaseDurationSeconds": 1}})
    assert released == Holding("", 1, "9", 0, None)
    assert leader.holding_of({"metadata": {}}) == Holding("", 0, "", 0, None)


def test_observation_restarts_only_when_the_lease_changed() -> None:
    first = leader.observe(None, leader.holding_of(lease_dict(OTHER, version="1")), 100.0)
    assert first == Observation("1", 100.0)
    assert leader.observe(first, leader.holding_of(lease_dict(OTHER, version="1")), 130.0) is first
    assert leader.observe(first, leader.holding_of(lease_dict(OTHER, version="2")), 130.0) == Observation("2", 130.0)
    assert leader.observe(first, None, 131.0) == Observation(None, 131.0)


def expected_step(lease: str, holder: str, seconds: int, elapsed: float) -> Step:
    """The rules, written out once more in the order a reader checks them."""
    if lease == "absent":
        return Step.CREATE
    if holder == ME:
        return Step.RENEW
    if holder == "" or seconds == 0:
        return Step.ACQUIRE
    return Step.ACQUIRE if elapsed >= seconds else Step.WAIT


@pytest.mark.parametrize(
    "lease, holder, seconds, elapsed",
    list(itertools.product(["absent", "present"], [ME, OTHER, ""], [0, 1, 15], [0.0, 0.999, 1.0, 14.999, 15.0, 600.0])),
)
def test_next_step_over_every_combination(lease: str, holder: str, seconds: int, elapsed: float) -> None:
    holding = None if lease == "absent" else Holding(holder, seconds, "5", 0, None)
    observed = Observation("5" if holding else None, 1000.0)
    assert leader.next_step(holding, ME, observed, 1000.0 + elapsed) is expected_step(lease, holder, seconds, elapsed)


def test_expiry_counts_from_when_this_candidate_saw_the_change_not_from_the_holders_clock() -> None:
    # The holder's renewTime says an hour ago (its clock is off): what counts is when we saw it change.
    skewed = lease_dict(OTHER)
    skewed["spec"]["renewTime"] = "2026-12-02T02:00:00.000000Z"
    holding = leader.holding_of(skewed)
    seen = leader.observe(None, holding, 50.0)
    assert leader.next_step(holding, ME, seen, 64.9) is Step.WAIT
    assert leader.next_step(holding, ME, seen, 65.0) is Step.ACQUIRE


@pytest.mark.parametrize(
    "renewed_at, now, leading",
    [(None, 0.0, False), (100.0, 100.0, True), (100.0, 109.999, True), (100.0, 110.0, False), (100.0, 500.0, False)],
)
def test_still_leading_until_the_renew_deadline(renewed_at: float | None, now: float, leading: bool) -> None:
    assert leader.still_leading(renewed_at, now, Timing()) is leading


def test_micro_time_always_has_six_fraction_digits() -> None:
    assert leader.micro_time(datetime(2026, 12, 2, 3, 4, 5, tzinfo=UTC)) == "2026-12-02T03:04:05.000000Z"
    assert leader.micro_time(datetime(2026, 12, 2, 3, 4, 5, 120, tzinfo=UTC)) == "2026-12-02T03:04:05.000120Z"


WALL = datetime(2026, 12, 2, 4, 0, 0, 500000, tzinfo=UTC)


def test_lease_bodies_create_renew_acquire() -> None:
    timing = Timing()
    created = leader.lease_body(Step.CREATE, None, ME, timing, "l", "ns", WALL)
    assert created["metadata"] == {"name": "l", "namespace": "ns"}  # no resourceVersion: a create
    assert created["spec"] == {
        "holderIdentity": ME,
        "leaseDurationSeconds": 15,
        "acquireTime": "2026-12-02T04:00:00.500000Z",
        "renewTime": "2026-12-02T04:00:00.500000Z",
        "leaseTransitions": 0,
    }
    mine = Holding(ME, 15, "8", 3, "2026-12-02T03:00:00.000000Z")
    renewed = leader.lease_body(Step.RENEW, mine, ME, timing, "l", "ns", WALL)
    assert renewed["metadata"]["resourceVersion"] == "8"  # optimistic: a concurrent write makes it a 409
    assert renewed["spec"]["acquireTime"] == "2026-12-02T03:00:00.000000Z" and renewed["spec"]["leaseTransitions"] == 3
    taken = leader.lease_body(Step.ACQUIRE, Holding(OTHER, 15, "9", 3, "x"), ME, timing, "l", "ns", WALL)
    assert taken["spec"]["leaseTransitions"] == 4 and taken["spec"]["acquireTime"] == "2026-12-02T04:00:00.500000Z"
    released = leader.released_body(mine, "l", "ns", WALL)
    assert "holderIdentity" not in released["spec"] and released["spec"]["leaseDurationSeconds"] == 1
    assert released["metadata"]["resourceVersion"] == "8" and released["spec"]["leaseTransitions"] == 3


def test_election_from_env() -> None:
    election = leader.election_from_env({"POD_NAME": "op-1", "POD_NAMESPACE": "team-a"})
    assert election == leader.Election(True, "op-1", "feedbackloop-operator", "team-a", Timing(15, 10.0, 2.0))
    tuned = leader.election_from_env(
        {
            "MFL_LEASE_DURATION_SECONDS": "30",
            "MFL_LEASE_RENEW_DEADLINE_SECONDS": "20",
            "MFL_LEASE_RETRY_SECONDS": "4",
            "MFL_LEASE_NAME": "mine",
            "MFL_LEASE_NAMESPACE": "ops",
            "POD_NAMESPACE": "team-a",
        }  # fmt: skip
    )
    assert (tuned.timing, tuned.name, tuned.namespace) == (Timing(30, 20.0, 4.0), "mine", "ops")
    outside = leader.election_from_env({})  # `make run`, the benchmarks: one process, off unless asked
    assert not outside.enabled and "/" in outside.identity and outside.namespace == "feedbackloop-system"
    assert leader.election_from_env({"MFL_LEADER_ELECTION": "true"}).enabled
    for off in ("false", "0", "No", "off"):
        assert not leader.election_from_env({"POD_NAME": "op-1", "MFL_LEADER_ELECTION": off}).enabled
    with pytest.raises(ValueError):
        leader.election_from_env({"MFL_LEASE_RENEW_DEADLINE_SECONDS": "20"})


# --- a seeded simulation of the pure rules: crashes, outages, slow writes ------------------------------------
@dataclass
class Candidate:
    identity: str
    observed: Observation | None = None
    renewed_at: float | None = None
    next_try: float = 0.0
    dead_until: float = -1.0
    offline_until: float = -1.0
    writing: bool = False

    def alive(self, now: float) -> bool:
        return now >= self.dead_until

    def restart(self) -> None:  # a new process: nothing remembered
        self.observed, self.renewed_at, self.writing = None, None, False


@dataclass
class Simulation:
    seed: int
    timing: Timing = field(default_factory=Timing)
    step: float = 0.05

    def run(self, seconds: float = 900.0) -> tuple[int, list[float]]:
        """Returns how many times a new leadership term began and every leaderless gap before one (seconds);
        asserts that no two candidates ever act at once."""
        rng, timing = random.Random(self.seed), self.timing
        lease: dict[str, Any] | None = None
        version = 0
        pods = [Candidate(f"pod-{i}") for i in range(3)]
        writes: list[tuple[float, Candidate, dict[str, Any], float]] = []  # (lands at, by, body, started)
        changes, gaps, gap_start = 0, [], 0.0
        last_actor: Candidate | None = None
        now = 0.0
        while now < seconds:
            for pod in pods:
                if not pod.alive(now) or pod.writing or now < pod.next_try:
                    continue
                pod.next_try = now + timing.retry_seconds * rng.uniform(1.0, 1.2)
                if now < pod.offline_until:
                    continue  # its requests fail
                holding = leader.holding_of(lease)
                pod.observed = leader.observe(pod.observed, holding, now)
                decided = leader.next_step(holding, pod.identity, pod.observed, now)
                if decided is Step.WAIT:
                    if pod.renewed_at is not None:  # another holder while we thought we led: exit
                        pod.dead_until, pod.renewed_at = now + rng.uniform(1, 10), None
                    continue
                body = leader.lease_body(decided, holding, pod.identity, timing, "l", "ns", WALL)
                writes.append((now + rng.uniform(0.0, 0.8), pod, body, now))  # slow API server
                pod.writing = True
            for landed in [w for w in writes if w[0] <= now]:
                writes.remove(landed)
                _, pod, body, started = landed
                pod.writing = False
                expected = body["metadata"].get("resourceVersion")
                current = str(version) if lease else None
                if expected == current:  # the API server's optimistic concurrency
                    version += 1
                    lease = copy.deepcopy(body)
                    lease["metadata"]["resourceVersion"] = str(version)
                    if pod.alive(now) and not (pod.dead_until > started):
                        pod.renewed_at = started
                        if rng.random() < 0.05:  # the worst moment to lose the API: just after a renewal
                            pod.offline_until = now + rng.uniform(1, 25)
            for pod in pods:  # the watchdog: not renewed within the deadline -> the process ends
                if pod.renewed_at is not None and not leader.still_leading(pod.renewed_at, now, timing):
                    pod.dead_until, pod.renewed_at = now + rng.uniform(1, 10), None
                if pod.dead_until > 0 and pod.alive(now) and pod.dead_until > now - self.step:
                    pod.restart()
            self._disturb(rng, pods, now)
            actors = [p for p in pods if p.alive(now) and leader.still_leading(p.renewed_at, now, timing)]
            assert len(actors) <= 1, f"seed {self.seed}: two actors at {now:.2f}s: {actors}"
            actor = actors[0] if actors else None
            if actor is None and last_actor is not None:
                gap_start = now
            if actor is not None and last_actor is None and now > 1.0:
                gaps.append(now - gap_start)
                changes += 1
            last_actor = actor
            now += self.step
        return changes, gaps

    def _disturb(self, rng: random.Random, pods: list[Candidate], now: float) -> None:
        if rng.random() < self.step / 30:  # about every 30 s: SIGKILL the leader
            for pod in pods:
                if pod.renewed_at is not None and pod.alive(now):
                    pod.dead_until, pod.renewed_at, pod.writing = now + rng.uniform(0.5, 20), None, False


@pytest.mark.parametrize("seed", range(8))
def test_simulated_crashes_and_outages_never_give_two_actors_and_fail_over_in_bounded_time(seed: int) -> None:
    timing = Timing()
    changes, gaps = Simulation(seed, timing).run()
    assert changes >= 5  # the disturbances did move the leadership around
    # The longest wait for a new actor: the lease after the last renewal seen, a retry (with jitter) to
    # notice, and the slowest write; outages of the old leader start the clock at its renew deadline.
    assert max(gaps) <= timing.lease_seconds + 2 * 1.2 * timing.retry_seconds + 2 * 0.8 + 0.1, gaps


# --- the asyncio edge against an in-memory Lease ---------------------------------------------------------
class MemoryLeases:
    """One Lease with the API server's semantics: create conflicts when it exists, replace when the
    resourceVersion is not the current one. `broken` makes every call fail (an unreachable API server)."""

    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.version = 0
        self.broken = False
        self.history: list[tuple[float, str]] = []  # (when, holder) per write
        self._lock = threading.Lock()

    def read(self) -> dict[str, Any] | None:
        self._check()
        with self._lock:
            return copy.deepcopy(self.lease)

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._write(body, None)

    def replace(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._write(body, body["metadata"].get("resourceVersion"))

    def _write(self, body: dict[str, Any], expected: str | None) -> dict[str, Any]:
        self._check()
        with self._lock:
            current = str(self.version) if self.lease else None
            if expected != current:
                raise leader.Conflict(f"{expected} != {current}")
            self.version += 1
            self.lease = copy.deepcopy(body)
            self.lease["metadata"]["resourceVersion"] = str(self.version)
            self.history.append((time.monotonic(), body["spec"].get("holderIdentity", "")))
            return copy.deepcopy(self.lease)

    def _check(self) -> None:
        if self.broken:
            raise ConnectionError("API server unreachable")


FAST = Timing(lease_seconds=1, renew_deadline_seconds=0.5, retry_seconds=0.1)


def in_event_loop(test: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    """Run an async test in a fresh event loop (the project has no pytest asyncio plugin)."""

    @functools.wraps(test)
    def run() -> None:
        asyncio.run(test())

    return run


def elector(leases: MemoryLeases, identity: str) -> leader.Elector:
    return leader.Elector(leases, leader.Election(True, identity, "l", "ns", FAST))


def holder(leases: MemoryLeases) -> str:
    return (leases.lease or {}).get("spec", {}).get("holderIdentity", "")


@in_event_loop
async def test_standby_takes_over_one_lease_duration_after_the_leader_stopped_renewing() -> None:
    leases = MemoryLeases()
    first = elector(leases, ME)
    await first.acquire()
    assert holder(leases) == ME
    started = time.monotonic()
    await asyncio.wait_for(elector(leases, OTHER).acquire(), timeout=5)  # the first never renews again
    waited = time.monotonic() - started
    assert holder(leases) == OTHER and leases.lease["spec"]["leaseTransitions"] == 1
    assert FAST.lease_seconds <= waited <= FAST.lease_seconds + 3 * FAST.retry_seconds + 0.5, waited


@in_event_loop
async def test_a_released_lease_is_taken_within_a_retry() -> None:
    leases = MemoryLeases()
    first = elector(leases, ME)
    await first.acquire()
    standby = asyncio.create_task(elector(leases, OTHER).acquire())
    await asyncio.sleep(0.3)
    assert not standby.done()
    released = time.monotonic()
    await first.release()
    await asyncio.wait_for(standby, timeout=2)
    assert time.monotonic() - released < 2 * 1.2 * FAST.retry_seconds + 0.3
    assert holder(leases) == OTHER


@in_event_loop
async def test_a_restarted_process_of_the_same_pod_resumes_its_own_lease_at_once() -> None:
    leases = MemoryLeases()
    await elector(leases, ME).acquire()
    started = time.monotonic()
    await asyncio.wait_for(elector(leases, ME).acquire(), timeout=1)  # SIGKILL, the kubelet restarts it
    assert time.monotonic() - started < 0.3 and leases.lease["spec"]["leaseTransitions"] == 0


class Work:
    """Stands for the engine: it calls the API through the fence until cancelled."""

    def __init__(self, fence: leader.Fence) -> None:
        self.fence = fence
        self.calls = 0
        self.refused = 0

    async def run(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self.fence.patch_status, "ns", "loop", {})
                self.calls += 1
            except leader.NotLeading:
                self.refused += 1
            await asyncio.sleep(0.02)


class Api:
    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.finished: list[float] = []

    def patch_status(self, *args: Any) -> None:
        time.sleep(self.delay)
        self.finished.append(time.monotonic())


@in_event_loop
async def test_a_leader_that_cannot_renew_stops_acting_before_its_lease_can_expire() -> None:
    leases, api, lost = MemoryLeases(), Api(), threading.Event()
    fence = leader.Fence(api)
    candidate = elector(leases, ME)
    work = Work(fence)
    task = asyncio.create_task(leader.lead(candidate, work.run, fence, lost.set))
    await asyncio.sleep(0.4)
    assert metrics.LEADER._value.get() == 1 and work.calls > 3  # acting, and renewing past the first deadline
    leases.broken = True
    cut = time.monotonic()
    await asyncio.wait_for(task, timeout=3)
    assert lost.is_set() and metrics.LEADER._value.get() == 0
    last_renewal = max(when for when, _ in leases.history)
    assert max(api.finished) < last_renewal + FAST.renew_deadline_seconds < last_renewal + FAST.lease_seconds
    assert time.monotonic() - cut < FAST.lease_seconds
    with pytest.raises(leader.NotLeading):
        fence.patch_status("ns", "loop", {})
    assert holder(leases) == ME  # not released: the Lease expires once we are gone


@in_event_loop
async def test_another_holder_ends_leadership_at_the_next_renewal() -> None:
    leases, lost = MemoryLeases(), threading.Event()
    fence = leader.Fence(Api())
    task = asyncio.create_task(leader.lead(elector(leases, ME), Work(fence).run, fence, lost.set))
    await asyncio.sleep(0.25)
    with leases._lock:  # e.g. this replica was frozen and another took over meanwhile
        leases.lease["spec"]["holderIdentity"] = OTHER
        leases.version += 1
        leases.lease["metadata"]["resourceVersion"] = str(leases.version)
    await asyncio.wait_for(task, timeout=1)
    assert lost.is_set() and holder(leases) == OTHER


@in_event_loop
async def test_shutdown_stops_the_work_waits_for_calls_in_flight_then_releases() -> None:
    leases, api, lost = MemoryLeases(), Api(delay=0.15), threading.Event()
    fence = leader.Fence(api)
    task = asyncio.create_task(leader.lead(elector(leases, ME), Work(fence).run, fence, lost.set))
    await asyncio.sleep(0.3)
    task.cancel()  # kopf's cleanup on SIGTERM
    with pytest.raises(asyncio.CancelledError):
        await task
    released_at, released_holder = leases.history[-1]
    assert released_holder == "" and leases.lease["spec"]["leaseDurationSeconds"] == 1
    assert max(api.finished) <= released_at  # the last write in flight had returned before the release
    assert not lost.is_set() and metrics.LEADER._value.get() == 0


@in_event_loop
async def test_the_engine_ending_gives_up_leadership() -> None:
    leases, lost = MemoryLeases(), threading.Event()

    async def crashes() -> None:
        raise RuntimeError("bug")

    await asyncio.wait_for(
        leader.lead(elector(leases, ME), crashes, leader.Fence(Api()), lost.set), timeout=2
    )  # fmt: skip
    assert lost.is_set()


@in_event_loop
async def test_a_standby_runs_nothing_and_its_fence_refuses_calls() -> None:
    leases = MemoryLeases()
    await elector(leases, OTHER).acquire()
    fence, started = leader.Fence(Api()), asyncio.Event()

    async def work() -> None:
        started.set()

    task = asyncio.create_task(leader.lead(elector(leases, ME), work, fence, lambda: None))
    await asyncio.sleep(0.5)  # within the other's lease (it is not renewing, but 1 s has not passed)
    assert not started.is_set() and metrics.LEADER._value.get() == 0
    with pytest.raises(leader.NotLeading):
        fence.patch_status("ns", "loop", {})
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def test_watchdog_fires_at_the_deadline_unless_pushed_back() -> None:
    fired = threading.Event()
    dog = leader.Watchdog(fired.set)
    dog.arm(time.monotonic() + 0.2)
    time.sleep(0.1)
    dog.arm(time.monotonic() + 0.3)  # renewed
    time.sleep(0.25)
    assert not fired.is_set()
    assert fired.wait(0.5)
    fired.clear()
    dog.arm(time.monotonic() + 0.1)
    dog.disarm()
    assert not fired.wait(0.3)
