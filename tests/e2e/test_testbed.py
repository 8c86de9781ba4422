"""The test bed itself: the control plane serves real API objects and controllers, Prometheus
scrapes what a test exports and forgets it when it disappears."""

from __future__ import annotations

import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest

from feedbackloop.localdev.controlplane import ADVERTISE_ADDRESS, ControlPlane
from feedbackloop.localdev.exporter import TestExporter
from feedbackloop.localdev.netutil import LOOPBACK, wait_until
from feedbackloop.localdev.prometheus import Prometheus

pytestmark = pytest.mark.e2e


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def get_json(kubectl: Any, *args: str) -> Any:
    return json.loads(kubectl("get", *args, "-o", "json").stdout)


# ---- control plane ---------------------------------------------------------------------------


def test_configmap_round_trip(kubectl: Any) -> None:
    name = unique("testbed-cm")
    manifest = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": "default"},
        "data": {"threshold": "0.85", "model": "churn"},
    }
    kubectl("apply", "-f", "-", input=json.dumps(manifest))
    try:
        stored = get_json(kubectl, "configmap", name, "-n", "default")
        assert stored["data"] == {"threshold": "0.85", "model": "churn"}
    finally:
        kubectl("delete", "configmap", name, "-n", "default")
    assert kubectl("get", "configmap", name, check=False).returncode != 0


def test_kubernetes_service_points_at_advertise_address(kubectl: Any) -> None:
    endpoints = get_json(kubectl, "endpoints", "kubernetes", "-n", "default")
    addresses = [address["ip"] for subset in endpoints["subsets"] for address in subset["addresses"]]
    assert addresses == [ADVERTISE_ADDRESS]


def widget_crd(group: str) -> dict[str, Any]:
    schema = {
        "type": "object",
        "properties": {
            "spec": {
                "type": "object",
                "properties": {"size": {"type": "integer"}, "color": {"type": "string"}},
            }
        },
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"widgets.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [
                {"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": schema}}
            ],
        },
    }


def test_crd_and_custom_resource_round_trip(kubectl: Any) -> None:
    group = f"{uuid.uuid4().hex[:8]}.testbed.mfl.dev"
    kubectl("apply", "-f", "-", input=json.dumps(widget_crd(group)))
    try:
        kubectl("wait", "--for=condition=Established", f"crd/widgets.{group}", "--timeout=30s")
        widget = {
            "apiVersion": f"{group}/v1",
            "kind": "Widget",
            "metadata": {"name": "w1", "namespace": "default"},
            "spec": {"size": 3, "color": "blue", "dropped": "not in the schema"},
        }
        # Discovery of a fresh group can lag a moment behind Established.
        wait_until(
            lambda: kubectl("apply", "-f", "-", input=json.dumps(widget), check=False).returncode == 0,
            timeout=20,
            what="the first Widget to be accepted",
        )
        stored = get_json(kubectl, f"widgets.{group}", "w1", "-n", "default")
        assert stored["spec"] == {"size": 3, "color": "blue"}  # pruned by the structural schema
    finally:
        kubectl("delete", "crd", f"widgets.{group}", "--wait=false")


@pytest.fixture
def dedicated_node(control_plane: ControlPlane) -> Iterator[str]:
    """A Ready Node that only Pods tolerating its taint may use, so other tests' Pods never land
    on it. The apiserver taints new Nodes not-ready; without a node-lifecycle controller the
    test lifts that taint itself."""
    name = unique("testbed-node")
    taint = {"key": "testbed.mfl.dev/dedicated", "value": name, "effect": "NoSchedule"}
    node = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "spec": {"taints": [taint]},
    }
    control_plane.kubectl("apply", "-f", "-", input=json.dumps(node))
    try:
        resources = {"cpu": "4", "memory": "8Gi", "pods": "110"}
        ready = {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "testbed"}
        control_plane.api(
            "PATCH",
            f"/api/v1/nodes/{name}/status",
            {"status": {"conditions": [ready], "capacity": resources, "allocatable": resources}},
            content_type="application/merge-patch+json",
        )
        only_ours = json.dumps({"spec": {"taints": [taint]}})
        control_plane.kubectl("patch", "node", name, "--type=merge", "-p", only_ours)
        yield name
    finally:
        control_plane.kubectl("delete", "node", name, "--wait=false", check=False)


def deployment(name: str, node: str, replicas: int) -> dict[str, Any]:
    labels = {"app": name}
    pod_spec = {
        "nodeSelector": {"kubernetes.io/hostname": node},
        "tolerations": [{"key": "testbed.mfl.dev/dedicated", "operator": "Equal", "value": node}],
        "containers": [{"name": "main", "image": "example.invalid/none:1", "command": ["sleep", "60"]}],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }


def test_node_and_deployment_get_pods_scheduled(kubectl: Any, dedicated_node: str) -> None:
    node = get_json(kubectl, "node", dedicated_node)
    assert {"type": "Ready", "status": "True"}.items() <= node["status"]["conditions"][0].items()

    name = unique("testbed-deploy")
    kubectl("apply", "-f", "-", input=json.dumps(deployment(name, dedicated_node, replicas=2)))
    try:

        def scheduled_pods() -> list[dict[str, Any]]:
            pods = get_json(kubectl, "pods", "-n", "default", "-l", f"app={name}")["items"]
            bound = [pod for pod in pods if pod["spec"].get("nodeName") == dedicated_node]
            return pods if len(pods) == 2 and len(bound) == 2 else []

        # Deployment -> ReplicaSet -> Pods (controller-manager), then binding (scheduler).
        pods = wait_until(scheduled_pods, timeout=30, what="2 Pods bound to the dedicated Node")
        assert {pod["status"]["phase"] for pod in pods} == {"Pending"}  # no kubelet runs them
    finally:
        kubectl("delete", "deployment", name, "-n", "default", "--wait=false")
        # Bound Pods wait for a kubelet to confirm their deletion unless forced.
        kubectl("delete", "pods", "-n", "default", "-l", f"app={name}", "--force", "--grace-period=0")


# ---- Prometheus ------------------------------------------------------------------------------


def value_is(expected: float) -> Any:
    return lambda result: len(result) == 1 and float(result[0]["value"][1]) == expected


def test_prometheus_scrapes_exporter_and_forgets_cleared_series(
    prometheus: Prometheus, exporter: TestExporter
) -> None:
    metric = unique("testbed_accuracy").replace("-", "_")
    exporter.set(metric, 0.93, model="churn", namespace="default")
    exporter.set(metric, 0.70, model="other", namespace="default")
    query = f'{metric}{{model="churn"}}'

    result = prometheus.wait_for(query, value_is(0.93), timeout=20)
    assert result[0]["metric"]["namespace"] == "default"
    assert result[0]["metric"]["job"] == "testbed"

    exporter.set(metric, 0.5, model="churn", namespace="default")
    prometheus.wait_for(query, value_is(0.5), timeout=10)

    exporter.clear(metric, model="churn")
    prometheus.wait_for(query, lambda result: result == [], timeout=10)
    assert prometheus.query_values(f'{metric}{{model="other"}}') == [0.70]
    exporter.clear(metric)


def test_prometheus_targets_added_and_removed_at_run_time(prometheus: Prometheus) -> None:
    metric = unique("testbed_runtime_target").replace("-", "_")
    with TestExporter() as second:
        second.set(metric, 7, model="churn")
        prometheus.add_target(second.address, {"pod": "churn-0", "namespace": "team-a"})
        try:
            result = prometheus.wait_for(metric, value_is(7.0), timeout=20)
            labels = result[0]["metric"]
            assert (labels["pod"], labels["namespace"], labels["instance"]) == (
                "churn-0",
                "team-a",
                second.address,
            )
        finally:
            prometheus.remove_target(second.address)
        prometheus.wait_for(metric, lambda result: result == [], timeout=20)


class TargetList:
    """A minimal http_sd endpoint, as the pod runtime will serve one."""

    def __init__(self, groups: list[dict[str, Any]]) -> None:
        self.groups = groups
        payload = lambda: json.dumps(self.groups).encode()  # noqa: E731

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                body = payload()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://{LOOPBACK}:{self.server.server_address[1]}/targets"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_prometheus_http_sd_maps_pod_labels(tmp_path: Path) -> None:
    with TestExporter() as pod_a, TestExporter() as pod_b:
        pod_a.set("mfl_predictions_total", 5, model="churn", track="stable")
        pod_b.set("mfl_predictions_total", 2, model="churn", track="canary")
        first = TargetList([{"targets": [pod_a.address], "labels": {
            "__meta_kubernetes_namespace": "ml", "__meta_kubernetes_pod_name": "churn-a",
            "__meta_kubernetes_pod_label_app": "churn",
        }}])  # fmt: skip
        plain_labels = {"namespace": "ml", "pod": "churn-b"}
        second = TargetList([{"targets": [pod_b.address], "labels": plain_labels}])
        try:
            with Prometheus(tmp_path, http_sd_urls=[first.url]) as server:
                query = 'mfl_predictions_total{pod="churn-a"}'
                labels = server.wait_for(query, value_is(5.0), timeout=20)[0]["metric"]
                assert (labels["namespace"], labels["app"]) == ("ml", "churn")
                assert labels["track"] == "stable"
                assert not any(label.startswith("__meta") for label in labels)

                server.add_http_sd(second.url)  # reload with a second job
                query = 'mfl_predictions_total{pod="churn-b"}'
                labels = server.wait_for(query, value_is(2.0), timeout=20)[0]["metric"]
                assert labels["namespace"] == "ml"
        finally:
            first.close()
            second.close()
