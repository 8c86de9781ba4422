"""Issue 19 end to end: the loop drives a server it does not own. Real MLServer (built from PyPI with the
project's Dockerfile pattern) serves each version from the model-settings.json the trainer wrote; the
feedback sidecar beside it signs ids, logs rows and records labels exactly once; the client knows only the
Open Inference Protocol. Drift -> breach -> retraining -> canary -> promotion, and a bad candidate rolled
back, as with the reference server."""

from __future__ import annotations

import json

from mfl_testbed.traffic import TrafficGenerator, service_endpoints

from .conftest import artifact_claim, seed_registry
from .test_loop import deployment, history_outcomes, loop_manifest

MLSERVER_IMAGE = "ghcr.io/feedbackloop/mlserver:1.7.1"


def mlserver_loop(namespace, prometheus_url, storage, image_refs, **options):
    manifest = loop_manifest(namespace, prometheus_url, storage, initial_version=1, **options)
    manifest["spec"]["model"]["serving"].update(
        {
            "image": image_refs.get("mlserver", MLSERVER_IMAGE),
            "runtime": {"kind": "mlserver", "port": 9000, "sidecar": {"image": image_refs["sidecar"]}},
            "resources": {"limits": {"memory": "1Gi"}},
        }
    )
    return manifest


def v2_traffic(kubectl, namespace, **options):
    return TrafficGenerator(service_endpoints(kubectl, namespace, "churn"), protocol="v2", **options).start()


def containers_of(kubectl, namespace, name):
    pod_spec = deployment(kubectl, namespace, name)["spec"]["template"]["spec"]
    return {c["name"]: c for c in pod_spec["containers"]}


def test_mlserver_loop_recovers_from_drift_with_a_lightgbm_version(
    loops, prometheus, kubectl, k8s_namespace, image_refs
):
    """Version 1 is a scikit-learn pipeline (mlserver_sklearn), the retrained version a LightGBM booster
    (mlserver_lightgbm, which answers probabilities: the sidecar maps them to classes)."""
    ns = k8s_namespace
    claim, storage = artifact_claim(loops.cluster, ns)
    seed_registry(storage, "churn")
    manifest = mlserver_loop(ns, prometheus.url, claim, image_refs)
    manifest["spec"]["retraining"]["estimator"] = "lightgbm"
    loops.apply(manifest)
    status = loops.wait_condition(ns, "churn", "ServingReady", "True", 240)
    assert set(containers_of(kubectl, ns, "churn")) == {"server", "feedback"}
    settings = json.loads((storage / "churn" / "versions" / "1" / "model-settings.json").read_text())
    assert settings["implementation"] == "mlserver_sklearn.SKLearnModel"

    traffic = v2_traffic(kubectl, ns, rate=80, batch=8, label_delay=1.0)
    try:
        loops.wait(ns, "churn", lambda s: (s.get("metrics") or [{}])[0].get("state") == "Healthy", 120, "healthy")
        assert traffic.stats.feedback > 0 and traffic.stats.errors == 0, traffic.stats
        traffic.concept = 1  # drift
        loops.wait(
            ns, "churn", lambda s: (s.get("retraining") or {}).get("trigger") == "Breach", 120, "a breach retraining"
        )
        status = loops.wait(ns, "churn", lambda s: s.get("phase") == "Canary", 240, "the LightGBM candidate's canary")
        assert set(containers_of(kubectl, ns, "churn-canary")) == {"server", "feedback"}
        status = loops.wait(ns, "churn", lambda s: s.get("currentVersion") == 2, 300, "promotion of version 2")
        loops.wait_recovered(ns, "churn", 2, 240)  # MLServer Pods start in tens of seconds: a slow rollout first
        recent = traffic.stats.by_version.get("2", [0, 0])
    finally:
        traffic.stop()
    assert history_outcomes(status)[-1] == (2, "Promoted")
    version_2 = storage / "churn" / "versions" / "2"
    settings = json.loads((version_2 / "model-settings.json").read_text())
    assert settings["implementation"] == "mlserver_lightgbm.LightGBMModel" and (version_2 / "model.txt").exists()
    assert json.loads((version_2 / "metadata.json").read_text())["servingOutput"] == "probabilities"
    assert recent[0] > 100 and recent[1] / recent[0] > 0.75, recent  # what the V2 client saw of version 2
    labelled = [json.loads(line) for path in (storage / "churn" / "feedback").rglob("*.jsonl") for line in path.open()]
    assert len({line["id"] for line in labelled}) == len(labelled)  # every label recorded once
    assert deployment(kubectl, ns, "churn")["metadata"]["labels"]["feedbackloop.dev/version"] == "2"


def test_mlserver_loop_rolls_back_a_bad_candidate(loops, prometheus, kubectl, k8s_namespace, image_refs):
    ns = k8s_namespace
    claim, storage = artifact_claim(loops.cluster, ns)
    seed_registry(storage, "churn")
    manifest = mlserver_loop(
        ns,
        prometheus.url,
        claim,
        image_refs,
        max_degradation=1.0,
        annotations={"feedbackloop.dev/trainer-overrides": '{"labelNoise": 0.45}'},
    )
    loops.apply(manifest)
    loops.wait_condition(ns, "churn", "ServingReady", "True", 240)
    stable_before = deployment(kubectl, ns, "churn")
    traffic = v2_traffic(kubectl, ns, rate=80, batch=8, label_delay=1.0)
    try:
        loops.wait(ns, "churn", lambda s: traffic.stats.feedback > 0, 60, "the first labels")
        manifest["metadata"]["annotations"]["feedbackloop.dev/retrain"] = "mlserver-rollback"
        loops.apply(manifest)
        loops.wait(ns, "churn", lambda s: s.get("phase") == "Canary", 240, "the bad candidate's canary")
        status = loops.wait(ns, "churn", lambda s: (2, "RolledBack") in history_outcomes(s), 300, "a rollback")
    finally:
        traffic.stop()
    assert status["currentVersion"] == 1 and status.get("rollout") is None
    accuracy = next(e for e in status["history"][-1]["evidence"] if e["name"] == "accuracy")
    assert accuracy["decision"] == "Fail"
    stable_after = deployment(kubectl, ns, "churn")
    assert stable_after["metadata"]["generation"] == stable_before["metadata"]["generation"]
    assert traffic.stats.errors == 0, traffic.stats.last_error
