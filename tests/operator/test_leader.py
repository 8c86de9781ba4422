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

from feedbackloop.core import election
from feedbackloop.core.election import Holding, Observation, Step, Timing
from feedbackloop.runtime import leader, metrics

ME, OTHER = "feedbackloop-operator-abc", "feedbackloop-operator-xyz"


# --- pure ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "lease, renew, retry, poll, valid",
    [
        (7, 5, 1, 0.5, True),
        (15, 10, 2, 2, True),
        (1, 0.5, 0.1, 0.05, True),
        (15, 15, 2, 1, False),
        (15, 10, 10, 1, False),
        (15, 20, 2, 1, False),
        (15, 10, 0, 1, False),
        (0, 0, 0, 1, False),
        (15, 2, 10, 1, False),
    ],  # fmt: skip
)
def test_timing_needs_retry_below_renew_deadline_below_lease(
    lease: int, renew: float, retry: float, poll: float, valid: bool
) -> None:
    if valid:
        Timing(lease, renew, retry, poll)
    else:
        with pytest.raises(ValueError, match="retry < renew deadline < lease duration"):
            Timing(lease, renew, retry, poll)


@pytest.mark.parametrize("poll", [0, -1, 5.5])
def test_timing_needs_a_positive_poll_within_the_renew_deadline(poll: float) -> None:
    with pytest.raises(ValueError, match="MFL_LEASE_POLL_SECONDS"):
        Timing(7, 5, 1, poll)


def test_the_defaults_fail_over_within_ten_seconds_and_keep_a_margin() -> None:
    timing = Timing()
    assert timing.lease_seconds - timing.renew_deadline_seconds >= 2  # the holder stops this long before
    assert timing.lease_seconds + 2 * 1.2 * timing.poll_seconds <= 8.5  # the kill is noticed within (+ 2 calls)


def lease_dict(
    holder: str | None, seconds: int | None = 15, version: str = "7", transitions: int = 2, released_by: str = ""
) -> dict:
    spec: dict[str, Any] = {"leaseTransitions": transitions, "acquireTime": "2026-12-02T03:00:00.000000Z"}
    if holder is not None:
        spec["holderIdentity"] = holder
    if seconds is not None:
        spec["leaseDurationSeconds"] = seconds
    metadata: dict[str, Any] = {"name": "l", "resourceVersion": version}
    if released_by:
        metadata["annotations"] = {election.RELEASED_BY: released_by}
    return {"metadata": metadata, "spec": spec}


def test_holding_of_reads_the_fields_the_election_needs() -> None:
    assert election.holding_of(None) is None
    assert election.holding_of(lease_dict(OTHER)) == Holding(OTHER, 15, "7", 2, "2026-12-02T03:00:00.000000Z")
    released = election.holding_of({"metadata": {"resourceVersion": "9"}, "spec": {"leaseDurationSeconds": 1}})
    assert released == Holding("", 1, "9", 0, None)
    assert election.holding_of({"metadata": {}}) == Holding("", 0, "", 0, None)
    marked = election.holding_of(lease_dict(None, 1, "9", released_by=OTHER))
    assert marked is not None and marked.released_by == OTHER and marked.holder == ""


TIMING = Timing()  # lease 7 s


def seen(lease: dict | None, at: float, previous: Observation | None = None) -> Observation:
    return election.observe(previous, election.holding_of(lease), at, TIMING)


def test_observation_restarts_only_when_the_lease_changed() -> None:
    first = seen(lease_dict(OTHER, version="1"), 100.0)
    assert first == Observation("1", 100.0, OTHER, 115.0)
    assert seen(lease_dict(OTHER, version="1"), 130.0, first) is first
    assert seen(lease_dict(OTHER, version="2"), 130.0, first) == Observation("2", 130.0, OTHER, 145.0)
    malformed = seen(lease_dict(OTHER, seconds=0, version="3"), 200.0)  # a holder without a duration: ours
    assert malformed == Observation("3", 200.0, OTHER, 207.0)


