"""Leader election's rules over plain data: what a candidate does with the Lease it read, and when.

The edge (feedbackloop.runtime.leader) reads the `coordination.k8s.io/v1` Lease, asks `next_step` and writes
what `lease_body` / `released_body` say. The rules are client-go's (tools/leaderelection), with these changes:

- **Expiry is judged on the candidate's own monotonic clock**: `leaseDurationSeconds` after it *saw* the
  Lease last change (its resourceVersion; seen = when its read returned, which is after the holder's
  renewal started), never by comparing the holder's renewTime with its own wall clock, so clock skew
  between nodes cannot shorten a lease.
- **A deleted or emptied Lease is still held.** client-go takes a Lease that is absent or has no holder at
  once; but the holder of a Lease that someone deleted (`kubectl delete lease`, a namespace cleanup) or
  whose holderIdentity someone cleared is still acting until its renew deadline, so taking it then makes
  two actors. Here such a Lease is held by its last known holder until that holder's last known term
  expires (as observed here: when this candidate saw its last renewal + its leaseDurationSeconds), and for
  at least one lease duration from when this candidate first saw it deleted or emptied: a holder it never
  saw (a takeover or renewal between two of its reads) renewed before that read, so it stops acting within
  a renew deadline of it. A candidate that knows no holder (it just started) is in the same position. The
  holder itself is no exception: it cannot tell a deletion of its own Lease from a takeover it missed, so
  it stops acting (the process exits and comes back as a candidate).
- **Only a release written by the holder itself is taken at once**: `released_body` names the holder in
  the annotation RELEASED_BY, and the holder writes it (with its last resourceVersion as a precondition,
  so nobody wrote in between) only after it stopped acting (engine stopped, calls in flight returned). A
  release is recognised when it names the last holder this candidate knows, or any holder when it knows
  none; a clearing that does not name it, or names another, is not a release. (A release by a version of
  the operator without the marker, e.g. during the upgrade to this one, is therefore taken only when the
  term expires: once.)
- **A Lease created from absence is acted on a lease duration after the create** (`acts_from`): a create
  and a deletion by someone else between two reads of another candidate leave both reads absent, so
  another candidate may have created the Lease, be acting, and have had it deleted under it; its last
  renewal started before this create landed, so it stops within a renew deadline of it. Meanwhile the
  creator holds and renews the Lease without acting. This is the rare path (a fresh install: its first
  leader acts two lease durations after it starts; a deleted Lease); a takeover of an expired or released
  Lease, and a restarted process finding its own Lease, act at once.

The timing argument (`Timing`): a holder acts only until `renewed + renew_deadline` (its watchdog ends the
process; every API request is sent only with time left in that term, its timeout bounded by it), where
`renewed` is when its last successful renewal started. A standby takes over no earlier than
`seen + lease_seconds` on its own clock, where `seen` (when its read of that renewal returned) is after
`renewed`. So the holder has stopped `lease_seconds - renew_deadline` (2 s by default) before anyone may
take over: that margin covers the watchdog's exit, clock rate differences (parts per million) and a request
in flight at the deadline. A ready standby reads every `poll_seconds` (jitter up to 1.2x), so it sees the
killed holder's last renewal within 1.2 polls of it, and reads again exactly when that term ends: the
kill is noticed within `lease_seconds + 1.2 * poll_seconds` (7.6 s by default) plus two API round trips.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

RELEASED_BY = "feedbackloop.dev/released-by"  # annotation: the holder that released the Lease (itself)


@dataclass(frozen=True)
class Timing:
    lease_seconds: int = 7  # a standby takes over this long after it saw the Lease last change
    renew_deadline_seconds: float = 5.0  # the holder stops acting when it has not renewed for this long
    retry_seconds: float = 1.0  # how often the holder renews
    poll_seconds: float = 0.5  # how often a standby looks at the Lease (a GET; it decides the failover time)

    def __post_init__(self) -> None:
        if not 0 < self.retry_seconds < self.renew_deadline_seconds < self.lease_seconds:
            raise ValueError(
                "leader election needs 0 < retry < renew deadline < lease duration, got "
                f"{self.retry_seconds} / {self.renew_deadline_seconds} / {self.lease_seconds} s "
                "(MFL_LEASE_RETRY_SECONDS / MFL_LEASE_RENEW_DEADLINE_SECONDS / MFL_LEASE_DURATION_SECONDS)"
            )
        if not 0 < self.poll_seconds <= self.renew_deadline_seconds:
            raise ValueError(
                f"leader election needs 0 < poll <= renew deadline, got MFL_LEASE_POLL_SECONDS={self.poll_seconds}"
            )


@dataclass(frozen=True)
class Holding:
    """What a Lease says, as far as the election is concerned."""

    holder: str  # "" when released or cleared
    lease_seconds: int  # 0 when absent
    version: str  # resourceVersion: every write changes it
    transitions: int
    acquire_time: str | None
    released_by: str = ""  # RELEASED_BY: set only by the holder's own release


@dataclass(frozen=True)
class Observation:
    """What this candidate knows of the Lease, on its monotonic clock.

    `version`: the resourceVersion seen last (None: no Lease), first seen at `since`. `holder`: the last
    holder known (kept across a deletion or a clearing by someone else; "" when none is known or it
    released). `until`: when that holder's term ends as observed here (for a deleted or emptied Lease, at
    least a lease duration after it was seen so); nobody takes the Lease before, the holder included (it
    only renews a Lease that still names it)."""

    version: str | None
    since: float
    holder: str = ""
    until: float = -math.inf


class Step(enum.Enum):
    CREATE = "create"  # no Lease: create it, holding it
    RENEW = "renew"  # ours: renew it
    ACQUIRE = "acquire"  # released, or its last holder's term expired: take it over
    WAIT = "wait"  # its last known holder's term has not expired


def holding_of(lease: Mapping[str, Any] | None) -> Holding | None:
    if lease is None:
        return None
    spec = lease.get("spec") or {}
    metadata = lease.get("metadata") or {}
    return Holding(
        holder=spec.get("holderIdentity") or "",
        lease_seconds=int(spec.get("leaseDurationSeconds") or 0),
        version=str(metadata.get("resourceVersion") or ""),
        transitions=int(spec.get("leaseTransitions") or 0),
        acquire_time=spec.get("acquireTime"),
        released_by=str((metadata.get("annotations") or {}).get(RELEASED_BY) or ""),
    )


def observe(previous: Observation | None, holding: Holding | None, now: float, timing: Timing) -> Observation:
    """The observation after reading `holding` (the read returned at `now`): it changes only when the Lease did."""
    version = holding.version if holding else None
    if previous is not None and previous.version == version:
        return previous
    if holding is not None and holding.holder:  # held: a new term, from now (a malformed duration: ours)
        seconds = holding.lease_seconds if holding.lease_seconds > 0 else timing.lease_seconds
        return Observation(version, now, holding.holder, now + seconds)
    known = previous.holder if previous is not None else ""
    if holding is not None and holding.released_by and holding.released_by == (known or holding.released_by):
        return Observation(version, now, "", now)  # released by its holder, who has stopped acting: free
    # Deleted or emptied by someone else (or nothing known: this candidate just started). The last known
    # holder's term stands; and a holder this candidate never saw (a takeover or renewal between two of its
    # reads) renewed before this read, so it stops acting within a renew deadline of now: a lease duration
    # from now covers it.
    seconds = max(timing.lease_seconds, holding.lease_seconds if holding else 0)
    until = max(now + seconds, previous.until if previous is not None else -math.inf)
    return Observation(version, now, known, until)


def next_step(holding: Holding | None, me: str, observed: Observation, now: float) -> Step:
    if holding is not None and holding.holder == me:
        return Step.RENEW  # ours: this process's, or a restarted one's of the same Pod
    if now < observed.until:
        return Step.WAIT  # the last known term (or a lease duration from a deletion or clearing) is not over
    return Step.CREATE if holding is None else Step.ACQUIRE


def acts_from(step: Step, written: float, timing: Timing, created_ago: float | None = None) -> float:
    """When a candidate whose write of the Lease for `step` returned at `written` may start acting: a lease
    duration later after a create (a Lease created and deleted again between another candidate's reads
    looks absent to it), at once otherwise. `created_ago`: when a process's first write renews a Lease its
    Pod created (a restarted container; leaseTransitions 0, as every takeover counts one), the seconds since
    its acquireTime, written by this Pod on this node's clock: the earlier process may not have acted yet,
    so the create's lease duration still runs."""
    if step is Step.CREATE:
        return written + timing.lease_seconds
    if created_ago is not None:
        return written + max(0.0, timing.lease_seconds - created_ago)
    return written


