"""The test bed itself: the control plane serves real API objects and controllers, Prometheus
scrapes what a test exports and forgets it when it disappears."""

from __future__ import annotations

import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from mfl_testbed.exporter import TestExporter
from mfl_testbed.netutil import LOOPBACK, http_request, wait_until
from mfl_testbed.node import NODE_IP, NODE_NAME
from mfl_testbed.prometheus import Prometheus

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
    assert addresses == [NODE_IP]  # the node's address: Pods reach the apiserver through the Service


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
            "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": schema}}],
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


def web_deployment(name: str, image: str) -> list[dict[str, Any]]:
    """Two replicas of a tiny web server from one of our images, restricted, behind a Service."""
    labels = {"app": name}
    container = {
        "name": "web",
        "image": image,
        "command": ["python", "-m", "http.server", "8080"],
        "ports": [{"name": "http", "containerPort": 8080}],
        "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    return [
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "containers": [container],
                        "securityContext": {"runAsNonRoot": True},
                        "terminationGracePeriodSeconds": 1,
                    },
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": "http"}]},
        },
    ]


def test_real_node_runs_a_deployment_behind_a_service(kubectl: Any, image_refs: dict[str, str]) -> None:
    """Scheduler -> kubelet -> containerd -> runc: Pods get IPs on the bridge, pass probes, and
    kube-proxy routes the Service's ClusterIP to them."""
    node = get_json(kubectl, "node", NODE_NAME)
    assert any(c["type"] == "Ready" and c["status"] == "True" for c in node["status"]["conditions"])
    name = unique("testbed-web")
    kubectl(
        "apply",
        "-f",
        "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": web_deployment(name, image_refs["server"])}),
    )
    try:
        kubectl("rollout", "status", f"deployment/{name}", "--timeout=120s", timeout=130)
        pods = get_json(kubectl, "pods", "-l", f"app={name}")["items"]
        assert {pod["spec"]["nodeName"] for pod in pods} == {NODE_NAME}
        assert all(pod["status"]["podIP"].startswith("10.245.0.") for pod in pods)
        cluster_ip = get_json(kubectl, "service", name)["spec"]["clusterIP"]
        status, _ = wait_until(
            lambda: (lambda r: r if r[0] == 200 else None)(http_request(f"http://{cluster_ip}/")),
            timeout=30,
            what="the Service's ClusterIP through kube-proxy",
        )
        assert status == 200
        logs = kubectl("logs", pods[0]["metadata"]["name"]).stdout + kubectl("logs", pods[1]["metadata"]["name"]).stdout
        assert "GET / HTTP" in logs  # kubectl logs reaches the kubelet
    finally:
        kubectl("delete", "deployment,service", name, "--wait=false")


# ---- Prometheus ------------------------------------------------------------------------------


def value_is(expected: float) -> Any:
    return lambda result: len(result) == 1 and float(result[0]["value"][1]) == expected


def test_prometheus_scrapes_exporter_and_forgets_cleared_series(prometheus: Prometheus, exporter: TestExporter) -> None:
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
    """A minimal http_sd endpoint, as the test bed's Pod discovery serves one."""

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
