"""Manifests of the objects a loop owns, as pure functions of the loop (no API calls here)."""

from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path
from typing import Any

from feedbackloop.core import api
from feedbackloop.core.api import ModelFeedbackLoopSpec, Resources
from mfl_contracts import storage

MANAGED_BY = "feedbackloop"
LOOP_LABEL = "feedbackloop.dev/loop"
TRACK_LABEL = "feedbackloop.dev/track"
VERSION_LABEL = "feedbackloop.dev/version"
TEMPLATE_ANNOTATION = "feedbackloop.dev/template"  # hash of the pod template a server Deployment was built with
RUN_AS = 65532
SCRATCH = api.SCRATCH_PATH
SCRATCH_ENV = [{"name": "TMPDIR", "value": SCRATCH}]
# A container that crashes leaves its last log lines as its termination message (the runtime's own words on a
# model it cannot load), which the operator reads from the Pod's status (observe.pod_problems).
TERMINATION_MESSAGE = {
    "terminationMessagePath": "/dev/termination-log",
    "terminationMessagePolicy": "FallbackToLogsOnError",
}


def owner_reference(loop: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": f"{api.GROUP}/{api.VERSION}",
        "kind": api.KIND,
        "name": loop["metadata"]["name"],
        "uid": loop["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


# --- names: a loop may be named anything the API server accepts (a DNS-1123 subdomain of up to 253
# characters); each child's name must also suit its own kind, and label values are at most 63 characters.
DNS1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
DNS1123_SUBDOMAIN = re.compile(api.DNS_SUBDOMAIN_PATTERN)
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
MAX_LABEL = 63
MAX_SUBDOMAIN = 253
MAX_DEPLOYMENT = MAX_SUBDOMAIN - 11  # its ReplicaSets are named <deployment>-<hash of up to 10 characters>


def safe_name(
    loop_name: str, suffix: str = "", *, limit: int = MAX_LABEL, pattern: re.Pattern[str] = DNS1035_LABEL
) -> str:
    """`<loop><suffix>` when that suits the kind (`pattern`, `limit`), so every name that worked stays as it was;
    otherwise a DNS-1035 label (which suits every kind) from the loop's name and a hash of it, so that two
    loops never share a child. `suffix` is empty or starts with '-'."""
    name = loop_name + suffix
    if len(name) <= limit and pattern.fullmatch(name):
        return name
    tail = f"-{hashlib.sha256(loop_name.encode()).hexdigest()[:8]}{suffix}"
    stem = re.sub(r"[^a-z0-9]+", "-", loop_name.lower()).strip("-")
    if not stem[:1].isalpha():
        stem = f"mfl-{stem}"
    return stem[: min(limit, MAX_LABEL) - len(tail)].rstrip("-") + tail


def loop_label(loop_name: str) -> str:
    """The value of the loop's label on everything it owns (and of the selectors that find them)."""
    return safe_name(loop_name, pattern=LABEL_VALUE)


def service_name(loop_name: str, track: str | None = None) -> str:
    """Services need a DNS-1035 label: a loop named '1churn' or 'churn.v2' gets a derived name."""
    return safe_name(loop_name, f"-{track}" if track else "")


def common_labels(loop_name: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "app.kubernetes.io/part-of": "model-feedback-loop",
        "app.kubernetes.io/instance": loop_label(loop_name),
        LOOP_LABEL: loop_label(loop_name),
    }


def _metadata(loop: dict[str, Any], name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": loop["metadata"]["namespace"],
        "labels": {**common_labels(loop["metadata"]["name"]), **(labels or {})},
        "ownerReferences": [owner_reference(loop)],
    }


def stable_name(loop_name: str) -> str:
    return safe_name(loop_name, limit=MAX_DEPLOYMENT, pattern=DNS1123_SUBDOMAIN)


def canary_name(loop_name: str) -> str:
    return safe_name(loop_name, "-canary", limit=MAX_DEPLOYMENT, pattern=DNS1123_SUBDOMAIN)


def signing_secret_name(loop_name: str) -> str:
    return safe_name(loop_name, "-signing-key", limit=MAX_SUBDOMAIN, pattern=DNS1123_SUBDOMAIN)


def restricted_pod_security() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS,
        "runAsGroup": RUN_AS,
        "fsGroup": RUN_AS,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def restricted_container_security() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
    }


FEEDBACK_MAX_AGE_FLOOR = api.FEEDBACK_MAX_AGE_FLOOR
FEEDBACK_MAX_AGE_CEILING = api.FEEDBACK_MAX_AGE_CEILING


def feedback_max_age(spec: ModelFeedbackLoopSpec) -> float:
    """How old a prediction may be and still take a label (api.ModelFeedbackLoopSpec.feedback_max_age)."""
    return spec.feedback_max_age()


def _resources(resources: Resources) -> dict[str, Any]:
    return resources.model_dump(by_alias=True, exclude_none=True)


def _storage_volume(spec: ModelFeedbackLoopSpec) -> dict[str, Any]:
    storage = spec.model.storage
    if storage.s3 is not None:  # the Pod's own folder: `fetch` puts its version there, the trainer its scratch
        return {"name": "artifacts", "emptyDir": {}}
    if storage.persistent_volume_claim is not None:
        return {"name": "artifacts", "persistentVolumeClaim": {"claimName": storage.persistent_volume_claim.claim_name}}
    assert storage.host_path is not None
    return {"name": "artifacts", "hostPath": {"path": storage.host_path.path, "type": "DirectoryOrCreate"}}


def _volumes(spec: ModelFeedbackLoopSpec) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    # The root filesystem is read-only: scratch space is an emptyDir, named by TMPDIR (not over /tmp, so a
    # hostPath under /tmp stays reachable on the local test runtime).
    volumes = [_storage_volume(spec), {"name": "scratch", "emptyDir": {}}]
    s3 = spec.model.storage.s3
    if s3 is not None and s3.ca_secret is not None:
        items = [{"key": s3.ca_secret.key, "path": S3_CA_FILE_NAME}]
        volumes.append({"name": S3_CA_VOLUME, "secret": {"secretName": s3.ca_secret.name, "items": items}})
    mounts = [
        {"name": "artifacts", "mountPath": spec.model.storage.mount_path},
        {"name": "scratch", "mountPath": SCRATCH},
    ]
    return volumes, mounts


# --- the object store and the label ledger (storage.s3, storage.database): the env contract of docs/contracts.md
S3_CA_VOLUME = "s3-ca"
S3_CA_FILE_NAME = "ca.crt"
S3_CA_FILE = f"{api.S3_CA_PATH}/{S3_CA_FILE_NAME}"
# `fetch` downloads one version's files into the emptyDir: little CPU, memory for a buffer, not the model.
FETCH_RESOURCES = {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "512Mi"}}


