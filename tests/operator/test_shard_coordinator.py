"""The shard coordinator (runtime/shards.py) over an in-memory API server: it assigns what nobody owns, drains
to a replica that joined, waits for a dead replica's Lease to expire on its own clock, takes it through the
election's rules, then moves that replica's loops and deletes its Lease; every write on the listed version."""

from __future__ import annotations

import asyncio
import copy
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException
from prometheus_client import REGISTRY

from feedbackloop.core import sharding
from feedbackloop.core.election import Timing, micro_time
from feedbackloop.core.sharding import Kind, Reason
from feedbackloop.runtime import leader, shards

A, B, C, D = "op-a", "op-b", "op-c", "op-d"
NS = "feedbackloop-system"
BASE = datetime(2026, 12, 7, 5, 0, tzinfo=UTC)


class Api:
    """Leases and loops with resourceVersions, as the API server keeps them."""

    def __init__(self) -> None:
        self.leases: dict[str, dict[str, Any]] = {}
        self.loops: dict[str, dict[str, Any]] = {}  # "ns/name" -> {"labels", "version"}
        self.version = 100
        self.label_writes: list[tuple[str, str, dict[str, str | None]]] = []
        self.deleted: list[str] = []
        self.race: set[str] = set()  # loops written between the coordinator's list and its write (their status)
        self.relabel: tuple[str, dict[str, str]] | None = None  # a loop's labels changed between the two

    def bump(self) -> str:
        self.version += 1
        return str(self.version)

    # ShardAPI
    def list_replica_leases(self, namespace: str) -> list[dict[str, Any]]:
        return [
            copy.deepcopy(lease)
            for lease in self.leases.values()
            if (lease["metadata"].get("labels") or {}).get(sharding.REPLICA_LEASE_LABEL) == "true"
        ]

    def list_loop_labels(self, namespaces: list[str]) -> list[tuple[str, str, dict[str, str], str]]:
        listed = [(*k.split("/", 1), dict(v["labels"]), v["version"]) for k, v in sorted(self.loops.items())]
        for key in sorted(self.race):
            self.loops[key]["version"] = self.bump()
        if self.relabel:
            key, labels = self.relabel
            self.loops[key].update(labels=dict(labels), version=self.bump())
        return listed

    def label_loop(
        self, namespace: str, name: str, version: str, labels: dict[str, str | None], listed: dict[str, str]
    ) -> str:
        loop = self.loops[f"{namespace}/{name}"]
        if listed and loop["labels"] != listed:  # the JSON patch's test
            raise ApiException(status=422, reason="Unprocessable Entity")
        if not listed and loop["version"] != version:
            raise ApiException(status=409, reason="Conflict")
        for key, value in labels.items():
            if value is None:
                loop["labels"].pop(key, None)
            else:
                loop["labels"][key] = value
        loop["version"] = self.bump()
        self.label_writes.append((f"{namespace}/{name}", version, dict(labels)))
        return str(loop["version"])

    def delete_lease(self, namespace: str, name: str, version: str) -> None:
        if self.leases[name]["metadata"]["resourceVersion"] != version:
            raise ApiException(status=409, reason="Conflict")
        del self.leases[name]
        self.deleted.append(name)

    # what the replicas do
    def renew(self, replica: str, at: datetime) -> None:
        name = sharding.replica_lease_name(replica)
        self.leases[name] = {
            "metadata": {
                "name": name,
                "namespace": NS,
                "labels": {sharding.REPLICA_LEASE_LABEL: "true"},
                "resourceVersion": self.bump(),
            },
            "spec": {"holderIdentity": replica, "leaseDurationSeconds": 7, "renewTime": micro_time(at)},
        }

    def owners(self) -> dict[str, str | None]:
        return {k: v["labels"].get(sharding.SHARD_LABEL) for k, v in self.loops.items()}