def test_a_deleted_or_emptied_lease_stays_held_by_its_last_known_holder_until_its_term_ends() -> None:
    held = seen(lease_dict(OTHER, seconds=15, version="1"), 100.0)  # its term ends at 115 as seen here
    deleted = seen(None, 104.0, held)
    emptied = seen(lease_dict(None, seconds=1, version="2"), 104.0, held)  # holderIdentity cleared by hand
    by_another = seen(lease_dict(None, seconds=1, version="2", released_by="someone-else"), 104.0, held)
    for later in (deleted, emptied, by_another):
        assert (later.holder, later.until) == (OTHER, 115.0)
        holding = election.holding_of(None if later is deleted else lease_dict(None, version="2"))
        assert election.next_step(holding, ME, later, 114.999) is Step.WAIT
        step = election.next_step(holding, ME, later, 115.0)
        assert step is (Step.CREATE if later is deleted else Step.ACQUIRE)


def test_a_deleted_or_emptied_lease_is_held_a_lease_duration_for_a_holder_this_candidate_missed() -> None:
    # It saw OTHER's term end at 107; someone took over and renewed between two of its reads, then the Lease
    # was deleted: that unseen holder acts until its renew deadline, within a lease duration of this read.
    held = seen(lease_dict(OTHER, seconds=7, version="1"), 100.0)
    deleted = seen(None, 106.0, held)
    assert (deleted.holder, deleted.until) == (OTHER, 113.0)
    assert election.next_step(None, ME, deleted, 112.999) is Step.WAIT
    emptied = seen(lease_dict(None, seconds=20, version="9"), 106.0, held)  # its own duration, when longer
    assert emptied.until == 126.0


def test_a_lease_released_by_its_holder_is_taken_at_once() -> None:
    held = seen(lease_dict(OTHER, version="1"), 100.0)
    released = lease_dict(None, seconds=1, version="2", released_by=OTHER)
    after = seen(released, 101.0, held)
    assert after == Observation("2", 101.0, "", 101.0)
    assert election.next_step(election.holding_of(released), ME, after, 101.0) is Step.ACQUIRE
    # Deleted after the release: someone may have taken it between two reads; a lease duration, as any deletion.
    gone = seen(None, 102.0, after)
    assert election.next_step(None, ME, gone, 108.999) is Step.WAIT
    assert election.next_step(None, ME, gone, 109.0) is Step.CREATE


def test_knowing_no_holder_a_candidate_waits_a_lease_duration_unless_the_lease_says_released() -> None:
    assert seen(None, 50.0) == Observation(None, 50.0, "", 57.0)  # a fresh install, or a Lease just deleted
    assert election.next_step(None, ME, seen(None, 50.0), 56.999) is Step.WAIT
    assert election.next_step(None, ME, seen(None, 50.0), 57.0) is Step.CREATE
    cleared = lease_dict(None, seconds=30, version="4")  # cleared by hand: its own duration if longer
    assert seen(cleared, 50.0) == Observation("4", 50.0, "", 80.0)
    released = lease_dict(None, seconds=1, version="4", released_by=OTHER)  # a rolling update's surge Pod
    assert election.next_step(election.holding_of(released), ME, seen(released, 50.0), 50.0) is Step.ACQUIRE


def test_the_holder_itself_waits_too_when_its_lease_is_deleted_or_emptied() -> None:
    # It cannot tell a deletion of its own Lease from a takeover it missed: it stops (WAIT while leading).
    mine = seen(lease_dict(ME, seconds=7, version="1"), 100.0)
    assert election.next_step(None, ME, seen(None, 101.0, mine), 101.0) is Step.WAIT
    emptied = lease_dict(None, version="2")
    assert election.next_step(election.holding_of(emptied), ME, seen(emptied, 101.0, mine), 101.0) is Step.WAIT
    # A restarted process of the same Pod finding its Lease held by it resumes at once.
    assert election.next_step(election.holding_of(lease_dict(ME)), ME, seen(lease_dict(ME), 5.0), 5.0) is Step.RENEW


def test_a_lease_created_from_absence_is_acted_on_a_lease_duration_later() -> None:
    assert election.acts_from(Step.CREATE, 100.0, TIMING) == 107.0
    assert election.acts_from(Step.ACQUIRE, 100.0, TIMING) == 100.0
    assert election.acts_from(Step.RENEW, 100.0, TIMING) == 100.0
    # A restarted container resuming a Lease its Pod created 3 s ago: the create's lease duration still runs.
    assert election.acts_from(Step.RENEW, 100.0, TIMING, created_ago=3.0) == 104.0
    assert election.acts_from(Step.RENEW, 100.0, TIMING, created_ago=60.0) == 100.0


