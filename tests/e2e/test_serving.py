"""Issue 3 end to end: the operator's Deployment runs real model-server Pods; a traffic generator sends
predictions and delayed ground truth through the Service's endpoints; Prometheus scrapes the Pods; the
loop's status shows accuracy; drifting labels make the loop breach."""

from __future__ import annotations

import json

from mfl_testbed.traffic import TrafficGenerator, service_endpoints

from .conftest import artifact_claim, condition_of, seed_registry
from .test_loop import loop_manifest


def serving_loop(namespace, prometheus_url, storage):
    """The loop test's manifest, monitoring only: no retraining, so a breach stays a breach."""
    manifest = loop_manifest(namespace, prometheus_url, storage, initial_version=1)
    del manifest["spec"]["retraining"], manifest["spec"]["rollout"]
    return manifest


def test_served_model_reports_accuracy_and_breaches_on_drift(loops, prometheus, kubectl, k8s_namespace):
    ns = k8s_namespace
    claim, storage = artifact_claim(loops.cluster, ns)
    seed_registry(storage, "churn")
    loops.apply(serving_loop(ns, prometheus.url, claim))

    status = loops.wait_condition(ns, "churn", "ServingReady", "True", 120)
    assert status["serving"] == {"version": 1, "readyReplicas": 2, "replicas": 2, "since": status["serving"]["since"]}
    assert status["serving"]["since"]  # its Pods were seen starting, then every replica serving version 1
    deployment = json.loads(kubectl("get", "deployment", "churn", "-n", ns, "-o", "json").stdout)
    assert deployment["metadata"]["ownerReferences"][0]["kind"] == "ModelFeedbackLoop"
    pod_security = deployment["spec"]["template"]["spec"]["securityContext"]
    assert pod_security["runAsNonRoot"] is True and pod_security["seccompProfile"]["type"] == "RuntimeDefault"

    traffic = TrafficGenerator(service_endpoints(kubectl, ns, "churn"), rate=60, batch=6, label_delay=1.0).start()
    try:
        prometheus.wait_for(f'sum by (version) (mfl_feedback_total{{namespace="{ns}",version="1"}}) > 50', timeout=90)
        status = loops.wait(
            ns,
            "churn",
            lambda s: (s.get("metrics") or [{}])[0].get("state") == "Healthy",
            60,
            "a healthy accuracy from live feedback",
        )
        assert status["metrics"][0]["value"] > 0.75
        assert status["phase"] == "Monitoring" and condition_of(status, "Ready")["status"] == "True"
        # Feedback reached other replicas than the predictions did and still counted under version 1.
        # (Waited for: under a loaded CI run the Endpoints or the second Pod's first scrape can lag the first's.)
        prometheus.wait_for(f'count(sum by (pod) (mfl_feedback_total{{namespace="{ns}"}}) > 0) == 2', timeout=60)

        traffic.concept = 1  # the world changes: the labels drift away from what version 1 learned
        status = loops.wait(ns, "churn", lambda s: s.get("phase") == "Breached", 120, "a breach after drift")
        assert status["metrics"][0]["value"] < 0.75
        assert "BreachStarted" in loops.reasons(ns, "churn")
    finally:
        traffic.stop()
    assert traffic.stats.errors <= 3, traffic.stats.last_error
