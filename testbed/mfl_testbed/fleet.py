"""What the fleet benchmarks share (operator_scale, fleet_shards, detection_latency): a monitoring-only loop on a
test exporter's metric, and quantiles of the operator's histograms read from its /metrics text."""

from __future__ import annotations

import math
import signal
from typing import Any

API_VERSION = "feedbackloop.dev/v1alpha1"


def monitoring_loop(
    name: str,
    namespace: str,
    prometheus_url: str,
    interval: int,
    query: str,
    claim: str,
    for_: str = "1m",
    retraining: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A loop that only monitors `query` (min 0.8 for `for_`) unless `retraining` is given."""
    spec: dict[str, Any] = {
        "model": {"name": name, "initialVersion": 1, "storage": {"persistentVolumeClaim": {"claimName": claim}}},
        "monitoring": {
            "prometheus": {"url": prometheus_url},
            "interval": f"{interval}s",
            "metrics": [{"name": "accuracy", "query": query, "min": 0.8, "for": for_}],
        },
    }
    if retraining is not None:
        spec["retraining"] = retraining
    return {
        "apiVersion": API_VERSION,
        "kind": "ModelFeedbackLoop",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def histogram(text: str, name: str) -> dict[float, float]:
    """Cumulative bucket counts of histogram `name` in Prometheus text, summed over its series."""
    buckets: dict[float, float] = {}
    for line in text.splitlines():
        if line.startswith(f"{name}_bucket{{"):
            edge = float(line.split('le="', 1)[1].split('"', 1)[0].replace("+Inf", "inf"))
            buckets[edge] = buckets.get(edge, 0.0) + float(line.rsplit(" ", 1)[1])
    return buckets


def quantile(before: dict[float, float], after: dict[float, float], q: float) -> float:
    """The q-quantile of what was observed between two readings of a histogram (linear within a bucket, as
    Prometheus' histogram_quantile); NaN when nothing was."""
    edges = sorted(after)
    counts = [after[e] - before.get(e, 0.0) for e in edges]
    total = counts[-1] if counts else 0
    if total <= 0:
        return math.nan
    rank, previous_edge, previous_count = q * total, 0.0, 0.0
    for edge, count in zip(edges, counts):
        if count >= rank:
            if edge == math.inf:
                return previous_edge
            share = (rank - previous_count) / max(count - previous_count, 1e-9)
            return previous_edge + (edge - previous_edge) * share
        previous_edge, previous_count = edge, count
    return edges[-2]


def stop_on_signals() -> None:
    """SIGTERM and SIGHUP end a benchmark as Ctrl-C does (KeyboardInterrupt), so that its `with` blocks stop
    every process it started (a control plane, Prometheus, operators): by default they would outlive it."""

    def interrupted(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, interrupted)