def store_mounts(spec: ModelFeedbackLoopSpec) -> list[dict[str, Any]]:
    """The CA bundle's mount, in the containers that reach the store (none without storage.s3.caSecret)."""
    s3 = spec.model.storage.s3
    if s3 is None or s3.ca_secret is None:
        return []
    return [{"name": S3_CA_VOLUME, "mountPath": api.S3_CA_PATH, "readOnly": True}]


def s3_env(spec: ModelFeedbackLoopSpec) -> list[dict[str, Any]]:
    """MFL_S3_*: where the bucket is and its keys (from the Secret, never in the Pod spec); none in volume mode.
    Optional values are left out when empty (the API server drops an empty value, which would look like drift)."""
    s3 = spec.model.storage.s3
    if s3 is None:
        return []
    env: list[dict[str, Any]] = [
        {"name": "MFL_S3_ENDPOINT", "value": s3.endpoint},
        {"name": "MFL_S3_BUCKET", "value": s3.bucket},
        *([{"name": "MFL_S3_PREFIX", "value": s3.prefix}] if s3.prefix else []),
        *([{"name": "MFL_S3_REGION", "value": s3.region}] if s3.region else []),
        {"name": "MFL_S3_INSECURE_SKIP_VERIFY", "value": "true" if s3.insecure_skip_verify else "false"},
    ]
    for name, key in (("MFL_S3_ACCESS_KEY_ID", "accessKeyId"), ("MFL_S3_SECRET_ACCESS_KEY", "secretAccessKey")):
        env.append({"name": name, "valueFrom": {"secretKeyRef": {"name": s3.credentials_secret, "key": key}}})
    if s3.ca_secret is not None:
        env.append({"name": "MFL_S3_CA_FILE", "value": S3_CA_FILE})
    return env


