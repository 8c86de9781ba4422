"""The ModelFeedbackLoop API: pydantic models are the one source of truth.

`crds/` is generated from these models (`python -m feedbackloop.crdgen`), and a test fails when the two
drift. Field names are camelCase on the wire (Kubernetes convention) and snake_case in Python.
"""

from __future__ import annotations

import ipaddress
import json
import math
import posixpath
import re
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import durationpy
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_core import InitErrorDetails, PydanticCustomError, core_schema

from feedbackloop.core import cron, egress, release
from feedbackloop.core.credentials import WEBHOOK_HOSTS
from feedbackloop.core.credentials import redact as redact_url
from feedbackloop.core.promql import MAX_QUERY_LENGTH
from mfl_contracts import estimators

GROUP = "feedbackloop.dev"
VERSION = "v1alpha1"
KIND = "ModelFeedbackLoop"
PLURAL = "modelfeedbackloops"
SINGULAR = "modelfeedbackloop"
SHORT_NAMES = ["mfl"]
CATEGORIES = ["ml"]

DURATION_PATTERN = r"^([0-9]+(ms|s|m|h|d))+$"
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
SCRATCH_PATH = "/var/run/mfl-scratch"  # the emptyDir every server and trainer container gets as TMPDIR
_UNIT_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1}  # format_duration's
MAX_DURATION_SECONDS = 3650 * 86400


class DurationText(str):
    """A duration as the user wrote it ('1h30m'), parsed once when the spec is: `.seconds` is what the code
    uses, the text is what is shown and serialized."""

    seconds: float

    def __new__(cls, text: str) -> DurationText:
        value = super().__new__(cls, text)
        value.seconds = parse_duration(text)
        if value.seconds > MAX_DURATION_SECONDS:  # beyond, now + it is no date (a failed Job's backoff crashed)
            raise ValueError(f"{text!r} is too long: at most {MAX_DURATION_SECONDS // 86400}d")
        return value

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(
            cls, core_schema.str_schema(pattern=DURATION_PATTERN), serialization=core_schema.to_string_ser_schema()
        )


Duration = Annotated[DurationText, Field(json_schema_extra={"x-mfl-duration": True})]
MAX_PROMETHEUS_TIMEOUT_SECONDS = 60
MIN_FRACTION = 0.0001
MAX_VERSION = 10**9  # versions count up from here: far from int64, which a status number must fit


def _positive(text: DurationText) -> DurationText:
    """A period the operator waits on or divides by: zero would make it poll in a hot loop (or divide by 0)."""
    if text.seconds < 1:
        raise ValueError(f"{str(text)!r} is too short: use at least 1s")
    return text


MIN_READY_TIMEOUT_SECONDS = 10
MAX_READY_TIMEOUT_SECONDS = 86400


def _bounded_ready_timeout(text: DurationText) -> DurationText:
    """Pods need a few probe periods to become ready; a day is far beyond any model's load time."""
    if not MIN_READY_TIMEOUT_SECONDS <= text.seconds <= MAX_READY_TIMEOUT_SECONDS:
        raise ValueError(
            f"{str(text)!r} is out of range: use {MIN_READY_TIMEOUT_SECONDS}s to {MAX_READY_TIMEOUT_SECONDS // 3600}h"
        )
    return text


def _bounded_timeout(text: DurationText) -> DurationText:
    """One tenant's slow Prometheus must not hold the shared poll for long."""
    if _positive(text).seconds > MAX_PROMETHEUS_TIMEOUT_SECONDS:
        raise ValueError(f"{str(text)!r} is too long: at most {MAX_PROMETHEUS_TIMEOUT_SECONDS}s")
    return text


# The schema checks the shape; the operator checks the range (Kubernetes 1.20 has no CEL) and reports
# an out-of-range value as InvalidSpec naming the field, for that loop alone.
Interval = Annotated[Duration, AfterValidator(_positive)]
PrometheusTimeout = Annotated[Duration, AfterValidator(_bounded_timeout)]
ReadyTimeout = Annotated[Duration, AfterValidator(_bounded_ready_timeout)]
Quantity = Annotated[str, Field(pattern=r"^[0-9]+(\.[0-9]+)?(m|k|Ki|Mi|Gi|Ti|M|G|T)?$")]
_QUANTITY_SCALE = {
    "m": 1e-3,
    "": 1,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}


def quantity_value(text: str) -> float:
    """'500m' -> 0.5, '1Gi' -> 1073741824.0: enough to compare two quantities of this API's pattern."""
    number = re.match(r"[0-9.]+", text)
    assert number is not None  # the pattern was checked first
    return float(number.group()) * _QUANTITY_SCALE[text[number.end() :]]


def parse_duration(text: str) -> float:
    """'1h30m' -> 5400.0 seconds. The pattern is this API's form (whole numbers of ms, s, m, h and d, what
    Prometheus accepts too, so a duration can go into a query); durationpy reads it (Go's syntax and d)."""
    if not re.fullmatch(DURATION_PATTERN, text):
        raise ValueError(f"invalid duration {text!r}: use e.g. 30s, 5m, 1h30m, 7d")
    try:
        return float(durationpy.from_str(text).total_seconds())
    except durationpy.DurationError:  # beyond a timedelta: far beyond any bound of this API
        raise ValueError(f"{text!r} is too long: at most {MAX_DURATION_SECONDS // 86400}d") from None


def format_duration(seconds: float) -> str:
    """5400.0 -> '1h30m', 2678400.0 -> '31d': whole seconds in this API's duration syntax."""
    rest, parts = int(seconds), []
    for unit, size in _UNIT_SECONDS.items():
        count, rest = divmod(rest, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


def field_error(model: str, loc: tuple[str | int, ...], message: str, value: Any) -> ValidationError:
    """An error at `loc` (wire names), for a validator that checks several fields: the message then names
    the field the user must change, not the object that holds it."""
    error = PydanticCustomError("value_error", "{message}", {"message": message})
    return ValidationError.from_exception_data(model, [InitErrorDetails(type=error, loc=loc, input=value)])


def _no_schema_default(schema: dict[str, Any]) -> None:
    """A default that depends on another field (model.task) must not be in the CRD: the API server would
    fill it in before the operator sees the task."""
    schema.pop("default", None)


class ApiModel(BaseModel):
    """Base for every API object: camelCase aliases, unknown fields refused (as the schema does)."""

    # validate_default: a default duration is parsed once too (it gets its `.seconds`).
    # allow_inf_nan: NaN or inf in a threshold or weight makes every comparison false and the status
    # patch invalid JSON; the API server never sends them, other clients (and tests) might.
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", validate_default=True, allow_inf_nan=False
    )


# --- model -------------------------------------------------------------------------------------------


class ResourceList(ApiModel):
    """Amounts of CPU and memory, as Kubernetes quantities."""

    cpu: Quantity | None = Field(default=None, description="CPU, e.g. 500m or 2.")
    memory: Quantity | None = Field(default=None, description="Memory, e.g. 256Mi or 1Gi.")


class Resources(ApiModel):
    """CPU and memory requests and limits of a container, as in a Pod spec."""

    requests: ResourceList = Field(
        default_factory=ResourceList, description="What the scheduler reserves for the container."
    )
    limits: ResourceList = Field(default_factory=ResourceList, description="The most the container may use.")

    @model_validator(mode="after")
    def _requests_within_limits(self) -> Resources:
        # The API server refuses a Pod whose request exceeds its limit: the Deployment or Job would never run.
        for name in ("cpu", "memory"):
            request, limit = getattr(self.requests, name), getattr(self.limits, name)
            if request is not None and limit is not None and quantity_value(request) > quantity_value(limit):
                raise field_error(
                    "Resources",
                    ("requests", name),
                    f"{request} is above the limit {limit}: lower it or raise the limit",
                    request,
                )
        return self


# --- pods the user brings: env, placement, pull secrets (issue 19, item 5) ------------------------------

ENV_NAME_PATTERN = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
LABEL_VALUE_PATTERN = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
MAX_ENV = 64
MAX_ENV_VALUE = 16384
MAX_ENV_FROM = 16
MAX_NODE_SELECTOR = 20
MAX_TOLERATIONS = 20
MAX_PULL_SECRETS = 10
MAX_AFFINITY_BYTES = 16384
MAX_AFFINITY_DEPTH = 12  # a Pod's affinity nests 10 deep at most (podAntiAffinity ... matchExpressions[].values)
MAX_AFFINITY_VALUES = 2048
AFFINITY_KINDS = ("nodeAffinity", "podAffinity", "podAntiAffinity")


def label_key_error(key: str) -> str:
    """Why `key` is no Kubernetes label key ('' when it is one): [prefix/]name, a DNS subdomain prefix of at
    most 253 characters and a name of at most 63."""
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not re.fullmatch(DNS_SUBDOMAIN_PATTERN, prefix)):
        return f"{key!r}: the prefix must be a DNS subdomain of at most 253 characters"
    if len(name) > 63 or not LABEL_NAME.match(name):
        return f"{key!r}: the name must be 1 to 63 letters, digits, '-', '_' or '.', alphanumeric at both ends"
    return ""


class KeyRef(ApiModel):
    """A key of a Secret or ConfigMap in the loop's namespace."""

    name: str = Field(pattern=DNS_SUBDOMAIN_PATTERN, max_length=253, description="The object's name.")
    key: str = Field(pattern=r"^[-._a-zA-Z0-9]+$", max_length=253, description="The key within it.")
    optional: bool = Field(
        default=False, description="true: a missing object or key leaves the variable unset. Default false."
    )


class EnvVarSource(ApiModel):
    """Where a variable's value comes from: set exactly one of secretKeyRef and configMapKeyRef."""

    secret_key_ref: KeyRef | None = Field(default=None, description="A key of a Secret.")
    config_map_key_ref: KeyRef | None = Field(default=None, description="A key of a ConfigMap.")

    @model_validator(mode="after")
    def _exactly_one(self) -> EnvVarSource:
        if (self.secret_key_ref is None) == (self.config_map_key_ref is None):
            raise ValueError("set exactly one of secretKeyRef or configMapKeyRef")
        return self


class EnvVar(ApiModel):
    """An environment variable: a value, or a key of a Secret or ConfigMap."""

    name: str = Field(pattern=ENV_NAME_PATTERN, max_length=253, description="Variable name.")
    value: str = Field(
        default="", max_length=MAX_ENV_VALUE, description="Variable value, at most 16384 characters; omitted: empty."
    )
    value_from: EnvVarSource | None = Field(default=None, description="Take the value from a Secret or ConfigMap.")

    @model_validator(mode="after")
    def _value_or_source(self) -> EnvVar:
        if self.value and self.value_from is not None:
            raise field_error("EnvVar", ("valueFrom",), "set value or valueFrom, not both", None)
        return self


