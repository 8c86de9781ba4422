"""The offline gate: may a challenger go on to a canary? Pure, over the trainer's summary."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .api import ModelFeedbackLoopSpec

LOWER_IS_BETTER = {"mae", "rmse"}


@dataclass(frozen=True)
class GateResult:
    passed: bool
    message: str


def offline_gate(spec: ModelFeedbackLoopSpec, summary: dict[str, Any], first_version: bool) -> GateResult:
    """Challenger vs champion on the same held-out recent data, with the configured tolerance."""
    gate = spec.retraining.gate if spec.retraining else None
    metric = gate.metric if gate else "accuracy"
    challenger = (summary.get("challenger") or {}).get(metric)
    if challenger is None:
        return GateResult(False, f"the trainer reported no challenger {metric}")
    floor = gate.min_score if gate else None
    if floor is not None and _worse(metric, challenger, floor):
        return GateResult(False, f"challenger {metric}={challenger:.4f} misses minScore {floor:g}")
    champion = (summary.get("champion") or {}).get(metric)
    if champion is None:
        if first_version:
            return GateResult(True, f"challenger {metric}={challenger:.4f} (no champion to compare)")
        return GateResult(False, f"champion {metric} missing: cannot compare on the same data")
    tolerance = gate.max_degradation if gate else 0.0
    delta = (champion - challenger) if metric in LOWER_IS_BETTER else (challenger - champion)
    verdict = (
        f"challenger {metric}={challenger:.4f} vs champion {champion:.4f} (delta {delta:+.4f}, "
        f"maxDegradation {tolerance:g}, holdout {summary.get('rows', {}).get('holdout', '?')} rows)"
    )
    return GateResult(delta >= -tolerance, verdict)


def _worse(metric: str, value: float, floor: float) -> bool:
    return value > floor if metric in LOWER_IS_BETTER else value < floor