def store_env(spec: ModelFeedbackLoopSpec) -> list[dict[str, Any]]:
    """The object store's env and MFL_DATABASE_URL (the label ledger, from its Secret) when set."""
    database = spec.model.storage.database
    if database is None:
        return s3_env(spec)
    ref = {"name": database.url_secret.name, "key": database.url_secret.key}
    return [*s3_env(spec), {"name": "MFL_DATABASE_URL", "valueFrom": {"secretKeyRef": ref}}]


def _fetch_container(
    spec: ModelFeedbackLoopSpec, version: int, mounts: list[dict[str, Any]], user_container: dict[str, Any]
) -> dict[str, Any]:
    """s3 mode: the init container that waits for the version in the bucket and downloads it into the Pod's
    folder, so the server (or the V2 runtime) loads it as from a volume. Its image is the one that has
    mfl-fetch: the sidecar's in V2 mode, else the mfl-server's; it gets that container's user settings."""
    serving = spec.model.serving
    runtime = serving.runtime
    env = [
        {"name": "MFL_MODEL_NAME", "value": spec.model.name},
        {"name": "MFL_MODEL_VERSION", "value": str(version)},
        {"name": "MFL_STORAGE_ROOT", "value": spec.model.storage.mount_path},
        *s3_env(spec),
        *SCRATCH_ENV,
    ]
    return {
        "name": "fetch",
        "image": runtime.sidecar.image if runtime else serving.image,
        "command": ["mfl-fetch"],
        "env": _env(runtime.sidecar.env if runtime else serving.env, env),
        **({} if runtime else user_container),
        "resources": FETCH_RESOURCES,
        "volumeMounts": [*mounts, *store_mounts(spec)],
        **TERMINATION_MESSAGE,
        "securityContext": restricted_container_security(),
    }


def _env(user: list[api.EnvVar], operator_env: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The user's variables, then the operator's; a user variable of a name the operator sets is dropped, so the
    operator's always wins (envFrom loses to both, as Kubernetes does)."""
    reserved = {e["name"] for e in operator_env}
    return [*(_env_var(e) for e in user if e.name not in reserved), *operator_env]


def _env_var(var: api.EnvVar) -> dict[str, Any]:
    if var.value_from is None:
        return {"name": var.name, "value": var.value}
    return {"name": var.name, "valueFrom": var.value_from.model_dump(by_alias=True, exclude_none=True)}


def _pod_settings(settings: api.PodSettings) -> tuple[dict[str, Any], dict[str, Any]]:
    """(container fields, pod spec fields) of what the user brings to a Pod; only what is set."""
    container: dict[str, Any] = {}
    if settings.env_from:
        container["envFrom"] = [
            {k: v for k, v in source.model_dump(by_alias=True, exclude_none=True).items() if v != ""}
            for source in settings.env_from
        ]
    pod: dict[str, Any] = {}
    if settings.node_selector:
        pod["nodeSelector"] = dict(settings.node_selector)
    if settings.tolerations:
        pod["tolerations"] = [
            {k: v for k, v in t.model_dump(by_alias=True, exclude_none=True).items() if v != ""}
            for t in settings.tolerations
        ]
    if settings.affinity:
        pod["affinity"] = settings.affinity
    if settings.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": ref.name} for ref in settings.image_pull_secrets]
    return container, pod


def version_dir(spec: ModelFeedbackLoopSpec, version: int) -> str:
    """The version's folder as the containers see it: <mountPath>/<model>/versions/<n>."""
    return storage.version_dir(Path(spec.model.storage.mount_path), spec.model.name, version).as_posix()


def _substitute(args: list[str], values: dict[str, str]) -> list[str]:
    return [api.PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), arg) for arg in args]


