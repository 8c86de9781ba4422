"""`kubectl apply -k manifests/` installs the operator, and its RBAC is enough to run the loop:
the operator runs here with the ServiceAccount's own token (least privilege, checked for real)."""
from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import yaml

from feedbackloop.localdev.operatorproc import OperatorProcess

from .conftest import ROOT, condition_of
from .test_monitoring import loop_manifest

SYSTEM = "feedbackloop-system"


def service_account_kubeconfig(control_plane, path: Path) -> Path:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        account = json.loads(control_plane.kubectl("get", "serviceaccount", "feedbackloop-operator", "-n", SYSTEM,
                                                   "-o", "json").stdout)
        if account.get("secrets"):
            break
        time.sleep(0.5)
    secret = json.loads(control_plane.kubectl("get", "secret", account["secrets"][0]["name"], "-n", SYSTEM,
                                              "-o", "json").stdout)
    token = base64.b64decode(secret["data"]["token"]).decode()
    config = yaml.safe_load(control_plane.kubeconfig.read_text())
    config["users"] = [{"name": "admin", "user": {"token": token}}]
    path.write_text(yaml.safe_dump(config))
    return path


def test_kustomize_install_and_least_privilege_rbac(control_plane, kubectl, operator_process, prometheus, exporter,
                                                    k8s_namespace, tmp_path):
    applied = kubectl("apply", "-k", str(ROOT / "manifests")).stdout
    for kind in ("customresourcedefinition.apiextensions.k8s.io/modelfeedbackloops.feedbackloop.dev",
                 "clusterrole.rbac.authorization.k8s.io/feedbackloop-operator",
                 "deployment.apps/feedbackloop-operator"):
        assert kind in applied
    deployment = json.loads(kubectl("get", "deployment", "feedbackloop-operator", "-n", SYSTEM, "-o", "json").stdout)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    can_i = kubectl("auth", "can-i", "update", "modelfeedbackloops.feedbackloop.dev",
                    f"--as=system:serviceaccount:{SYSTEM}:feedbackloop-operator", check=False).stdout.strip()
    assert can_i == "no"  # the spec is the user's; the operator writes status only

    # The admin-token operator steps aside; the ServiceAccount's operator must run the loop on its own.
    operator_process.kill()
    limited = OperatorProcess(service_account_kubeconfig(control_plane, tmp_path / "sa.kubeconfig"), tmp_path)
    try:
        limited.start()
        ns = k8s_namespace
        exporter.set("test_model_accuracy", 0.5, model="churn", namespace=ns)
        manifest = loop_manifest(ns, prometheus.url)
        manifest["spec"]["retraining"] = {"features": ["x0"], "target": "label", "cooldown": "1h"}
        kubectl("apply", "-f", "-", input=yaml.safe_dump(manifest))
        deadline, status = time.monotonic() + 60, {}
        while time.monotonic() < deadline and not status.get("retraining"):
            status = json.loads(kubectl("get", "mfl", "churn", "-n", ns, "-o", "json").stdout).get("status") or {}
            time.sleep(0.5)
        assert status.get("retraining"), f"no retraining started: {status}\n{limited.log_tail()}"
        assert condition_of(status, "Breached")["status"] == "True"
        assert kubectl("get", "job", status["retraining"]["jobName"], "-n", ns, check=False).returncode == 0
        assert kubectl("get", "deployment", "churn", "-n", ns, check=False).returncode == 0
        events = json.loads(kubectl("get", "events", "-n", ns, "-o", "json").stdout)["items"]
        assert "BreachStarted" in {e["reason"] for e in events}
        assert "Forbidden" not in limited.log_tail(200) and "403" not in limited.log_tail(200)
    finally:
        limited.stop()
        kubectl("delete", "deployment", "feedbackloop-operator", "-n", SYSTEM, check=False)
        operator_process.start()