class Store:
    """One Lease of `Api` as leader.Leases (read, create, replace with optimistic concurrency)."""

    def __init__(self, api: Api, name: str) -> None:
        self.api, self.name = api, name

    def read(self) -> dict[str, Any] | None:
        return copy.deepcopy(self.api.leases.get(self.name))

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        if self.name in self.api.leases:
            raise leader.Conflict("exists")
        return self._store(body)

    def replace(self, body: dict[str, Any]) -> dict[str, Any]:
        current = self.api.leases.get(self.name)
        if current is None or current["metadata"]["resourceVersion"] != body["metadata"].get("resourceVersion"):
            raise leader.Conflict("changed")
        return self._store(body)

    def _store(self, body: dict[str, Any]) -> dict[str, Any]:
        stored = copy.deepcopy(body)
        stored["metadata"]["resourceVersion"] = self.api.bump()
        self.api.leases[self.name] = stored
        return copy.deepcopy(stored)


class Bed:
    def __init__(self, loops: int = 12) -> None:
        self.api = Api()
        self.now = 0.0
        for i in range(loops):
            self.api.loops[f"team-a/loop-{i}"] = {"labels": {}, "version": self.api.bump()}
        election = leader.Election(True, A, leader.DEFAULT_LEASE, NS, Timing())
        self.coordinator = shards.Coordinator(
            self.api,
            election,
            shards.Sharding(True),
            lambda name: Store(self.api, name),
            wall=self.wall,
            clock=lambda: self.now,
        )

    def wall(self) -> datetime:
        return BASE + timedelta(seconds=self.now)

    def round(self, at: float, renew: tuple[str, ...] = ()) -> list[sharding.Move]:
        self.now = at
        for replica in renew:
            self.api.renew(replica, self.wall())
        return asyncio.run(self.coordinator.round())


def test_sharding_from_env() -> None:
    assert shards.sharding_from_env({}) == shards.Sharding(False, 2.0, ())
    assert shards.sharding_from_env(
        {"MFL_SHARDING": "true", "MFL_SHARD_PERIOD_SECONDS": "0.5", "MFL_WATCH_NAMESPACES": "b,a a"}
    ) == shards.Sharding(True, 0.5, ("a", "b"))
    with pytest.raises(ValueError, match="MFL_SHARD_PERIOD_SECONDS"):
        shards.sharding_from_env({"MFL_SHARD_PERIOD_SECONDS": "0"})


def test_alive_replicas_are_those_holding_their_own_unexpired_lease() -> None:
    api = Api()
    api.renew(A, BASE)
    api.renew(B, BASE - timedelta(seconds=8))  # expired
    api.renew(C, BASE)
    api.leases[sharding.replica_lease_name(C)]["spec"]["holderIdentity"] = A  # taken by the coordinator
    assert sharding.alive_replicas(api.list_replica_leases(NS), BASE) == {A}
    # A Lease created moments ago counts at once: its replica acts a lease duration later, and a loop given it
    # meanwhile only waits (at a cold start the first round otherwise gave every loop to the oldest replica,
    # and balancing took hundreds of drains: benchmarks/fleet_shards.py).
    new = api.leases[sharding.replica_lease_name(A)]["spec"]
    new.update(acquireTime=micro_time(BASE - timedelta(seconds=3)), leaseTransitions=0)
    assert sharding.alive_replicas(api.list_replica_leases(NS), BASE) == {A}
    # ... as fresh: it gets new loops only, no loop anyone acts on, until it may act (core/sharding.plan)
    assert sharding.fresh_replicas(api.list_replica_leases(NS), BASE) == {A}
    assert sharding.fresh_replicas(api.list_replica_leases(NS), BASE + timedelta(seconds=4)) == set()
    new.update(leaseTransitions=1)  # taken over, not created: it acts at once
    assert sharding.fresh_replicas(api.list_replica_leases(NS), BASE) == set()


