"""The Node this runtime plays: registration, readiness heartbeats, a node Lease, Pod events.

The apiserver taints a new Node `node.kubernetes.io/not-ready:NoSchedule` and the (disabled) node
lifecycle controller would be the one to lift it, so registration removes it itself.
"""
from __future__ import annotations

import json
import logging
import os
import platform
import queue
import threading
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from .podruntime_status import rfc3339, utcnow

log = logging.getLogger(__name__)

CAPACITY = {"cpu": "2", "memory": "24Gi", "pods": "110", "ephemeral-storage": "100Gi"}
STARTUP_TAINTS = {"node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"}
KUBELET_VERSION = "v1.20.2"
COMPONENT = "mfl-podruntime"
MERGE_PATCH = "application/merge-patch+json"
NODE_CONDITIONS = (
    # type, status when healthy, reason, message
    ("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
    ("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
    ("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
    ("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
)


def node_manifest(name: str, pod_cidr: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": _arch(),
            "beta.kubernetes.io/os": "linux", "beta.kubernetes.io/arch": _arch(),
            "feedbackloop.dev/pod-runtime": "true"}},
        "spec": {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr]},
    }


def node_status(internal_ip: str, now: datetime, ready: bool = True,
                previous: list[Mapping[str, Any]] | None = None, kubelet_port: int = 0) -> dict[str, Any]:
    """Capacity, addresses and conditions; transition times kept while a condition holds (pure)."""
    before = {condition["type"]: condition for condition in previous or []}
    conditions = []
    for kind, healthy, reason, message in NODE_CONDITIONS:
        status = healthy if ready or kind != "Ready" else "False"
        if status != healthy:
            reason, message = "KubeletNotReady", "the pod runtime stopped"
        kept = (before.get(kind) or {}).get("status") == status
        conditions.append({
            "type": kind, "status": status, "reason": reason, "message": message,
            "lastHeartbeatTime": rfc3339(now),
            "lastTransitionTime": before[kind]["lastTransitionTime"] if kept else rfc3339(now),
        })
    return {
        "capacity": dict(CAPACITY), "allocatable": dict(CAPACITY), "conditions": conditions,
        # InternalIP only: the apiserver would pick a Hostname address first and fail to resolve it.
        "addresses": [{"type": "InternalIP", "address": internal_ip}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": kubelet_port}},  # where `kubectl logs` goes
        "nodeInfo": _node_info(),
    }


def without_startup_taints(taints: list[Mapping[str, Any]] | None) -> list[Mapping[str, Any]]:
    return [taint for taint in taints or [] if taint.get("key") not in STARTUP_TAINTS]


def _arch() -> str:
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())


def _node_info() -> dict[str, str]:
    uname = os.uname()
    machine_id = _read_first("/etc/machine-id")
    return {
        "machineID": machine_id, "systemUUID": machine_id, "bootID": _read_first("/proc/sys/kernel/random/boot_id"),
        "kernelVersion": uname.release, "osImage": "feedbackloop local pod runtime",
        "containerRuntimeVersion": "mfl-local://0.1", "kubeletVersion": KUBELET_VERSION,
        "kubeProxyVersion": KUBELET_VERSION, "operatingSystem": "linux", "architecture": _arch(),
    }


def _read_first(path: str) -> str:
    try:
        with open(path) as file:
            return file.read().strip()
    except OSError:
        return ""


class NodeAgent:
    """Registers the Node, keeps it Ready every `interval` seconds, renews its Lease."""

    def __init__(self, api: client.ApiClient, name: str, internal_ip: str, pod_cidr: str,
                 interval: float = 10.0, kubelet_port: int = 0) -> None:
        self.core = client.CoreV1Api(api)
        self.coordination = client.CoordinationV1Api(api)
        self.name, self.internal_ip, self.pod_cidr, self.interval = name, internal_ip, pod_cidr, interval
        self.kubelet_port = kubelet_port
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._heartbeats, name="podruntime-node", daemon=True)

    def register(self) -> None:
        try:
            self.core.create_node(node_manifest(self.name, self.pod_cidr))
            log.info("registered node %s", self.name)
        except ApiException as error:
            if error.status != 409:
                raise
        self._untaint()
        self.post_status(ready=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, mark_not_ready: bool = True) -> None:
        self._stopped.set()
        if mark_not_ready:
            try:
                self.post_status(ready=False)
            except Exception as error:  # noqa: BLE001 - the control plane may already be gone
                log.debug("could not mark node %s not ready: %s", self.name, error)

    def post_status(self, ready: bool) -> None:
        previous = self._read().get("status", {}).get("conditions")
        status = node_status(self.internal_ip, utcnow(), ready, previous, self.kubelet_port)
        self.core.patch_node_status(self.name, {"status": status}, _content_type=MERGE_PATCH, _request_timeout=10)

    def _read(self) -> dict[str, Any]:
        return json.loads(self.core.read_node(self.name, _preload_content=False, _request_timeout=10).data)

    def _untaint(self) -> None:
        taints = self._read().get("spec", {}).get("taints") or []
        kept = without_startup_taints(taints)
        if len(kept) != len(taints):
            self.core.patch_node(self.name, {"spec": {"taints": kept or None}}, _content_type=MERGE_PATCH,
                                 _request_timeout=10)

    def _heartbeats(self) -> None:
        while not self._stopped.wait(self.interval):
            try:
                self._untaint()  # the apiserver re-taints a node whose Ready condition ever flapped
                self.post_status(ready=True)
                self._renew_lease()
            except Exception as error:  # noqa: BLE001 - keep beating; the API may be restarting
                log.warning("node heartbeat failed: %s", error)

    def _renew_lease(self) -> None:
        now = utcnow().strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        body = {"metadata": {"name": self.name, "namespace": "kube-node-lease"},
                "spec": {"holderIdentity": self.name, "leaseDurationSeconds": 40, "renewTime": now}}
        try:
            self.coordination.patch_namespaced_lease(self.name, "kube-node-lease", body, _content_type=MERGE_PATCH)
        except ApiException as error:
            if error.status != 404:
                raise
            self.coordination.create_namespaced_lease("kube-node-lease", body)