def server_deployment(
    loop: dict[str, Any], spec: ModelFeedbackLoopSpec, version: int, track: str, replicas: int
) -> dict[str, Any]:
    loop_name = loop["metadata"]["name"]
    name = stable_name(loop_name) if track == "stable" else canary_name(loop_name)
    serving = spec.model.serving
    selector = {LOOP_LABEL: loop_label(loop_name), TRACK_LABEL: track}
    pod_labels = {
        **common_labels(loop_name),
        "app.kubernetes.io/name": "mfl-server",
        TRACK_LABEL: track,
        VERSION_LABEL: str(version),
    }
    volumes, mounts = _volumes(spec)
    s3 = spec.model.storage.s3 is not None
    mfl_env: list[dict[str, Any]] = [
        {"name": "MFL_MODEL_NAME", "value": spec.model.name},
        {"name": "MFL_MODEL_VERSION", "value": str(version)},
        {"name": "MFL_TRACK", "value": track},
        {"name": "MFL_STORAGE_ROOT", "value": spec.model.storage.mount_path},
        {"name": "MFL_PORT", "value": str(serving.port)},
        {
            "name": "MFL_SIGNING_KEY",
            "valueFrom": {"secretKeyRef": {"name": signing_secret_name(loop_name), "key": "key"}},
        },
        {"name": "MFL_FEEDBACK_MAX_AGE_SECONDS", "value": str(int(feedback_max_age(spec)))},
        {"name": "MFL_RETENTION_LOG_SECONDS", "value": str(int(spec.log_retention()))},
        # Only when judged: counting every value costs the server CPU, and a loop without it keeps its Pods as they were
        *([{"name": "MFL_INPUT_DRIFT", "value": "true"}] if spec.monitoring.input_drift is not None else []),
        *store_env(spec),
        *SCRATCH_ENV,
    ]
    user_container, user_pod = _pod_settings(serving)
    # The container that owns serving.port as `http`: the Service's target, probed and scraped.
    front = {
        "image": serving.image,
        "ports": [{"name": "http", "containerPort": serving.port}],
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 2, "failureThreshold": 3},
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": "http"},
            "periodSeconds": 10,
            "failureThreshold": 6,
            "initialDelaySeconds": 10,
        },
        "resources": _resources(serving.resources),
        "volumeMounts": [*mounts, *store_mounts(spec)],
        **TERMINATION_MESSAGE,
        "securityContext": restricted_container_security(),
    }
    if serving.runtime is None:
        containers = [{"name": "server", **front, "env": _env(serving.env, mfl_env), **user_container}]
    else:
        containers = _v2_containers(spec, serving.runtime, version, front, mfl_env, user_container, mounts)
    template = {
        "metadata": {
            "labels": pod_labels,
            "annotations": {
                "prometheus.io/scrape": "true",
                "prometheus.io/port": str(serving.port),
                "prometheus.io/path": "/metrics",
            },
        },
        "spec": {
            **({"initContainers": [_fetch_container(spec, version, mounts, user_container)]} if s3 else {}),
            "containers": containers,
            "volumes": volumes,
            "automountServiceAccountToken": False,
            "securityContext": restricted_pod_security(),
            "terminationGracePeriodSeconds": 30,
            **user_pod,
        },
    }
    metadata = _metadata(loop, name, {TRACK_LABEL: track, VERSION_LABEL: str(version)})
    metadata["annotations"] = {TEMPLATE_ANNOTATION: template_hash(template)}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata,
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": template,
        },
    }


def template_hash(template: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:16]


MLSERVER_METRICS_DIR = f"{SCRATCH}/mlserver-metrics"


def _v2_containers(
    spec: ModelFeedbackLoopSpec,
    runtime: api.Runtime,
    version: int,
    front: dict[str, Any],
    mfl_env: list[dict[str, Any]],
    user_container: dict[str, Any],
    mounts: list[dict[str, Any]],
) -> list[dict[str, Any]]:
    """V2 mode: `server` runs serving.image on runtime.port inside the Pod; `feedback`, the sidecar, owns the
    `http` port and passes inference through to it. The Pod is ready when both are (the sidecar's /readyz asks
    the server's model readiness)."""
    serving = spec.model.serving
    values = {"versionDir": version_dir(spec, version), "modelName": spec.model.name, "port": str(runtime.port)}
    server_env = list(SCRATCH_ENV)
    if runtime.kind == "mlserver":
        ports = runtime.ports()
        server_env = [
            {"name": "MLSERVER_HTTP_PORT", "value": str(ports["http"])},
            {"name": "MLSERVER_GRPC_PORT", "value": str(ports["grpc"])},
            {"name": "MLSERVER_METRICS_PORT", "value": str(ports["metrics"])},
            {"name": "MLSERVER_METRICS_DIR", "value": MLSERVER_METRICS_DIR},
            {"name": "MLSERVER_PARALLEL_WORKERS", "value": "0"},
            {"name": "MLSERVER_LOAD_MODELS_AT_STARTUP", "value": "true"},
            *server_env,
        ]
    live = {"httpGet": {"path": "/v2/health/live", "port": runtime.port}}
    server: dict[str, Any] = {
        "name": "server",
        "image": serving.image,
        **({"command": _substitute(runtime.command, values)} if runtime.command else {}),
        **({"args": _substitute(runtime.server_args(), values)} if runtime.server_args() else {}),
        "env": _env(serving.env, server_env),
        **user_container,
        "ports": [{"name": "runtime", "containerPort": runtime.port}],
        # Loading a model may take long: liveness starts once the server first answers.
        "startupProbe": {**live, "periodSeconds": 2, "failureThreshold": 150},
        "livenessProbe": {**live, "periodSeconds": 10, "failureThreshold": 6},
        "resources": _resources(serving.resources),
        # The server only reads its version; the sidecar writes the logs and labels.
        "volumeMounts": [{**mount, "readOnly": True} if mount["name"] == "artifacts" else mount for mount in mounts],
        **TERMINATION_MESSAGE,
        "securityContext": restricted_container_security(),
    }
    sidecar_env = [*mfl_env, {"name": "MFL_UPSTREAM_URL", "value": f"http://127.0.0.1:{runtime.port}"}]
    feedback = {
        **front,
        "name": "feedback",
        "image": runtime.sidecar.image,
        "env": _env(runtime.sidecar.env, sidecar_env),
        "resources": _resources(runtime.sidecar.resources),
    }
    return [server, feedback]


