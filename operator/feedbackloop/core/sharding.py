"""Sharding loops over operator replicas: the coordinator's plan, over plain data.

Every replica holds its own Lease (`mfl-replica-<identity>`) and acts only on the loops labelled
SHARD_LABEL=<identity> (its watch selects them server-side). The coordinator (the leader Lease's holder)
lists the replica Leases and the loops' labels every few seconds and applies `plan`:

- **Owner**: a loop's owner is the replica its SHARD_LABEL names, as long as that replica's Lease is alive
  or has not been *taken* (the coordinator acquired it through the election's rules: the holder's term
  expired on the coordinator's clock, so the holder has stopped acting, and a partitioned holder's renewal
  now fails: it exits). A label therefore changes from one replica to another only in two ways:
  `assign` a loop that has no owner label, or whose owner's Lease was taken; or `drain` it: the owner
  finishes its reconcile in flight, starts no other, and removes both labels itself (the ack, on the
  loop's resourceVersion); the loop is then unlabelled and assigned on a later round. No loop ever has two
  owners: the old owner let go (ack) or cannot act any more (taken) before the new label is written.
- **Where a loop belongs**: rendezvous hashing (highest random weight, sha256 of "<replica>/<loop>") with
  bounded loads (Argo CD's sharding, consistent hashing with bounded loads): no replica holds more than
  `cap = ceil(1.25 * loops / replicas)`; a loop goes to the first replica of its ranking with room.
- **Which loops move**: an unassigned loop, or one of a taken replica, is assigned at once (its owner cannot
  act: it must not wait). A loop on an alive replica is drained when its replica is over the cap (the loops
  ranked lowest there first), or when a replica ranked higher for it has room (a replica joined, or room
  freed up): only the loops whose ranking changed move, ~1/n of them on a join. At most `max_drains`
  drains are in flight at once, so a join never stops the fleet. A loop whose owner is neither alive nor
  taken waits (its Lease has not expired yet, or the coordinator has not taken it yet).
- **Convergence**: drains off over-cap replicas stop once none is over the cap (n * cap >= loops); every
  other drain moves a loop to a replica ranked strictly higher for it; so moves end while the replicas
  and the loops stay the same.
"""

from __future__ import annotations

import enum
import hashlib
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from feedbackloop.core.election import parse_micro_time

SHARD_LABEL = "feedbackloop.dev/shard"  # on a loop: the replica (its Pod name) that acts on it
DRAIN_LABEL = "feedbackloop.dev/shard-drain"  # on a loop: its owner is to let it go (value: the intended next owner)
REPLICA_LEASE_LABEL = "feedbackloop.dev/replica-lease"  # "true" on every replica Lease
REPLICA_LEASE_PREFIX = "mfl-replica-"
LOAD_FACTOR = 1.25  # bounded loads: no replica holds more than 1.25x the mean
DRAIN_SHARE = 0.10  # at most this share of the loops (>= 1) draining at once


@dataclass(frozen=True)
class LoopShard:
    """What a loop's labels say: its owner and the drain asked of it ("" / None when absent)."""

    shard: str | None = None
    drain: str | None = None


class Kind(enum.Enum):
    ASSIGN = "assign"  # label shard=<to>, no drain label: the loop has no owner, or its owner's Lease was taken
    DRAIN = "drain"  # label shard-drain=<to>: its owner is to let go


class Reason(enum.Enum):
    UNASSIGNED = "unassigned"
    TAKEN = "taken"  # its owner died: its Lease was taken
    OVER_CAP = "over_cap"
    REBALANCE = "rebalance"  # a replica ranked higher for it has room (a join)


@dataclass(frozen=True)
class Move:
    key: str
    kind: Kind
    to: str
    reason: Reason


def replica_lease_name(identity: str) -> str:
    return f"{REPLICA_LEASE_PREFIX}{identity}"


def identity_of_lease(name: str) -> str | None:
    return name[len(REPLICA_LEASE_PREFIX) :] if name.startswith(REPLICA_LEASE_PREFIX) else None