def test_parse_micro_time() -> None:
    assert election.parse_micro_time("2026-12-02T04:00:00.500000Z") == WALL
    assert election.parse_micro_time(None) is None and election.parse_micro_time("yesterday") is None


def expected_step(before: str, lease: str, elapsed: float) -> Step:
    """The rules, written out once more in the order a reader checks them. `before`: the holder this candidate
    saw at t=1000 with a 15 s lease ("" when it saw none); `lease`: what it reads at t=1003; `elapsed`: seconds
    since 1003."""
    if lease == "mine":
        return Step.RENEW
    take = Step.CREATE if lease == "absent" else Step.ACQUIRE
    if lease == "other's":  # a renewal seen at 1003: its 15 s from then
        return take if elapsed >= 15 else Step.WAIT
    if lease == "released":
        return take  # released by the holder it knew (or any, knowing none): at once
    # Deleted or emptied: a lease duration from 1003 for a holder it may have missed (ours, 7 s, when deleted;
    # the emptied Lease's 15 s), and the last known holder's term (15 s from 1000), itself included.
    wait = TIMING.lease_seconds if lease == "absent" else 15
    if before:
        wait = max(wait, 12)
    return take if elapsed >= wait else Step.WAIT


@pytest.mark.parametrize(
    "before, lease, elapsed",
    list(
        itertools.product(
            ["", ME, OTHER],
            ["absent", "emptied", "released", "mine", "other's"],
            [0.0, 6.999, 7.0, 11.999, 12.0, 14.999, 15.0, 600.0],
        )
    ),
)
def test_next_step_over_every_combination(before: str, lease: str, elapsed: float) -> None:
    previous = seen(lease_dict(before, version="5"), 1000.0) if before else None
    now_reads = {
        "absent": None,
        "emptied": lease_dict(None, seconds=15, version="6"),
        "released": lease_dict(None, seconds=1, version="6", released_by=before or OTHER),
        "mine": lease_dict(ME, version="6"),
        "other's": lease_dict(OTHER, version="6"),
    }[lease]
    observed = seen(now_reads, 1003.0, previous)
    step = election.next_step(election.holding_of(now_reads), ME, observed, 1003.0 + elapsed)
    assert step is expected_step(before, lease, elapsed)


def test_expiry_counts_from_when_this_candidate_saw_the_change_not_from_the_holders_clock() -> None:
    # The holder's renewTime says an hour ago (its clock is off): what counts is when we saw it change.
    skewed = lease_dict(OTHER)
    skewed["spec"]["renewTime"] = "2026-12-02T02:00:00.000000Z"
    holding = election.holding_of(skewed)
    observed = election.observe(None, holding, 50.0, TIMING)
    assert election.next_step(holding, ME, observed, 64.9) is Step.WAIT
    assert election.next_step(holding, ME, observed, 65.0) is Step.ACQUIRE


@pytest.mark.parametrize(
    "renewed_at, now, leading",
    [(None, 0.0, False), (100.0, 100.0, True), (100.0, 104.999, True), (100.0, 105.0, False), (100.0, 500.0, False)],
)
def test_still_leading_until_the_renew_deadline(renewed_at: float | None, now: float, leading: bool) -> None:
    assert election.still_leading(renewed_at, now, Timing()) is leading


def test_micro_time_always_has_six_fraction_digits() -> None:
    assert election.micro_time(datetime(2026, 12, 2, 3, 4, 5, tzinfo=UTC)) == "2026-12-02T03:04:05.000000Z"
    assert election.micro_time(datetime(2026, 12, 2, 3, 4, 5, 120, tzinfo=UTC)) == "2026-12-02T03:04:05.000120Z"


WALL = datetime(2026, 12, 2, 4, 0, 0, 500000, tzinfo=UTC)


