"""Reads canary-vs-stable counts from Prometheus for the analysis (the thin edge of canary.py).

Both arms are read over the same window, from the canary's start to now, with increase() so that a
restarted server Pod (a counter reset) does not corrupt the counts.

The queries go through `query` with the loop's namespace as the tenant: the fleet poller runs them in the
canary looks' own lane (FleetPoller.run), never queued behind any tenant's polls, within the tenant's share.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from typing import Any

from feedbackloop.core import promql
from feedbackloop.core.api import ModelFeedbackLoopSpec
from feedbackloop.core.canary import ArmCounts, CanaryObservation
from feedbackloop.core.timeutil import parse_time
from feedbackloop.runtime.poller import AsyncQueryFn, EndpointKey, QueryRejected, Series, short_error
from mfl_contracts import metrics as names


def _selector(spec: ModelFeedbackLoopSpec, namespace: str) -> str:
    return (
        f'model="{promql.escape_string(spec.model.name)}",namespace="{promql.escape_string(namespace)}",'
        'track=~"stable|canary"'
    )


def _arms(series: Series, stable_version: str, canary_version: str) -> tuple[float, float]:
    canary = stable = 0.0
    for labels, value in series:
        if math.isnan(value):
            continue
        if labels.get("track") == "canary" and labels.get("version") == canary_version:
            canary += value
        elif labels.get("track") == "stable" and labels.get("version") == stable_version:
            stable += value
    return canary, stable


def _buckets(series: Series, track: str, version: str) -> dict[float, float]:
    buckets: dict[float, float] = {}
    for labels, value in series:
        if labels.get("track") == track and labels.get("version") == version and not math.isnan(value):
            le = float(labels.get("le", "nan").replace("+Inf", "inf"))
            buckets[le] = buckets.get(le, 0.0) + value
    return buckets


def query_texts(spec: ModelFeedbackLoopSpec, namespace: str, canary_version: str, window: str) -> dict[str, str]:
    """Both arms' counts over `window`, and each custom check rendered for the canary."""
    selector = _selector(spec, namespace)
    by = "sum by (track, version)"
    served = f'{selector},endpoint=~"predict|infer"'  # the own route and the Open Inference Protocol's
    texts = {
        "correct": f"{by} (increase({names.FEEDBACK_CORRECT}{{{selector}}}[{window}]))",
        "labelled": f"{by} (increase({names.FEEDBACK}{{{selector}}}[{window}]))",
        "requests": f"{by} (increase({names.HTTP_REQUESTS}{{{served}}}[{window}]))",
        "failed": f'{by} (increase({names.HTTP_REQUESTS}{{{served},code=~"5.."}}[{window}]))',
        "latency": f"sum by (track, version, le) (increase({names.PREDICTION_LATENCY}_bucket{{{selector}}}[{window}]))",
    }
    values = {"model": spec.model.name, "namespace": namespace, "version": canary_version, "track": "canary"}
    for check in spec.rollout.analysis.checks:
        texts[f"check:{check.name}"] = promql.render(check.query, values)
    return texts


async def observe(
    query: AsyncQueryFn,
    endpoint: EndpointKey,
    spec: ModelFeedbackLoopSpec,
    namespace: str,
    status: Mapping[str, Any],
    rollout: Mapping[str, Any],
    now: float,
) -> CanaryObservation:
    started = parse_time(rollout.get("startedAt")) or now
    window = f"{max(60, int(now - started) + 1)}s"
    texts = query_texts(spec, namespace, str(rollout["version"]), window)
    try:
        results = dict(zip(texts, await asyncio.gather(*(query(endpoint, q, namespace) for q in texts.values()))))
    except QueryRejected as error:
        return CanaryObservation(error=f"Prometheus refused a query: {error}")
    except Exception as error:
        return CanaryObservation(outage=short_error(error))
    stable_v, canary_v = str(status.get("currentVersion")), str(rollout["version"])
    correct, labelled = _arms(results["correct"], stable_v, canary_v), _arms(results["labelled"], stable_v, canary_v)
    requests, failed = _arms(results["requests"], stable_v, canary_v), _arms(results["failed"], stable_v, canary_v)
    checks = {
        name.split(":", 1)[1]: (series[0][1] if len(series) == 1 else None)
        for name, series in results.items()
        if name.startswith("check:")
    }
    return CanaryObservation(
        accuracy=(ArmCounts(correct[0], labelled[0]), ArmCounts(correct[1], labelled[1]))
        if spec.model.task == "classification"
        else None,
        availability=(ArmCounts(requests[0] - failed[0], requests[0]), ArmCounts(requests[1] - failed[1], requests[1])),
        latency=(_buckets(results["latency"], "canary", canary_v), _buckets(results["latency"], "stable", stable_v)),
        checks=checks,
    )
