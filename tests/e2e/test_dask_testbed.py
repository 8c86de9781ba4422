"""The test bed's part of the Dask engine, on the real node: cluster DNS for Services, the dask-kubernetes operator
installed from manifests/dask/, and a DaskJob (runner + scheduler + 2 workers, all from the mfl-trainer-dask image,
every Pod restricted) that runs a task on the workers and ends Successful."""

from __future__ import annotations

import json
import textwrap
import time
from typing import Any

import yaml

from mfl_testbed.cluster import DASK_OPERATOR_DEPLOYMENT, DASK_OPERATOR_NAMESPACE, Cluster
from mfl_testbed.dns import resolve
from mfl_testbed.node import NODE_IP

RUN_AS = 65532


def restricted_pod(containers: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """A PodSpec the `restricted` Pod Security Standard admits, with a scratch /tmp (read-only root)."""
    for container in containers:
        container["securityContext"] = {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        }
        container.setdefault("volumeMounts", []).append({"name": "tmp", "mountPath": "/tmp"})
        container.setdefault("resources", {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}})
    return {
        "automountServiceAccountToken": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS,
            "runAsGroup": RUN_AS,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": containers,
        "volumes": [{"name": "tmp", "emptyDir": {}}],
        **extra,
    }


def assert_restricted(pod: dict[str, Any]) -> None:
    spec, name = pod["spec"], pod["metadata"]["name"]
    assert spec.get("automountServiceAccountToken") is False, name
    security = spec.get("securityContext") or {}
    assert security.get("runAsNonRoot") is True and security.get("seccompProfile", {}).get("type") == "RuntimeDefault"
    assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC"), name
    assert not any("hostPath" in volume for volume in spec.get("volumes") or []), name
    for container in spec["containers"] + (spec.get("initContainers") or []):
        context = container.get("securityContext") or {}
        assert context.get("allowPrivilegeEscalation") is False, (name, container["name"])
        assert "ALL" in context.get("capabilities", {}).get("drop", []), (name, container["name"])
        assert not context.get("privileged"), (name, container["name"])


def wait_pod_done(kubectl, namespace: str, name: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    pod: dict[str, Any] = {}
    while time.monotonic() < deadline:
        result = kubectl("get", "pod", name, "-n", namespace, "-o", "json", check=False)
        if result.returncode == 0:
            pod = json.loads(result.stdout)
            if pod["status"].get("phase") in {"Succeeded", "Failed"}:
                return pod
        time.sleep(0.5)
    raise AssertionError(f"pod {name} did not finish in {timeout:.0f}s: {json.dumps(pod.get('status'))[:2000]}")


# ---- cluster DNS ---------------------------------------------------------------------------------

DNS_PROBE = textwrap.dedent(
    """
    import socket, sys, time
    service, namespace = sys.argv[1], sys.argv[2]
    for name in (f"{service}.{namespace}.svc.cluster.local", f"{service}.{namespace}", service):
        print("A", name, socket.gethostbyname(name))
    started = time.monotonic()
    try:
        socket.gethostbyname(f"missing.{namespace}.svc.cluster.local")
        print("MISSING resolved")
    except socket.gaierror:
        print("MISSING nxdomain %.2f" % (time.monotonic() - started))
    print("RESOLV", open("/etc/resolv.conf").read().replace(chr(10), "|"))
    """
)


def test_pods_resolve_services_by_name(cluster: Cluster, kubectl, k8s_namespace, image_refs) -> None:
    ns = k8s_namespace
    # From the host: dnsmasq on the node's IP answers for the API's own Service, and NXDOMAIN for others.
    assert resolve("kubernetes.default.svc.cluster.local", NODE_IP) == ["10.96.0.1"]
    assert resolve(f"nothing-here.{ns}.svc.cluster.local", NODE_IP) == []

    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": ns},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }
    kubectl("apply", "-f", "-", input=yaml.safe_dump(service))
    cluster_ip = json.loads(kubectl("get", "service", "web", "-n", ns, "-o", "json").stdout)["spec"]["clusterIP"]
    container = {"name": "probe", "image": image_refs["trainer"], "command": ["python", "-c", DNS_PROBE, "web", ns]}
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "dns-probe", "namespace": ns},
        "spec": restricted_pod([container], restartPolicy="Never"),
    }
    kubectl("apply", "-f", "-", input=yaml.safe_dump(pod))
    done = wait_pod_done(kubectl, ns, "dns-probe", 90)
    logs = kubectl("logs", "dns-probe", "-n", ns).stdout
    assert done["status"]["phase"] == "Succeeded", logs
    lines = dict(line.split(" ", 1) for line in logs.splitlines() if " " in line)
    assert logs.count(f" {cluster_ip}\n") == 3, logs  # the full name, <svc>.<ns> and <svc> (search path)
    assert lines["MISSING"].startswith("nxdomain") and float(lines["MISSING"].split()[1]) < 2.0, logs
    assert f"nameserver {NODE_IP}" in lines["RESOLV"] and f"search {ns}.svc.cluster.local" in lines["RESOLV"], logs


# ---- the dask-kubernetes operator and a DaskJob -----------------------------------------------------