def service(loop: dict[str, Any], spec: ModelFeedbackLoopSpec, track: str | None = None) -> dict[str, Any]:
    loop_name = loop["metadata"]["name"]
    name = service_name(loop_name, track)
    selector = {LOOP_LABEL: loop_label(loop_name), **({TRACK_LABEL: track} if track else {})}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(loop, name),
        "spec": {"selector": selector, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
    }


def signing_secret(loop: dict[str, Any], key: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": _metadata(loop, signing_secret_name(loop["metadata"]["name"])),
        "stringData": {"key": key},
    }


def trainer_config(
    loop: dict[str, Any],
    spec: ModelFeedbackLoopSpec,
    version: int,
    parent: int | None,
    now: float | None = None,
    canary: int | None = None,
) -> dict[str, Any]:
    """The trainer's MFL_TRAINER_CONFIG. After publishing, it keeps the newest retainVersions versions and
    protectedVersions (the serving one, `parent`, and a canary's), deleting the rest.

    `now` ends the data window: pass the run's start (status.retraining.startedAt), so that every Job of one
    version gets the same config, and the trainer, which hashes it beside the data (contentHashes), accepts a
    re-created Job's version as its own. Omitted: this moment (a config no re-created Job reproduces)."""
    retraining = spec.retraining
    assert retraining is not None
    return {
        "model": spec.model.name,
        "namespace": loop["metadata"]["namespace"],
        "storageRoot": spec.model.storage.mount_path,
        "version": version,
        "parentVersion": parent,
        "task": spec.model.task,
        "estimator": retraining.estimator,
        "hyperparameters": retraining.hyperparameters,
        "features": retraining.features,
        "target": retraining.target,
        "dataWindowSeconds": retraining.data_window.seconds,
        "now": time.time() if now is None else now,
        "holdoutFraction": retraining.holdout_fraction,
        "minRows": retraining.min_rows,
        "incremental": retraining.incremental,
        "recentWeight": retraining.recent_weight,
        "changePoint": retraining.change_point.enabled,
        "changePointAlpha": retraining.change_point.alpha,
        "changePointMinRows": retraining.change_point.min_rows,
        "trainerImage": retraining.trainer.image,
        "retainVersions": spec.model.retention.versions,
        "protectedVersions": sorted({v for v in (parent, canary) if v is not None}),
    }