class ObjectRef(ApiModel):
    """A Secret or ConfigMap in the loop's namespace."""

    name: str = Field(pattern=DNS_SUBDOMAIN_PATTERN, max_length=253, description="The object's name.")
    optional: bool = Field(default=False, description="true: a missing object is skipped. Default false.")


class EnvFromSource(ApiModel):
    """Every key of a Secret or ConfigMap as a variable: set exactly one of secretRef and configMapRef."""

    prefix: str = Field(
        default="",
        pattern=r"^([-._a-zA-Z][-._a-zA-Z0-9]*)?$",
        max_length=63,
        description="Put before each key to make the variable's name; omitted: none.",
    )
    secret_ref: ObjectRef | None = Field(default=None, description="A Secret.")
    config_map_ref: ObjectRef | None = Field(default=None, description="A ConfigMap.")

    @model_validator(mode="after")
    def _exactly_one(self) -> EnvFromSource:
        if (self.secret_ref is None) == (self.config_map_ref is None):
            raise ValueError("set exactly one of secretRef or configMapRef")
        return self


class Toleration(ApiModel):
    """Lets the Pods run on nodes with a matching taint, as in a Pod spec."""

    key: str = Field(default="", max_length=317, description="Taint key; omitted: every key (operator must be Exists).")
    operator: Literal["Exists", "Equal"] = Field(
        default="Equal", description="Equal matches key and value; Exists any value of the key. Default Equal."
    )
    value: str = Field(
        default="",
        pattern=LABEL_VALUE_PATTERN,
        max_length=63,
        description="Taint value for Equal (empty for Exists).",
    )
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="NoSchedule, PreferNoSchedule or NoExecute; omitted: every effect."
    )
    toleration_seconds: int | None = Field(
        default=None,
        ge=0,
        le=MAX_VERSION,
        description="With effect NoExecute: how long the Pod stays after the taint appears, in seconds; omitted: "
        "for ever.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> Toleration:
        if self.key and label_key_error(self.key):
            raise field_error("Toleration", ("key",), label_key_error(self.key), self.key)
        if not self.key and self.operator != "Exists":
            raise field_error("Toleration", ("operator",), "a toleration without a key must use Exists", None)
        if self.operator == "Exists" and self.value:
            raise field_error("Toleration", ("value",), "Exists takes no value: remove it or use Equal", None)
        if self.toleration_seconds is not None and self.effect != "NoExecute":
            raise field_error(
                "Toleration", ("tolerationSeconds",), "only for effect NoExecute", self.toleration_seconds
            )
        return self


class LocalObjectRef(ApiModel):
    """A Secret in the loop's namespace, by name."""

    name: str = Field(pattern=DNS_SUBDOMAIN_PATTERN, max_length=253, description="The Secret's name.")


def _unique_env(env: list[EnvVar]) -> list[EnvVar]:
    names = [e.name for e in env]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"list each variable once; repeated: {repeated}")
    return env


def _node_selector(selector: dict[str, str]) -> dict[str, str]:
    # Checked here rather than in the schema: an error inside the map would name a key, not the field.
    for key, value in selector.items():
        problem = label_key_error(key)
        if problem:
            raise ValueError(problem)
        if len(value) > 63 or not re.fullmatch(LABEL_VALUE_PATTERN, value):
            raise ValueError(f"{key}={value!r}: a label value is at most 63 letters, digits, '-', '_' or '.'")
    return selector


def free_form_problem(value: Any, max_depth: int, max_values: int, max_bytes: int) -> str:
    """Why a free-form JSON value (kept as written: affinity, hyperparameters) is too large to keep ('' when it
    is not): nested deeper than max_depth objects and lists, more than max_values values in all, or more than
    max_bytes as JSON. Walked without recursion, so a value nested thousands deep is refused, not a crash."""
    stack: list[tuple[Any, str, int]] = [(value, "", 1)]
    count = 0
    while stack:
        node, path, depth = stack.pop()
        count += 1
        if count > max_values:
            return f"holds more than {max_values} values in all: at most {max_values}"
        if isinstance(node, dict | list):
            if depth > max_depth:
                where = path[:120] or "its top"  # the keys are the tenant's text: never a long message
                return f"nests objects and lists deeper than {max_depth} levels (at {where}): flatten it"
            items = node.items() if isinstance(node, dict) else enumerate(node)
            stack.extend((item, f"{path}.{key}".lstrip("."), depth + 1) for key, item in items)
    size = len(json.dumps(value, allow_nan=True))  # bounded in depth now: no recursion error
    if size > max_bytes:
        return f"is {size} bytes as JSON: at most {max_bytes}"
    return ""


def _affinity(affinity: dict[str, Any]) -> dict[str, Any]:
    """Free-form (as a Pod spec's affinity, passed on as written) but bounded: known kinds, objects, finite."""
    unknown = sorted(set(affinity) - set(AFFINITY_KINDS))
    if unknown:
        raise ValueError(f"unknown {unknown}: use {', '.join(AFFINITY_KINDS)}")
    if not all(isinstance(value, dict) for value in affinity.values()):
        raise ValueError("each of nodeAffinity, podAffinity and podAntiAffinity is an object")
    problem = free_form_problem(affinity, MAX_AFFINITY_DEPTH, MAX_AFFINITY_VALUES, MAX_AFFINITY_BYTES)
    if problem:
        raise ValueError(problem)
    if _non_finite(affinity):
        raise ValueError("holds a NaN or an infinity")
    return affinity


EnvList = Annotated[list[EnvVar], AfterValidator(_unique_env)]
NodeSelector = Annotated[dict[str, str], AfterValidator(_node_selector)]
Affinity = Annotated[dict[str, Any], AfterValidator(_affinity)]


class PodSettings(ApiModel):
    """What a platform sets on the Pods it runs: environment, placement and image pull secrets."""

    env_from: list[EnvFromSource] = Field(
        default_factory=list,
        max_length=MAX_ENV_FROM,
        description="Secrets and ConfigMaps whose keys become variables, at most 16; a variable the operator or "
        "env sets wins. Default none.",
    )
    node_selector: NodeSelector = Field(
        default_factory=dict,
        max_length=MAX_NODE_SELECTOR,
        description="Node labels the Pods must match, at most 20, as a Pod spec's nodeSelector. Default none.",
    )
    tolerations: list[Toleration] = Field(
        default_factory=list,
        max_length=MAX_TOLERATIONS,
        description="Taints the Pods tolerate, at most 20. Default none.",
    )
    affinity: Affinity = Field(
        default_factory=dict,
        max_length=len(AFFINITY_KINDS),
        description="A Pod spec's affinity (nodeAffinity, podAffinity, podAntiAffinity), passed on as written; at "
        "most 16384 bytes as JSON. Default none.",
    )
    image_pull_secrets: list[LocalObjectRef] = Field(
        default_factory=list,
        max_length=MAX_PULL_SECRETS,
        description="Secrets holding the registry credentials of the Pods' images, at most 10. Default none.",
    )


# --- serving ---------------------------------------------------------------------------------------------

RUNTIME_PLACEHOLDERS = ("versionDir", "modelName", "port")
PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
MLSERVER_ARGS = ["mlserver", "start", "{versionDir}"]
MAX_ARGS = 32
MAX_ARG_LENGTH = 1024
Arg = Annotated[str, Field(min_length=1, max_length=MAX_ARG_LENGTH)]


class Sidecar(ApiModel):
    """The feedback sidecar beside a V2 server: serves the Service's port, passes inference through, signs
    prediction ids, logs rows and takes labels (docs/contracts.md)."""

    image: str = Field(
        default=release.image("mfl-sidecar"),
        min_length=1,
        max_length=512,
        description=f"Sidecar image. Default {release.image('mfl-sidecar')}.",
    )
    resources: Resources = Field(default_factory=Resources, description="CPU and memory of the sidecar container.")
    env: EnvList = Field(
        default_factory=list,
        max_length=MAX_ENV,
        description="Extra variables of the sidecar (e.g. MFL_UPSTREAM_MODEL, MFL_UPSTREAM_TIMEOUT_SECONDS), at "
        "most 64; one the operator sets is dropped. Default none.",
    )


class Runtime(ApiModel):
    """A server speaking the Open Inference Protocol (V2) in place of mfl-server: serving.image runs it and the
    operator adds the feedback sidecar, which owns serving.port. Omitted: serving.image is an mfl-server."""

    kind: Literal["mlserver", "custom"] = Field(
        default="mlserver",
        description="mlserver: MLServer, configured by MLSERVER_* variables and the version's model-settings.json; "
        "custom: any V2 server, run by command and args. Default mlserver.",
    )
    port: int = Field(
        default=9000,
        ge=1,
        le=65535,
        description="The server's HTTP port inside the Pod (not serving.port; MLServer also takes port+1 for gRPC "
        "and port+2 for metrics). Default 9000.",
    )
    command: list[Arg] = Field(
        default_factory=list,
        max_length=MAX_ARGS,
        description="The container's command (replaces the image's entrypoint), with the placeholders of args; "
        "omitted: the image's.",
    )
    args: list[Arg] = Field(
        default_factory=list,
        max_length=MAX_ARGS,
        description="The container's args, at most 32 of 1024 characters; {versionDir}, {modelName} and {port} "
        "are replaced. Omitted: mlserver start {versionDir} for mlserver; required for custom.",
    )
    sidecar: Sidecar = Field(default_factory=Sidecar)

    @model_validator(mode="after")
    def _runnable(self) -> Runtime:
        if self.kind == "custom" and not self.args and not self.command:
            raise field_error(
                "Runtime", ("args",), "a custom server needs args (or command), e.g. its model directory", None
            )
        for name in ("command", "args"):
            for index, arg in enumerate(getattr(self, name)):
                unknown = sorted(set(PLACEHOLDER.findall(arg)) - set(RUNTIME_PLACEHOLDERS))
                if unknown:
                    known = ", ".join(f"{{{p}}}" for p in RUNTIME_PLACEHOLDERS)
                    raise field_error("Runtime", (name, index), f"unknown placeholder {unknown}: use {known}", arg)
        return self

    def ports(self) -> dict[str, int]:
        """The ports the server takes inside the Pod, by use."""
        if self.kind == "mlserver":
            return {"http": self.port, "grpc": self.port + 1, "metrics": self.port + 2}
        return {"http": self.port}

    def server_args(self) -> list[str]:
        return self.args or (MLSERVER_ARGS if self.kind == "mlserver" else [])


