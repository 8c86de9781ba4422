"""Canary traffic split and the bridge from live observations to the sequential analysis core."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .api import Analysis


@dataclass(frozen=True)
class ArmCounts:
    """Successes out of trials for one arm over the analysis window (e.g. correct of labelled)."""

    success: float
    total: float


@dataclass(frozen=True)
class CanaryObservation:
    """What Prometheus said about canary vs stable since the canary started."""

    accuracy: tuple[ArmCounts, ArmCounts] | None = None      # (canary, stable)
    availability: tuple[ArmCounts, ArmCounts] | None = None  # non-5xx of requests
    latency: tuple[dict[float, float], dict[float, float]] | None = None  # cumulative buckets le -> count
    checks: dict[str, float | None] = field(default_factory=dict)
    error: str = ""


@dataclass(frozen=True)
class CanaryVerdict:
    phase: str  # Running | Successful | Failed | Inconclusive | Error
    message: str
    rollout_fields: dict[str, Any]


def replica_split(stable_replicas: int, weight: int) -> tuple[int, int]:
    """Canary replicas for a traffic weight with a plain Service (share = replica share), and the
    weight that share really gives. Stable keeps its replicas: the canary is added beside it."""
    if weight >= 100:
        return stable_replicas, 50
    canary = max(1, math.ceil(stable_replicas * weight / (100 - weight)))
    return canary, round(100 * canary / (canary + stable_replicas))


def judge_canary(analysis: Analysis, rollout: dict[str, Any], observation: CanaryObservation,
                 now: float) -> CanaryVerdict:
    raise NotImplementedError  # wired to feedbackloop.analysis below
