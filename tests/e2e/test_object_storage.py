"""Issue 20 end to end: a loop with no volume at all. Versions, reports, base data and prediction logs live in
a real S3-compatible store (SeaweedFS, started with the cluster), labels in a real PostgreSQL (Debian's),
each tenant with credentials of its own. Drift -> breach -> retraining -> canary -> promotion, every label
recorded once in the database, then `kubectl mfl versions` and `report` from the laptop through the store,
credentials read from the loop's Secret through the kubeconfig."""

from __future__ import annotations

import json
import re

from mfl_contracts.objectstore import S3Settings, S3Store
from mfl_testbed.traffic import TrafficGenerator, service_endpoints

from .conftest import condition_of, seed_registry
from .test_cli import KubectlMfl
from .test_loop import deployment, history_outcomes, loop_manifest

S3_HOSTS = "feedbackloop.dev/s3-hosts"


def tenant_store(cluster, prefix: str) -> S3Store:
    creds = cluster.seaweedfs.tenant_a
    return S3Store(
        S3Settings(
            endpoint=cluster.seaweedfs.url,
            bucket=creds.bucket,
            prefix=prefix,
            access_key=creds.access_key,
            secret_key=creds.secret_key,
        )
    )


def create_secrets(cluster, ns: str, database_url: str, hosts: str | None) -> None:
    creds = cluster.seaweedfs.tenant_a
    cluster.kubectl(
        "create",
        "secret",
        "generic",
        "churn-s3",
        "-n",
        ns,
        f"--from-literal=accessKeyId={creds.access_key}",
        f"--from-literal=secretAccessKey={creds.secret_key}",
    )
    if hosts is not None:
        cluster.kubectl("annotate", "secret", "churn-s3", "-n", ns, f"{S3_HOSTS}={hosts}")
    cluster.kubectl("create", "secret", "generic", "churn-db", "-n", ns, f"--from-literal=url={database_url}")


def s3_loop(cluster, ns: str, prometheus_url: str, **options):
    storage = {
        "s3": {
            "endpoint": cluster.seaweedfs.url,
            "bucket": cluster.seaweedfs.tenant_a.bucket,
            "prefix": ns,
            "credentialsSecret": "churn-s3",
        },
        "database": {"urlSecret": {"name": "churn-db"}},
    }
    return loop_manifest(ns, prometheus_url, storage, initial_version=1, **options)


def seed_bucket(store: S3Store, tmp_path) -> None:
    """Base data and version 1 trained by the real trainer on this host, uploaded as a user would."""
    root = tmp_path / "seed"
    seed_registry(root, "churn")
    store.upload(root / "churn" / "data", "churn/data")
    store.upload(root / "churn" / "versions" / "1", "churn/versions/1", last="metadata.json")


def labels_in_database(cluster, tenant: str) -> tuple[int, int]:
    with cluster.postgres.connect(cluster.postgres.url(db=tenant)) as connection:
        row = connection.execute("SELECT count(*), count(DISTINCT id) FROM mfl_labels WHERE model = 'churn'")
        return tuple(row.fetchone())


def database_tenant(ns: str) -> str:
    return re.sub(r"[^a-z0-9_]", "_", ns)[:60]


def test_loop_on_object_storage_and_postgres_recovers_from_drift(loops, prometheus, kubectl, k8s_namespace, tmp_path):
    ns, cluster = k8s_namespace, loops.cluster
    store = tenant_store(cluster, ns)
    seed_bucket(store, tmp_path)
    tenant = database_tenant(ns)
    create_secrets(cluster, ns, cluster.postgres.create_tenant(tenant), cluster.seaweedfs.url.split("//")[1])
    loops.apply(s3_loop(cluster, ns, prometheus.url))
    loops.wait_condition(ns, "churn", "ServingReady", "True", 240)
    pod_spec = deployment(kubectl, ns, "churn")["spec"]["template"]["spec"]
    assert not any("persistentVolumeClaim" in v or "hostPath" in v for v in pod_spec["volumes"]), pod_spec["volumes"]
    assert [c["name"] for c in pod_spec["initContainers"]] == ["fetch"]

    traffic = TrafficGenerator(service_endpoints(kubectl, ns, "churn"), rate=80, batch=8, label_delay=1.0).start()
    try:
        loops.wait(ns, "churn", lambda s: (s.get("metrics") or [{}])[0].get("state") == "Healthy", 120, "healthy")
        traffic.concept = 1  # drift
        loops.wait(
            ns, "churn", lambda s: (s.get("retraining") or {}).get("trigger") == "Breach", 120, "a breach retraining"
        )
        loops.wait(ns, "churn", lambda s: s.get("phase") == "Canary", 240, "the candidate's canary")
        status = loops.wait(ns, "churn", lambda s: s.get("currentVersion") == 2, 300, "promotion of version 2")
        loops.wait_recovered(ns, "churn", 2, 240)
    finally:
        traffic.stop()
    assert history_outcomes(status)[-1] == (2, "Promoted")
    # A few requests (5-9 of ~7,500 in two runs: refused connections and timeouts) fail while the Pods are
    # replaced in this mode, where the volume-backed loops see none: known, not yet explained (closing note).
    assert traffic.stats.errors <= traffic.stats.predictions // 100, traffic.stats.last_error

    keys = {info.key for info in store.list("churn/")}
    assert {"churn/versions/2/metadata.json", "churn/versions/2/report.json"} <= keys
    assert any(re.match(r"churn/predictions/date=[0-9-]+/.+\.jsonl\.gz$", key) for key in keys), sorted(keys)[:20]
    assert not any(key.startswith("churn/feedback") for key in keys)  # labels live in the database
    rows, distinct = labels_in_database(cluster, tenant)
    assert rows > 100 and rows == distinct, (rows, distinct)  # every label recorded once
    assert rows <= traffic.stats.feedback

    mfl = KubectlMfl(cluster, ns, tmp_path)  # no volume here: the store, with the loop's Secret
    versions = mfl("versions", "churn").stdout
    assert re.search(r"^2 \*", versions, re.M) and re.search(r"^1\b", versions, re.M), versions
    report = json.loads(mfl("report", "churn", "-o", "json").stdout)
    assert report["version"] == 2, report.keys()


def test_unbound_store_credentials_stall_the_loop_with_the_fix(loops, prometheus, kubectl, k8s_namespace, tmp_path):
    """A Secret that does not name the endpoint's host is never handed to a Pod: no Deployment, no Job,
    a condition and an Event that say which annotation to add."""
    ns, cluster = k8s_namespace, loops.cluster
    create_secrets(cluster, ns, "postgresql://nobody:x@127.0.0.1:1/none", hosts="elsewhere.example.com")
    loops.apply(s3_loop(cluster, ns, prometheus.url))
    status = loops.wait(
        ns,
        "churn",
        lambda s: condition_of(s, "Ready").get("reason") == "StorageCredentialsNotBound",
        60,
        "the refusal",
    )
    assert S3_HOSTS in condition_of(status, "Ready")["message"]
    assert "StorageCredentialsNotBound" in loops.reasons(ns, "churn")
    listed = json.loads(kubectl("get", "deployments,jobs", "-n", ns, "-o", "json").stdout)["items"]
    assert listed == []