class Serving(PodSettings):
    """The model server Deployments the operator runs: stable, and a canary during a rollout."""

    image: str = Field(
        default=release.image("mfl-server"),
        min_length=1,
        max_length=512,
        description="Model server image: an mfl-server (docs/contracts.md), or with runtime any server speaking the "
        f"Open Inference Protocol. Default {release.image('mfl-server')}.",
    )
    replicas: int = Field(
        default=2,
        ge=1,
        le=100,
        description="Replicas of the stable Deployment, 1 to 100; a canary's replicas are added beside them. "
        "Default 2.",
    )
    port: int = Field(
        default=8080,
        ge=1,
        le=65535,
        description="Container port of the HTTP API and /metrics (the feedback sidecar's with runtime), the "
        "Service's target and the prometheus.io scrape port. Default 8080.",
    )
    resources: Resources = Field(default_factory=Resources, description="CPU and memory of each server container.")
    env: EnvList = Field(
        default_factory=list,
        max_length=MAX_ENV,
        description="Extra variables of the server containers, at most 64, unique; one the operator sets (MFL_*, "
        "TMPDIR, MLSERVER_* with runtime) is dropped: the operator's wins. Default none.",
    )
    runtime: Runtime | None = Field(
        default=None, description="Serve with an Open Inference Protocol server and the feedback sidecar."
    )

    @model_validator(mode="after")
    def _ports_free(self) -> Serving:
        if self.runtime is None:
            return self
        for use, port in self.runtime.ports().items():
            if port > 65535 or port == self.port:
                taken = "above 65535" if port > 65535 else f"serving.port {self.port}, the sidecar's"
                what = "its HTTP port" if use == "http" else f"its {use} port {port}"
                raise field_error(
                    "Serving",
                    ("runtime", "port"),
                    f"{self.runtime.port}: {what} is {taken}; pick another port",
                    self.runtime.port,
                )
        return self


class SecretKeyRef(ApiModel):
    """A key of a Secret in the loop's namespace."""

    name: str = Field(pattern=DNS_SUBDOMAIN_PATTERN, max_length=253, description="Secret name.")
    key: str = Field(pattern=r"^[-._a-zA-Z0-9]+$", max_length=253, description="Key within the Secret.")


class PersistentVolumeClaimSource(ApiModel):
    """A PersistentVolumeClaim as the artifact store."""

    claim_name: str = Field(
        pattern=DNS_SUBDOMAIN_PATTERN,
        max_length=253,
        description="Claim in the loop's namespace. The trainer Jobs and every server Pod mount it at once: "
        "ReadWriteMany (ReadWriteOnce only on a one-node cluster).",
    )


# A folder name of portable characters that is neither '.' nor '..' (RE2 has no lookahead: three forms).
_HOST_PATH_SEGMENT = r"([A-Za-z0-9_-][A-Za-z0-9._-]*|\.[A-Za-z0-9_-][A-Za-z0-9._-]*|\.\.[A-Za-z0-9._-]+)"
HOST_PATH_PATTERN = rf"^(/{_HOST_PATH_SEGMENT})+$"
# The node's own folders: the kernel's, the kubelet's and the container runtimes' state, credentials and
# binaries. A hostPath at, under or above one of them is refused even when the admin allows hostPath.
SYSTEM_HOST_PATHS = (
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/opt/cni",
    "/proc",
    "/root",
    "/run",
    "/sbin",
    "/sys",
    "/usr",
    "/var/lib/calico",
    "/var/lib/cni",
    "/var/lib/containerd",
    "/var/lib/docker",
    "/var/lib/dockershim",
    "/var/lib/etcd",
    "/var/lib/k0s",
    "/var/lib/kubelet",
    "/var/lib/kubernetes",
    "/var/lib/rancher",
    "/var/log",
    "/var/run",
)


def host_path_problem(path: str) -> str:
    """Why `path` may not be a loop's hostPath ('' when it may): the node's system folders, and the folders
    that hold them (/, /var, /var/lib, /opt), are never a loop's store."""
    if path.strip("/") == "":
        return f"{path!r} is the node's whole filesystem: use a folder of its own, e.g. /srv/mfl/<team>"
    if not re.fullmatch(HOST_PATH_PATTERN, path):
        return (
            f"{path!r} is not an absolute path of folder names (letters, digits, '.', '_', '-'; no '.' or '..' "
            "folders, no '//' or trailing '/'): use e.g. /srv/mfl/<team>"
        )
    for system in SYSTEM_HOST_PATHS:
        if path == system or path.startswith(system + "/") or system.startswith(path + "/"):
            return (
                f"{path!r} is or holds a system folder of the node ({system}): use a folder of its own, e.g. "
                "/srv/mfl/<team>"
            )
    return ""


class HostPathSource(ApiModel):
    """A directory on the node as the artifact store: for one-node and test clusters, if the admin allows it."""

    path: str = Field(
        json_schema_extra={"pattern": HOST_PATH_PATTERN},  # in the CRD; here the validator says it in words
        max_length=1024,
        description="Absolute path on the node, created if missing: no '..', not a system folder (/proc, /etc, "
        "/var/lib/kubelet, ...) nor one holding them (/, /var).",
    )

    @field_validator("path")
    @classmethod
    def _not_the_nodes_own(cls, path: str) -> str:
        problem = host_path_problem(path)
        if problem:
            raise ValueError(problem)
        return path


# S3 bucket names (AWS rules, which every S3-compatible store accepts): 3 to 63 lowercase letters, digits, '.'
# and '-', alphanumeric at both ends; the rest of the rules (no '..', not an IP address) in _bucket_rules.
S3_BUCKET_PATTERN = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"
# Folders of plain characters, no leading, trailing or doubled '/': a key is `<prefix>/<model>/...` everywhere.
S3_PREFIX_PATTERN = r"^([A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*)?$"
S3_REGION_PATTERN = r"^[A-Za-z0-9_-]*$"
S3_CA_PATH = "/var/run/mfl-s3-ca"  # where the caSecret volume is mounted in the containers that reach the store
SECRET_KEY_PATTERN = r"^[-._a-zA-Z0-9]+$"


class S3Storage(ApiModel):
    """An S3-compatible bucket (AWS S3, MinIO, SeaweedFS, Ceph RGW) as the artifact store; needs database.
    Versions, base data and prediction logs are objects; each server Pod fetches its version at start."""

    endpoint: str = Field(
        pattern=r"^https?://",
        max_length=2048,
        description="The S3 API's URL without a path, e.g. http://seaweedfs.storage:8333 or "
        "https://s3.eu-west-1.amazonaws.com. The credentials Secret must allow its host (annotation "
        "feedbackloop.dev/s3-hosts).",
    )
    bucket: str = Field(
        pattern=S3_BUCKET_PATTERN,
        min_length=3,
        max_length=63,
        description="The bucket, which must exist: 3 to 63 lowercase letters, digits, '.' and '-' (S3 naming rules).",
    )
    prefix: str = Field(
        default="",
        pattern=S3_PREFIX_PATTERN,
        max_length=512,
        description="Folder within the bucket holding the loop's objects, e.g. team-a: letters, digits, '_', '.', "
        "'-' and '/' between folders, no '..'. Omitted: the bucket's root.",
    )
    region: str = Field(
        default="",
        pattern=S3_REGION_PATTERN,
        max_length=64,
        description="Region the requests are signed for, e.g. us-east-1; omitted: asked of the bucket.",
    )
    credentials_secret: str = Field(
        pattern=DNS_SUBDOMAIN_PATTERN,
        max_length=253,
        description="Secret in the loop's namespace with keys accessKeyId and secretAccessKey; its annotation "
        "feedbackloop.dev/s3-hosts must list the endpoint's host, or no Pod is created.",
    )
    ca_secret: SecretKeyRef | None = Field(
        default=None,
        description="Secret key (in the loop's namespace) holding the PEM CA bundle that verifies an https "
        "endpoint; omitted: the system CAs.",
    )
    insecure_skip_verify: bool = Field(
        default=False, description="Skip verifying the endpoint's TLS certificate. Default false."
    )

    @field_validator("endpoint")
    @classmethod
    def _a_host_without_path(cls, url: str) -> str:
        """The pattern only checks the scheme; the S3 client takes a host and port, nothing else."""
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises on a port that is not a number from 0 to 65535
        except ValueError as error:
            raise ValueError(f"{url!r} is not a URL ({error}): use e.g. http://seaweedfs.storage:8333") from None
        if not parts.hostname or any(c.isspace() for c in url):
            raise ValueError(f"{url!r} names no host or holds whitespace: use e.g. http://seaweedfs.storage:8333")
        if "@" in parts.netloc:
            raise ValueError("credentials do not go into the URL: put them in credentialsSecret")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            base = f"{parts.scheme}://{parts.netloc}"
            raise ValueError(f"{url!r} has a path: use {base}, and bucket and prefix for the folder")
        return url

    @field_validator("bucket")
    @classmethod
    def _bucket_rules(cls, bucket: str) -> str:
        if ".." in bucket:
            raise ValueError(f"{bucket!r} holds '..': S3 refuses adjacent periods in a bucket name")
        try:
            ipaddress.ip_address(bucket)
        except ValueError:
            pass
        else:
            raise ValueError(f"{bucket!r} is an IP address: S3 refuses such bucket names")
        if bucket.startswith("xn--") or bucket.endswith("-s3alias"):
            raise ValueError(f"{bucket!r}: S3 reserves the prefix xn-- and the suffix -s3alias")
        return bucket

    @field_validator("prefix")
    @classmethod
    def _safe_prefix(cls, prefix: str) -> str:
        # Keys are joined as prefix/model/...: '.' and '..' would name another folder on a store that
        # normalizes paths (and a volume does).
        if any(part in (".", "..") for part in prefix.split("/")):
            raise ValueError(f"{prefix!r} holds a '.' or '..' folder: name the folder itself, e.g. team-a")
        return prefix


class DatabaseUrlSecretRef(ApiModel):
    """The Secret key holding the database's URL."""

    name: str = Field(pattern=DNS_SUBDOMAIN_PATTERN, max_length=253, description="Secret in the loop's namespace.")
    key: str = Field(
        default="url", pattern=SECRET_KEY_PATTERN, max_length=253, description="Key within the Secret. Default url."
    )


class Database(ApiModel):
    """PostgreSQL holding the labels (the ledger, once per prediction id), one database per team.
    The server writes them, the trainer reads them."""

    url_secret: DatabaseUrlSecretRef = Field(
        description="Secret key holding a libpq URL, postgresql://user:password@host:5432/database (the team's "
        "role, which owns its tables)."
    )