def test_lease_bodies_create_renew_acquire_release() -> None:
    timing = Timing()
    created = election.lease_body(Step.CREATE, None, ME, timing, "l", "ns", WALL)
    assert created["metadata"] == {"name": "l", "namespace": "ns"}  # no resourceVersion: a create
    assert created["spec"] == {
        "holderIdentity": ME,
        "leaseDurationSeconds": 7,
        "acquireTime": "2026-12-02T04:00:00.500000Z",
        "renewTime": "2026-12-02T04:00:00.500000Z",
        "leaseTransitions": 0,
    }
    mine = Holding(ME, 7, "8", 3, "2026-12-02T03:00:00.000000Z")
    renewed = election.lease_body(Step.RENEW, mine, ME, timing, "l", "ns", WALL)
    assert renewed["metadata"]["resourceVersion"] == "8"  # optimistic: a concurrent write makes it a 409
    assert renewed["spec"]["acquireTime"] == "2026-12-02T03:00:00.000000Z" and renewed["spec"]["leaseTransitions"] == 3
    taken = election.lease_body(Step.ACQUIRE, Holding(OTHER, 7, "9", 3, "x", OTHER), ME, timing, "l", "ns", WALL)
    assert taken["spec"]["leaseTransitions"] == 4 and taken["spec"]["acquireTime"] == "2026-12-02T04:00:00.500000Z"
    assert "annotations" not in taken["metadata"]  # a replace: the release marker goes
    released = election.released_body(mine, "l", "ns", WALL)
    assert "holderIdentity" not in released["spec"] and released["spec"]["leaseDurationSeconds"] == 1
    assert released["metadata"]["resourceVersion"] == "8" and released["spec"]["leaseTransitions"] == 3
    assert released["metadata"]["annotations"] == {election.RELEASED_BY: ME}  # written by the holder


def test_election_from_env() -> None:
    elected = leader.election_from_env({"POD_NAME": "op-1", "POD_NAMESPACE": "team-a"})
    assert elected == leader.Election(True, "op-1", "feedbackloop-operator", "team-a", Timing(7, 5.0, 1.0, 0.5))
    tuned = leader.election_from_env(
        {
            "MFL_LEASE_DURATION_SECONDS": "30",
            "MFL_LEASE_RENEW_DEADLINE_SECONDS": "20",
            "MFL_LEASE_RETRY_SECONDS": "4",
            "MFL_LEASE_POLL_SECONDS": "2",
            "MFL_LEASE_NAME": "mine",
            "MFL_LEASE_NAMESPACE": "ops",
            "POD_NAMESPACE": "team-a",
        }  # fmt: skip
    )
    assert (tuned.timing, tuned.name, tuned.namespace) == (Timing(30, 20.0, 4.0, 2.0), "mine", "ops")
    outside = leader.election_from_env({})  # `make run`, the benchmarks: one process, off unless asked
    assert not outside.enabled and "/" in outside.identity and outside.namespace == "feedbackloop-system"
    assert leader.election_from_env({"MFL_LEADER_ELECTION": "true"}).enabled
    for off in ("false", "0", "No", "off"):
        assert not leader.election_from_env({"POD_NAME": "op-1", "MFL_LEADER_ELECTION": off}).enabled
    with pytest.raises(ValueError):
        leader.election_from_env({"MFL_LEASE_RENEW_DEADLINE_SECONDS": "20"})


# --- a seeded simulation of the pure rules: crashes, outages, slow writes, Leases deleted and cleared -----------
@dataclass
class Candidate:
    identity: str
    observed: Observation | None = None
    renewed_at: float | None = None
    acts_from: float = 0.0
    next_try: float = 0.0
    dead_until: float = -1.0
    offline_until: float = -1.0
    writing: bool = False

    def alive(self, now: float) -> bool:
        return now >= self.dead_until

    def restart(self) -> None:  # a new process: nothing remembered
        self.observed, self.renewed_at, self.writing = None, None, False

    def acting(self, now: float, timing: Timing) -> bool:
        return self.alive(now) and election.still_leading(self.renewed_at, now, timing) and now >= self.acts_from