def _trainer_pod(
    loop: dict[str, Any],
    spec: ModelFeedbackLoopSpec,
    version: int,
    parent: int | None,
    extra_config: dict[str, Any] | None,
    canary: int | None,
    started_at: float | None,
    image: str,
) -> dict[str, Any]:
    """The trainer's Pod spec (a Job's template, a DaskJob's runner): one container `trainer` of `image`, with
    the config, the store's env and volumes, scratch, and its termination message (the summary)."""
    retraining = spec.retraining
    assert retraining is not None
    config = {**trainer_config(loop, spec, version, parent, started_at, canary), **(extra_config or {})}
    volumes, mounts = _volumes(spec)
    operator_env: list[dict[str, Any]] = [
        {"name": "MFL_TRAINER_CONFIG", "value": json.dumps(config, sort_keys=True)},
        *SCRATCH_ENV,
        # As many threads as the CPU limit allows (the node's CPUs when there is none).
        _threads_env("trainer"),
        *store_env(spec),
    ]
    user_container, user_pod = _pod_settings(retraining.trainer)
    container = {
        "name": "trainer",
        "image": image,
        "env": _env(retraining.trainer.env, operator_env),
        **user_container,
        "resources": _resources(retraining.trainer.resources),
        "volumeMounts": [*mounts, *store_mounts(spec)],
        **TERMINATION_MESSAGE,
        "securityContext": restricted_container_security(),
    }
    return {
        "restartPolicy": "Never",
        "containers": [container],
        "volumes": volumes,
        "automountServiceAccountToken": False,
        "securityContext": restricted_pod_security(),
        **user_pod,
    }


def _threads_env(container: str) -> dict[str, Any]:
    return {
        "name": "MFL_TRAINER_THREADS",
        "valueFrom": {"resourceFieldRef": {"containerName": container, "resource": "limits.cpu", "divisor": "1"}},
    }


def training_job(
    loop: dict[str, Any],
    spec: ModelFeedbackLoopSpec,
    name: str,
    version: int,
    parent: int | None,
    trigger: str,
    extra_config: dict[str, Any] | None = None,
    canary: int | None = None,
    started_at: float | None = None,
) -> dict[str, Any]:
    """The training Job of `version`; `started_at`: the run's start (phases.StartTraining.started_at), the
    trainer's `now`, so that a Job re-created for the same version is the same Job (trainer_config)."""
    retraining = spec.retraining
    assert retraining is not None
    labels = {"app.kubernetes.io/name": "mfl-trainer", VERSION_LABEL: str(version)}
    pod = _trainer_pod(loop, spec, version, parent, extra_config, canary, started_at, retraining.trainer.image)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {**_metadata(loop, name, labels), "annotations": {"feedbackloop.dev/trigger": trigger}},
        "spec": {
            "backoffLimit": retraining.trainer.backoff_limit,
            "activeDeadlineSeconds": retraining.trainer.active_deadline_seconds,
            "template": {
                "metadata": {"labels": {**common_labels(loop["metadata"]["name"]), **labels}},
                "spec": pod,
            },
        },
    }


# --- the Dask engine: a DaskJob of the dask-kubernetes operator (kubernetes.dask.org/v1) --------------------
DASK_GROUP = "kubernetes.dask.org"
DASK_VERSION = "v1"
DASK_PLURAL = "daskjobs"
DASK_KIND = "DaskJob"
DASK_WAIT_SECONDS = 300  # how long the trainer waits for its workers before it fails, saying so
DASK_SCHEDULER_PORT = 8786
DASK_DASHBOARD_PORT = 8787
DASK_WORKER_DASHBOARD_PORT = 8788


def dask_runner_pod(name: str) -> str:
    """The runner Pod the dask-kubernetes operator makes of a DaskJob: the trainer."""
    return f"{name}-runner"


def _dask_worker_memory(resources: Resources) -> str:
    """The worker's --memory-limit: its container's memory limit in bytes (Dask reads "1Gi" as a Kubernetes
    quantity, but "500m" as megabytes), or auto (the cgroup's) when there is none."""
    limit = resources.limits.memory
    return str(int(api.quantity_value(limit))) if limit else "auto"


def _dask_pod(
    containers: list[dict[str, Any]], volumes: list[dict[str, Any]], user_pod: dict[str, Any]
) -> dict[str, Any]:
    return {
        "containers": containers,
        "volumes": volumes,
        "automountServiceAccountToken": False,
        "securityContext": restricted_pod_security(),
        **user_pod,
    }