class Storage(ApiModel):
    """Where versions, predictions and feedback live: a volume, or a bucket (s3) with the labels in a database.
    Set exactly one of persistentVolumeClaim, hostPath and s3."""

    persistent_volume_claim: PersistentVolumeClaimSource | None = None
    host_path: HostPathSource | None = None
    s3: S3Storage | None = None
    database: Database | None = Field(
        default=None,
        description="PostgreSQL holding the labels: required with s3; with a volume, labels go to it instead of "
        "the volume's feedback files. Omitted: labels on the volume.",
    )
    mount_path: str = Field(
        default="/var/lib/mfl/artifacts",
        pattern=r"^/",
        description="Where the volume is mounted in the server and trainer containers (with s3: the Pod's own "
        "folder its version is fetched into). Default /var/lib/mfl/artifacts.",
    )

    @model_validator(mode="after")
    def _exactly_one_source(self) -> Storage:
        sources = [self.persistent_volume_claim, self.host_path, self.s3]
        if sum(source is not None for source in sources) != 1:
            raise ValueError("set exactly one of persistentVolumeClaim, hostPath or s3")
        if self.s3 is not None and self.database is None:
            # One object per label would be the only exactly-once on a bucket: the ledger does it instead.
            raise field_error(
                "Storage",
                ("database",),
                "s3 needs a database for the labels: set database.urlSecret to a Secret holding a postgresql:// URL",
                None,
            )
        return self

    @field_validator("mount_path")
    @classmethod
    def _not_a_system_path(cls, path: str) -> str:
        # Two volumes at one path make the API server refuse every Pod; "/" would hide the image.
        if posixpath.normpath(path) in ("/", SCRATCH_PATH, S3_CA_PATH):
            raise ValueError(
                f"{path!r} is taken (the root, the scratch or the CA volume): use e.g. /var/lib/mfl/artifacts"
            )
        return path


FEEDBACK_MAX_AGE_FLOOR = 30 * 86400  # the server's own default (docs/contracts.md)
FEEDBACK_MAX_AGE_CEILING = 366 * 86400  # the server keeps exactly-once claims at most this long
LOG_RETENTION_MIN_MARGIN = 86400  # logs kept at least this long beyond the feedback max age ...
LOG_RETENTION_DEFAULT_MARGIN = 2 * 86400  # ... and by default this long
MAX_RETAINED_VERSIONS = 1000


class Retention(ApiModel):
    """What the loop keeps: logs (predictions, labels, claims) for a time, and the newest versions.
    The server and the trainer delete the rest."""

    logs: Duration | None = Field(
        default=None,
        description="Logs older than this are deleted hourly: a duration, at least the feedback max age (30d, or "
        "retraining.dataWindow when longer; at most 366d) + 1d. Omitted: that max age + 2d.",
    )
    versions: int = Field(
        default=10,
        ge=2,
        le=MAX_RETAINED_VERSIONS,
        description="Newest versions kept in the store, besides the serving and the canary version; 2 to 1000. "
        "Default 10.",
    )


class Model(ApiModel):
    """The model: its name and task, how it is served and where its artifacts live."""

    name: str = Field(
        pattern=DNS_LABEL_PATTERN,
        max_length=40,
        description="Model name: its folder in the artifact store and the `model` label of its metrics. "
        "A DNS label of at most 40 characters.",
    )
    task: Literal["classification", "regression"] = Field(
        default="classification",
        description="classification or regression: selects the default rules, the trainer's metrics and "
        "whether the canary is judged on accuracy. Default classification.",
    )
    serving: Serving = Field(default_factory=Serving)
    storage: Storage
    initial_version: int | None = Field(
        default=None,
        ge=1,
        le=MAX_VERSION,
        description="A version already in the artifact store (versions/<n>/) to serve when the loop has none yet, "
        "1 to 1000000000; omitted: the operator trains version 1.",
    )
    retention: Retention = Field(default_factory=Retention)


# --- monitoring --------------------------------------------------------------------------------------


class PrometheusEndpoint(ApiModel):
    """The Prometheus the operator queries for the health rules and the canary analysis."""

    url: str = Field(
        pattern=r"^https?://",
        description="Base URL of the Prometheus HTTP API, e.g. http://prometheus-operated.monitoring:9090.",
    )
    bearer_token_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description="Secret key (in the loop's namespace) holding a bearer token sent with every query; omitted: none.",
    )
    ca_bundle_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description="Secret key (in the loop's namespace) holding the PEM CA bundle that verifies an https "
        "Prometheus; omitted: the system CAs.",
    )
    insecure_skip_verify: bool = Field(
        default=False, description="Skip verifying the server's TLS certificate. Default false."
    )
    timeout: PrometheusTimeout = Field(
        default=DurationText("10s"), description="Timeout of each query: a duration from 1s to 60s. Default 10s."
    )

    @field_validator("url")
    @classmethod
    def _a_host_and_port(cls, url: str) -> str:
        """The pattern only checks the scheme; a URL without a host, or with a bad port, fails every query."""
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises on a port that is not a number from 0 to 65535
        except ValueError as error:
            raise ValueError(f"{url!r} is not a URL ({error}): use e.g. http://prometheus:9090") from None
        if not parts.hostname or any(c.isspace() for c in url):
            raise ValueError(f"{url!r} names no host or holds whitespace: use e.g. http://prometheus:9090")
        return url


class MetricRule(ApiModel):
    """One health rule, shaped like a Prometheus alerting rule: a query, a threshold and `for`."""

    name: str = Field(
        pattern=r"^[a-zA-Z][a-zA-Z0-9_]*$",
        max_length=63,
        description="Rule name, unique in the loop; shown in status.metrics, Events and the Metric column.",
    )
    query: str = Field(
        min_length=1,
        max_length=MAX_QUERY_LENGTH,
        description="PromQL template returning one series for the loop, at most 4096 characters; {{model}}, "
        "{{namespace}}, {{version}} (the stable version) and {{track}} (stable) are replaced by escaped values.",
    )
    min: float | None = Field(default=None, description="Out of bounds below this value. Set min, max or both.")
    max: float | None = Field(default=None, description="Out of bounds above this value. Set min, max or both.")
    for_: Duration = Field(
        default=DurationText("5m"),
        alias="for",
        description="How long the value must stay out of bounds before the rule breaches, as an alerting "
        "rule's `for`: a duration. Default 5m (docs/retraining.md).",
    )
    on_no_data: Literal["hold", "ignore", "breach"] = Field(
        default="hold",
        description="What a poll without a usable value (query error, no series, NaN, too few samples) does: "
        "hold keeps the rule's state, ignore clears it, breach counts as out of bounds. Default hold.",
    )
    min_samples: int | None = Field(
        default=None,
        ge=1,
        description="A value backed by fewer samples (per samplesQuery) counts as no data; set with samplesQuery.",
    )
    samples_query: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_QUERY_LENGTH,
        description="PromQL template (same placeholders) counting the samples behind `query`; set with minSamples.",
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


MAX_INPUT_DRIFT_WINDOW_SECONDS = 7 * 86400
INPUT_DRIFT_RULE = "inputDrift"  # the check's name among the poll's rules (core/inputdrift.py)


def _input_drift_window(text: DurationText) -> DurationText:
    """A window of Prometheus samples: at least a minute (two scrapes), at most a week (each poll reads it)."""
    if not 60 <= text.seconds <= MAX_INPUT_DRIFT_WINDOW_SECONDS:
        raise ValueError(f"{str(text)!r} is out of range: use 1m to 7d")
    return text


class InputDrift(ApiModel):
    """Input drift before labels arrive: the served inputs against the serving version's training data.

    The reference server and the sidecar count every numeric feature (the first 32) into the bins cut at the
    serving version's training deciles, plus below, above and missing; the operator compares the window's
    counts with the training shares by the population stability index (PSI). A warning, not a breach: it sets
    the InputDrift condition and Event and never retrains or promotes by itself (docs/monitoring.md).
    """

    max_psi: float = Field(
        default=0.2,
        gt=0,
        le=10,
        description="A feature whose PSI over the window is above this has drifted. Default 0.2 (the usual "
        "'significant shift'; by chance, on 500 rows against a profile of 1,000, at most about 0.12).",
    )
    min_rows: int = Field(
        default=500,
        ge=50,
        le=100_000_000,
        description="Served rows the window needs before PSI is judged (fewer: no verdict). Default 500.",
    )
    window: Annotated[Duration, AfterValidator(_input_drift_window)] = Field(
        default=DurationText("30m"),
        description="The window of served inputs compared with the training data: a duration, 1m to 7d. Default 30m.",
    )
    for_: Duration = Field(
        default=DurationText("5m"),
        alias="for",
        description="How long some feature's PSI must stay above maxPsi before InputDrift turns True. Default 5m.",
    )


class Monitoring(ApiModel):
    """How the model's health is judged: the Prometheus to query and the rules to evaluate."""

    prometheus: PrometheusEndpoint
    interval: Interval = Field(
        default=DurationText("30s"),
        description="How often the operator queries Prometheus and evaluates the rules: a duration, at least 1s. "
        "Default 30s.",
    )
    metrics: list[MetricRule] = Field(
        default_factory=list,
        max_length=20,
        description="Health rules (at most 20, unique names); a breaching rule triggers a retraining. Empty: the "
        "reference server's accuracy (meanAbsError for regression), errorRate and latencyP99 rules.",
    )
    default_accuracy_min: float = Field(
        default=0.8,
        ge=0,
        le=1,
        description="Minimum of the default accuracy rule (classification, metrics empty), 0 to 1. Default 0.8.",
    )
    default_latency_p99_max_seconds: float = Field(
        default=0.5,
        gt=0,
        description="Maximum p99 prediction latency of the default latencyP99 rule (metrics empty), in seconds. "
        "Default 0.5.",
    )

    input_drift: InputDrift | None = Field(
        default=None,
        description="Set (even to {}) to judge input drift before labels arrive: one more query per poll, the "
        "InputDrift condition and Event. Needs versions whose metadata.json has an inputProfile (the trainer "
        "writes one). Default: not judged.",
    )

    @field_validator("metrics")
    @classmethod
    def _unique_names(cls, metrics: list[MetricRule]) -> list[MetricRule]:
        names = [m.name for m in metrics]
        if len(names) != len(set(names)):
            raise ValueError(f"metric names must be unique, got {names}")
        if INPUT_DRIFT_RULE in names:
            raise ValueError(
                f"{INPUT_DRIFT_RULE!r} is the input-drift check's name (monitoring.inputDrift): rename the rule"
            )
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
    "lightgbm",
    "lightgbm_regressor",
    "keras_dense",
]
GateMetric = Literal["accuracy", "f1_macro", "mae", "rmse", "r2"]
# What the trainer has for each task (trainer_image/mfl_trainer: estimators.py, evaluation.py, config.py's
# defaults); tests/operator/test_spec_holes.py holds the two together.
TASK_ESTIMATORS = {"classification": estimators.CLASSIFIERS, "regression": estimators.REGRESSORS}
DEFAULT_ESTIMATOR = {"classification": "hist_gradient_boosting", "regression": "hist_gradient_boosting_regressor"}
TASK_METRICS = {"classification": ("accuracy", "f1_macro"), "regression": ("mae", "rmse", "r2")}
NOT_INCREMENTAL = ("ridge",)  # neither partial_fit nor warm_start