@dataclass
class Simulation:
    seed: int
    timing: Timing = field(default_factory=Timing)
    step: float = 0.05
    tamper_every: float = 0.0  # seconds between deletions / clearings of the Lease by someone else (0: none)

    def run(self, seconds: float = 900.0) -> tuple[int, list[float]]:
        """Returns how many times a new leadership term began and every leaderless gap before one (seconds);
        asserts that no two candidates ever act at once."""
        rng, timing = random.Random(self.seed), self.timing
        self.lease: dict[str, Any] | None = None
        self.version = 0
        pods = [Candidate(f"pod-{i}") for i in range(3)]
        writes: list[tuple[float, Candidate, dict[str, Any], float, Step]] = []  # lands at, by, body, started, step
        changes, gaps, gap_start = 0, [], 0.0
        last_actor: Candidate | None = None
        now = 0.0
        while now < seconds:
            for pod in pods:  # a process started again: nothing remembered
                if pod.dead_until > 0 and pod.alive(now) and pod.dead_until > now - self.step:
                    pod.restart()
            for pod in pods:
                if not pod.alive(now) or pod.writing or now < pod.next_try:
                    continue
                every = timing.retry_seconds if pod.renewed_at is not None else timing.poll_seconds
                pod.next_try = now + every * rng.uniform(1.0, 1.2)
                if now < pod.offline_until:
                    continue  # its requests fail
                holding = election.holding_of(self.lease)
                pod.observed = election.observe(pod.observed, holding, now, timing)
                decided = election.next_step(holding, pod.identity, pod.observed, now)
                if decided is Step.WAIT:
                    if pod.renewed_at is not None:  # another holder while we thought we led: exit
                        pod.dead_until, pod.renewed_at = now + rng.uniform(1, 10), None
                    continue
                body = election.lease_body(decided, holding, pod.identity, timing, "l", "ns", WALL)
                writes.append((now + rng.uniform(0.0, 0.8), pod, body, now, decided))  # slow API server
                pod.writing = True
            for landed in [w for w in writes if w[0] <= now]:
                writes.remove(landed)
                _, pod, body, started, decided = landed
                pod.writing = False
                expected = body["metadata"].get("resourceVersion")
                current = str(self.version) if self.lease else None
                if expected == current:  # the API server's optimistic concurrency
                    self._store(body)
                    if pod.alive(now) and not (pod.dead_until > started):
                        if decided is not Step.RENEW:
                            pod.acts_from = election.acts_from(decided, now, timing)
                        pod.renewed_at = started
                        if rng.random() < 0.05:  # the worst moment to lose the API: just after a renewal
                            pod.offline_until = now + rng.uniform(1, 25)
            for pod in pods:  # the watchdog: not renewed within the deadline -> the process ends
                if pod.renewed_at is not None and not election.still_leading(pod.renewed_at, now, timing):
                    pod.dead_until, pod.renewed_at = now + rng.uniform(1, 10), None
            self._disturb(rng, pods, now)
            actors = [p for p in pods if p.acting(now, timing)]
            assert len(actors) <= 1, f"seed {self.seed}: two actors at {now:.2f}s: {actors}"
            actor = actors[0] if actors else None
            if actor is None and last_actor is not None:
                gap_start = now
            if actor is not None and last_actor is None:
                if changes:  # not the first leader of a fresh install
                    gaps.append(now - gap_start)
                changes += 1
            last_actor = actor
            now += self.step
        return changes, gaps

    def _store(self, body: dict[str, Any]) -> None:
        self.version += 1
        self.lease = copy.deepcopy(body)
        self.lease["metadata"]["resourceVersion"] = str(self.version)

    def _disturb(self, rng: random.Random, pods: list[Candidate], now: float) -> None:
        if rng.random() < self.step / 30:  # about every 30 s: SIGKILL the leader
            for pod in pods:
                if pod.renewed_at is not None and pod.alive(now):
                    pod.dead_until, pod.renewed_at, pod.writing = now + rng.uniform(0.5, 20), None, False
        if self.tamper_every and self.lease is not None and rng.random() < self.step / self.tamper_every:
            if rng.random() < 0.5:
                self.lease = None  # `kubectl delete lease`
            else:  # holderIdentity cleared by hand (or by another tool): not a release
                cleared = copy.deepcopy(self.lease)
                cleared["spec"].pop("holderIdentity", None)
                self._store(cleared)


@pytest.mark.parametrize("seed", range(8))
def test_simulated_crashes_and_outages_never_give_two_actors_and_fail_over_in_bounded_time(seed: int) -> None:
    timing = Timing()
    changes, gaps = Simulation(seed, timing).run()
    assert changes >= 5  # the disturbances did move the leadership around
    # The longest wait for a new actor: an outage of the old leader ends its term a lease minus a renew
    # deadline before it expires; the standby that takes it over may be killed before its write lands (one
    # more lease); then a poll with jitter and the slowest write after the renewal, a poll to notice, the
    # slowest write.
    bound = 2 * timing.lease_seconds - timing.renew_deadline_seconds + 2 * 1.2 * timing.poll_seconds + 2 * 0.8
    assert max(gaps) <= bound + 0.1, gaps