def test_unassigned_loops_are_assigned_on_their_listed_version() -> None:
    bed = Bed()
    moves = bed.round(0, renew=(A, B, C))
    assert {m.kind for m in moves} == {Kind.ASSIGN} and len(moves) == 12
    assert set(bed.api.owners().values()) == {A, B, C}
    assert all(labels == {sharding.SHARD_LABEL: m, sharding.DRAIN_LABEL: None} for _, _, labels in bed.api.label_writes
               for m in [labels[sharding.SHARD_LABEL]])  # fmt: skip
    assert bed.round(1, renew=(A, B, C)) == []  # converged


def test_a_move_of_a_loop_changed_since_the_list_is_not_written() -> None:
    bed = Bed(loops=2)
    bed.api.race = {"team-a/loop-0"}
    moves = bed.round(0, renew=(A,))
    assert [m.key for m in moves] == ["team-a/loop-1"]
    bed.api.race = set()
    assert [m.key for m in bed.round(1, renew=(A,))] == ["team-a/loop-0"]


def test_a_labelled_loop_is_moved_although_its_status_was_written_since_the_list() -> None:
    """The plan reads only labels: the move's precondition is the labels as listed, not the resourceVersion that
    every status write of a busy loop (mid-Canary: every few seconds) changes."""
    bed = Bed(loops=40)
    bed.round(0, renew=(A, B))
    bed.api.race = set(bed.api.loops)  # every loop is busy: its status changes between each list and each write
    moves = bed.round(1, renew=(A, B, D))
    assert moves and {(m.kind, m.to) for m in moves} == {(Kind.DRAIN, D)}
    for move in moves:
        assert bed.api.loops[move.key]["labels"][sharding.DRAIN_LABEL] == D


def test_a_move_of_a_loop_relabelled_since_the_list_is_not_written() -> None:
    bed = Bed(loops=40)
    bed.round(0, renew=(A, B))
    key = next(key for key, owner in sorted(bed.api.owners().items()) if owner == A)
    bed.api.relabel = (key, {sharding.SHARD_LABEL: B})  # someone (an owner's ack, a user) wrote its labels since
    moves = bed.round(1, renew=(A, B, D))
    bed.api.relabel = None
    assert all(m.key != key for m in moves if m.kind is Kind.DRAIN or m.to != B)
    assert bed.api.loops[key]["labels"] == {sharding.SHARD_LABEL: B}


def test_a_joining_replica_gets_loops_through_drains() -> None:
    bed = Bed(loops=40)
    bed.round(0, renew=(A, B))
    moves = bed.round(1, renew=(A, B, D))
    assert moves and {(m.kind, m.to) for m in moves} == {(Kind.DRAIN, D)}
    assert {m.reason for m in moves} <= {Reason.OVER_CAP, Reason.REBALANCE}  # the cap fell from 25 to 17
    assert len(moves) <= sharding.drain_budget(40)
    for key, _, labels in bed.api.label_writes[-len(moves) :]:
        assert labels == {sharding.DRAIN_LABEL: D}
        assert bed.api.loops[key]["labels"][sharding.SHARD_LABEL] in (A, B)  # the owner keeps it until it acks


def test_a_dead_replicas_loops_move_only_once_its_lease_is_taken_then_its_lease_goes() -> None:
    bed = Bed()
    bed.round(0, renew=(A, B, C))
    of_c = {k for k, v in bed.api.owners().items() if v == C}
    assert of_c
    bed.round(3, renew=(A, B))  # C stops renewing after t=0 (its last renewal listed at t=0)
    assert bed.round(6.5, renew=(A, B)) == []  # still alive by its renewTime
    assert bed.api.leases[sharding.replica_lease_name(C)]["spec"]["holderIdentity"] == C
    taken_before = REGISTRY.get_sample_value("mfl_shard_moves_total", {"reason": "taken"}) or 0.0
    assert REGISTRY.get_sample_value("mfl_shard_loops", {"replica": C}) == len(of_c)
    moves = bed.round(7.5, renew=(A, B))  # a lease duration after the coordinator's list saw the last renewal
    assert REGISTRY.get_sample_value("mfl_shard_moves_total", {"reason": "taken"}) == taken_before + len(of_c)
    bed.round(9, renew=(A, B))
    assert REGISTRY.get_sample_value("mfl_shard_loops", {"replica": C}) is None  # gone from the gauge
    assert sum(REGISTRY.get_sample_value("mfl_shard_loops", {"replica": r}) or 0 for r in (A, B)) == 12
    assert {m.key for m in moves} == of_c and {(m.kind, m.reason) for m in moves} == {(Kind.ASSIGN, Reason.TAKEN)}
    assert set(bed.api.owners().values()) == {A, B}
    assert bed.api.deleted == [sharding.replica_lease_name(C)]  # nothing of C left