def dask_job(
    loop: dict[str, Any],
    spec: ModelFeedbackLoopSpec,
    name: str,
    version: int,
    parent: int | None,
    trigger: str,
    extra_config: dict[str, Any] | None = None,
    canary: int | None = None,
    started_at: float | None = None,
) -> dict[str, Any]:
    """The DaskJob of `version` (retraining.engine Dask): its runner is the trainer as training_job builds it,
    in dask.image, told to use `dask.workers` workers; the workers get the store's env and volumes (they read
    the data partitions). Deterministic as training_job: a re-created DaskJob is the same one."""
    retraining = spec.retraining
    assert retraining is not None
    dask = retraining.dask
    config = {
        **(extra_config or {}),
        "trainerImage": dask.image,
        "engine": "dask",
        "dask": {"workers": dask.workers, "waitSeconds": DASK_WAIT_SECONDS},
    }
    runner = _trainer_pod(loop, spec, version, parent, config, canary, started_at, dask.image)
    # A run that hangs (workers never come) ends as a Job's does: the runner Pod fails at the deadline.
    runner["activeDeadlineSeconds"] = retraining.trainer.active_deadline_seconds
    volumes, mounts = _volumes(spec)
    _, user_pod = _pod_settings(retraining.trainer)
    worker = {
        "name": "worker",
        "image": dask.image,
        "command": ["dask"],
        "args": [
            "worker",
            "--nthreads",
            str(dask.worker_threads),
            "--memory-limit",
            _dask_worker_memory(dask.worker_resources),
            "--name",
            "$(DASK_WORKER_NAME)",
            "--dashboard-address",
            f":{DASK_WORKER_DASHBOARD_PORT}",
        ],
        "env": [*store_env(spec), *SCRATCH_ENV, _threads_env("worker")],
        "ports": [{"name": "http-dashboard", "containerPort": DASK_WORKER_DASHBOARD_PORT, "protocol": "TCP"}],
        "resources": _resources(dask.worker_resources),
        "volumeMounts": [*mounts, *store_mounts(spec)],
        **TERMINATION_MESSAGE,
        "securityContext": restricted_container_security(),
    }
    scheduler = {
        "name": "scheduler",
        "image": dask.image,
        "command": ["dask"],
        "args": ["scheduler"],
        "env": list(SCRATCH_ENV),
        "ports": [
            {"name": "tcp-comm", "containerPort": DASK_SCHEDULER_PORT, "protocol": "TCP"},
            {"name": "http-dashboard", "containerPort": DASK_DASHBOARD_PORT, "protocol": "TCP"},
        ],
        "readinessProbe": {"tcpSocket": {"port": "tcp-comm"}, "periodSeconds": 5, "failureThreshold": 3},
        "resources": _resources(dask.scheduler_resources),
        "volumeMounts": [{"name": "scratch", "mountPath": SCRATCH}],
        **TERMINATION_MESSAGE,
        "securityContext": restricted_container_security(),
    }
    service = {
        "type": "ClusterIP",
        "selector": {"dask.org/cluster-name": name, "dask.org/component": "scheduler"},
        "ports": [
            {"name": "tcp-comm", "protocol": "TCP", "port": DASK_SCHEDULER_PORT, "targetPort": "tcp-comm"},
            {"name": "http-dashboard", "protocol": "TCP", "port": DASK_DASHBOARD_PORT, "targetPort": "http-dashboard"},
        ],
    }
    labels = {"app.kubernetes.io/name": "mfl-trainer", VERSION_LABEL: str(version)}
    return {
        "apiVersion": f"{DASK_GROUP}/{DASK_VERSION}",
        "kind": DASK_KIND,
        "metadata": {**_metadata(loop, name, labels), "annotations": {"feedbackloop.dev/trigger": trigger}},
        "spec": {
            "job": {"spec": runner},
            "cluster": {
                "spec": {
                    "worker": {"replicas": dask.workers, "spec": _dask_pod([worker], volumes, user_pod)},
                    "scheduler": {
                        "spec": _dask_pod([scheduler], [{"name": "scratch", "emptyDir": {}}], user_pod),
                        "service": service,
                    },
                }
            },
        },
    }


def http_route_weights(route: dict[str, Any], loop_name: str, canary_weight: int) -> dict[str, Any]:
    """A merge patch for an HTTPRoute: stable and canary Services as the weighted backends of each rule."""
    rules = route.get("spec", {}).get("rules") or [{}]
    patched = []
    for rule in rules:
        backends = [
            {"name": service_name(loop_name, "stable"), "port": 80, "weight": 100 - canary_weight},
            {"name": service_name(loop_name, "canary"), "port": 80, "weight": canary_weight},
        ]
        patched.append({**rule, "backendRefs": backends})
    return {"spec": {"rules": patched}}