class Trainer(PodSettings):
    """The container each retraining Job runs (docs/contracts.md: the trainer contract)."""

    image: str = Field(
        default=release.image("mfl-trainer"),
        min_length=1,
        max_length=512,
        description=f"Trainer image. Default {release.image('mfl-trainer')}.",
    )
    env: EnvList = Field(
        default_factory=list,
        max_length=MAX_ENV,
        description="Extra variables of the trainer container, at most 64, unique; one the operator sets "
        "(MFL_TRAINER_CONFIG, MFL_TRAINER_THREADS, TMPDIR) is dropped: the operator's wins. Default none.",
    )
    resources: Resources = Field(
        default_factory=Resources,
        description="CPU and memory of the trainer container; the CPU limit also sets its thread count.",
    )
    active_deadline_seconds: int = Field(
        default=3600,
        ge=60,
        le=86400,
        description="A training Job running longer is stopped and counts as failed; seconds, 60 to 86400. "
        "Default 3600.",
    )
    backoff_limit: int = Field(
        default=1, ge=0, le=10, description="Pod retries before a training Job counts as failed, 0 to 10. Default 1."
    )


class OfflineGate(ApiModel):
    """The challenger goes to a canary only if it is no worse than the champion on the same data."""

    metric: GateMetric = Field(
        default="accuracy",
        json_schema_extra=_no_schema_default,
        description="Holdout metric compared: accuracy or f1_macro (classification), mae, rmse or r2 (regression; "
        "lower mae and rmse are better). Omitted: accuracy for classification, mae for regression.",
    )
    max_degradation: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="How much worse than the champion the challenger may score, in the metric's units, 0 to 1. "
        "Default 0.",
    )
    min_score: float | None = Field(
        default=None,
        description="Score the challenger must reach (a ceiling for mae and rmse), also as a first version; "
        "omitted: none.",
    )
    superior_when_breached: bool = Field(
        default=True,
        description="After a breach the challenger must beat the failing champion on the same holdout rows "
        "(exact sign test), not only match it; its canary is then promoted after its steps unless failing. "
        "Default true.",
    )
    superiority_alpha: float = Field(
        default=0.05,
        gt=0,
        lt=0.5,
        description="Significance level of that superiority test, between 0 and 0.5. Default 0.05.",
    )


class ChangePoint(ApiModel):
    """Training on the current concept: the trainer finds the last significant rise of the served error in
    the labelled feedback (CUSUM test) and trains on the rows after it; the cut is in the version's metadata."""

    enabled: bool = Field(
        default=True,
        description="false: always train on the base data and the whole data window. Default true.",
    )
    alpha: float = Field(
        default=0.01,
        gt=0,
        lt=0.5,
        description="Significance level of each change test (the chance of cutting a stream without a change), "
        "between 0 and 0.5. Default 0.01.",
    )
    min_rows: int = Field(
        default=100,
        ge=10,
        le=100000,
        description="Labelled rows needed on each side of a change to locate it, and after it to train on it "
        "alone (fewer: the window and base data are trained on as well), 10 to 100000. Default 100.",
    )


Engine = Literal["Job", "Dask"]
DASK_ESTIMATORS = ("lightgbm", "lightgbm_regressor")  # what the trainer fits with lightgbm.dask
MAX_DASK_WORKERS = 64


class Dask(ApiModel):
    """The cluster of engine Dask: the trainer runs as the DaskJob's runner (trainer.resources and env), the
    workers read the data partitions and fit lightgbm.dask. Ignored with engine Job."""

    image: str = Field(
        default=release.image("mfl-trainer-dask"),
        min_length=1,
        max_length=512,
        description="Image of the runner, the scheduler and the workers: an mfl-trainer with dask "
        "(mfl-trainer as its entry point, `dask` on its PATH). "
        f"Default {release.image('mfl-trainer-dask')}.",
    )
    workers: int = Field(default=2, ge=1, le=MAX_DASK_WORKERS, description="Dask workers, 1 to 64. Default 2.")
    worker_resources: Resources = Field(
        default_factory=lambda: Resources(
            requests=ResourceList(cpu="500m", memory="1Gi"), limits=ResourceList(memory="1Gi")
        ),
        description="CPU and memory of each worker container; its memory limit is the worker's --memory-limit. "
        "Default requests cpu 500m, memory 1Gi; limits memory 1Gi.",
    )
    scheduler_resources: Resources = Field(
        default_factory=lambda: Resources(
            requests=ResourceList(cpu="100m", memory="256Mi"), limits=ResourceList(memory="512Mi")
        ),
        description="CPU and memory of the scheduler container. Default requests cpu 100m, memory 256Mi; limits "
        "memory 512Mi.",
    )
    worker_threads: int = Field(default=1, ge=1, le=64, description="Threads of each worker, 1 to 64. Default 1.")


MAX_HYPERPARAMETERS = 64  # names (the CRD's maxProperties)
MAX_HYPERPARAMETER_DEPTH = 8  # nested objects and lists, the hyperparameters object itself the first
MAX_HYPERPARAMETER_VALUES = 1024
MAX_HYPERPARAMETER_BYTES = 16384  # as JSON: they travel in the trainer Job's MFL_TRAINER_CONFIG variable


def _bounded_hyperparameters(value: dict[str, Any]) -> dict[str, Any]:
    problem = free_form_problem(value, MAX_HYPERPARAMETER_DEPTH, MAX_HYPERPARAMETER_VALUES, MAX_HYPERPARAMETER_BYTES)
    if problem:
        raise ValueError(problem)
    return value


Hyperparameters = Annotated[dict[str, Any], AfterValidator(_bounded_hyperparameters)]


class Refresh(ApiModel):
    """Retrain once more labelled rows exist (issue 24): a version trained on the rows since a change it found
    is retrained when the time since that change has grown `growth` times since its data ended, so the rows
    behind it have grown about as much. The challenger must beat the serving version on rows neither trained
    on (the gate's superiority test, as after a breach); a rejected refresh ends the refreshes of that version.
    Within cooldown and maxRetrainsPerDay; a breach, a request or a schedule slot comes first."""

    growth: float = Field(
        default=3.0,
        ge=1.5,
        le=100,
        description="How many times the time since the change must have grown since the serving version's data "
        "ended, 1.5 to 100. Default 3 (docs/retraining.md).",
    )
    max_in_a_row: int = Field(
        default=3,
        ge=1,
        le=20,
        description="Refreshes after one change at most (promoted or not), 1 to 20. Default 3.",
    )


class Retraining(ApiModel):
    """When and how the operator retrains the model in a Job. Omitted: no retraining (set
    model.initialVersion to serve an existing version)."""

    enabled: bool = Field(
        default=True,
        description="false: no retraining starts, not even on request; breaches are still reported. Default true.",
    )
    trainer: Trainer = Field(default_factory=Trainer)
    engine: Engine = Field(
        default="Job",
        description="Job: the trainer runs in one Pod, the data window in its memory. Dask: in a DaskJob of the "
        "dask-kubernetes operator (installed separately), trained on retraining.dask's workers; needs estimator "
        "lightgbm or lightgbm_regressor. Default Job.",
    )
    dask: Dask = Field(default_factory=Dask)
    estimator: Estimator = Field(
        default="hist_gradient_boosting",
        json_schema_extra=_no_schema_default,
        description="Estimator matching model.task (ridge and *_regressor: regression); keras_dense needs the "
        "mfl-trainer-keras and mfl-server-keras images. Omitted: hist_gradient_boosting, or "
        "hist_gradient_boosting_regressor for regression.",
    )
    hyperparameters: Hyperparameters = Field(
        default_factory=dict,
        max_length=MAX_HYPERPARAMETERS,
        description="Constructor arguments of the estimator by scikit-learn name, checked by the trainer: at most "
        "64, nested at most 8 deep, 16384 bytes as JSON. Default none.",
    )
    features: list[Annotated[str, Field(min_length=1)]] = Field(
        min_length=1,
        description="Feature columns, unique and not the target: base-data CSV columns and keys of the /predict "
        "instances.",
    )
    target: str = Field(
        min_length=1, description="Label column of the base data; feedback labels arrive through /feedback."
    )
    data_window: Interval = Field(
        default=DurationText("7d"),
        description="Labelled feedback predicted within this long before the Job starts joins the base data: "
        "a duration, at least 1s. Default 7d.",
    )
    holdout_fraction: float = Field(
        default=0.25,
        gt=0,
        lt=1,
        description="Share of the most recent labelled feedback held out to score challenger and champion (of the "
        "base data when feedback is scarce), between 0 and 1. Default 0.25.",
    )
    min_rows: int = Field(
        default=200,
        ge=10,
        description="A training with fewer labelled rows (base data and feedback) fails; at least 10. Default 200.",
    )
    incremental: bool = Field(
        default=False,
        description="Continue training the serving model on feedback it has not seen instead of fitting anew "
        "(not with ridge). Default false.",
    )
    recent_weight: float = Field(
        default=4.0,
        ge=1,
        le=100,
        description="Sample weight of labelled feedback rows against base-data rows (weight 1), 1 to 100; higher "
        "adapts faster after a drift. Default 4 (docs/retraining.md).",
    )
    schedule: str | None = Field(
        default=None,
        json_schema_extra={"pattern": r"^(@[A-Za-z]+|(\S+\s+){4}\S+)$"},  # in the CRD; the validator in words
        max_length=200,
        description="Retrain on this schedule as well, within cooldown and maxRetrainsPerDay: a CronJob schedule "
        "(5 fields, names such as SUN, or @daily, @weekly...) in timeZone; a slot missed while the operator was "
        "down runs once. Omitted: none.",
    )
    time_zone: str | None = Field(
        default=None,
        max_length=64,
        description="Time zone of schedule, an IANA name such as Europe/Berlin (as a CronJob's timeZone); "
        "omitted: UTC.",
    )
    starting_deadline: Duration | None = Field(
        default=None,
        description="A schedule slot that could not start within this long (operator down, a retraining or "
        "rollout running) is skipped with an event, as a CronJob's startingDeadlineSeconds; omitted: the latest "
        "missed slot runs once, however late.",
    )
    cooldown: Duration = Field(
        default=DurationText("30m"),
        description="Minimum time from the last retraining's start or outcome to the next one (a retrain request "
        "skips it; half after a rejected breach challenger): a duration. Default 30m (docs/retraining.md).",
    )
    max_retrains_per_day: int = Field(
        default=12,
        ge=0,
        le=100,
        description="Retrainings that may start in any 24 hours, requested ones included (the first version is "
        "never held back), 0 to 100. Default 12 (docs/retraining.md).",
    )
    failure_backoff: Duration = Field(
        default=DurationText("10m"),
        description="After a failed training, how long retrainings wait (a retrain request does not): a duration. "
        "Default 10m.",
    )
    refresh: Refresh | None = Field(
        default=None,
        description="Set (even to {}) to retrain a version trained on few rows since a change once many more "
        "labelled rows exist, promoted only if superior (docs/retraining.md). Default: not refreshed.",
    )
    gate: OfflineGate = Field(default_factory=OfflineGate)
    change_point: ChangePoint = Field(default_factory=ChangePoint)

    @field_validator("schedule")
    @classmethod
    def _a_cron_schedule(cls, schedule: str | None) -> str | None:
        try:
            if schedule is not None:
                cron.parse(schedule)
        except ValueError as error:  # what is wrong, in the words of the field's message
            raise PydanticCustomError("value_error", "{message}", {"message": str(error)}) from None
        return schedule

    @field_validator("time_zone")
    @classmethod
    def _a_known_time_zone(cls, name: str | None) -> str | None:
        try:
            cron.time_zone(name)  # a name the operator's tz database holds
        except ValueError as error:
            raise PydanticCustomError("value_error", "{message}", {"message": str(error)}) from None
        return name

    @model_validator(mode="after")
    def _trainer_accepts(self) -> Retraining:
        """What the trainer refuses at every Job is refused here, once, naming the field."""
        duplicates = sorted({f for f in self.features if self.features.count(f) > 1})
        if duplicates:
            raise field_error(
                "Retraining", ("features",), f"list each feature once; repeated: {duplicates}", duplicates
            )
        if self.target in self.features:
            raise field_error(
                "Retraining", ("target",), f"{self.target!r} is also a feature: remove it from features", self.target
            )
        if self.incremental and self.estimator in NOT_INCREMENTAL:
            raise field_error(
                "Retraining",
                ("incremental",),
                f"{self.estimator} cannot continue training: set incremental false or pick another estimator",
                True,
            )
        if self.engine == "Dask" and self.estimator not in DASK_ESTIMATORS:
            raise field_error(
                "Retraining",
                ("estimator",),
                f"engine Dask trains {' or '.join(DASK_ESTIMATORS)} (lightgbm.dask), not {self.estimator}: "
                "set estimator to one of them or engine to Job",
                self.estimator,
            )
        bad = _non_finite(self.hyperparameters)
        if bad:
            raise field_error("Retraining", ("hyperparameters", bad), "must be a finite number", None)
        return self


