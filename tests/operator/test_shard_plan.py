"""The sharding plan (feedbackloop.core.sharding): every small fleet exhaustively, and seeded simulations of
replicas joining, leaving and dying, with lagging watches, acks racing the coordinator's writes and loops
created and deleted, in which no loop ever has two replicas acting on it, moves stay near 1/n on a join,
the cap holds and the plan converges."""

from __future__ import annotations

import itertools
import math
import random
from collections import Counter
from dataclasses import dataclass, field

import pytest

from feedbackloop.core import sharding
from feedbackloop.core.sharding import Kind, LoopShard, Move, Reason, plan

A, B, C, D = "op-a", "op-b", "op-c", "op-d"


# --- the small pieces ------------------------------------------------------------------------------------
def test_ranking_is_deterministic_and_spread() -> None:
    replicas = [f"op-{i}" for i in range(4)]
    firsts = Counter(sharding.ranking(f"ns/loop-{i}", replicas)[0] for i in range(4000))
    assert set(firsts) == set(replicas)
    assert all(800 < n < 1200 for n in firsts.values()), firsts
    assert sharding.ranking("ns/x", replicas) == sharding.ranking("ns/x", list(reversed(replicas)))


def test_cap_budget_names_and_labels() -> None:
    assert sharding.cap(100, 3) == 42 and sharding.cap(0, 3) == 0 and sharding.cap(5, 0) == 0
    assert sharding.drain_budget(3) == 1 and sharding.drain_budget(250) == 25
    assert sharding.replica_lease_name("op-a") == "mfl-replica-op-a"
    assert sharding.identity_of_lease("mfl-replica-op-a") == "op-a"
    assert sharding.identity_of_lease("feedbackloop-operator") is None
    assert sharding.shard_selector("op-a") == "feedbackloop.dev/shard=op-a"
    assert sharding.shard_of({"feedbackloop.dev/shard": "op-a", "x": "y"}) == LoopShard("op-a", None)
    assert sharding.shard_of(None) == LoopShard()
    assert sharding.labels_for(Move("k", Kind.ASSIGN, A, Reason.TAKEN)) == {
        sharding.SHARD_LABEL: A,
        sharding.DRAIN_LABEL: None,
    }
    assert sharding.labels_for(Move("k", Kind.DRAIN, B, Reason.REBALANCE)) == {sharding.DRAIN_LABEL: B}
    assert sharding.ACK_LABELS == {sharding.SHARD_LABEL: None, sharding.DRAIN_LABEL: None}


def test_no_replica_alive_or_no_loop_plans_nothing() -> None:
    assert plan({"ns/a": LoopShard()}, []) == []
    assert plan({"ns/a": LoopShard()}, [A], taken=[A]) == []
    assert plan({}, [A, B]) == []


def test_loops_of_a_replica_neither_alive_nor_taken_wait() -> None:
    loops = {f"ns/{i}": LoopShard(C) for i in range(5)}
    assert plan(loops, [A, B]) == []  # C's Lease has not expired, or has not been taken: C may still act
    moves = plan(loops, [A, B], taken=[C])
    assert {m.key for m in moves} == set(loops) and {m.kind for m in moves} == {Kind.ASSIGN}
    assert {m.reason for m in moves} == {Reason.TAKEN}


# --- exhaustive over small fleets ------------------------------------------------------------------------
STATES = [LoopShard(None)] + [LoopShard(s, d) for s in (A, B, C, D) for d in (None, A, B, D)]


def check_plan(loops: dict[str, LoopShard], alive: list[str], taken: list[str], limit: int) -> list[Move]:
    moves = plan(loops, alive, taken, limit)
    live = set(alive) - set(taken)
    assert len({m.key for m in moves}) == len(moves)  # one move per loop per round
    for move in moves:
        shard = loops[move.key]
        assert move.to in live  # only to a replica that is alive
        if move.kind is Kind.ASSIGN:  # a label changes owner only when no replica may act on the loop
            assert shard.shard is None or shard.shard in taken
        else:  # a drain asks the owner, alive, that has no drain pending; the owner stays until it acks
            assert shard.shard in live and shard.drain is None and move.to != shard.shard
    draining = sum(1 for s in loops.values() if s.shard in live and s.drain is not None)
    new_drains = sum(1 for m in moves if m.kind is Kind.DRAIN)
    assert new_drains == 0 or draining + new_drains <= limit
    # Everything that may be assigned is assigned, at once.
    assert {m.key for m in moves if m.kind is Kind.ASSIGN} == {
        k for k, s in loops.items() if live and (s.shard is None or s.shard in taken)
    }
    return moves


