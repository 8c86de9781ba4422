"""Issue 21 end to end: a labelled window too large for one trainer Pod. On the Job engine the trainer is killed
for memory and the loop says so plainly (status and an Event); switched to `retraining.engine: Dask`, the same
request trains through the dask-kubernetes operator's DaskJob (a runner and 2 workers, each with its share of
the window's partitions), the challenger passes the offline gate, is canaried and promoted.

Everything is real: the loop on object storage (SeaweedFS) and PostgreSQL, the window sent through the model
server's own /predict and /feedback by a client, the dask-kubernetes operator from its PyPI wheel."""

from __future__ import annotations

import json

import pytest

from mfl_testbed.traffic import TrafficGenerator, service_endpoints

from .conftest import condition_of
from .test_loop import history_outcomes
from .test_object_storage import (
    create_secrets,
    database_tenant,
    labels_in_database,
    s3_loop,
    seed_bucket,
    tenant_store,
)

WINDOW_ROWS = 400_000  # labelled rows of the drifted concept: ~3x what a trainer Pod of TRAINER_MEMORY can hold
TRAINER_MEMORY = "256Mi"


def dask_loop(cluster, ns: str, prometheus_url: str) -> dict:
    manifest = s3_loop(cluster, ns, prometheus_url)
    spec = manifest["spec"]
    # Only the user's requests retrain here: the rule never breaches, so the window grows to its full size first.
    spec["monitoring"]["metrics"][0]["min"] = 0.0
    spec["retraining"].update(
        estimator="lightgbm",
        minRows=1000,
        cooldown="0s",
        failureBackoff="5s",
        trainer={
            "resources": {"requests": {"cpu": "250m", "memory": TRAINER_MEMORY}, "limits": {"memory": TRAINER_MEMORY}},
            "activeDeadlineSeconds": 900,
        },
    )
    return manifest


def request_retraining(loops, manifest: dict, request: str) -> None:
    manifest["metadata"]["annotations"]["feedbackloop.dev/retrain"] = request
    loops.apply(manifest)


@pytest.mark.timeout(1500)  # the window is sent through the servers first: longer than the suite's 600 s default
def test_a_window_too_large_for_one_pod_trains_on_dask_and_is_promoted(
    loops, prometheus, kubectl, k8s_namespace, tmp_path, dask_operator
):
    ns, cluster = k8s_namespace, loops.cluster
    seed_bucket(tenant_store(cluster, ns), tmp_path)
    tenant = database_tenant(ns)
    create_secrets(cluster, ns, cluster.postgres.create_tenant(tenant), cluster.seaweedfs.url.split("//")[1])
    manifest = dask_loop(cluster, ns, prometheus.url)
    loops.apply(manifest)
    loops.wait_condition(ns, "churn", "ServingReady", "True", 240)

    # The window: predictions and their labels (the drifted concept) as a client sends them, in full batches.
    endpoints = service_endpoints(kubectl, ns, "churn")
    bulk = TrafficGenerator(endpoints, rate=1_000_000, batch=1024, label_delay=0.0)
    bulk.concept = 1
    bulk.start()
    try:
        loops.wait(ns, "churn", lambda s: bulk.stats.feedback >= WINDOW_ROWS, 900, f"{WINDOW_ROWS} labelled rows")
    finally:
        bulk.stop()
    assert bulk.stats.errors <= 3, bulk.stats.last_error
    assert labels_in_database(cluster, tenant)[0] >= WINDOW_ROWS

    # The Job engine: one Pod, killed for memory; the loop says why and what to do.
    request_retraining(loops, manifest, "job-1")
    status = loops.wait(ns, "churn", lambda s: bool(s.get("lastFailure")), 600, "the Job engine's failure")
    failure = status["lastFailure"]
    assert "OOMKilled" in failure and TRAINER_MEMORY in failure and "engine: Dask" in failure, failure
    assert status.get("currentVersion") == 1
    assert "RetrainingFailed" in loops.reasons(ns, "churn")

    # The same request on Dask: a DaskJob with 2 workers, each holding part of the window.
    manifest["spec"]["retraining"]["engine"] = "Dask"
    manifest["spec"]["retraining"]["dask"] = {
        "workers": 2,
        "workerResources": {"requests": {"cpu": "250m", "memory": "768Mi"}, "limits": {"memory": "768Mi"}},
    }
    request_retraining(loops, manifest, "dask-1")
    run = loops.wait(ns, "churn", lambda s: (s.get("retraining") or {}).get("engine") == "Dask", 120, "a Dask run")
    job_name, version = run["retraining"]["jobName"], run["retraining"]["version"]  # the failed run took one
    dask_job = json.loads(kubectl("get", "daskjobs", job_name, "-n", ns, "-o", "json").stdout)
    assert dask_job["metadata"]["ownerReferences"][0]["kind"] == "ModelFeedbackLoop"
    assert dask_job["spec"]["cluster"]["spec"]["worker"]["replicas"] == 2

    traffic = TrafficGenerator(endpoints, rate=60, batch=6, label_delay=1.0)
    traffic.concept = 1  # the canary is judged on live labels of the same concept
    try:
        loops.wait(ns, "churn", lambda s: s.get("phase") == "Canary", 900, "the Dask-trained candidate's canary")
        traffic.start()
        status = loops.wait(ns, "churn", lambda s: s.get("currentVersion") == version, 400, "the promotion")
        serving = loops.wait(  # the new version's Pods roll out and its own labels come in
            ns,
            "churn",
            lambda s: (
                condition_of(s, "Ready").get("status") == "True" and (s.get("serving") or {}).get("version") == version
            ),
            240,
            "the promoted version serving and Ready",
        )
    finally:
        traffic.stop()
    assert history_outcomes(status)[-1] == (version, "Promoted")
    trained = next(h for h in status["history"] if h["version"] == version)
    assert trained.get("trigger") == "Manual"
    assert serving["currentVersion"] == version
    finished = json.loads(kubectl("get", "daskjobs", job_name, "-n", ns, "-o", "json", check=False).stdout or "{}")
    assert (finished.get("status") or {}).get("jobStatus", "Successful") == "Successful", finished.get("status")
