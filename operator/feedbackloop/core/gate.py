"""The offline gate: may a challenger go on to a canary? Pure, over the trainer's summary."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from feedbackloop.core.api import ModelFeedbackLoopSpec

LOWER_IS_BETTER = {"mae", "rmse"}


@dataclass(frozen=True)
class GateResult:
    passed: bool
    message: str
    superior: bool = False  # significantly better than the champion (asked only when breached)
    p_value: float | None = None  # the superiority test's, when it was asked


def offline_gate(
    spec: ModelFeedbackLoopSpec, summary: dict[str, Any], first_version: bool, breached: bool = False
) -> GateResult:
    """Challenger vs champion on the same held-out recent data, with the configured tolerance; when a breach
    triggered the retraining, superiority over the failing champion (gate.superiorWhenBreached)."""
    verdict = _no_worse(spec, summary, first_version)
    gate = spec.retraining.gate if spec.retraining else None
    if not verdict.passed or not breached or gate is None or not gate.superior_when_breached:
        return verdict
    paired = summary.get("paired")
    if not isinstance(paired, dict) or summary.get("champion") is None:
        return verdict  # a first version, or a trainer without paired counts: no worse is all we can ask
    wins, losses = int(paired.get("challengerOnly", 0)), int(paired.get("championOnly", 0))
    p_value = sign_test_p(wins, losses)
    test = f"sign test: better on {wins}, worse on {losses} holdout rows, p={p_value:.3g}"
    if p_value > gate.superiority_alpha:
        return GateResult(
            False,
            f"breached, so the challenger must beat the champion: not shown ({test} > {gate.superiority_alpha:g})",
        )
    return GateResult(
        True, f"{verdict.message}; superior to the breached champion ({test})", superior=True, p_value=p_value
    )


def sign_test_p(wins: int, losses: int) -> float:
    """One-sided exact sign test: P(at least `wins` of wins+losses fair coin flips), McNemar's exact test.

    scipy.stats.binomtest(wins, n, 0.5, alternative="greater").pvalue, written out: the operator's image has no
    scipy (112 MB, requirements/operator.txt) for these few lines. Tests hold it to exact rational arithmetic and
    to scipy's binomtest over a grid (tests/operator/test_breach_recovery.py, test_cron_and_gate.py)."""
    n = wins + losses
    if n == 0:
        return 1.0
    log_half = n * math.log(0.5)
    terms = [math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) + log_half for k in range(wins, n + 1)]
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))


def _no_worse(spec: ModelFeedbackLoopSpec, summary: dict[str, Any], first_version: bool) -> GateResult:
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