@pytest.mark.parametrize("alive, taken", [([A], []), ([A, B], []), ([A, B], [C]), ([A, B, D], [C]), ([B], [A, C])])
def test_every_fleet_of_three_loops(alive: list[str], taken: list[str]) -> None:
    for states in itertools.product(STATES, repeat=3):
        loops = {f"ns/l{i}": s for i, s in enumerate(states)}
        for limit in (1, 2):
            check_plan(loops, alive, taken, limit)


# --- the simulation --------------------------------------------------------------------------------------
@dataclass
class Loop:
    shard: str | None = None
    drain: str | None = None
    version: int = 1


@dataclass
class Replica:
    name: str
    up: bool = True  # its process runs and holds its Lease (down: it has stopped acting)
    stops_at: int | None = None  # cut off from the API server: not renewing, acts until this round
    taken: bool = False  # the coordinator took its Lease
    view: dict[str, Loop] = field(default_factory=dict)  # its watch cache (only loops labelled for it)
    queue: list[tuple[str, Loop | None]] = field(default_factory=list)  # watch events not yet delivered
    released: dict[str, int] = field(default_factory=dict)  # loop -> version of its ack: not acted on after
    busy: set[str] = field(default_factory=set)  # loops with a reconcile in flight

    def acting_on(self, round_: int) -> set[str]:
        if not self.up or (self.stops_at is not None and round_ >= self.stops_at):
            return set()
        return {k for k, loop in self.view.items() if loop.shard == self.name and k not in self.released}