class EventRecorder:
    """Posts kubelet-style Pod events (Started, Killing, BackOff, Unhealthy...) from a queue, best effort."""

    def __init__(self, api: client.ApiClient, node: str) -> None:
        self.core = client.CoreV1Api(api)
        self.node = node
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(maxsize=1000)
        self._thread = threading.Thread(target=self._post_all, name="podruntime-events", daemon=True)
        self._thread.start()

    def record(self, pod: Mapping[str, Any], type_: str, reason: str, message: str,
               container: str | None = None) -> None:
        metadata = pod["metadata"]
        now = utcnow()
        involved = {"apiVersion": "v1", "kind": "Pod", "name": metadata["name"],
                    "namespace": metadata["namespace"], "uid": metadata["uid"]}
        if container:
            involved["fieldPath"] = f"spec.containers{{{container}}}"
        event = {
            "metadata": {"generateName": f"{metadata['name']}.", "namespace": metadata["namespace"]},
            "involvedObject": involved, "reason": reason, "message": message[:1024], "type": type_,
            "count": 1, "firstTimestamp": rfc3339(now), "lastTimestamp": rfc3339(now),
            "source": {"component": "kubelet", "host": self.node}, "reportingComponent": COMPONENT,
            "reportingInstance": self.node,
        }
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            pass

    def stop(self) -> None:
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            pass

    def _post_all(self) -> None:
        while (event := self._queue.get()) is not None:
            try:
                self.core.create_namespaced_event(event["metadata"]["namespace"], event, _request_timeout=5)
            except Exception as error:  # noqa: BLE001 - events are best effort
                log.debug("could not post event %s: %s", event["reason"], error)
