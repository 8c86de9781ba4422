"""`kubectl apply -k manifests/` installs the operator as users install it, and it runs in-cluster from its
image on its ServiceAccount's least-privilege RBAC, under restricted Pod security enforced by a real kubelet."""

from __future__ import annotations

import json

import yaml

from mfl_testbed.cluster import OPERATOR_SETTINGS, SETTINGS_CONFIGMAP
from mfl_testbed.render import render

from .conftest import ROOT, condition_of
from .test_monitoring import loop_manifest

SYSTEM = "feedbackloop-system"


def test_kustomize_install_renders_only_an_image_override(kubectl, operator):
    overlay = yaml.safe_load((operator.workdir / "install" / "kustomization.yaml").read_text())
    # manifests/ itself is applied unchanged, but for the image and the test bed's own admin settings
    assert set(overlay) == {"apiVersion", "kind", "resources", "images", "patches"}
    assert overlay["patches"] == [{"path": "settings.yaml"}]
    settings = json.loads(kubectl("get", "configmap", SETTINGS_CONFIGMAP, "-n", SYSTEM, "-o", "json").stdout)["data"]
    assert {key: settings[key] for key in OPERATOR_SETTINGS} == OPERATOR_SETTINGS
    rendered = render(ROOT / "manifests")  # a current kustomize: the test bed's kubectl 1.20 cannot render it
    kinds = {(doc["kind"], doc["metadata"]["name"]) for doc in rendered}
    assert {
        ("CustomResourceDefinition", "modelfeedbackloops.feedbackloop.dev"),
        ("ClusterRole", "feedbackloop-operator"),
        ("Deployment", "feedbackloop-operator"),
    } <= kinds


def test_operator_runs_in_cluster_on_its_service_account_with_restricted_security(kubectl, operator):
    [pod] = [
        p
        for p in operator.pods(SYSTEM, "app.kubernetes.io/name=feedbackloop-operator")
        if not p["metadata"].get("deletionTimestamp")
    ]
    assert pod["spec"]["serviceAccountName"] == "feedbackloop-operator"
    assert pod["spec"]["nodeName"] == "mfl-node" and pod["status"]["phase"] == "Running"
    container = pod["spec"]["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    can_i = kubectl(
        "auth",
        "can-i",
        "update",
        "modelfeedbackloops.feedbackloop.dev",
        f"--as=system:serviceaccount:{SYSTEM}:feedbackloop-operator",
        check=False,
    ).stdout.strip()
    assert can_i == "no"  # the spec is the user's; the operator writes status only
    # What the kubelet really enforces inside the running container:
    name = pod["metadata"]["name"]
    who = kubectl(
        "exec",
        "-n",
        SYSTEM,
        name,
        "--",
        "python",
        "-c",
        "import os, getpass; print(os.getuid(), os.getgid(), getpass.getuser())",
    ).stdout.split()
    assert who == ["65532", "65532", "mfl"]
    write = kubectl("exec", "-n", SYSTEM, name, "--", "python", "-c", "open('/usr/evil', 'w')", check=False)
    assert write.returncode != 0 and "Read-only file system" in write.stderr


def test_operator_reconciles_on_its_own_rbac(loops, kubectl, prometheus, exporter, k8s_namespace):
    ns = k8s_namespace
    exporter.set("test_model_accuracy", 0.5, model="churn", namespace=ns)
    manifest = loop_manifest(ns, prometheus.url)
    manifest["spec"]["retraining"] = {"features": ["x0"], "target": "label", "cooldown": "1h"}
    kubectl("apply", "-f", "-", input=yaml.safe_dump(manifest))
    status = loops.wait(ns, "churn", lambda s: bool(s.get("retraining")), 90, "a retraining started by a breach")
    assert condition_of(status, "Breached")["status"] == "True"
    assert kubectl("get", "job", status["retraining"]["jobName"], "-n", ns, check=False).returncode == 0
    assert kubectl("get", "deployment", "churn", "-n", ns, check=False).returncode == 0
    events = json.loads(kubectl("get", "events", "-n", ns, "-o", "json").stdout)["items"]
    assert "BreachStarted" in {e["reason"] for e in events}
    logs = loops.cluster.operator_logs(400)
    assert "Forbidden" not in logs and " 403" not in logs, logs[-3000:]