class Fleet:
    def __init__(self, seed: int, replicas: int, loops: int) -> None:
        self.rng = random.Random(seed)
        self.loops: dict[str, Loop] = {f"ns/loop-{i}": Loop() for i in range(loops)}
        self.replicas: dict[str, Replica] = {}
        self.counter = loops
        self.rounds_to_take = 3  # a dead replica's Lease is taken this many coordinator rounds after it died
        self.died: dict[str, int] = {}
        self.round = 0
        self.moves: Counter[Reason] = Counter()
        for _ in range(replicas):
            self.join()

    # the API server: every change bumps the version and is sent to the watches it matches (before, after)
    def write(self, key: str, shard: str | None, drain: str | None) -> None:
        loop = self.loops[key]
        before = loop.shard
        loop.shard, loop.drain, loop.version = shard, drain, loop.version + 1
        self.emit(key, before)

    def emit(self, key: str, before: str | None) -> None:
        loop = self.loops.get(key)
        after = loop.shard if loop else None
        snapshot = Loop(loop.shard, loop.drain, loop.version) if loop else None
        for name in {before, after} - {None}:
            replica = self.replicas.get(str(name))
            if replica is not None and replica.up:
                replica.queue.append((key, snapshot if name == after else None))  # None: DELETED (left or gone)

    def join(self) -> str:
        name = f"op-{len(self.replicas)}-{self.rng.randrange(10**6)}"
        self.replicas[name] = Replica(name)
        return name

    def kill(self, name: str) -> None:
        replica = self.replicas[name]
        replica.up, replica.queue, replica.view = False, [], {}
        self.died[name] = self.round

    def partition(self, name: str) -> None:
        """Its renewals stop reaching the API server: no longer alive to the coordinator at once, it acts
        until its renew deadline (a round before its Lease can be taken), then its process exits."""
        self.replicas[name].stops_at = self.round + self.rounds_to_take - 1
        self.died[name] = self.round

    def create_loop(self) -> None:
        key = f"ns/loop-{self.counter}"
        self.counter += 1
        self.loops[key] = Loop()

    def delete_loop(self) -> None:
        if self.loops:
            key = self.rng.choice(sorted(self.loops))
            before = self.loops.pop(key).shard
            self.emit(key, before)

    # a replica: deliver some of its watch events, finish or start reconciles, ack drains
    def step_replica(self, replica: Replica, deliver_all: bool = False) -> None:
        if not replica.up:
            return
        if replica.stops_at is not None and self.round >= replica.stops_at:
            self.kill(replica.name)
            return
        count = len(replica.queue) if deliver_all else self.rng.randint(0, len(replica.queue))
        for key, loop in replica.queue[:count]:
            if loop is None:
                replica.view.pop(key, None)
                replica.released.pop(key, None)  # gone from its watch: a later ADDED is a new assignment
            else:
                if key in replica.released and loop.version <= replica.released[key]:
                    continue  # older than its own ack
                replica.released.pop(key, None)
                replica.view[key] = loop
        del replica.queue[:count]
        for key in sorted(replica.acting_on(self.round)):
            if key in replica.busy and (deliver_all or self.rng.random() < 0.5):
                replica.busy.discard(key)  # the reconcile in flight finished
            seen = replica.view[key]
            if seen.drain is None:
                if not deliver_all and self.rng.random() < 0.3:
                    replica.busy.add(key)  # a reconcile starts
                continue
            if key in replica.busy:
                continue  # finish it first
            real = self.loops.get(key)
            if real is None or real.version != seen.version:
                continue  # 409 (or 404): its watch brings the news
            self.write(key, None, None)  # the ack: both labels off, on the version it saw
            replica.released[key] = self.loops[key].version

    # the coordinator: lists, takes dead Leases, plans, writes each move on the version it listed
    def step_coordinator(self, interleave: bool = True) -> list[Move]:
        self.round += 1
        for name, when in self.died.items():
            if self.round - when >= self.rounds_to_take:
                self.replicas[name].taken = True
        listed = {k: LoopShard(v.shard, v.drain) for k, v in self.loops.items()}
        versions = {k: v.version for k, v in self.loops.items()}
        alive = [r.name for r in self.replicas.values() if r.up and r.stops_at is None]
        taken = [r.name for r in self.replicas.values() if r.taken]
        moves = plan(listed, alive, taken)
        if interleave:  # replicas act between the list and the writes
            for replica in self.replicas.values():
                if self.rng.random() < 0.3:
                    self.step_replica(replica)
        for move in moves:
            loop = self.loops.get(move.key)
            if loop is None or loop.version != versions[move.key]:
                continue  # 409 / 404: next round
            if move.kind is Kind.ASSIGN:
                self.write(move.key, move.to, None)
            else:
                self.write(move.key, loop.shard, move.to)
            self.moves[move.reason] += 1
        return moves

    def check_one_actor(self) -> None:
        actors: Counter[str] = Counter()
        for replica in self.replicas.values():
            actors.update(replica.acting_on(self.round))
        assert not [k for k, n in actors.items() if n > 1], actors

    def settle(self, rounds: int = 400) -> int:
        for done in range(rounds):
            for replica in self.replicas.values():
                self.step_replica(replica, deliver_all=True)
            self.check_one_actor()
            if not self.step_coordinator(interleave=False) and self.converged():
                return done
            self.check_one_actor()
        raise AssertionError("the plan did not converge")

    def converged(self) -> bool:
        live = {r.name for r in self.replicas.values() if r.up and r.stops_at is None}
        return all(loop.shard in live and loop.drain is None for loop in self.loops.values())

    def owners(self) -> dict[str, str | None]:
        return {k: v.shard for k, v in self.loops.items()}

    def check_settled(self) -> None:
        live = [r.name for r in self.replicas.values() if r.up]
        held = Counter(v.shard for v in self.loops.values())
        assert max(held.values(), default=0) <= sharding.cap(len(self.loops), len(live)), held
        for replica in self.replicas.values():  # each loop acted on by exactly its label's replica, once
            if replica.up:
                assert replica.acting_on(self.round) == {k for k, v in self.loops.items() if v.shard == replica.name}


@pytest.mark.parametrize("seed", range(40))
def test_simulated_joins_leaves_and_deaths_never_give_a_loop_two_actors(seed: int) -> None:
    fleet = Fleet(seed, replicas=3, loops=60)
    rng = fleet.rng
    for _ in range(150):
        event = rng.random()
        up = [r.name for r in fleet.replicas.values() if r.up and r.stops_at is None]
        if event < 0.05:
            fleet.join()
        elif event < 0.08 and len(up) > 1:
            fleet.kill(rng.choice(up))
        elif event < 0.11 and len(up) > 1:
            fleet.partition(rng.choice(up))
        elif event < 0.15:
            fleet.create_loop()
        elif event < 0.18:
            fleet.delete_loop()
        for replica in fleet.replicas.values():
            fleet.step_replica(replica)
        fleet.check_one_actor()
        if rng.random() < 0.5:
            fleet.step_coordinator()
            fleet.check_one_actor()
    fleet.settle()
    fleet.check_settled()


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("replicas", [1, 2, 3, 5])
def test_a_join_moves_about_one_nth_of_the_loops_within_the_drain_budget(seed: int, replicas: int) -> None:
    fleet = Fleet(seed, replicas=replicas, loops=200)
    fleet.settle()
    before = fleet.owners()
    newcomer = fleet.join()
    rounds = fleet.settle()
    fleet.check_settled()
    after = fleet.owners()
    moved = [k for k in before if before[k] != after[k]]
    share = len(before) / (replicas + 1)
    assert len(moved) <= 1.3 * share + 2, (len(moved), share)
    assert sum(1 for k in moved if after[k] == newcomer) >= 0.8 * len(moved)  # mostly to the newcomer
    # At most the drain budget in flight: never more rounds than needed, never fewer.
    assert rounds >= math.ceil(len(moved) / sharding.drain_budget(len(before)))


