"""Canary analysis: pure, sequential canary-vs-stable judgement (see docs/canary-analysis.md).

    state = start_analysis(now)
    state, verdict, evidence = evaluate(config, state, observations, now)   # every interval

Everything here is pure (no I/O, no clock): the caller passes the time and persists `state.to_dict()`.
"""

from feedbackloop.core.analysis.latency import HistogramObservation, LatencyDesign, judge_latency
from feedbackloop.core.analysis.machine import (
    AnalysisConfig,
    AnalysisState,
    LatencyCheck,
    MetricError,
    NoData,
    Observation,
    Phase,
    ProportionCheck,
    ThresholdCheck,
    Verdict,
    action_for,
    evaluate,
    start_analysis,
)
from feedbackloop.core.analysis.outcome import Evidence, Outcome
from feedbackloop.core.analysis.sequential import (
    CountObservation,
    NonInferiorityDesign,
    OperatingPoint,
    judge_proportion,
    operating_point,
)
from feedbackloop.core.analysis.threshold import ThresholdDesign, ValueObservation, judge_threshold

__all__ = [
    "AnalysisConfig",
    "AnalysisState",
    "CountObservation",
    "Evidence",
    "HistogramObservation",
    "LatencyCheck",
    "LatencyDesign",
    "MetricError",
    "NoData",
    "NonInferiorityDesign",
    "Observation",
    "OperatingPoint",
    "Outcome",
    "Phase",
    "ProportionCheck",
    "ThresholdCheck",
    "ThresholdDesign",
    "ValueObservation",
    "Verdict",
    "action_for",
    "evaluate",
    "judge_latency",
    "judge_proportion",
    "judge_threshold",
    "operating_point",
    "start_analysis",
]