def parse_micro_time(text: str | None) -> datetime | None:
    """A Lease's MicroTime (RFC 3339 with a fraction), None when absent or unreadable."""
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def still_leading(renewed_at: float | None, now: float, timing: Timing) -> bool:
    """`renewed_at`: when the last successful renewal *started* (the standby saw it no earlier)."""
    return renewed_at is not None and now < renewed_at + timing.renew_deadline_seconds


def micro_time(moment: datetime) -> str:
    """A MicroTime as the API server parses it: always six fraction digits (isoformat drops them at .0)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lease_body(
    step: Step,
    holding: Holding | None,
    me: str,
    timing: Timing,
    name: str,
    namespace: str,
    wall: datetime,
    labels: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The Lease to write for `step` (CREATE, RENEW or ACQUIRE); carries the read resourceVersion. A replace
    carries no annotations, so it clears a release marker; it carries `labels` (a replace without them would
    drop them: the replica Leases are listed by label)."""
    now = micro_time(wall)
    acquired = holding.acquire_time if step is Step.RENEW and holding is not None else None
    transitions = holding.transitions if holding else 0
    if step is Step.ACQUIRE:
        transitions += 1
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if labels:
        metadata["labels"] = dict(labels)
    if holding is not None:
        metadata["resourceVersion"] = holding.version
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": metadata,
        "spec": {
            "holderIdentity": me,
            "leaseDurationSeconds": timing.lease_seconds,
            "acquireTime": acquired or now,
            "renewTime": now,
            "leaseTransitions": transitions,
        },
    }


def released_body(
    holding: Holding, name: str, namespace: str, wall: datetime, labels: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """client-go's release (no holder, a one-second duration, transitions kept), marked as written by the
    holder: RELEASED_BY names it, so a standby takes it at once (a clearing by anyone else is not taken
    before the holder's term expires). Written only on the holder's own last version (resourceVersion)."""
    metadata: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "resourceVersion": holding.version,
        "annotations": {RELEASED_BY: holding.holder},
    }
    if labels:
        metadata["labels"] = dict(labels)
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": metadata,
        "spec": {
            "leaseDurationSeconds": 1,
            "acquireTime": micro_time(wall),
            "renewTime": micro_time(wall),
            "leaseTransitions": holding.transitions,
        },
    }
