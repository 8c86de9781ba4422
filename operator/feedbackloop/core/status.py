"""The loop's status as the decisions read and write it: TypedDicts over the JSON the API server stores.

The pydantic models in api.py stay the schema (they generate the CRD); these give the same shape to the
type checker at no cost at run time, and keep the status exactly the JSON that is merge-patched (a
model round trip would add every default to every write). tests/operator/test_status_types.py holds the
two to the same fields. Speed was not the reason: benchmarks/status_types.py measured a pydantic round
trip of a canary's status at 122 us against 132 us for the deepcopy decide already makes (2,000 loops:
244 ms against 265 ms). The reason is exactness: the status stays the JSON the API server holds, with
mypy --strict checking every key and value the decisions read or write.
"""

from __future__ import annotations

from typing import Literal, TypedDict

Phase = Literal["Pending", "Invalid", "Monitoring", "Breached", "Retraining", "Canary", "Paused"]
Trigger = Literal["Initial", "Breach", "Schedule", "Refresh", "Manual"]
Outcome = Literal["Promoted", "RolledBack", "Rejected", "TrainingFailed"]


class ConditionStatus(TypedDict, total=False):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str
    lastTransitionTime: str
    observedGeneration: int | None


class MetricState(TypedDict, total=False):
    name: str
    state: Literal["Healthy", "Pending", "Breaching", "NoData"]
    value: float | None
    sampleTime: str | None
    breachSince: str | None
    message: str


class FeatureDrift(TypedDict, total=False):
    name: str
    psi: float


class InputDriftState(MetricState, total=False):
    features: list[FeatureDrift]


class CheckEvidence(TypedDict, total=False):
    name: str
    decision: str
    message: str
    values: dict[str, float]


class TrainedOn(TypedDict, total=False):
    since: str | None
    until: str | None


class VersionRecord(TypedDict, total=False):
    version: int
    trigger: str
    outcome: str
    at: str
    message: str
    metrics: dict[str, float]
    evidence: list[CheckEvidence]
    trainedOn: TrainedOn | None


class RetrainingRun(TypedDict, total=False):
    version: int
    jobName: str
    engine: Literal["Job", "Dask"]  # absent: Job (a run started before engines existed)
    trigger: str
    startedAt: str
    parentVersion: int | None


class Candidate(TypedDict, total=False):
    version: int
    challenger: dict[str, float]
    champion: dict[str, float]
    gate: str
    trainedOn: TrainedOn | None


class AnalysisState(TypedDict, total=False):
    phase: str
    startedAt: float
    looks: int
    passed: list[str]
    consecutiveErrors: dict[str, int]
    failures: dict[str, int]
    finishedAt: float | None
    message: str
    informationSince: dict[str, list[float]]


class RolloutState(TypedDict, total=False):
    version: int
    trigger: str
    step: int
    weight: int
    startedAt: str
    stepStartedAt: str
    analysisPhase: str
    consecutiveErrors: int
    evidence: list[CheckEvidence]
    analysis: AnalysisState | None
    paused: bool
    offlineSuperior: bool
    offlinePValue: float | None
    notReadySince: str | None


class Serving(TypedDict, total=False):
    version: int | None
    readyReplicas: int
    replicas: int
    since: str | None


class LoopStatus(TypedDict, total=False):
    phase: Phase
    observedGeneration: int | None
    conditions: list[ConditionStatus]
    currentVersion: int | None
    serving: Serving | None
    metrics: list[MetricState]
    inputDrift: InputDriftState | None
    summary: str
    breachSince: str | None
    retraining: RetrainingRun | None
    candidate: Candidate | None
    rollout: RolloutState | None
    lastRetrainAt: str | None
    retrainTimes: list[str]
    failureBackoffUntil: str | None
    lastFailure: str | None
    retrainBlockedBy: str | None
    history: list[VersionRecord]
    handledRequests: dict[str, str]
