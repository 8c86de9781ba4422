"""Record: write a loop's decided status, as a merge patch, only when it changed in a way worth a write.

Live metric values change on every poll; writing each would cost an API write per loop per interval.
A change of phase, conditions, versions or rule states is written at once; values alone at most every
`refresh_seconds`.

Every string of a write is made inert first (feedbackloop.core.text): a Prometheus error, a trainer's
termination message or a Pod's waiting message reaches status.conditions[].message, status.metrics[].message,
status.history[].message or status.lastFailure, and from there an administrator's terminal. Only the patch
is walked (the keys that changed), once per write; the decisions keep comparing the texts as they made them.
"""

from __future__ import annotations

import asyncio
import copy
import math
from collections.abc import Mapping
from typing import Any

from feedbackloop.core.fleet import LoopMemory
from feedbackloop.core.status import LoopStatus
from feedbackloop.core.text import inert_tree
from feedbackloop.runtime import metrics
from feedbackloop.runtime.kube import KubeAPI

# Fields that change with every poll; a change in them alone is written at most every `refresh` seconds.
VOLATILE_METRIC_FIELDS = ("value", "sampleTime", "message")
# Any string of a status write, after its escapes: a condition's message is cut at 1024 before, an Event's too.
STATUS_TEXT_LIMIT = 4096


class StatusRecorder:
    def __init__(self, kube: KubeAPI, refresh_seconds: float) -> None:
        self.kube = kube
        self.refresh_seconds = refresh_seconds

    async def record(
        self, body: dict[str, Any], memory: LoopMemory, before: LoopStatus, after: LoopStatus, now: float
    ) -> None:
        changed = significant(after) != significant(before)
        stale = values(after) != values(before) and now - memory.written_at >= self.refresh_seconds
        if memory.written_status is None and (body.get("status") or {}) != after:
            changed = True
        if not (changed or stale):
            return
        base = body.get("status") or {} if memory.written_status is None else before
        patch = inert_tree(merge_patch(writable(base), writable(after)), STATUS_TEXT_LIMIT)
        meta = body["metadata"]
        seen = str(meta.get("resourceVersion") or "")
        written = await asyncio.to_thread(
            self.kube.patch_status, meta["namespace"], meta["name"], patch, memory.version_to_write_on(seen)
        )
        memory.note_write(seen, str(((written or {}).get("metadata") or {}).get("resourceVersion") or ""))
        metrics.STATUS_WRITES.labels("change" if changed else "refresh").inc()
        memory.written_status = copy.deepcopy(after)
        memory.written_at = now


def values(status: Mapping[str, Any]) -> list[Any]:
    """The live metric values (a new sample time alone is not worth a write)."""
    return [m.get("value") for m in status.get("metrics", [])]


def significant(status: Mapping[str, Any]) -> Any:
    """The status without what changes on every poll."""
    trimmed = {k: v for k, v in status.items() if k not in ("summary",)}
    trimmed["metrics"] = [
        {k: v for k, v in m.items() if k not in VOLATILE_METRIC_FIELDS or (k == "message" and no_data(m))}
        for m in status.get("metrics", [])
    ]
    trimmed["conditions"] = [{k: v for k, v in c.items() if k != "message"} for c in status.get("conditions", [])]
    return trimmed


def writable(status: Any) -> Any:
    """The status as the API server accepts it: no "" and no NaN or infinity (JSON has neither)."""
    return finite(without_empty_strings(status))


def finite(value: Any) -> Any:
    """Drop non-finite numbers from maps (a missing value reads as unknown) and null them in lists: a single
    NaN, e.g. from a query dividing by zero, would make the whole status patch invalid, every round."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items() if not (isinstance(v, float) and not math.isfinite(v))}
    if isinstance(value, list):
        return [finite(v) for v in value]
    return value


def no_data(metric: dict[str, Any]) -> bool:
    """Without data a rule's message is the reason (a refused Secret, a refused connection), and a new
    reason is worth a write at once; with data the message only carries the moving value."""
    return metric.get("state") == "NoData"


def without_empty_strings(value: Any) -> Any:
    """Drop "" values: an empty string is the same as an absent field for every reader, and the local
    1.20 test control plane (built with a newer Go) decodes "" in custom resources as null and refuses it."""
    if isinstance(value, dict):
        return {k: without_empty_strings(v) for k, v in value.items() if v != ""}
    if isinstance(value, list):
        return [without_empty_strings(v) for v in value]
    return value


def merge_patch(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """A JSON merge patch turning `before` into `after` (keys gone become null)."""
    patch: dict[str, Any] = {k: None for k in before if k not in after}
    for key, value in after.items():
        if before.get(key) != value:
            patch[key] = value
    return patch
