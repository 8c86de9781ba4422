"""The operator's own Prometheus metrics (served on /metrics by main.py)."""

from __future__ import annotations

from collections import Counter as _Tally
from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client import Counter, Gauge, Histogram

if TYPE_CHECKING:  # the poller imports this module: a name for the annotation only
    from feedbackloop.runtime.poller import PollStats

LOOPS = Gauge("mfl_operator_loops", "Loops by phase", ["phase"])
LOOPS_DUE = Gauge("mfl_operator_loops_due", "Loops reconciled in the last cycle")
POLL_SECONDS = Histogram(
    "mfl_operator_poll_duration_seconds",
    "Duration of one fleet poll",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
POLL_LAG = Histogram(
    "mfl_operator_poll_lag_seconds",
    "How late a loop's poll starts against its interval",
    buckets=(0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 20, 60),
)
CYCLES_POLLED = Counter("mfl_operator_poll_cycles_total", "Engine cycles that polled Prometheus")
QUERIES = Counter("mfl_operator_prometheus_queries_total", "PromQL queries sent")
QUERY_ERRORS = Counter("mfl_operator_prometheus_query_errors_total", "PromQL queries that failed")
STATUS_WRITES = Counter("mfl_operator_status_writes_total", "Status patches written", ["reason"])
RECONCILE_ERRORS = Counter("mfl_operator_reconcile_errors_total", "Reconciles that raised")
EVENTS = Counter("mfl_operator_events_total", "Events posted", ["reason"])
NOTIFICATIONS = Counter(
    "mfl_operator_notifications_total",
    "Webhook notification attempts: delivered, retried (a failed try, tried again) or dropped (queue full or too old)",
    ["result"],
)
LEADER = Gauge("mfl_operator_leader", "1 while this replica holds the leader Lease and runs the engine")
REPLICA_LEASE = Gauge(
    "mfl_operator_replica_lease", "1 while this replica holds its own Lease and runs its shard's engine (sharding)"
)
SHARD_LOOPS = Gauge(
    "mfl_shard_loops", "Loops labelled for each replica, as the coordinator last listed them", ["replica"]
)
SHARD_MOVES = Counter(
    "mfl_shard_moves_total",
    "Shard moves the coordinator wrote: unassigned, taken (its replica died), over_cap, rebalance (drains); "
    "and acked (a replica let go of a drained loop)",
    ["reason"],
)
_PHASES_SEEN: set[str] = set()
_REPLICAS_SEEN: set[str] = set()


def observe_shards(loops_by_replica: dict[str, int]) -> None:
    for replica in _REPLICAS_SEEN - set(loops_by_replica):
        SHARD_LOOPS.remove(replica)
    for replica, count in loops_by_replica.items():
        SHARD_LOOPS.labels(replica).set(count)
    _REPLICAS_SEEN.clear()
    _REPLICAS_SEEN.update(loops_by_replica)


def record_poll(stats: PollStats) -> None:
    POLL_SECONDS.observe(stats.seconds)
    CYCLES_POLLED.inc()
    QUERIES.inc(stats.queries)
    QUERY_ERRORS.inc(stats.errors)


def observe_phases(phases: Iterable[str]) -> None:
    tally = _Tally(phases)
    for phase in _PHASES_SEEN | set(tally):
        LOOPS.labels(phase).set(tally.get(phase, 0))
    _PHASES_SEEN.update(tally)
