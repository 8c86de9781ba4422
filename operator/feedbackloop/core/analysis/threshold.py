"""Plain threshold checks for custom metrics, as Flagger and Argo Rollouts do them: value within [min, max].

No statistics here: use it for guards that have no stable arm to compare against (GPU memory, queue
depth, a business KPI already aggregated by PromQL). The state machine counts failures up to failureLimit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from feedbackloop.core.analysis.outcome import Evidence, Outcome


@dataclass(frozen=True)
class ThresholdDesign:
    min: float | None = None
    max: float | None = None
    failure_limit: int = 1

    def __post_init__(self) -> None:
        if self.min is None and self.max is None:
            raise ValueError("a threshold check needs min and/or max")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        if self.failure_limit < 1:
            raise ValueError(f"failureLimit must be >= 1, got {self.failure_limit}")


@dataclass(frozen=True)
class ValueObservation:
    value: float


def judge_threshold(name: str, observation: ValueObservation, design: ThresholdDesign) -> Evidence:
    value = observation.value
    values = {"value": value}
    if design.min is not None:
        values["min"] = design.min
    if design.max is not None:
        values["max"] = design.max
    if math.isnan(value):
        return Evidence(name, Outcome.PENDING, "value is NaN (no samples behind it): waiting", values)
    if design.min is not None and value < design.min:
        return Evidence(name, Outcome.FAIL, f"{value:.6g} is below the minimum {design.min:g}", values)
    if design.max is not None and value > design.max:
        return Evidence(name, Outcome.FAIL, f"{value:.6g} is above the maximum {design.max:g}", values)
    return Evidence(name, Outcome.PASS, f"{value:.6g} is within {_range(design)}", values)


def _range(design: ThresholdDesign) -> str:
    low = "-inf" if design.min is None else f"{design.min:g}"
    high = "+inf" if design.max is None else f"{design.max:g}"
    return f"[{low}, {high}]"