def shard_selector(identity: str) -> str:
    """The label selector of one replica's watch of the loops (server-side)."""
    return f"{SHARD_LABEL}={identity}"


def weight(replica: str, key: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{replica}/{key}".encode()).digest()[:8], "big")


def ranking(key: str, replicas: Collection[str]) -> list[str]:
    """The replicas in the loop's order of preference (highest random weight first; ties by name)."""
    return sorted(replicas, key=lambda r: (-weight(r, key), r))


def cap(loops: int, replicas: int) -> int:
    return math.ceil(LOAD_FACTOR * loops / replicas) if replicas else 0


def drain_budget(loops: int) -> int:
    return max(1, math.floor(DRAIN_SHARE * loops))


def shard_of(labels: Mapping[str, str] | None) -> LoopShard:
    labels = labels or {}
    return LoopShard(labels.get(SHARD_LABEL) or None, labels.get(DRAIN_LABEL) or None)


def plan(
    loops: Mapping[str, LoopShard],
    alive: Collection[str],
    taken: Collection[str] = (),
    max_drains: int | None = None,
    fresh: Collection[str] = (),
) -> list[Move]:
    """The moves of one round (at most one per loop), deterministic in its inputs.

    `alive`: the replicas whose Lease is held by themselves and not expired (they get loops). `taken`: the
    replicas whose Lease the coordinator holds (dead: their loops move at once). A replica in both is
    treated as taken. `max_drains`: drains in flight at most (default `drain_budget`). `fresh`: alive replicas
    that cannot act yet (a Lease created less than a lease duration ago): they get new loops, which wait for
    them anyway (a cold start spreads at once), but no loop that someone acts on: neither a dead replica's nor
    one drained from a live owner, which would stand still until the newcomer may act."""
    taken = set(taken)
    replicas = sorted(set(alive) - taken)
    if not replicas or not loops:
        return []
    limit = drain_budget(len(loops)) if max_drains is None else max_drains
    bound = cap(len(loops), len(replicas))
    held = dict.fromkeys(replicas, 0)  # loops labelled with the replica (draining ones included: not gone yet)
    incoming = dict.fromkeys(replicas, 0)  # loops promised to it: drain targets in flight, assignments made
    outgoing = dict.fromkeys(replicas, 0)  # its loops draining away
    in_flight = 0
    for shard in loops.values():
        if shard.shard in held:
            held[shard.shard] += 1
            if shard.drain is not None:
                in_flight += 1
                outgoing[shard.shard] += 1
                if shard.drain in incoming and shard.drain != shard.shard:
                    incoming[shard.drain] += 1

    fresh = set(fresh)
    settled_replicas = [r for r in replicas if r not in fresh]

    def room(replica: str) -> bool:
        return held[replica] + incoming[replica] < bound

    def ranked(key: str, new_loop: bool) -> list[str]:
        """The replicas a loop may go to, best first (a fresh one only for a new loop, or when all are)."""
        return ranking(key, replicas if new_loop or not settled_replicas else settled_replicas)

    moves: list[Move] = []
    # 1. Loops that no alive replica owns and that may move now: assign (never limited: nobody acts on them).
    for key in sorted(loops):
        shard = loops[key]
        if shard.shard is None or shard.shard in taken:
            order = ranked(key, shard.shard is None)
            to = next((r for r in order if room(r)), order[0])  # room exists while n * cap >= loops
            incoming[to] += 1
            moves.append(Move(key, Kind.ASSIGN, to, Reason.UNASSIGNED if shard.shard is None else Reason.TAKEN))
    settled = [k for k in sorted(loops) if loops[k].shard in held and loops[k].drain is None]
    # 2. Over-cap replicas shed the loops that rank them lowest, to the best-ranked replica with room.
    by_owner: dict[str, list[str]] = {}
    for key in settled:
        by_owner.setdefault(str(loops[key].shard), []).append(key)
    moving: set[str] = set()
    for owner, keys in sorted(by_owner.items()):
        keys.sort(key=lambda k: (ranking(k, replicas).index(owner), weight(owner, k), k), reverse=True)
        for key in keys:
            if in_flight >= limit or held[owner] - outgoing[owner] <= bound:
                break
            target = next((r for r in ranked(key, False) if r != owner and room(r)), None)
            if target is None:
                break
            incoming[target] += 1
            outgoing[owner] += 1
            in_flight += 1
            moving.add(key)
            moves.append(Move(key, Kind.DRAIN, target, Reason.OVER_CAP))
    # 3. Loops move up their ranking where a replica ranked higher has room (a join, or room freed up).
    for key in settled:
        if in_flight >= limit:
            break
        if key in moving:
            continue
        owner = str(loops[key].shard)
        for replica in ranked(key, False):
            if replica == owner:
                break
            if room(replica):
                incoming[replica] += 1
                outgoing[owner] += 1
                in_flight += 1
                moves.append(Move(key, Kind.DRAIN, replica, Reason.REBALANCE))
                break
    return moves


def labels_for(move: Move) -> dict[str, str | None]:
    """The merge patch of the loop's labels that carries out `move` (None removes a label)."""
    if move.kind is Kind.ASSIGN:
        return {SHARD_LABEL: move.to, DRAIN_LABEL: None}
    return {DRAIN_LABEL: move.to}


ACK_LABELS: dict[str, str | None] = {SHARD_LABEL: None, DRAIN_LABEL: None}  # the owner lets go: both labels go


def label_patch(listed: Mapping[str, str], changes: Mapping[str, str | None]) -> list[dict[str, Any]]:
    """A JSON patch that makes `changes` (None removes) only if the loop's labels are still `listed`: the plan
    read nothing else, so a status written since the list (a busy loop's, every few seconds) does not refuse the
    move as a resourceVersion precondition did. `listed` must not be empty (there is no path to test then)."""
    ops: list[dict[str, Any]] = [{"op": "test", "path": "/metadata/labels", "value": dict(listed)}]
    for key, value in sorted(changes.items()):
        path = "/metadata/labels/" + key.replace("~", "~0").replace("/", "~1")
        if value is not None:
            ops.append({"op": "add", "path": path, "value": value})
        elif key in listed:
            ops.append({"op": "remove", "path": path})
    return ops


def fresh_replicas(leases: Collection[Mapping[str, Any]], now: datetime) -> set[str]:
    """The replicas whose own Lease was created less than a lease duration ago (no transition yet): they act
    on their loops only a lease duration after creating it (core/election.acts_from)."""
    fresh = set()
    for lease in leases:
        identity = identity_of_lease(str((lease.get("metadata") or {}).get("name") or ""))
        spec = lease.get("spec") or {}
        acquired = parse_micro_time(spec.get("acquireTime"))
        term = timedelta(seconds=int(spec.get("leaseDurationSeconds") or 0))
        if identity and not int(spec.get("leaseTransitions") or 0) and acquired is not None and acquired + term > now:
            fresh.add(identity)
    return fresh


def alive_replicas(leases: Collection[Mapping[str, Any]], now: datetime) -> set[str]:
    """The replicas whose own Lease names them and has not expired at `now` (wall clock: the renewTime the
    holder wrote). Only who *gets* loops depends on this; a loop leaves a replica only by its own ack or
    once its Lease was taken through the election's rules (its own clock, no skew), so a clock skew here
    can delay moves, never make two owners. A Lease created moments ago counts at once: its replica acts on it
    a lease duration later (core/election.acts_from) and a loop given it meanwhile waits that long; not
    counting it gave a cold start's first round every loop to whichever replica started first."""
    alive = set()
    for lease in leases:
        identity = identity_of_lease(str((lease.get("metadata") or {}).get("name") or ""))
        spec = lease.get("spec") or {}
        renewed = parse_micro_time(spec.get("renewTime"))
        term = timedelta(seconds=int(spec.get("leaseDurationSeconds") or 0))
        held = identity and spec.get("holderIdentity") == identity
        if not held or renewed is None or renewed + term <= now:
            continue
        alive.add(str(identity))
    return alive
