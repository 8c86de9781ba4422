"""The monitoring component (manifests/monitoring/) on the test bed: its objects applied next to the
installed operator, its PrometheusRule's rules loaded by the test bed's real Prometheus, and an induced
breach raising ModelFeedbackLoopBreached.

No Prometheus Operator runs here, so its CRDs are stand-ins (prometheus-operator-crds.yaml) and the test
hands the PrometheusRule's spec to Prometheus itself, as the Prometheus Operator would. The test bed's
kubectl 1.20 predates kustomize Components: the component is rendered with the kubectl that
tests/monitoring uses, and applied with the test bed's.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from mfl_testbed.cluster import OPERATOR_NAMESPACE
from tests.monitoring.tools import COMPONENT, kustomize_kubectl, render_with_install

from .test_monitoring import loop_manifest

CRDS = Path(__file__).parent / "prometheus-operator-crds.yaml"
RULE = "model-feedback-loop"
BREACHED = "ModelFeedbackLoopBreached"


def component_objects(workdir: Path) -> list[dict]:
    """What the component adds to the install: its render with the install, less the install's own."""
    base = subprocess.run(
        [kustomize_kubectl(), "kustomize", str(COMPONENT.parent)], capture_output=True, text=True, timeout=120
    )
    assert base.returncode == 0, base.stderr
    installed = {(doc["kind"], doc["metadata"]["name"]) for doc in yaml.safe_load_all(base.stdout) if doc}
    return [doc for doc in render_with_install(workdir) if (doc["kind"], doc["metadata"]["name"]) not in installed]


def active(prometheus, alertname: str) -> list[dict]:
    """Alerts pending or firing under `alertname`."""
    return [alert for alert in prometheus.alerts() if alert["labels"]["alertname"] == alertname]


def wait(what: str, condition, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


@pytest.fixture
def monitoring_component(operator, prometheus, kubectl, tmp_path):
    """The CRDs registered, the component's objects applied, the PrometheusRule's rules loaded; yields
    the PrometheusRule as the API returns it."""
    objects = component_objects(tmp_path)
    kinds = sorted({doc["kind"] for doc in objects})
    assert kinds == ["ConfigMap", "PodMonitor", "PrometheusRule", "ServiceMonitor"], kinds
    manifest = "\n---\n".join(yaml.safe_dump(doc) for doc in objects)
    kubectl("apply", "-f", str(CRDS))
    try:
        for crd in ("podmonitors", "servicemonitors", "prometheusrules"):
            kubectl("wait", "--for=condition=Established", f"crd/{crd}.monitoring.coreos.com")
        kubectl("apply", "-f", "-", input=manifest)
        # Read back through the API, as the Prometheus Operator reads it: the rules it would load.
        applied = json.loads(kubectl("get", "prometheusrule", RULE, "-n", OPERATOR_NAMESPACE, "-o", "json").stdout)
        prometheus.add_rules(RULE, applied["spec"])
        yield applied
    finally:
        prometheus.remove_rules(RULE)
        kubectl("delete", "-f", "-", "--ignore-not-found", input=manifest, check=False)
        kubectl("delete", "-f", str(CRDS), "--ignore-not-found", check=False)


def test_breach_fires_the_breach_alert_from_the_components_rules(
    monitoring_component, loops, prometheus, exporter, kubectl, k8s_namespace
):
    ns = k8s_namespace
    for kind, name in (("podmonitor", "mfl-servers"), ("servicemonitor", "feedbackloop-operator")):
        kubectl("get", kind, name, "-n", OPERATOR_NAMESPACE)
    dashboard = json.loads(
        kubectl("get", "configmap", "model-feedback-loop-dashboard", "-n", OPERATOR_NAMESPACE, "-o", "json").stdout
    )
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"

    # Every rule of the component loads and evaluates without error on the test bed's series.
    names = {group["name"] for group in monitoring_component["spec"]["groups"]}

    def loaded_healthy() -> bool:
        loaded = [group for group in prometheus.rule_groups() if group["name"] in names]
        return len(loaded) == len(names) and all(r["health"] == "ok" for g in loaded for r in g["rules"])

    wait("every rule of the component loaded and evaluated healthy", loaded_healthy, 30)
    # The operator is scraped (through its annotations here), so it is not reported down.
    assert not active(prometheus, "ModelFeedbackLoopOperatorDown")
    # Loops of earlier tests may still be breached while their namespaces go away.
    others_breached = sum(prometheus.query_values('mfl_operator_loops{phase="Breached"}')) > 0
    if not others_breached:
        assert not active(prometheus, BREACHED)

    exporter.set("test_model_accuracy", 0.95, model="churn", namespace=ns)
    prometheus.wait_for(f'test_model_accuracy{{namespace="{ns}"}}', timeout=30)
    loops.apply(loop_manifest(ns, prometheus.url))  # no spec.retraining: a breach stays Breached
    loops.wait(ns, "churn", lambda s: s.get("phase") == "Monitoring", 30, "phase Monitoring")
    exporter.set("test_model_accuracy", 0.5, model="churn", namespace=ns)
    loops.wait(ns, "churn", lambda s: s.get("phase") == "Breached", 30, "phase Breached")

    # `for: 5m` keeps it pending during the test; promtool's unit tests (tests/monitoring) time the `for`.
    alerts = wait(f"{BREACHED} pending or firing", lambda: active(prometheus, BREACHED), 60)
    alert = alerts[0]
    assert alert["state"] in ("pending", "firing")
    assert alert["labels"]["severity"] == "warning"
    assert alert["labels"]["namespace"] == OPERATOR_NAMESPACE  # the target label of the operator's Pod
    assert float(alert["value"]) >= 1
    assert alert["annotations"]["runbook_url"].endswith("docs/monitoring.md#modelfeedbackloopbreached")

    exporter.set("test_model_accuracy", 0.93, model="churn", namespace=ns)
    loops.wait(ns, "churn", lambda s: s.get("phase") == "Monitoring", 30, "recovery")
    if not others_breached:
        wait(f"{BREACHED} resolved", lambda: not active(prometheus, BREACHED), 60)
