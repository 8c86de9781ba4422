"""Sharded replicas (MFL_SHARDING=true): the coordinator, and how a replica is wired.

Every replica holds its own Lease (`mfl-replica-<POD_NAME>`, label feedbackloop.dev/replica-lease=true) with
the leader Lease's rules (runtime/leader.py) and runs its engine fenced by it, on the loops its watch selects
server-side (feedbackloop.dev/shard=<POD_NAME>). The holder of the leader Lease also runs the coordinator,
fenced by that Lease: every MFL_SHARD_PERIOD_SECONDS (2 s) it lists the replica Leases and the loops' labels,
takes the Lease of every replica that is not alive (through the election's rules, one step a round: only
once its term expired on the coordinator's clock, so the replica has stopped acting and a partitioned one's
renewal fails and it exits), applies the pure plan (core/sharding.py) and writes each move as a patch of
the loop's labels on the labels it listed (on the version, for a loop that had none): a loop changed since
is skipped until the next round. A taken Lease none
of whose loops is left is deleted. A loop's Deployments carry its owner's shard label too (the owner labels
them before it first acts on the loop: engine._adopt), so each replica watches only its own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from feedbackloop.core import sharding
from feedbackloop.core.sharding import Kind, Move
from feedbackloop.runtime import leader, metrics

log = logging.getLogger(__name__)
TRUE = ("true", "1", "yes", "on")
T = TypeVar("T")
MOVES_PER_ROUND = 500  # label writes in one round at most: the rest the next round (re-planned on a fresh list)
WRITERS = 8  # label writes in flight at once (the kubernetes client's connection pool holds more)


@dataclass(frozen=True)
class Sharding:
    enabled: bool
    period_seconds: float = 2.0
    namespaces: tuple[str, ...] = ()  # the loops' namespaces (MFL_WATCH_NAMESPACES); () = all


def sharding_from_env(env: Mapping[str, str]) -> Sharding:
    """MFL_SHARDING (default false), MFL_SHARD_PERIOD_SECONDS (default 2), MFL_WATCH_NAMESPACES."""
    enabled = env.get("MFL_SHARDING", "false").strip().lower() in TRUE
    period = float(env.get("MFL_SHARD_PERIOD_SECONDS", "2"))
    if period <= 0:
        raise ValueError(f"MFL_SHARD_PERIOD_SECONDS must be positive, got {period}")
    namespaces = tuple(sorted(set(env.get("MFL_WATCH_NAMESPACES", "").replace(",", " ").split())))
    return Sharding(enabled, period, namespaces)


class ShardAPI(Protocol):
    """What the coordinator needs of the Kubernetes API (runtime/kube.py's Kube, behind the leader's Fence)."""

    def list_replica_leases(self, namespace: str) -> list[dict[str, Any]]: ...
    def list_loop_labels(self, namespaces: list[str]) -> list[tuple[str, str, dict[str, str], str]]: ...
    def label_loop(
        self, namespace: str, name: str, version: str, labels: dict[str, str | None], listed: dict[str, str]
    ) -> str: ...
    def delete_lease(self, namespace: str, name: str, version: str) -> None: ...


class Coordinator:
    def __init__(
        self,
        api: ShardAPI,
        election: leader.Election,
        config: Sharding,
        leases: Callable[[str], leader.Leases],
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`election`: the leader's (its identity, namespace, timing); `leases(name)`: one Lease's store."""
        self.api, self.election, self.config, self.leases = api, election, config, leases
        self.wall, self.clock = wall, clock
        self.takers: dict[str, leader.Elector] = {}  # replica -> our candidacy for its Lease (observing it)
        # Threads of its own: in the default executor its lists and writes queued behind its replica's engine
        # (a thousand loops' status writes), and a join's drained loops waited minutes to be assigned.
        self._pool = ThreadPoolExecutor(max_workers=WRITERS + 1, thread_name_prefix="shard-coordinator")

    async def _call(self, function: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, function, *args)

    async def run(self) -> None:
        while True:
            try:
                await self.round()
            except Exception:  # one bad round must not end the coordinator (nor, through `lead`, the process)
                log.exception("shard coordination round failed")
            await asyncio.sleep(self.config.period_seconds)

    async def round(self) -> list[Move]:
        """One round: list, take what is dead, plan, write. The moves written."""
        namespace = self.election.namespace
        leases = await self._call(self.api.list_replica_leases, namespace)
        listed = await self._call(self.api.list_loop_labels, list(self.config.namespaces))
        alive = sharding.alive_replicas(leases, self.wall())
        loops = {f"{ns}/{name}": sharding.shard_of(labels) for ns, name, labels, _ in listed}
        as_listed = {f"{ns}/{name}": (version, labels) for ns, name, labels, version in listed}
        held = Counter(s.shard for s in loops.values() if s.shard)
        metrics.observe_shards({str(r): n for r, n in held.items()} | dict.fromkeys(alive - set(held), 0))
        by_replica = {sharding.identity_of_lease(str((x.get("metadata") or {}).get("name") or "")): x for x in leases}
        known = ({r for r in by_replica if r} | {str(r) for r in held}) - {self.election.identity}
        for gone in set(self.takers) - known:  # nothing left of it
            self.takers.pop(gone)
        for replica in sorted(known):  # observed every round: a death is timed from the last renewal listed
            self._candidacy(replica).saw(by_replica.get(replica))
        taken = set()
        for replica in sorted(known - alive):
            if await self.takers[replica].attempt() and self.takers[replica].may_act():
                taken.add(replica)
        # At most MOVES_PER_ROUND, WRITERS at a time: a cold start's round of thousands of assignments written one
        # by one took minutes, and no dead replica's Lease is taken while a round lasts.
        fresh = sharding.fresh_replicas(leases, self.wall()) & alive
        moves = sharding.plan(loops, alive, taken, fresh=fresh)[:MOVES_PER_ROUND]
        gate = asyncio.Semaphore(WRITERS)
        done = await asyncio.gather(*(self._write(move, as_listed[move.key], gate) for move in moves))
        written = [move for move, ok in zip(moves, done, strict=True) if ok]
        await self._forget_empty(taken, loops, written)
        return written

    async def _write(self, move: Move, listed: tuple[str, dict[str, str]], gate: asyncio.Semaphore) -> bool:
        ns, name = move.key.split("/", 1)
        version, labels = listed
        async with gate:
            try:
                await self._call(self.api.label_loop, ns, name, version, sharding.labels_for(move), labels)
            except Exception as error:  # 409/422 (changed since the list) or 404: the next round sees it as it is
                log.info("shard move of %s to %s not written: %s", move.key, move.to, getattr(error, "reason", error))
                return False
        metrics.SHARD_MOVES.labels(move.reason.value).inc()
        log.info("shard %s %s to %s (%s)", move.kind.value, move.key, move.to, move.reason.value)
        return True

    def _candidacy(self, replica: str) -> leader.Elector:
        """Our candidacy for a replica's Lease (its name and label, us as the candidate)."""
        elector = self.takers.get(replica)
        if elector is None:
            election = replace(leader.replica_election(self.election), name=sharding.replica_lease_name(replica))
            elector = leader.Elector(self.leases(election.name), election, clock=self.clock, wall=self.wall)
            self.takers[replica] = elector
        return elector

    async def _forget_empty(
        self, taken: set[str], loops: Mapping[str, sharding.LoopShard], written: list[Move]
    ) -> None:
        """Delete the taken Leases none of whose loops is left (a restarted replica of that name creates its
        own again, and acts on it a lease duration later)."""
        moved = {m.key for m in written if m.kind is Kind.ASSIGN}
        for replica in sorted(taken):
            if any(s.shard == replica and key not in moved for key, s in loops.items()):
                continue
            holding = self.takers[replica].holding
            if holding is None:
                continue
            try:
                await self._call(
                    self.api.delete_lease,
                    self.election.namespace,
                    sharding.replica_lease_name(replica),
                    holding.version,
                )
            except Exception as error:
                log.info("could not delete the Lease of %s: %s", replica, getattr(error, "reason", error))
                continue
            self.takers.pop(replica, None)
            log.info("replica %s is gone: its loops moved and its Lease deleted", replica)