def _non_finite(value: Any) -> str:
    """The dotted path of the first NaN or infinity in a free-form value ('' when none); without recursion."""
    stack: list[tuple[Any, str]] = [(value, "")]
    while stack:
        node, path = stack.pop()
        if isinstance(node, float) and not math.isfinite(node):
            return path or "."
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        stack.extend((item, f"{path}.{key}".lstrip(".")) for key, item in reversed(list(items)))
    return ""


# --- rollout -----------------------------------------------------------------------------------------


class CanaryStep(ApiModel):
    """One canary step: a traffic weight, held for a pause."""

    weight: int = Field(
        ge=1,
        le=100,
        description="Percent of traffic for the canary, 1 to 100. Canary replicas are added beside stable's, so "
        "the share is rounded to a replica ratio (100 gives 50%).",
    )
    pause: Duration = Field(
        default=DurationText("1m"),
        description="How long the step lasts before the next one; after the last, the canary is promoted once the "
        "analysis passes. A duration. Default 1m.",
    )


class LatencyCheck(ApiModel):
    """Is the canary slower than stable? p50 and p95 from the model server's latency histogram."""

    enabled: bool = Field(default=True, description="Run the latency check. Default true.")
    max_increase: float = Field(
        default=0.2,
        ge=0,
        description="How much slower the canary's p50 and p95 may be than stable's, as a fraction (0.2 = 20%). "
        "Default 0.2.",
    )
    min_samples: int = Field(
        default=100, ge=2, description="Requests per arm before the latency check may decide, at least 2. Default 100."
    )


class ThresholdCheck(ApiModel):
    """A plain threshold on a custom canary metric (Flagger style), judged at every look."""

    name: str = Field(
        pattern=r"^[a-zA-Z][a-zA-Z0-9_]*$",
        description="Check name, shown in the evidence; unique, and not accuracy, availability or latency.",
    )
    query: str = Field(
        min_length=1,
        max_length=MAX_QUERY_LENGTH,
        description="PromQL template returning one value, at most 4096 characters; {{model}}, {{namespace}}, "
        "{{version}} (the canary's) and {{track}} (canary) are replaced by escaped values.",
    )
    min: float | None = Field(default=None, description="A look fails when the value is below min.")
    max: float | None = Field(default=None, description="A look fails when the value is above max.")
    failure_limit: int = Field(
        default=1,
        ge=1,
        description="Failed looks, counted over the whole analysis, that roll the canary back. Default 1.",
    )

    @model_validator(mode="after")
    def _has_threshold(self) -> ThresholdCheck:
        if self.min is None and self.max is None:
            raise ValueError(f"check {self.name!r} needs min and/or max")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"check {self.name!r}: min {self.min} is above max {self.max}")
        return self


class Analysis(ApiModel):
    """Sequential canary-vs-stable analysis: accuracy (classification), availability and latency, plus
    threshold checks; see docs/canary-analysis.md."""

    interval: Interval = Field(
        default=DurationText("30s"),
        description="How often the canary is judged (its queries run and one look is taken): a duration, at least "
        "1s. Default 30s.",
    )
    # The floors keep the test's arithmetic away from underflow (alpha / checks, 1.5 x a margin).
    alpha: float = Field(
        default=0.05,
        ge=MIN_FRACTION,
        lt=0.5,
        description="Bound on the probability of rolling back a canary as good as stable, shared by the "
        "statistical checks; 0.0001 to 0.5. Default 0.05.",
    )
    beta: float = Field(
        default=0.1,
        ge=MIN_FRACTION,
        lt=0.5,
        description="Bound on the probability of promoting a canary detectableDegradation worse, per check; "
        "0.0001 to 0.5. Default 0.1.",
    )
    max_degradation: float = Field(
        default=0.02,
        ge=MIN_FRACTION,
        lt=1,
        description="Non-inferiority margin on accuracy: how far below stable's the canary's may be, as a fraction "
        "(0.02 = 2 points), from 0.0001, below 0.667 when detectableDegradation is omitted. Default 0.02.",
    )
    detectable_degradation: float | None = Field(
        default=None,
        gt=0,
        lt=1,
        description="Accuracy drop, as a fraction above maxDegradation, that the analysis catches with "
        "probability 1 - beta; below 1; omitted: 1.5 x maxDegradation.",
    )
    availability_max_degradation: float = Field(
        default=0.01,
        ge=MIN_FRACTION,
        lt=1,
        description="Margin on availability, the share of predict requests answered without a 5xx, as a fraction "
        "from 0.0001 to below 0.667. Default 0.01.",
    )
    min_samples: int = Field(
        default=200,
        ge=10,
        description="Labelled predictions (requests, for availability) per arm before accuracy or availability "
        "may decide; at least 10. Default 200.",
    )
    max_samples: int | None = Field(
        default=None,
        ge=10,
        description="Per arm: accuracy or availability still undecided at this many makes the analysis "
        "Inconclusive; omitted: no cap.",
    )
    max_duration: Interval = Field(
        default=DurationText("2h"),
        description="Time from the canary's start after which an undecided analysis is Inconclusive: a duration, "
        "at least 1s. Default 2h.",
    )
    on_inconclusive: Literal["rollback", "promote"] = Field(
        default="rollback", description="What an Inconclusive analysis does: rollback or promote. Default rollback."
    )
    min_decision_probability: float = Field(
        default=0.1,
        ge=0,
        lt=1,
        description="End the analysis Inconclusive early when, at the last step, the chance that accuracy or "
        "availability decides before maxDuration at the label rate seen falls below this; 0 to below 1; 0: "
        "never. Default 0.1.",
    )
    consecutive_error_limit: int = Field(
        default=4,
        ge=1,
        description="Looks in a row whose queries failed, for one check, that end the analysis in Error "
        "(rolled back). Default 4.",
    )
    latency: LatencyCheck = Field(default_factory=LatencyCheck)
    checks: list[ThresholdCheck] = Field(
        default_factory=list,
        max_length=10,
        description="Threshold checks on custom canary metrics, at most 10. Default none.",
    )

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

    @model_validator(mode="after")
    def _detectable_beyond_the_margin(self) -> Analysis:
        """The sequential test needs maxDegradation < detectableDegradation < 1 (1.5 x the margin when omitted)."""
        detectable = self.detectable_degradation
        if detectable is not None and detectable <= self.max_degradation:
            raise field_error(
                "Analysis",
                ("detectableDegradation",),
                f"{detectable:g} must be above maxDegradation ({self.max_degradation:g})",
                detectable,
            )
        margins = {"maxDegradation": self.max_degradation if detectable is None else 0.0}
        margins["availabilityMaxDegradation"] = self.availability_max_degradation
        for name, margin in margins.items():
            if 1.5 * margin >= 1:
                fix = "use one below 0.667" + (", or set detectableDegradation" if name == "maxDegradation" else "")
                raise field_error(
                    "Analysis",
                    (name,),
                    f"{margin:g} is too large: 1.5 x it, the drop to catch, reaches 1; {fix}",
                    margin,
                )
        return self


class HTTPRouteRef(ApiModel):
    """A Gateway API HTTPRoute in the loop's namespace."""

    name: str = Field(pattern=DNS_SUBDOMAIN_PATTERN, max_length=253, description="HTTPRoute name.")


class TrafficRouting(ApiModel):
    """How the canary's share of traffic is applied; default: by replica count behind the loop's Service."""

    http_route: HTTPRouteRef | None = Field(
        default=None,
        description="HTTPRoute whose rules the operator points at the <loop>-stable and <loop>-canary Services, "
        "weighted; omitted: replica ratio.",
    )


# --- what a receiver (a webhook, confirmPromotion) is named by: a URL in the spec or in a Secret ---------------

# Headers the operator sets itself (or HTTP does): a spec's header may not replace them.
RESERVED_HEADERS = frozenset(
    {"host", "content-type", "content-length", "transfer-encoding", "connection", "user-agent", "x-mfl-notification-id"}
)
MAX_HEADER_VALUE = 8192


class SecretKeySource(ApiModel):
    """A value kept out of the spec (and so out of Git): a key of a Secret in the loop's namespace."""

    secret_key_ref: SecretKeyRef = Field(
        description="The Secret (in the loop's namespace; no other namespace is ever read) and its key."
    )


