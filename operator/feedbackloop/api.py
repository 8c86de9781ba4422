"""The ModelFeedbackLoop API: pydantic models are the one source of truth.

`crds/` is generated from these models (`python -m feedbackloop.crdgen`), and a test fails when the two
drift. Field names are camelCase on the wire (Kubernetes convention) and snake_case in Python.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

GROUP = "feedbackloop.dev"
VERSION = "v1alpha1"
KIND = "ModelFeedbackLoop"
PLURAL = "modelfeedbackloops"
SINGULAR = "modelfeedbackloop"
SHORT_NAMES = ["mfl"]
CATEGORIES = ["ml"]

DURATION_PATTERN = r"^([0-9]+(ms|s|m|h|d))+$"
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
_DURATION_PART = re.compile(r"([0-9]+)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}

Duration = Annotated[str, Field(pattern=DURATION_PATTERN, json_schema_extra={"x-mfl-duration": True})]
MAX_PROMETHEUS_TIMEOUT_SECONDS = 60


def _positive(text: str) -> str:
    """A period the operator waits on or divides by: zero would make it poll in a hot loop (or divide by 0)."""
    if parse_duration(text) < 1:
        raise ValueError(f"{text!r} is too short: use at least 1s")
    return text


def _bounded_timeout(text: str) -> str:
    """One tenant's slow Prometheus must not hold the shared poll for long."""
    seconds = parse_duration(_positive(text))
    if seconds > MAX_PROMETHEUS_TIMEOUT_SECONDS:
        raise ValueError(f"{text!r} is too long: at most {MAX_PROMETHEUS_TIMEOUT_SECONDS}s")
    return text


# The schema checks the shape; the operator checks the range (Kubernetes 1.20 has no CEL) and reports
# an out-of-range value as InvalidSpec naming the field, for that loop alone.
Interval = Annotated[Duration, AfterValidator(_positive)]
PrometheusTimeout = Annotated[Duration, AfterValidator(_bounded_timeout)]
Quantity = Annotated[str, Field(pattern=r"^[0-9]+(\.[0-9]+)?(m|k|Ki|Mi|Gi|Ti|M|G|T)?$")]