@pytest.mark.parametrize("seed", range(8))
def test_simulated_deletions_and_clearings_of_the_lease_never_give_two_actors(seed: int) -> None:
    """Fault injection: besides crashes and outages, someone deletes the Lease or clears its holder about
    every 10 s. client-go's rule (take an absent or holder-less Lease at once) makes two actors here."""
    changes, _ = Simulation(seed, Timing(), tamper_every=10.0).run()
    assert changes >= 5


# --- the asyncio edge against an in-memory Lease ---------------------------------------------------------
class MemoryLeases:
    """One Lease with the API server's semantics: create conflicts when it exists, replace when the
    resourceVersion is not the current one. `broken` makes every call fail (an unreachable API server).
    It starts as released by a previous operator (a rolling update), so a candidate takes it at once;
    `fresh=True` starts with none (a fresh install)."""

    def __init__(self, fresh: bool = False) -> None:
        self.lease: dict[str, Any] | None = None
        self.version = 0
        self.broken = False
        self.history: list[tuple[float, str]] = []  # (when, holder) per write
        self._lock = threading.Lock()
        if not fresh:
            self.create(election.released_body(Holding("operator-before", 1, "", 0, None), "l", "ns", WALL))
            self.history.clear()

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

    def tamper(self, how: str) -> None:
        """Someone else deletes the Lease or clears its holder (`kubectl delete` / `kubectl edit`)."""
        with self._lock:
            if how == "deleted":
                self.lease = None
            else:
                assert self.lease is not None
                self.lease["spec"].pop("holderIdentity", None)
                self.version += 1
                self.lease["metadata"]["resourceVersion"] = str(self.version)

    def _check(self) -> None:
        if self.broken:
            raise ConnectionError("API server unreachable")


class View:
    """One replica's connection to the shared Lease: `broken` fails this replica's calls only."""

    def __init__(self, leases: MemoryLeases) -> None:
        self.leases, self.broken = leases, False

    def read(self) -> dict[str, Any] | None:
        self._check()
        return self.leases.read()

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        self._check()
        return self.leases.create(body)

    def replace(self, body: dict[str, Any]) -> dict[str, Any]:
        self._check()
        return self.leases.replace(body)

    def _check(self) -> None:
        if self.broken:
            raise ConnectionError("API server unreachable from this replica")


FAST = Timing(lease_seconds=1, renew_deadline_seconds=0.5, retry_seconds=0.1, poll_seconds=0.05)


