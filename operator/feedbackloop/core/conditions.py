"""status.conditions in Kubernetes convention (cert-manager style), as pure functions.

lastTransitionTime moves only when `status` flips; reason and message may change without a transition.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from feedbackloop.core.status import ConditionStatus

READY = "Ready"
RECONCILING = "Reconciling"  # kstatus: abnormal-true while the operator works towards the spec
STALLED = "Stalled"  # kstatus: abnormal-true when it cannot progress without a change
METRICS_AVAILABLE = "MetricsAvailable"
BREACHED = "Breached"
SERVING_READY = "ServingReady"
RETRAINING = "Retraining"
CANARY = "Canary"
INPUT_DRIFT = "InputDrift"  # a warning before labels: served inputs far from the training data (never a breach)


@dataclass(frozen=True)
class ConditionUpdate:
    type: str
    status: bool | None  # None = Unknown
    reason: str
    message: str = ""


def _status_text(value: bool | None) -> Literal["True", "False", "Unknown"]:
    return "Unknown" if value is None else ("True" if value else "False")


def apply(
    conditions: list[ConditionStatus], update: ConditionUpdate, now: str, generation: int | None
) -> list[ConditionStatus]:
    """A new list with one condition set; others are kept in order."""
    status = _status_text(update.status)
    previous = next((c for c in conditions if c.get("type") == update.type), None)
    transition = previous["lastTransitionTime"] if previous and previous.get("status") == status else now
    entry: ConditionStatus = {
        "type": update.type,
        "status": status,
        "reason": update.reason,
        "message": update.message[:1024],
        "lastTransitionTime": transition,
        "observedGeneration": generation,
    }
    if previous is None:
        return [*conditions, entry]
    return [entry if c.get("type") == update.type else c for c in conditions]


def apply_all(
    conditions: list[ConditionStatus], updates: list[ConditionUpdate], now: str, generation: int | None
) -> list[ConditionStatus]:
    for update in updates:
        conditions = apply(conditions, update, now, generation)
    return conditions


def get(conditions: list[ConditionStatus], type_: str) -> ConditionStatus | None:
    return next((c for c in conditions if c.get("type") == type_), None)


def is_true(conditions: list[ConditionStatus], type_: str) -> bool:
    found = get(conditions, type_)
    return bool(found and found.get("status") == "True")