def test_a_replica_that_renews_again_is_never_taken() -> None:
    bed = Bed()
    bed.round(0, renew=(A, B, C))
    bed.now = 3
    bed.api.renew(C, BASE)  # C renews at t=3, its clock 3 s behind: its renewTime says t=0
    assert bed.round(7.5, renew=(A, B)) == []  # expired by its renewTime: suspect; 7 s since the coordinator saw it: no
    bed.round(9, renew=(A, B, C))  # C renewed: alive again
    assert bed.round(30, renew=(A, B, C)) == []
    assert bed.api.leases[sharding.replica_lease_name(C)]["spec"]["holderIdentity"] == C


def test_a_released_replica_lease_is_taken_at_once() -> None:
    bed = Bed()
    bed.round(0, renew=(A, B, C))
    name = sharding.replica_lease_name(C)
    lease = bed.api.leases[name]  # C shut down: its own release (holder cleared, marked by itself)
    lease["metadata"]["annotations"] = {"feedbackloop.dev/released-by": C}
    lease["spec"].pop("holderIdentity")
    lease["metadata"]["resourceVersion"] = bed.api.bump()
    moves = bed.round(1, renew=(A, B))
    assert moves and {m.reason for m in moves} == {Reason.TAKEN}
    assert name in bed.api.deleted


def test_replica_lease_writes_keep_their_label() -> None:
    """A replace without the label would drop it, and the coordinator lists the replica Leases by it."""
    from feedbackloop.core import election as rules

    replica = leader.replica_election(leader.Election(True, A, leader.DEFAULT_LEASE, NS, Timing()))
    assert replica.name == "mfl-replica-op-a" and replica.labels == {sharding.REPLICA_LEASE_LABEL: "true"}
    holding = rules.Holding(A, 7, "5", 0, None)
    for step in (rules.Step.CREATE, rules.Step.RENEW, rules.Step.ACQUIRE):
        body = rules.lease_body(step, holding, A, Timing(), replica.name, NS, BASE, replica.labels)
        assert body["metadata"]["labels"] == {sharding.REPLICA_LEASE_LABEL: "true"}
    released = rules.released_body(holding, replica.name, NS, BASE, replica.labels)
    assert released["metadata"]["labels"] == {sharding.REPLICA_LEASE_LABEL: "true"}
    assert "labels" not in rules.lease_body(rules.Step.RENEW, holding, A, Timing(), "l", NS, BASE)["metadata"]


def test_a_round_never_queues_behind_the_engines_threads() -> None:
    """The replica's engine fills the default executor (a thousand loops' status writes); the coordinator's lists
    and writes run on threads of their own, or a join's drained loops wait minutes to be assigned."""
    bed = Bed(loops=4)
    bed.now = 0.0
    bed.api.renew(A, bed.wall())
    release = threading.Event()

    async def scenario() -> list[sharding.Move]:
        loop = asyncio.get_running_loop()
        busy = [loop.run_in_executor(None, release.wait) for _ in range(64)]  # every default thread taken
        try:
            async with asyncio.timeout(20):  # a deadlock guard, not a speed target: without its threads, forever
                return await bed.coordinator.round()
        finally:
            release.set()
            await asyncio.gather(*busy)

    assert len(asyncio.run(scenario())) == 4