def in_event_loop(test: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    """Run an async test in a fresh event loop (the project has no pytest asyncio plugin)."""

    @functools.wraps(test)
    def run() -> None:
        asyncio.run(test())

    return run


def elector(leases: MemoryLeases | View, identity: str) -> leader.Elector:
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
    assert holder(leases) == OTHER and leases.lease["spec"]["leaseTransitions"] == 2
    assert FAST.lease_seconds <= waited <= FAST.lease_seconds + 1.2 * FAST.poll_seconds + 0.5, waited


@in_event_loop
async def test_a_released_lease_is_taken_within_a_poll() -> None:
    leases = MemoryLeases()
    first = elector(leases, ME)
    await first.acquire()
    standby = asyncio.create_task(elector(leases, OTHER).acquire())
    await asyncio.sleep(0.3)
    assert not standby.done()
    released = time.monotonic()
    await first.release()
    assert leases.lease["metadata"]["annotations"] == {election.RELEASED_BY: ME}
    await asyncio.wait_for(standby, timeout=2)
    assert time.monotonic() - released < 1.2 * FAST.poll_seconds + 0.4  # a poll, and a loaded machine
    assert holder(leases) == OTHER


@in_event_loop
async def test_a_fresh_install_acts_two_lease_durations_after_it_starts() -> None:
    leases = MemoryLeases(fresh=True)
    started = time.monotonic()
    first = elector(leases, ME)
    await asyncio.wait_for(first.acquire(), timeout=5)
    waited = time.monotonic() - started
    assert 2 * FAST.lease_seconds <= waited <= 2 * FAST.lease_seconds + 0.7, waited
    assert holder(leases) == ME and first.term_end() > time.monotonic()
    assert len(leases.history) > 3  # held and renewed before acting


@in_event_loop
async def test_a_restarted_process_of_the_same_pod_resumes_its_own_lease_at_once() -> None:
    leases = MemoryLeases()
    await elector(leases, ME).acquire()
    started = time.monotonic()
    await asyncio.wait_for(elector(leases, ME).acquire(), timeout=1)  # SIGKILL, the kubelet restarts it
    assert time.monotonic() - started < 0.3 and leases.lease["spec"]["leaseTransitions"] == 1


@pytest.mark.parametrize("how", ["deleted", "cleared"])
@pytest.mark.parametrize("holder_reachable", [False, True])
def test_two_replicas_are_never_both_admitted_when_the_lease_is_deleted_or_cleared_mid_term(
    how: str, holder_reachable: bool
) -> None:
    """Fault injection: the holder leads (and, unreachable, acts on until its renew deadline), the standby
    has seen its renewals, then someone deletes the Lease or clears its holder. client-go's rule (an absent
    or holder-less Lease is free) admits the standby while the holder still acts."""

    async def scenario() -> None:
        leases = MemoryLeases()
        mine, theirs = View(leases), View(leases)
        fence_a, fence_b = leader.Fence(Api()), leader.Fence(Api())
        lost_a, lost_b = threading.Event(), threading.Event()
        first = asyncio.create_task(leader.lead(elector(mine, ME), Work(fence_a).run, fence_a, lost_a.set))
        await until(fence_a.may_act, 2)
        second = asyncio.create_task(leader.lead(elector(theirs, OTHER), Work(fence_b).run, fence_b, lost_b.set))
        await asyncio.sleep(0.3)  # the standby has seen the holder's renewals
        overlaps: list[float] = []

        async def watch() -> None:
            while True:
                if fence_a.may_act() and fence_b.may_act():
                    overlaps.append(time.monotonic())
                await asyncio.sleep(0.002)

        watching = asyncio.create_task(watch())
        mine.broken = not holder_reachable
        tampered = time.monotonic()
        leases.tamper(how)
        await until(fence_b.may_act, 5)
        took_over = time.monotonic() - tampered
        await asyncio.sleep(0.3)
        taken_by = holder(leases)
        for task in (watching, first, second):
            task.cancel()
        await asyncio.gather(watching, first, second, return_exceptions=True)
        assert overlaps == [], f"both admitted {len(overlaps)} times, from {overlaps[0] - tampered:.3f}s"
        assert lost_a.is_set() and not lost_b.is_set() and taken_by == OTHER
        # Not before a lease duration from the tampering (a create: acted on one more later).
        assert took_over >= FAST.lease_seconds * (2 if how == "deleted" else 1), took_over

    asyncio.run(scenario())


async def until(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout}s"
        await asyncio.sleep(0.005)


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


@in_event_loop
async def test_renewals_stop_when_cancelled_just_as_an_attempt_returns() -> None:
    """Python 3.11's wait_for returned the attempt's result and dropped a cancellation that arrived as the attempt
    ended: `keep` then renewed forever after shutdown cancelled it (a CI run hung 10 minutes in the test above)."""
    leases = MemoryLeases()
    renewing = elector(leases, ME)
    await renewing.acquire()
    answer: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
    attempts = 0

    async def attempt() -> bool:
        nonlocal attempts
        attempts += 1
        return await answer if attempts == 1 else True

    async def read_first() -> None:
        return None  # no one-write renewal: every try is the attempt above

    renewing._attempt = attempt  # type: ignore[method-assign]
    renewing._renew = read_first  # type: ignore[method-assign]
    keeper = asyncio.create_task(renewing.keep())
    await until(lambda: attempts == 1, 2)
    answer.set_result(True)  # the attempt ends, and the cancellation arrives in the same turn of the loop
    keeper.cancel()
    done, _ = await asyncio.wait({keeper}, timeout=3 * FAST.retry_seconds + 0.5)
    assert keeper in done and keeper.cancelled(), f"still renewing after {attempts} attempts"