class ReceiverHeader(ApiModel):
    """An HTTP header sent with every request: a value, or a Secret key's (a token, a signing key)."""

    name: str = Field(
        pattern=r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$",
        max_length=128,
        description="Header name, e.g. Authorization. Not Host, Content-Type, Content-Length, Transfer-Encoding, "
        "Connection, User-Agent or X-MFL-Notification-Id: the operator sets those.",
    )
    value: str = Field(
        default="",
        pattern=r"^[^\r\n]*$",
        max_length=MAX_HEADER_VALUE,
        description="Header value. Anyone who can read the loop can read it: a credential goes in valueFrom.",
    )
    value_from: SecretKeySource | None = Field(
        default=None,
        description="Take the value from a Secret key instead, read at each request. The Secret must name the "
        f"receiver's host in its annotation {WEBHOOK_HOSTS} (comma-separated hosts): a loop cannot send a "
        "Secret its author may not read to a host of its choosing.",
    )

    @model_validator(mode="after")
    def _value_or_source(self) -> ReceiverHeader:
        if bool(self.value) == (self.value_from is not None):
            raise ValueError(f"header {self.name}: set exactly one of value or valueFrom")
        if self.name.lower() in RESERVED_HEADERS:
            raise ValueError(f"header {self.name} is set by the operator: pick another name")
        return self


class ReceiverEndpoint(ApiModel):
    """Where the operator POSTs: url, or urlFrom (a Secret key holding the URL); and extra headers."""

    url: str | None = Field(default=None, pattern=r"^https?://", max_length=2048, description="The URL.")
    url_from: SecretKeySource | None = Field(
        default=None,
        description="Read the URL from a Secret key instead of url (set exactly one): for a URL that is itself a "
        "credential (Slack's, Teams'), kept out of the spec, the status, Events and logs. Read at each request; "
        "the same rules as url.",
    )
    headers: list[ReceiverHeader] = Field(
        default_factory=list, max_length=10, description="Extra HTTP headers, at most 10. Default none."
    )

    @field_validator("url")
    @classmethod
    def _safe_url(cls, url: str | None) -> str | None:
        return None if url is None else receiver_url(url)

    @model_validator(mode="after")
    def _one_url(self) -> ReceiverEndpoint:
        if (self.url is None) == (self.url_from is None):
            raise ValueError("set exactly one of url or urlFrom")
        names = [header.name.lower() for header in self.headers]
        if len(names) != len(set(names)):
            raise ValueError("headers: each name at most once")
        return self

    def target(self) -> str:
        """What identifies the receiver without holding a Secret's value (a delivery queue's key)."""
        if self.url_from is not None:
            ref = self.url_from.secret_key_ref
            return f"secret:{ref.name}/{ref.key}"
        return self.url or ""

    def shown(self) -> str:
        """The receiver as messages, status and Events may name it: never a Secret's value."""
        if self.url_from is not None:
            ref = self.url_from.secret_key_ref
            return f"the URL in Secret {ref.name} key {ref.key}"
        return redact_url(self.url or "")


class ConfirmPromotion(ReceiverEndpoint):
    """A webhook that must approve each promotion (as Flagger's confirm-promotion hook): once the analysis has
    passed at the last step, the operator POSTs the candidate's summary and promotes only on a 2xx."""

    url: str | None = Field(
        default=None,
        pattern=r"^https?://",
        max_length=2048,
        description="Asked at every analysis interval until it answers 2xx; at analysis.maxDuration from the "
        "canary's start without one, the canary is rolled back. https, or http for an in-cluster host only "
        "(*.svc, *.svc.cluster.local, a private IP address). Set url or urlFrom.",
    )


class Rollout(ApiModel):
    """How a candidate that passed the offline gate is rolled out: canary steps, judged by the analysis."""

    steps: list[CanaryStep] = Field(
        default_factory=lambda: [CanaryStep(weight=20, pause="2m"), CanaryStep(weight=50, pause="2m")],
        min_length=1,
        max_length=10,
        description="Canary steps, 1 to 10, weights strictly increasing. Default 20% for 2m, then 50% for 2m.",
    )
    ready_timeout: ReadyTimeout = Field(
        default=DurationText("5m"),
        description="How long the canary's Pods may stay unready before the candidate is rolled back with what "
        "they say (a crash loop or an image pull error: at once). A duration, 10s to 24h. Default 5m.",
    )
    analysis: Analysis = Field(default_factory=Analysis)
    traffic_routing: TrafficRouting = Field(default_factory=TrafficRouting)
    confirm_promotion: ConfirmPromotion | None = None

    @field_validator("steps")
    @classmethod
    def _weights_increase(cls, steps: list[CanaryStep]) -> list[CanaryStep]:
        weights = [s.weight for s in steps]
        if weights != sorted(set(weights)):
            raise ValueError(f"step weights must strictly increase, got {weights}")
        return steps


# --- notifications -----------------------------------------------------------------------------------

NotificationReason = Literal[
    "Adopted",
    "InvalidSpec",
    "StorageCredentialsNotBound",
    "StorageCredentialsMissing",
    "BreachStarted",
    "Recovered",
    "AwaitingMetrics",
    "MetricsUnavailable",
    "RetrainSkipped",
    "RetrainingStarted",
    "RetrainingFailed",
    "CandidateRejected",
    "CandidatePassedGate",
    "CanaryStarted",
    "CanaryStep",
    "RolloutPaused",
    "RolloutResumed",
    "PromotionAwaitingConfirmation",
    "Promoted",
    "RolledBack",
]
DEFAULT_NOTIFICATION_REASONS: list[NotificationReason] = [
    "BreachStarted",
    "Recovered",
    "RetrainingStarted",
    "RetrainingFailed",
    "CandidateRejected",
    "CanaryStarted",
    "Promoted",
    "RolledBack",
]
IN_CLUSTER_SUFFIXES = (".svc", ".svc.cluster.local")


def _plain_http_allowed(host: str) -> bool:
    """http only where the payload stays inside the cluster's network: a Service name or a private address
    (and then only if the operator's admin allows it: the connect-time egress policy, core/egress.py)."""
    if host.rstrip(".").endswith(IN_CLUSTER_SUFFIXES):
        return True
    address = egress.literal_address(host)
    return address is not None and egress.internal(address) is not None


def receiver_url(url: str) -> str:
    """A URL the operator may POST a loop's news to: a host, and https unless it stays in the cluster; never
    an address no receiver may be (loopback, metadata, link-local, ...), however it is spelled."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a port that is not a number from 0 to 65535
    except ValueError as error:
        raise ValueError(f"{url!r} is not a URL ({error})") from None
    host = (parts.hostname or "").lower()
    if not host or any(c.isspace() for c in url):
        raise ValueError(f"{url!r} names no host or holds whitespace: use e.g. https://hooks.example.com/mfl")
    refused = egress.literal_refusal(host)
    if refused:
        raise ValueError(
            f"{url!r} may not be a receiver: {refused}. The operator never connects to a tenant's URL at a "
            "loopback, link-local, cloud metadata, multicast or reserved address (docs/security.md, Egress)"
        )
    if parts.scheme == "http" and not _plain_http_allowed(host):
        raise ValueError(
            f"{url!r} is plain http to a host outside the cluster: use https (http only for *.svc, "
            "*.svc.cluster.local or a private IP address)"
        )
    return url


class Webhook(ReceiverEndpoint):
    """A receiver of the loop's notifications: an HTTP endpoint the operator POSTs a JSON payload to."""

    url: str | None = Field(
        default=None,
        pattern=r"^https?://",
        max_length=2048,
        description="Where the operator POSTs each notification: https, or http to an in-cluster host only (*.svc, "
        "*.svc.cluster.local, a private IP address). Readers of the loop read it: a URL that is a credential "
        "(Slack's, Teams') goes in urlFrom.",
    )
    events: list[NotificationReason] = Field(
        default_factory=lambda: list(DEFAULT_NOTIFICATION_REASONS),
        min_length=1,
        max_length=len(NotificationReason.__args__),  # type: ignore[attr-defined]
        description="Event reasons to notify about. Default BreachStarted, Recovered, RetrainingStarted, "
        "RetrainingFailed, CandidateRejected, CanaryStarted, Promoted and RolledBack.",
    )
    format: Literal["generic", "slack", "teams", "cloudevents"] = Field(
        default="generic",
        description='generic: the documented JSON payload; slack: {"text": ...}; teams: an Adaptive Card '
        "message (Teams Workflows webhooks); cloudevents: a CloudEvents 1.0 structured-mode event "
        "(docs/operations.md, Notifications). Default generic.",
    )


# --- the spec ----------------------------------------------------------------------------------------


class ModelFeedbackLoopSpec(ApiModel):
    """The feedback loop of one production model: serve, monitor, retrain, canary, promote."""

    model: Model
    monitoring: Monitoring
    retraining: Retraining | None = None
    rollout: Rollout = Field(default_factory=Rollout)
    notifications: list[Webhook] = Field(
        default_factory=list,
        max_length=5,
        description="Webhooks notified of the loop's important events (breach, retraining, canary, promotion, "
        "rollback), at most 5; delivered at least once while the operator runs (docs/operations.md). "
        "Default none.",
    )
    paused: bool = Field(
        default=False,
        description="true: no retraining starts and a canary holds its step (its analysis may still roll it "
        "back); a running Job is still followed. Default false.",
    )

    @model_validator(mode="before")
    @classmethod
    def _task_defaults(cls, data: Any) -> Any:
        """retraining.estimator and gate.metric default to what fits model.task (a regression loop must
        not get a classifier)."""
        model, retraining = (data.get(key) if isinstance(data, dict) else None for key in ("model", "retraining"))
        task = model.get("task", "classification") if isinstance(model, dict) else None
        if task not in TASK_ESTIMATORS or not isinstance(retraining, dict):
            return data  # field validation reports what is wrong
        retraining = {"estimator": DEFAULT_ESTIMATOR[task], **retraining}
        gate = retraining.get("gate", {})
        if isinstance(gate, dict):
            retraining["gate"] = {"metric": TASK_METRICS[task][0], **gate}
        return {**data, "retraining": retraining}

    def feedback_max_age(self) -> float:
        """How old a prediction may be and still take a label, in seconds: at least the training data window,
        so that every label the trainer may read was counted once by the server."""
        window = self.retraining.data_window.seconds if self.retraining else 0.0
        return float(min(FEEDBACK_MAX_AGE_CEILING, max(FEEDBACK_MAX_AGE_FLOOR, window)))

    def log_retention(self) -> float:
        """How long logs are kept, in seconds: model.retention.logs, or the feedback max age + 2 days."""
        logs = self.model.retention.logs
        return logs.seconds if logs is not None else self.feedback_max_age() + LOG_RETENTION_DEFAULT_MARGIN

    @model_validator(mode="after")
    def _logs_outlive_their_labels(self) -> ModelFeedbackLoopSpec:
        """A prediction whose claim or ledger day is gone while its label is still accepted could be counted
        twice: logs stay at least a day beyond the feedback max age."""
        logs, max_age = self.model.retention.logs, self.feedback_max_age()
        if logs is not None and logs.seconds < max_age + LOG_RETENTION_MIN_MARGIN:
            raise field_error(
                "ModelFeedbackLoopSpec",
                ("model", "retention", "logs"),
                f"{logs} is shorter than the feedback max age {format_duration(max_age)} (30d, or "
                f"retraining.dataWindow when longer) + 1d: labels of older predictions could be counted twice; "
                f"use at least {format_duration(max_age + LOG_RETENTION_MIN_MARGIN)}",
                str(logs),
            )
        return self

    @model_validator(mode="after")
    def _retraining_fits_the_task(self) -> ModelFeedbackLoopSpec:
        task, retraining = self.model.task, self.retraining
        if retraining is None:
            return self
        if retraining.estimator not in TASK_ESTIMATORS[task]:
            raise field_error(
                "ModelFeedbackLoopSpec",
                ("retraining", "estimator"),
                f"{retraining.estimator} is not for model.task {task}: use one of {', '.join(TASK_ESTIMATORS[task])}",
                retraining.estimator,
            )
        if retraining.gate.metric not in TASK_METRICS[task]:
            raise field_error(
                "ModelFeedbackLoopSpec",
                ("retraining", "gate", "metric"),
                f"the trainer reports no {retraining.gate.metric} for {task}: use one of "
                f"{', '.join(TASK_METRICS[task])}",
                retraining.gate.metric,
            )
        return self