RUNNER = textwrap.dedent(
    """
    import os, socket, time
    from distributed import Client
    address = os.environ["DASK_SCHEDULER_ADDRESS"]
    client = Client(address, timeout=120)
    host = address.split("://", 1)[1].rsplit(":", 1)[0]
    print("RESOLVED", host, socket.gethostbyname(host), flush=True)
    client.wait_for_workers(2, timeout=240)
    result = client.submit(sum, [1, 2]).result()
    assert result == 3, result
    print("RESULT", result, "WORKERS", len(client.scheduler_info()["workers"]), flush=True)
    client.close()
    """
)


def dask_job(name: str, namespace: str, image: str, workers: int = 2) -> dict[str, Any]:
    scheduler = {
        "name": "scheduler",
        "image": image,
        "command": ["dask", "scheduler"],
        "ports": [
            {"name": "tcp-comm", "containerPort": 8786, "protocol": "TCP"},
            {"name": "http-dashboard", "containerPort": 8787, "protocol": "TCP"},
        ],
        "readinessProbe": {"httpGet": {"port": "http-dashboard", "path": "/health"}, "periodSeconds": 2},
        "livenessProbe": {"httpGet": {"port": "http-dashboard", "path": "/health"}, "initialDelaySeconds": 15},
    }
    worker = {
        "name": "worker",
        "image": image,
        "command": ["dask", "worker", "--name", "$(DASK_WORKER_NAME)", "--nthreads", "1"],
        "args": ["--dashboard", "--dashboard-address", "8788", "--memory-limit", "900MiB"],
        "ports": [{"name": "http-dashboard", "containerPort": 8788, "protocol": "TCP"}],
    }
    runner = {"name": "runner", "image": image, "command": ["python", "-c", RUNNER]}
    return {
        "apiVersion": "kubernetes.dask.org/v1",
        "kind": "DaskJob",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "job": {"spec": restricted_pod([runner], restartPolicy="Never")},
            "cluster": {
                "spec": {
                    "worker": {"replicas": workers, "spec": restricted_pod([worker])},
                    "scheduler": {
                        "spec": restricted_pod([scheduler]),
                        "service": {
                            "type": "ClusterIP",
                            "selector": {"dask.org/cluster-name": name, "dask.org/component": "scheduler"},
                            "ports": [
                                {"name": "tcp-comm", "protocol": "TCP", "port": 8786, "targetPort": "tcp-comm"},
                                {
                                    "name": "http-dashboard",
                                    "protocol": "TCP",
                                    "port": 8787,
                                    "targetPort": "http-dashboard",
                                },
                            ],
                        },
                    },
                }
            },
        },
    }


def test_dask_operator_runs(dask_operator: Cluster, kubectl) -> None:
    deployment = json.loads(
        kubectl("get", "deployment", DASK_OPERATOR_DEPLOYMENT, "-n", DASK_OPERATOR_NAMESPACE, "-o", "json").stdout
    )
    assert deployment["status"].get("readyReplicas") == 1
    [pod] = [
        p
        for p in dask_operator.pods(DASK_OPERATOR_NAMESPACE, "app.kubernetes.io/name=dask-kubernetes-operator")
        if not p["metadata"].get("deletionTimestamp")
    ]
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert pod["status"]["containerStatuses"][0]["restartCount"] == 0, dask_operator.dask_operator_logs()


def test_daskjob_with_two_workers_succeeds(dask_operator: Cluster, kubectl, k8s_namespace, image_refs) -> None:
    ns, name = k8s_namespace, "sum"
    started = time.monotonic()
    kubectl("create", "-f", "-", input=yaml.safe_dump(dask_job(name, ns, image_refs["trainer-dask"])))
    seen: dict[str, dict[str, Any]] = {}  # every Pod of the job seen while it ran (its cluster goes at the end)
    status: dict[str, Any] = {}
    deadline = started + 300
    while time.monotonic() < deadline:
        for pod in json.loads(kubectl("get", "pods", "-n", ns, "-o", "json").stdout)["items"]:
            seen[pod["metadata"]["name"]] = pod
        status = json.loads(kubectl("get", "daskjob", name, "-n", ns, "-o", "json").stdout).get("status") or {}
        if status.get("jobStatus") in {"Successful", "Failed"}:
            break
        time.sleep(1)
    elapsed = time.monotonic() - started
    runner_logs = kubectl("logs", f"{name}-runner", "-n", ns, check=False)
    detail = (
        f"status {status}\n--- runner ---\n{runner_logs.stdout}{runner_logs.stderr}\n"
        f"--- pods ---\n{sorted(seen)}\n--- dask operator ---\n{dask_operator.dask_operator_logs(40)}"
    )
    assert status.get("jobStatus") == "Successful", detail
    print(f"DaskJob {name}: Successful in {elapsed:.1f}s")
    assert "RESULT 3 WORKERS 2" in runner_logs.stdout, detail
    # The runner reached the scheduler by its Service's cluster DNS name, which the controller injected.
    assert f"RESOLVED {name}-scheduler.{ns}.svc.cluster.local 10.96." in runner_logs.stdout, detail
    components = {p["metadata"].get("labels", {}).get("dask.org/component") for p in seen.values()}
    assert {"job-runner", "scheduler", "worker"} <= components, sorted(seen)
    assert sum(c == "worker" for c in (p["metadata"]["labels"].get("dask.org/component") for p in seen.values())) >= 2
    for pod in seen.values():
        assert_restricted(pod)
