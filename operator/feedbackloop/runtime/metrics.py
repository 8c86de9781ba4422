"""The operator's own Prometheus metrics (served on /metrics by main.py)."""

from __future__ import annotations

from collections import Counter as _Tally
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from feedbackloop.core import conditions as cond
from feedbackloop.core.monitoring import UNAVAILABLE
from feedbackloop.core.timeutil import parse_time

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
API_THROTTLED_SECONDS = Counter(
    "mfl_operator_api_throttled_seconds_total",
    "Seconds the engine's Kubernetes API requests waited for the client-side request budget (MFL_API_QPS, _BURST)",
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


# --- per loop: namespace and loop on every series (docs/monitoring.md) ------------------------------------
# Not set as children of module-level gauges: computed at each scrape from the loops this replica's engine acts
# on (a Collector), so a loop deleted, or moved to another replica (sharding), or a standby replica's view (HA)
# has no series here, with nothing to remove and nothing stale. Cardinality: one series per loop and family,
# one per rule for the rules.
LOOP_LABELS = ("namespace", "loop")


@dataclass(frozen=True)
class LoopSeries:
    """What the operator exports of one loop, from its status alone (loop_series)."""

    phase: str
    version: str  # the serving version (status.currentVersion), "" before the first
    canary_version: str  # "" when no canary runs
    canary_step: int  # 1-based; 0 when no canary runs
    canary_weight: int  # the canary's traffic weight in percent; 0 when none
    breaching: dict[str, bool] = field(default_factory=dict)  # rule -> Breaching (not Pending, not NoData)
    breached: bool = False  # condition Breached: a rule fires
    metrics_unavailable: bool = False  # MetricsAvailable=False for an outage (never while a version awaits data)
    last_retraining: tuple[str, str, float] | None = None  # (outcome, trigger, when) of the last finished one


def loop_series(status: Mapping[str, Any]) -> LoopSeries:
    """The per-loop metric values, a function of the loop's status (as the engine last wrote or read it)."""
    rollout = status.get("rollout") or {}
    conditions = status.get("conditions") or []
    available = cond.get(conditions, cond.METRICS_AVAILABLE) or {}
    history = status.get("history") or []
    last = history[-1] if history else {}
    at = parse_time(last.get("at")) if last else None
    current = status.get("currentVersion")
    return LoopSeries(
        phase=str(status.get("phase") or "Pending"),
        version="" if current is None else str(current),
        canary_version=str(rollout["version"]) if rollout.get("version") is not None else "",
        canary_step=int(rollout.get("step") or 0) + 1 if rollout else 0,
        canary_weight=int(rollout.get("weight") or 0) if rollout else 0,
        breaching={str(m.get("name")): m.get("state") == "Breaching" for m in status.get("metrics") or []},
        breached=cond.is_true(conditions, cond.BREACHED),
        metrics_unavailable=available.get("status") == "False" and available.get("reason") == UNAVAILABLE,
        last_retraining=(str(last.get("outcome")), str(last.get("trigger") or ""), at) if at is not None else None,
    )


Statuses = Callable[[], Iterable[tuple[str, str, Mapping[str, Any]]]]  # -> (namespace, loop, status) ...


class LoopCollector(Collector):
    """The per-loop families, from `source` at each scrape: set by the engine while it runs (acts), None else."""

    def __init__(self) -> None:
        self.source: Statuses | None = None

    def collect(self) -> Iterator[GaugeMetricFamily | InfoMetricFamily]:
        info = InfoMetricFamily(
            "mfl_loop",
            "A loop as the operator acting on it last decided: phase, serving version, canary version",
            labels=LOOP_LABELS,
        )
        step = GaugeMetricFamily(
            "mfl_loop_canary_step", "The running canary's step, from 1 (0: no canary)", labels=LOOP_LABELS
        )
        weight = GaugeMetricFamily(
            "mfl_loop_canary_weight",
            "The running canary's traffic weight in percent (0: no canary)",
            labels=LOOP_LABELS,
        )
        breached = GaugeMetricFamily(
            "mfl_loop_breached", "1 while a rule of the loop fires (condition Breached)", labels=LOOP_LABELS
        )
        rules = GaugeMetricFamily(
            "mfl_loop_rule_breaching",
            "1 while the rule is Breaching (past its `for`), 0 while Healthy, Pending or without data",
            labels=[*LOOP_LABELS, "rule"],
        )
        unavailable = GaugeMetricFamily(
            "mfl_loop_metrics_unavailable",
            "1 while the serving version's metrics are unavailable: failed queries, or its data gone "
            "(never while a new version awaits its first data)",
            labels=LOOP_LABELS,
        )
        retrained = GaugeMetricFamily(
            "mfl_loop_last_retraining_timestamp_seconds",
            "When the loop's last retraining ended, labelled with its outcome and trigger",
            labels=[*LOOP_LABELS, "outcome", "trigger"],
        )
        source = self.source
        for namespace, name, status in list(source()) if source is not None else []:
            series = loop_series(status)
            key = [namespace, name]
            info.add_metric(
                key, {"phase": series.phase, "version": series.version, "canary_version": series.canary_version}
            )
            step.add_metric(key, series.canary_step)
            weight.add_metric(key, series.canary_weight)
            breached.add_metric(key, int(series.breached))
            for rule, firing in sorted(series.breaching.items()):
                rules.add_metric([*key, rule], int(firing))
            unavailable.add_metric(key, int(series.metrics_unavailable))
            if series.last_retraining is not None:
                outcome, trigger, at = series.last_retraining
                retrained.add_metric([*key, outcome, trigger], at)
        yield from (info, step, weight, breached, rules, unavailable, retrained)


LOOP_SERIES = LoopCollector()
REGISTRY.register(LOOP_SERIES)
