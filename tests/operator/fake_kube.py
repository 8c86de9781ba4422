"""An in-memory Kubernetes API at the engine's adapter boundary (`kube.KubeAPI`), and a fake Prometheus.

It keeps objects the way the API server would (a JSON merge patch on status, AlreadyExists for a
second create with the same name) and records every write as an action, so a test states the
actions it expects, as Argo Rollouts' controller tests do. `Harness` plays the watch: after each
cycle it feeds the engine the objects as they now are.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from feedbackloop.core import resources, sharding
from feedbackloop.runtime.engine import Engine, Settings
from feedbackloop.runtime.kube import DASK_MISSING, EngineUnavailable
from feedbackloop.runtime.poller import EndpointKey, Series


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386, as the API server applies `application/merge-patch+json`."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


@dataclass
class FakeKube:
    loops: dict[str, dict[str, Any]] = field(default_factory=dict)  # namespace/name -> body
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    deployments: dict[str, dict[str, Any]] = field(default_factory=dict)
    services: dict[str, dict[str, Any]] = field(default_factory=dict)
    secrets: dict[str, dict[str, str]] = field(default_factory=dict)
    secret_annotations: dict[str, dict[str, str]] = field(default_factory=dict)
    route_weights: dict[str, int] = field(default_factory=dict)
    terminations: dict[str, str] = field(default_factory=dict)  # job key -> the Pod's termination message
    pods: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # namespace -> Pods (API JSON)
    logs: dict[str, str] = field(default_factory=dict)  # namespace/pod/container -> its log
    actions: list[tuple[str, str]] = field(default_factory=list)  # (verb, what)
    dask_jobs: dict[str, dict[str, Any]] = field(default_factory=dict)  # namespace/name -> DaskJob
    dask_installed: bool = True  # false: the API server serves no DaskJobs (no dask-kubernetes operator)
    reasons: dict[str, str] = field(default_factory=dict)  # job key -> the Pod's termination reason
    event_messages: list[str] = field(default_factory=list)  # "<reason>: <message>" of every Event posted
    status_versions: list[str | None] = field(default_factory=list)  # the resourceVersion each status write was sent on
    ack_versions: list[str] = field(default_factory=list)  # the resourceVersion each shard ack was sent on
    adoptions: list[str] = field(default_factory=list)  # namespace/loop label of each adoption's list

    # --- the loops themselves (sharding) ---------------------------------------------------------------
    def loop_gone(self, namespace: str, name: str, uid: str | None) -> bool:
        self.actions.append(("get", f"{namespace}/{name}"))
        body = self.loops.get(f"{namespace}/{name}")
        if body is None:
            return True
        metadata = body["metadata"]
        return bool(metadata.get("deletionTimestamp")) or bool(uid and metadata.get("uid", uid) != uid)

    def ack_shard(self, namespace: str, name: str, version: str) -> str:
        """Both shard labels off, only on the version given (the API server's 409 otherwise)."""
        from kubernetes.client.exceptions import ApiException

        body = self.loops.get(f"{namespace}/{name}")
        if body is None:
            raise ApiException(status=404, reason="NotFound")
        self.ack_versions.append(version)
        if str(body["metadata"].get("resourceVersion") or "") != version:
            raise ApiException(status=409, reason="Conflict")
        body["metadata"] = merge_patch(body["metadata"], {"labels": sharding.ACK_LABELS})
        body["metadata"]["resourceVersion"] = str(int(version) + 1)
        self.actions.append(("ack-shard", f"{namespace}/{name}"))
        return str(body["metadata"]["resourceVersion"])

    # --- the engine's writes --------------------------------------------------------------------------
    def patch_status(
        self, namespace: str, name: str, status: dict[str, Any], known_version: str | None = None
    ) -> dict[str, Any]:
        body = self.loops[f"{namespace}/{name}"]
        self.status_versions.append(known_version)
        body["status"] = merge_patch(body.get("status") or {}, status)
        self.actions.append(("patch-status", f"{namespace}/{name}"))
        return body

    def event(self, loop: dict[str, Any], type_: str, reason: str, message: str) -> None:
        self.actions.append(("event", f"{type_} {reason}"))
        self.event_messages.append(f"{reason}: {message}")

    def ensure_signing_secret(self, loop: dict[str, Any]) -> None:
        key = f"{loop['metadata']['namespace']}/{resources.signing_secret(loop, 'x')['metadata']['name']}"
        if key not in self.secrets:
            self.secrets[key] = {"key": "generated"}
            self.actions.append(("create", f"Secret {key}"))

    def ensure_service(self, loop: dict[str, Any], body: dict[str, Any]) -> None:
        key = f"{loop['metadata']['namespace']}/{body['metadata']['name']}"
        if key not in self.services:
            self.services[key] = body
            self.actions.append(("create", f"Service {key}"))

    def ensure_deployment(self, loop: dict[str, Any], body: dict[str, Any]) -> None:
        key = f"{loop['metadata']['namespace']}/{body['metadata']['name']}"
        verb = "update" if key in self.deployments else "create"
        deployment = copy.deepcopy(body)
        deployment["metadata"].update(namespace=loop["metadata"]["namespace"], generation=1)
        replicas = deployment["spec"]["replicas"]  # the kubelet is quick here: every replica ready at once
        deployment["status"] = {"observedGeneration": 1, "readyReplicas": replicas, "updatedReplicas": replicas}
        self.deployments[key] = deployment
        self.actions.append((verb, f"Deployment {key} v{body['metadata']['labels'][resources.VERSION_LABEL]}"))

    def adopt_deployments(self, namespace: str, loop_label: str, shard: str) -> list[dict[str, Any]]:
        self.adoptions.append(f"{namespace}/{loop_label}")
        adopted = []
        for key, deployment in sorted(self.deployments.items()):
            labels = deployment["metadata"].setdefault("labels", {})
            if key.startswith(f"{namespace}/") and labels.get(resources.LOOP_LABEL) == loop_label:
                if labels.get(sharding.SHARD_LABEL) != shard:
                    labels[sharding.SHARD_LABEL] = shard
                    self.actions.append(("label", f"Deployment {key} shard={shard}"))
                adopted.append(copy.deepcopy(deployment))
        return adopted

    def delete_deployment(self, namespace: str, name: str) -> None:
        if self.deployments.pop(f"{namespace}/{name}", None) is not None:
            self.actions.append(("delete", f"Deployment {namespace}/{name}"))

    def create_job(self, loop: dict[str, Any], body: dict[str, Any]) -> None:
        key = f"{loop['metadata']['namespace']}/{body['metadata']['name']}"
        if key in self.jobs:
            return  # AlreadyExists, and ours: the engine treats it as created
        self.jobs[key] = copy.deepcopy(body)
        self.actions.append(("create", f"Job {key}"))

    def delete_job(self, namespace: str, name: str) -> None:
        if self.jobs.pop(f"{namespace}/{name}", None) is not None:
            self.actions.append(("delete", f"Job {namespace}/{name}"))

    def create_dask_job(self, loop: dict[str, Any], body: dict[str, Any]) -> None:
        if not self.dask_installed:
            raise EngineUnavailable(DASK_MISSING)
        key = f"{loop['metadata']['namespace']}/{body['metadata']['name']}"
        if key in self.dask_jobs:
            return
        self.dask_jobs[key] = copy.deepcopy(body)
        self.actions.append(("create", f"DaskJob {key}"))

    def delete_dask_job(self, namespace: str, name: str) -> None:
        if self.dask_jobs.pop(f"{namespace}/{name}", None) is not None:
            self.actions.append(("delete", f"DaskJob {namespace}/{name}"))

    def read_dask_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        if not self.dask_installed:
            raise EngineUnavailable(DASK_MISSING)
        return copy.deepcopy(self.dask_jobs.get(f"{namespace}/{name}"))

    def dask_runner_termination(self, namespace: str, name: str) -> tuple[str, str]:
        key = f"{namespace}/{name}"
        return self.terminations.get(key, ""), self.reasons.get(key, "Completed (exit code 0)")

    def set_route_weights(self, loop: dict[str, Any], route_name: str, canary_weight: int) -> None:
        self.route_weights[f"{loop['metadata']['namespace']}/{route_name}"] = canary_weight
        self.actions.append(("patch", f"HTTPRoute {route_name} canary={canary_weight}"))

    # --- the engine's reads ---------------------------------------------------------------------------
    def read_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.jobs.get(f"{namespace}/{name}"))

    def job_pod_termination(self, namespace: str, job_name: str) -> tuple[str, str]:
        key = f"{namespace}/{job_name}"
        return self.terminations.get(key, ""), self.reasons.get(key, "Completed (exit code 0)")

    def list_pods(self, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        wanted = dict(term.split("=", 1) for term in label_selector.split(","))
        pods = self.pods.get(namespace, [])
        return [copy.deepcopy(p) for p in pods if wanted.items() <= (p["metadata"].get("labels") or {}).items()]

    def pod_log_tail(self, namespace: str, pod: str, container: str, lines: int) -> str:
        self.actions.append(("read-log", f"{namespace}/{pod}/{container}"))
        return "\n".join(self.logs.get(f"{namespace}/{pod}/{container}", "").splitlines()[-lines:])

    def read_secret_key(self, namespace: str, name: str, key: str) -> tuple[str, dict[str, str]]:
        try:
            return self.secrets[f"{namespace}/{name}"][key], self.secret_annotations.get(f"{namespace}/{name}", {})
        except KeyError:
            raise KeyError(f"Secret {namespace}/{name} has no key {key!r}") from None

    def read_secret_metadata(self, namespace: str, name: str) -> tuple[dict[str, str], list[str]] | None:
        if f"{namespace}/{name}" not in self.secrets:
            return None
        return dict(self.secret_annotations.get(f"{namespace}/{name}", {})), sorted(self.secrets[f"{namespace}/{name}"])

    # --- what a test does to the cluster --------------------------------------------------------------
    def hold_unready(self, key: str, pods: list[dict[str, Any]]) -> None:
        """The Deployment's Pods do not become ready (its status says 0 ready); `pods` is what they say."""
        deployment = self.deployments[key]
        deployment["status"] = {**deployment["status"], "readyReplicas": 0}
        namespace = key.split("/", 1)[0]
        self.pods[namespace] = [*self.pods.get(namespace, []), *pods]

    def finish_job(self, key: str, succeeded: bool, message: str) -> None:
        condition = "Complete" if succeeded else "Failed"
        self.jobs[key]["status"] = {"conditions": [{"type": condition, "status": "True", "reason": condition}]}
        self.terminations[key] = message

    def finish_dask_job(self, key: str, job_status: str, message: str = "", reason: str = "") -> None:
        """The DaskJob's status.jobStatus (Running, Successful, Failed...) and its runner's termination."""
        self.dask_jobs[key]["status"] = {"jobStatus": job_status}
        self.terminations[key] = message
        if reason:
            self.reasons[key] = reason


@dataclass
class FakePrometheus:
    """Answers by the first registered fragment found in the query; unknown queries get no series."""

    answers: list[tuple[str, Callable[[str], Series]]] = field(default_factory=list)
    asked: list[str] = field(default_factory=list)
    down: bool = False

    def answer(self, fragment: str, series: Series | Callable[[str], Series]) -> None:
        if callable(series):
            self.answers.insert(0, (fragment, series))
        else:
            fixed = list(series)
            self.answers.insert(0, (fragment, lambda _query: list(fixed)))

    def query(self, endpoint: EndpointKey, query: str) -> Series:
        self.asked.append(query)
        if self.down:
            raise ConnectionError("Prometheus is down")
        for fragment, series in self.answers:
            if fragment in query:
                return series(query)
        return []


class Harness:
    """The engine over the fakes; `cycle(now)` runs one engine cycle, then delivers the watch events."""

    def __init__(self, kube: FakeKube | None = None, prometheus: FakePrometheus | None = None) -> None:
        self.kube = kube or FakeKube()
        self.prometheus = prometheus or FakePrometheus()
        self.runner = asyncio.Runner()  # one event loop for the harness's life, as the operator has
        self.engine = self.new_engine()

    def new_engine(self) -> Engine:
        """A fresh engine (an operator restart): it knows only what the fake API server holds."""
        engine = Engine(self.kube, Settings(active_reconcile_seconds=5.0))
        engine.observer.poller._query = self.prometheus.query  # the fleet poller's query function
        self.engine = engine
        self.watch()
        return engine

    def apply(self, body: dict[str, Any]) -> None:
        """`kubectl apply`: the status subresource stays; the generation moves only with the spec."""
        key = f"{body['metadata']['namespace']}/{body['metadata']['name']}"
        stored = copy.deepcopy(body)
        existing = self.kube.loops.get(key)
        if existing is not None:
            stored["status"] = existing.get("status")
            changed = existing["spec"] != body["spec"]
            stored["metadata"]["generation"] = existing["metadata"]["generation"] + (1 if changed else 0)
        self.kube.loops[key] = stored
        self.engine.observe_loop("MODIFIED" if existing else "ADDED", copy.deepcopy(stored))

    def watch(self) -> None:
        for body in self.kube.loops.values():
            self.engine.observe_loop("MODIFIED", copy.deepcopy(body))
        for key in list(self.engine.fleet.deployments):
            if key not in self.kube.deployments:
                self.engine.observe_deployment("DELETED", self.engine.fleet.deployments[key])
        for body in self.kube.deployments.values():
            self.engine.observe_deployment("MODIFIED", copy.deepcopy(body))

    def cycle(self, now: float) -> list[tuple[str, str]]:
        """The writes of one cycle."""
        start = len(self.kube.actions)
        self.runner.run(self._cycle(now))
        self.watch()
        return self.kube.actions[start:]

    async def _cycle(self, now: float) -> None:
        """A cycle, then the cycles its finished polls wake, until nothing is in flight."""
        await self.engine.cycle(now)
        await self.engine.settle()
        while self.engine._fresh:
            await self.engine.cycle(now)
            await self.engine.settle()

    def status(self, key: str = "team-a/churn") -> dict[str, Any]:
        return self.kube.loops[key].get("status") or {}


if TYPE_CHECKING:  # `make lint` type-checks this file: the fakes must keep the shape of what they stand for
    from feedbackloop.runtime.kube import KubeAPI
    from feedbackloop.runtime.poller import QueryFn

    _kube: KubeAPI = FakeKube()
    _query: QueryFn = FakePrometheus().query