@pytest.mark.parametrize("seed", range(10))
def test_a_death_moves_only_the_dead_replicas_loops_once_its_lease_is_taken(seed: int) -> None:
    fleet = Fleet(seed, replicas=4, loops=200)
    fleet.settle()
    before = fleet.owners()
    victim = sorted(fleet.replicas)[seed % 4]
    fleet.kill(victim)
    for _ in range(fleet.rounds_to_take - 1):  # not taken yet: its loops wait, nothing else moves
        assert fleet.step_coordinator(interleave=False) == []
    moves = fleet.step_coordinator(interleave=False)
    assert {m.key for m in moves} == {k for k, v in before.items() if v == victim}
    assert {(m.kind, m.reason) for m in moves} == {(Kind.ASSIGN, Reason.TAKEN)}
    fleet.settle()
    fleet.check_settled()
    after = fleet.owners()
    stayed = [k for k, v in before.items() if v != victim and after[k] != v]
    assert len(stayed) <= 0.05 * len(before)  # the survivors keep (almost) all of theirs


@pytest.mark.parametrize("seed", range(5))
def test_scaling_three_five_two_converges_with_every_loop_on_one_live_replica(seed: int) -> None:
    fleet = Fleet(seed, replicas=3, loops=300)
    fleet.settle()
    fleet.join(), fleet.join()
    fleet.settle()
    fleet.check_settled()
    live = sorted(r.name for r in fleet.replicas.values() if r.up)
    for name in live[:3]:
        fleet.kill(name)
    fleet.settle()
    fleet.check_settled()
    assert {v.shard for v in fleet.loops.values()} == set(live[3:])


def test_loop_deletions_shrink_the_cap_and_over_cap_replicas_shed_to_those_with_room() -> None:
    loops = {f"ns/{i}": LoopShard(A) for i in range(8)} | {f"ns/b{i}": LoopShard(B) for i in range(2)}
    moves = plan(loops, [A, B], max_drains=10)  # cap 7: A sheds 1 (over cap); more move up their ranking
    assert [m for m in moves if m.reason is Reason.OVER_CAP]
    assert all(m.kind is Kind.DRAIN and m.to == B for m in moves)
    assert len(moves) <= 5  # B ends at most at the cap (7): 2 + 5


def test_a_fresh_replica_gets_new_loops_but_nothing_anyone_acts_on() -> None:
    """A replica whose Lease is younger than a lease duration cannot act yet: a loop drained or taken to it would
    stand still (seen on the real node: a loop mid-Retraining drained to a Pod 2 s old)."""
    settled = {f"ns/l{i}": LoopShard(A if i % 2 else B) for i in range(12)}
    # A joins as fresh D: no drain towards it, whatever the ranking says.
    assert [m for m in plan(settled, [A, B, D], fresh=[D]) if m.to == D] == []
    assert any(m.to == D for m in plan(settled, [A, B, D]))  # once settled, it gets its share
    # C died and was taken: its loops go to settled replicas only.
    with_dead = {**settled, **{f"ns/c{i}": LoopShard(C) for i in range(6)}}
    moved = plan(with_dead, [A, B, D], taken=[C], fresh=[D])
    assert {m.key for m in moved if m.reason is Reason.TAKEN} == {f"ns/c{i}" for i in range(6)}
    assert all(m.to in (A, B) for m in moved)
    # A cold start: every replica fresh, new loops spread over all of them at once.
    new = {f"ns/n{i}": LoopShard() for i in range(30)}
    owners = Counter(m.to for m in plan(new, [A, B, D], fresh=[A, B, D]))
    assert set(owners) == {A, B, D} and max(owners.values()) <= sharding.cap(30, 3)
    # New loops beside a fresh replica: it may get them (they wait a few seconds either way).
    assert {m.to for m in plan({**settled, **new}, [A, B, D], fresh=[D]) if m.kind is Kind.ASSIGN} <= {A, B, D}