# --- status ------------------------------------------------------------------------------------------


class Condition(ApiModel):
    """A condition in Kubernetes convention."""

    type: str = Field(
        description="Ready, Reconciling, Stalled, MetricsAvailable, Breached, ServingReady or Retraining."
    )
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(description="Why, in one CamelCase word.")
    message: str = Field(default="", description="Why, in words.")
    last_transition_time: str = Field(description="When status last changed (RFC 3339).")
    observed_generation: int | None = Field(default=None, description="The spec generation it was set for.")


class MetricStatus(ApiModel):
    """One health rule's state after the last poll."""

    name: str = Field(description="The rule's name.")
    state: Literal["Healthy", "Pending", "Breaching", "NoData"] = Field(
        default="NoData", description="Healthy, Pending (out of bounds for less than `for`), Breaching or NoData."
    )
    value: float | None = Field(default=None, description="The last usable value.")
    sample_time: str | None = Field(default=None, description="When value was sampled (RFC 3339).")
    breach_since: str | None = Field(default=None, description="When the value went out of bounds (RFC 3339).")
    message: str = Field(default="", description="The state in words.")


class FeatureDrift(ApiModel):
    """One feature's population stability index over the input-drift window."""

    name: str = Field(description="The feature.")
    psi: float = Field(description="Its PSI against the serving version's training data.")


class InputDriftStatus(MetricStatus):
    """The input-drift check's state after the last poll (monitoring.inputDrift): value is the largest PSI."""

    features: list[FeatureDrift] = Field(
        default_factory=list, description="The features above maxPsi at the last look, largest first (at most 5)."
    )


class CheckEvidence(ApiModel):
    """One canary check's verdict at a look, with the numbers behind it."""

    name: str = Field(description="accuracy, availability, latency or a threshold check's name.")
    decision: str = Field(default="", description="Pass, Fail, Pending, Inconclusive or Error.")
    message: str = Field(default="", description="The verdict in words.")
    values: dict[str, float] = Field(
        default_factory=dict, description="The numbers behind it (counts, differences, bounds), by name."
    )


class TrainedOn(ApiModel):
    """The span of labelled rows a version was trained on, from its trainer's summary."""

    since: str | None = Field(default=None, description="The change the trainer cut at (RFC 3339); none: no cut.")
    until: str | None = Field(default=None, description="The end of its data window: the run's start (RFC 3339).")


class VersionRecord(ApiModel):
    """One retraining's outcome, kept in a bounded history."""

    version: int = Field(description="The version trained.")
    trigger: str = Field(default="", description="What started it: Initial, Breach, Schedule, Refresh or Manual.")
    outcome: str = Field(default="", description="Promoted, RolledBack, Rejected (offline gate) or TrainingFailed.")
    at: str = Field(default="", description="When (RFC 3339).")
    message: str = Field(default="", description="Why, e.g. the gate's or the analysis' verdict.")
    metrics: dict[str, float] = Field(
        default_factory=dict, description="The challenger's holdout metrics (first versions and rejections)."
    )
    evidence: list[CheckEvidence] = Field(
        default_factory=list, description="The canary's last evidence, when a canary decided."
    )
    trained_on: TrainedOn | None = Field(
        default=None, description="The labelled rows' span it was trained on (what a refresh is timed by)."
    )


class RetrainingStatus(ApiModel):
    """The training Job in progress."""

    version: int = Field(description="The version being trained.")
    job_name: str = Field(description="Its Job's name (its DaskJob's with engine Dask).")
    engine: Engine = Field(default="Job", description="Where it runs: Job (a Kubernetes Job) or Dask (a DaskJob).")
    trigger: str = Field(description="Initial, Breach, Schedule, Refresh or Manual.")
    started_at: str = Field(description="When it started (RFC 3339).")
    parent_version: int | None = Field(
        default=None, description="The version serving when it started (the champion); null for the first."
    )


class CandidateStatus(ApiModel):
    """The trained version that passed the offline gate, while it is canaried."""

    version: int = Field(description="The candidate's version.")
    challenger: dict[str, float] = Field(default_factory=dict, description="Its holdout metrics.")
    champion: dict[str, float] = Field(
        default_factory=dict, description="The serving version's metrics on the same holdout."
    )
    gate: str = Field(default="", description="The offline gate's verdict.")
    trained_on: TrainedOn | None = Field(default=None, description="The labelled rows' span it was trained on.")


class AnalysisStateStatus(ApiModel):
    """The sequential analysis' memory between looks: counters, never samples."""

    phase: str = Field(default="Running", description="Running, Successful, Failed, Error or Inconclusive.")
    started_at: float = Field(description="When the analysis started, in Unix seconds.")
    looks: int = Field(default=0, description="Looks taken so far.")
    passed: list[str] = Field(default_factory=list, description="Statistical checks that passed (a pass is kept).")
    consecutive_errors: dict[str, int] = Field(default_factory=dict, description="Failed looks in a row, per check.")
    failures: dict[str, int] = Field(default_factory=dict, description="Failed looks so far, per threshold check.")
    finished_at: float | None = Field(default=None, description="When a final phase was reached, in Unix seconds.")
    message: str = Field(default="", description="The last verdict in words.")
    information_since: dict[str, list[float]] = Field(
        default_factory=dict,
        description="Per proportion check, [Unix seconds, information] at its first look at the last step: the "
        "label rate since then projects whether it can decide before the deadline.",
    )


class RolloutStatus(ApiModel):
    """The canary in progress."""

    version: int = Field(description="The canary's version.")
    trigger: str = Field(default="", description="What started its retraining.")
    step: int = Field(default=0, description="Index of the current step in spec.rollout.steps, from 0.")
    weight: int = Field(default=0, description="The canary's share of traffic in percent, as applied.")
    started_at: str = Field(default="", description="When the canary started (RFC 3339).")
    step_started_at: str = Field(default="", description="When the current step started (RFC 3339).")
    analysis_phase: str = Field(
        default="Running", description="The analysis' phase: Running, Successful, Failed, Error or Inconclusive."
    )
    consecutive_errors: int = Field(default=0, description="The longest current run of failed looks of a check.")
    evidence: list[CheckEvidence] = Field(default_factory=list, description="Each check's verdict at the last look.")
    analysis: AnalysisStateStatus | None = None
    paused: bool = Field(default=False, description="Held at its step by the pause annotation, until resume.")
    offline_superior: bool = Field(
        default=False,
        description="The offline gate showed it better than a breached champion: promoted after its steps "
        "unless its analysis fails, without waiting for its own labels.",
    )
    offline_p_value: float | None = Field(
        default=None,
        description="The gate's sign-test p-value for an offline-superior challenger: the smaller, the shorter "
        "its steps' pauses (docs/retraining.md).",
    )
    not_ready_since: str | None = Field(
        default=None,
        description="Since when its Pods have not all been ready (RFC 3339), for rollout.readyTimeout; null "
        "once they are.",
    )


class ServingStatus(ApiModel):
    """The stable Deployment, as last observed."""

    version: int | None = Field(default=None, description="The version it runs.")
    ready_replicas: int = Field(default=0, description="Ready replicas.")
    replicas: int = Field(default=0, description="Desired replicas.")
    since: str | None = Field(
        default=None,
        description="When every replica first served this version: a breach counts from then (labels before are "
        "of the version it replaced).",
    )


class ModelFeedbackLoopStatus(ApiModel):
    """What the operator observed and decided: its only memory, so a restart resumes where it was."""

    phase: str = Field(
        default="Pending", description="Pending, Retraining, Canary, Monitoring, Breached, Paused or Invalid."
    )
    observed_generation: int | None = Field(default=None, description="The spec generation last acted on.")
    conditions: list[Condition] = Field(
        default_factory=list, description="The loop's conditions, one per type (docs/operations.md)."
    )
    current_version: int | None = Field(default=None, description="The version serving as stable.")
    serving: ServingStatus | None = None
    metrics: list[MetricStatus] = Field(default_factory=list, description="Each health rule's state.")
    input_drift: InputDriftStatus | None = Field(
        default=None, description="The input-drift check's state, when monitoring.inputDrift is set."
    )
    summary: str = Field(default="", description="The first rule's last value (name=value), for the Metric column.")
    breach_since: str | None = Field(
        default=None, description="When the earliest breaching rule went out of bounds (RFC 3339)."
    )
    retraining: RetrainingStatus | None = None
    candidate: CandidateStatus | None = None
    rollout: RolloutStatus | None = None
    last_retrain_at: str | None = Field(default=None, description="When the last retraining started (RFC 3339).")
    retrain_times: list[str] = Field(
        default_factory=list, description="Retraining starts in the last 24 hours, for maxRetrainsPerDay."
    )
    failure_backoff_until: str | None = Field(
        default=None, description="After a failed training, retrainings wait until then (RFC 3339)."
    )
    last_failure: str | None = Field(default=None, description="The last failed training's error, until one succeeds.")
    retrain_blocked_by: str | None = Field(
        default=None, description="Why the last wanted retraining did not start (cooldown, budget, backoff, ...)."
    )
    history: list[VersionRecord] = Field(
        default_factory=list, description="The latest retraining outcomes, oldest first (the operator keeps 10)."
    )
    handled_requests: dict[str, str] = Field(
        default_factory=dict,
        description="The last handled value of each request annotation (retrain, promote, abort, pause, resume) "
        "and the last schedule slot.",
    )


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