def parse_duration(text: str) -> float:
    """'1h30m' -> 5400.0 seconds (the Prometheus/Go duration subset this API accepts)."""
    if not re.fullmatch(DURATION_PATTERN, text):
        raise ValueError(f"invalid duration {text!r}: use e.g. 30s, 5m, 1h30m, 7d")
    return float(sum(int(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION_PART.findall(text)))


class ApiModel(BaseModel):
    """Base for every API object: camelCase aliases, unknown fields refused (as the schema does)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


# --- model -------------------------------------------------------------------------------------------


class ResourceList(ApiModel):
    cpu: Quantity | None = None
    memory: Quantity | None = None


class Resources(ApiModel):
    requests: ResourceList = Field(default_factory=ResourceList)
    limits: ResourceList = Field(default_factory=ResourceList)


class EnvVar(ApiModel):
    name: str = Field(pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
    value: str = ""


class Serving(ApiModel):
    image: str = Field(default="ghcr.io/feedbackloop/mfl-server:0.1.0", min_length=1)
    replicas: int = Field(default=2, ge=1, le=100)
    port: int = Field(default=8080, ge=1, le=65535)
    resources: Resources = Field(default_factory=Resources)
    env: list[EnvVar] = Field(default_factory=list)


class SecretKeyRef(ApiModel):
    name: str = Field(min_length=1)
    key: str = Field(min_length=1)


class PersistentVolumeClaimSource(ApiModel):
    claim_name: str = Field(min_length=1)


class HostPathSource(ApiModel):
    path: str = Field(pattern=r"^/")


class Storage(ApiModel):
    """Where versions, predictions and feedback live: one volume, mounted by server and trainer."""

    persistent_volume_claim: PersistentVolumeClaimSource | None = None
    host_path: HostPathSource | None = None
    mount_path: str = Field(default="/var/lib/mfl/artifacts", pattern=r"^/")

    @model_validator(mode="after")
    def _exactly_one_source(self) -> Storage:
        if (self.persistent_volume_claim is None) == (self.host_path is None):
            raise ValueError("set exactly one of persistentVolumeClaim or hostPath")
        return self


class Model(ApiModel):
    name: str = Field(pattern=DNS_LABEL_PATTERN, max_length=40)
    task: Literal["classification", "regression"] = "classification"
    serving: Serving = Field(default_factory=Serving)
    storage: Storage
    initial_version: int | None = Field(
        default=None,
        ge=1,
        description="A registry version to serve when the loop has none yet; omitted: the operator trains version 1.",
    )


# --- monitoring --------------------------------------------------------------------------------------


class PrometheusEndpoint(ApiModel):
    url: str = Field(pattern=r"^https?://")
    bearer_token_secret_ref: SecretKeyRef | None = None
    ca_bundle_secret_ref: SecretKeyRef | None = None
    insecure_skip_verify: bool = False
    timeout: PrometheusTimeout = Field(default="10s", description="Per query; 1s to 60s.")


class MetricRule(ApiModel):
    """One health rule, shaped like a Prometheus alerting rule: a query, a threshold and `for`."""

    name: str = Field(pattern=r"^[a-zA-Z][a-zA-Z0-9_]*$", max_length=63)
    query: str = Field(
        min_length=1,
        description="PromQL template; placeholders {{model}}, {{namespace}}, "
        "{{version}} and {{track}} are replaced by label-safe values.",
    )
    min: float | None = None
    max: float | None = None
    for_: Duration = Field(default="0s", alias="for")
    on_no_data: Literal["hold", "ignore", "breach"] = "hold"
    min_samples: int | None = Field(default=None, ge=1)
    samples_query: str | None = Field(
        default=None,
        description="PromQL template counting the samples behind "
        "`query`; below minSamples the value counts as no data.",
    )

    @model_validator(mode="after")
    def _has_threshold(self) -> MetricRule:
        if self.min is None and self.max is None:
            raise ValueError(f"metric {self.name!r} needs min and/or max")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"metric {self.name!r}: min {self.min} is above max {self.max}")
        if (self.min_samples is None) != (self.samples_query is None):
            raise ValueError(f"metric {self.name!r}: minSamples and samplesQuery go together")
        return self


class Monitoring(ApiModel):
    prometheus: PrometheusEndpoint
    interval: Interval = Field(default="30s", description="How often the rules are evaluated; at least 1s.")
    metrics: list[MetricRule] = Field(
        default_factory=list,
        max_length=20,
        description="Empty: the reference server's default accuracy, error-rate and latency rules.",
    )
    default_accuracy_min: float = Field(default=0.8, ge=0, le=1)
    default_latency_p99_max_seconds: float = Field(default=0.5, gt=0)

    @field_validator("metrics")
    @classmethod
    def _unique_names(cls, metrics: list[MetricRule]) -> list[MetricRule]:
        names = [m.name for m in metrics]
        if len(names) != len(set(names)):
            raise ValueError(f"metric names must be unique, got {names}")
        return metrics


# --- retraining --------------------------------------------------------------------------------------

Estimator = Literal[
    "hist_gradient_boosting",
    "logistic_regression",
    "random_forest",
    "sgd",
    "gradient_boosting",
    "ridge",
    "random_forest_regressor",
    "hist_gradient_boosting_regressor",
    "sgd_regressor",
]


class Trainer(ApiModel):
    image: str = Field(default="ghcr.io/feedbackloop/mfl-trainer:0.1.0", min_length=1)
    resources: Resources = Field(default_factory=Resources)
    active_deadline_seconds: int = Field(default=3600, ge=60, le=86400)
    backoff_limit: int = Field(default=1, ge=0, le=10)


class OfflineGate(ApiModel):
    """The challenger goes to a canary only if it is no worse than the champion on the same data."""

    metric: Literal["accuracy", "f1_macro", "mae", "rmse", "r2"] = "accuracy"
    max_degradation: float = Field(default=0.0, ge=0, le=1)
    min_score: float | None = Field(default=None, description="Absolute floor, also for a first version.")


class Retraining(ApiModel):
    enabled: bool = True
    trainer: Trainer = Field(default_factory=Trainer)
    estimator: Estimator = "hist_gradient_boosting"
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    features: list[str] = Field(min_length=1)
    target: str = Field(min_length=1)
    data_window: Duration = "7d"
    holdout_fraction: float = Field(default=0.25, gt=0, lt=1)
    min_rows: int = Field(default=200, ge=10)
    incremental: bool = False
    recent_weight: float = Field(
        default=1.0,
        ge=1,
        le=100,
        description="Weight of labelled feedback rows "
        "against base-data rows in training (adapts faster after a drift).",
    )
    schedule: str | None = Field(
        default=None, pattern=r"^(\S+\s+){4}\S+$", description="Cron (5 fields, UTC): retrain on a schedule as well."
    )
    cooldown: Duration = "1h"
    max_retrains_per_day: int = Field(default=3, ge=0, le=100)
    failure_backoff: Duration = "10m"
    gate: OfflineGate = Field(default_factory=OfflineGate)


# --- rollout -----------------------------------------------------------------------------------------


class CanaryStep(ApiModel):
    weight: int = Field(ge=1, le=100, description="Percent of traffic (replica share with a plain Service).")
    pause: Duration = "1m"


class LatencyCheck(ApiModel):
    enabled: bool = True
    max_increase: float = Field(
        default=0.2,
        ge=0,
        description="Canary latency may be at most this fraction worse than stable (effect-size limit).",
    )
    min_samples: int = Field(default=100, ge=1)


class ThresholdCheck(ApiModel):
    """A plain threshold on a custom canary metric (Flagger style); {{track}} renders as canary."""

    name: str = Field(pattern=r"^[a-zA-Z][a-zA-Z0-9_]*$")
    query: str = Field(min_length=1)
    min: float | None = None
    max: float | None = None
    failure_limit: int = Field(default=1, ge=1)


class Analysis(ApiModel):
    """Sequential canary-vs-stable analysis; see docs/canary-analysis.md."""

    interval: Interval = Field(default="30s", description="How often the canary is judged; at least 1s.")
    alpha: float = Field(default=0.05, gt=0, lt=0.5, description="Bound on rolling back an equal canary.")
    beta: float = Field(default=0.1, gt=0, lt=0.5, description="Bound on promoting a canary `delta` worse.")
    max_degradation: float = Field(default=0.02, gt=0, lt=1, description="Non-inferiority margin on accuracy.")
    detectable_degradation: float | None = Field(
        default=None, gt=0, lt=1, description="The regression `beta` covers; default 1.5 x maxDegradation."
    )
    availability_max_degradation: float = Field(
        default=0.01, gt=0, lt=1, description="Margin on the share of requests answered without a server error."
    )
    min_samples: int = Field(default=200, ge=10, description="Labelled predictions per arm before any verdict.")
    max_samples: int | None = Field(default=None, ge=10, description="Per arm; undecided there: Inconclusive.")
    max_duration: Interval = Field(default="2h", description="Inconclusive after this long (at least 1s).")
    on_inconclusive: Literal["rollback", "promote"] = "rollback"
    consecutive_error_limit: int = Field(default=4, ge=1)
    latency: LatencyCheck = Field(default_factory=LatencyCheck)
    checks: list[ThresholdCheck] = Field(default_factory=list, max_length=10)

    @model_validator(mode="after")
    def _consistent(self) -> Analysis:
        if self.max_samples is not None and self.max_samples < self.min_samples:
            raise ValueError(f"maxSamples ({self.max_samples}) must be at least minSamples ({self.min_samples})")
        names = [check.name for check in self.checks]
        taken = {"accuracy", "availability", "latency"}  # the built-in checks
        clashes = sorted({n for n in names if names.count(n) > 1} | (set(names) & taken))
        if clashes:
            raise ValueError(f"check names must be unique and not {sorted(taken)}: {clashes}")
        return self


class HTTPRouteRef(ApiModel):
    name: str = Field(pattern=DNS_LABEL_PATTERN)


class TrafficRouting(ApiModel):
    http_route: HTTPRouteRef | None = Field(
        default=None, description="Gateway API HTTPRoute whose backend weights carry the split; omitted: replica ratio."
    )


class Rollout(ApiModel):
    steps: list[CanaryStep] = Field(
        default_factory=lambda: [CanaryStep(weight=20, pause="2m"), CanaryStep(weight=50, pause="2m")],
        min_length=1,
        max_length=10,
    )
    analysis: Analysis = Field(default_factory=Analysis)
    traffic_routing: TrafficRouting = Field(default_factory=TrafficRouting)

    @field_validator("steps")
    @classmethod
    def _weights_increase(cls, steps: list[CanaryStep]) -> list[CanaryStep]:
        weights = [s.weight for s in steps]
        if weights != sorted(set(weights)):
            raise ValueError(f"step weights must strictly increase, got {weights}")
        return steps


# --- the spec ----------------------------------------------------------------------------------------


class ModelFeedbackLoopSpec(ApiModel):
    model: Model
    monitoring: Monitoring
    retraining: Retraining | None = None
    rollout: Rollout = Field(default_factory=Rollout)
    paused: bool = False


# --- status ------------------------------------------------------------------------------------------


class Condition(ApiModel):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str = ""
    last_transition_time: str
    observed_generation: int | None = None


class MetricStatus(ApiModel):
    name: str
    state: Literal["Healthy", "Pending", "Breaching", "NoData"] = "NoData"
    value: float | None = None
    sample_time: str | None = None
    breach_since: str | None = None
    message: str = ""


class CheckEvidence(ApiModel):
    name: str
    decision: str = ""
    message: str = ""
    values: dict[str, float] = Field(default_factory=dict)


class VersionRecord(ApiModel):
    """One retraining's outcome, kept in a bounded history."""

    version: int
    trigger: str = ""
    outcome: str = ""
    at: str = ""
    message: str = ""
    metrics: dict[str, float] = Field(default_factory=dict)
    evidence: list[CheckEvidence] = Field(default_factory=list)


class RetrainingStatus(ApiModel):
    version: int
    job_name: str
    trigger: str
    started_at: str
    parent_version: int | None = None


class CandidateStatus(ApiModel):
    version: int
    challenger: dict[str, float] = Field(default_factory=dict)
    champion: dict[str, float] = Field(default_factory=dict)
    gate: str = ""


class AnalysisStateStatus(ApiModel):
    """The sequential analysis' memory between looks: counters, never samples."""

    phase: str = "Running"
    started_at: float
    looks: int = 0
    passed: list[str] = Field(default_factory=list)
    consecutive_errors: dict[str, int] = Field(default_factory=dict)
    failures: dict[str, int] = Field(default_factory=dict)
    finished_at: float | None = None
    message: str = ""


class RolloutStatus(ApiModel):
    version: int
    trigger: str = ""
    step: int = 0
    weight: int = 0
    started_at: str = ""
    step_started_at: str = ""
    analysis_phase: str = "Running"
    consecutive_errors: int = 0
    evidence: list[CheckEvidence] = Field(default_factory=list)
    analysis: AnalysisStateStatus | None = None
    paused: bool = False


class ServingStatus(ApiModel):
    version: int | None = None
    ready_replicas: int = 0
    replicas: int = 0


class ModelFeedbackLoopStatus(ApiModel):
    phase: str = "Pending"
    observed_generation: int | None = None
    conditions: list[Condition] = Field(default_factory=list)
    current_version: int | None = None
    serving: ServingStatus | None = None
    metrics: list[MetricStatus] = Field(default_factory=list)
    summary: str = Field(default="", description="First metric's last value, for printer columns.")
    breach_since: str | None = None
    retraining: RetrainingStatus | None = None
    candidate: CandidateStatus | None = None
    rollout: RolloutStatus | None = None
    last_retrain_at: str | None = None
    retrain_times: list[str] = Field(default_factory=list, description="Starts in the last 24 h (budget).")
    failure_backoff_until: str | None = None
    last_failure: str | None = None
    retrain_blocked_by: str | None = None
    history: list[VersionRecord] = Field(default_factory=list)
    handled_requests: dict[str, str] = Field(default_factory=dict)


def validate_spec(spec: dict[str, Any]) -> ModelFeedbackLoopSpec:
    """Parse a loop's spec; raises pydantic.ValidationError naming the offending field."""
    return ModelFeedbackLoopSpec.model_validate(spec)


def describe_validation_error(error: Exception) -> str:
    """A one-line message that names the field, for conditions, Events and kubectl output."""
    errors = getattr(error, "errors", None)
    if not callable(errors):
        return str(error)
    parts = []
    for item in errors()[:3]:
        field = ".".join(str(p) for p in item.get("loc", ()))
        parts.append(f"spec.{field}: {item.get('msg', 'invalid')}" if field else f"spec: {item.get('msg')}")
    return "; ".join(parts)
