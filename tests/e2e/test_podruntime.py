"""The pod runtime against the real local control plane: Jobs, Deployments, Services, probes, deletion.

Needs root (network namespaces, bind mounts): elsewhere these tests skip, under CI=true they fail.
"""
from __future__ import annotations

import http.client
import ipaddress
import json
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from feedbackloop.localdev import TestbedError
from feedbackloop.localdev.netutil import http_json, wait_until
from feedbackloop.localdev.podruntime import PodRuntimeProcess

from tests.conftest import timings_key

pytestmark = pytest.mark.e2e

POD_SUBNET = ipaddress.ip_network("10.244.0.0/24")
Kubectl = Callable[..., "subprocess.CompletedProcess[str]"]


def unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() in {"true", "1", "yes"}:
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def runtime(request: pytest.FixtureRequest, control_plane: Any,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The session's shared pod runtime when conftest offers one (`pod_runtime`), else our own."""
    try:
        shared = request.getfixturevalue("pod_runtime")
    except pytest.FixtureLookupError:
        shared = None
    if shared is not None:
        yield shared
        return
    own = PodRuntimeProcess(control_plane.kubeconfig, tmp_path_factory.mktemp("podruntime"))
    try:
        own.start()
    except (TestbedError, OSError, subprocess.SubprocessError) as error:
        unavailable(f"pod runtime could not start: {error}")
    yield own
    own.stop()


@pytest.fixture
def kubectl(control_plane: Any) -> Kubectl:
    return control_plane.kubectl


@pytest.fixture
def namespace(kubectl: Kubectl, runtime: Any) -> Iterator[str]:
    name = f"prt-{uuid.uuid4().hex[:8]}"
    kubectl("create", "namespace", name)
    # 1.20 admits Pods only once the namespace's default ServiceAccount has its token Secret.
    wait_until(lambda: get(kubectl, name, "serviceaccount", "default").get("secrets"), 60, "the token secret")
    yield name
    kubectl("delete", "namespace", name, "--wait=false", check=False)


def get(kubectl: Kubectl, namespace: str, *what: str) -> dict[str, Any]:
    return json.loads(kubectl("get", "-n", namespace, *what, "-o", "json").stdout)


def apply(kubectl: Kubectl, namespace: str, *objects: dict[str, Any]) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                                    "items": list(objects)}))


def pods(kubectl: Kubectl, namespace: str, selector: str) -> list[dict[str, Any]]:
    return get(kubectl, namespace, "pods", "-l", selector)["items"]


def condition(obj: dict[str, Any], kind: str) -> str | None:
    return next((c["status"] for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == kind), None)


def job(name: str, script: str, **container: Any) -> dict[str, Any]:
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
            "spec": {"backoffLimit": 0, "template": {"spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "main", "image": "ghcr.io/feedbackloop/mfl-trainer:e2e",
                                "command": ["python", "-c", script], **container}]}}}}


def wait_job(kubectl: Kubectl, namespace: str, name: str, kind: str, timeout: float = 90) -> None:
    wait_until(lambda: condition(get(kubectl, namespace, "job", name), kind) == "True", timeout,
               f"job {name} to be {kind}")


TRAIN = """
import json, os, pathlib, socket
pathlib.Path('/artifacts/model.txt').write_text('trained')
summary = {'ok': True, 'podIP': os.environ['POD_IP'], 'token': os.environ['TOKEN'], 'cwd': os.getcwd(),
           'hostname': socket.gethostname(), 'unbuffered': os.environ.get('PYTHONUNBUFFERED'),
           'init': pathlib.Path('/scratch/init.txt').read_text()}
pathlib.Path('/dev/termination-log').write_text(json.dumps(summary))
print('trained')
"""


def test_job_completes_with_its_termination_message(kubectl: Kubectl, namespace: str, runtime: Any) -> None:
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"}, "stringData": {"token": "s3cret"}}
    claim = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "artifacts"},
             "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}
    train = job("train", TRAIN, workingDir="/scratch", env=[
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
    ], volumeMounts=[{"name": "artifacts", "mountPath": "/artifacts"}, {"name": "scratch", "mountPath": "/scratch"}])
    train["spec"]["template"]["spec"]["initContainers"] = [{
        "name": "prepare", "image": "busybox", "command": ["sh", "-c", "echo -n prepared > /scratch/init.txt"],
        "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}]}]
    train["spec"]["template"]["spec"]["volumes"] = [
        {"name": "artifacts", "persistentVolumeClaim": {"claimName": "artifacts"}},
        {"name": "scratch", "emptyDir": {}}]
    apply(kubectl, namespace, secret, claim, train)

    wait_job(kubectl, namespace, "train", "Complete")

    [pod] = pods(kubectl, namespace, "job-name=train")
    assert pod["status"]["phase"] == "Succeeded"
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"]) == (0, "Completed")
    summary = json.loads(terminated["message"])
    assert summary == {"ok": True, "podIP": pod["status"]["podIP"], "token": "s3cret", "cwd": "/scratch",
                       "hostname": pod["metadata"]["name"], "unbuffered": "1", "init": "prepared"}
    assert pod["status"]["initContainerStatuses"][0]["state"]["terminated"]["exitCode"] == 0
    assert ipaddress.ip_address(pod["status"]["podIP"]) in POD_SUBNET
    info = runtime.info()
    assert (Path(info["volumes"]) / namespace / "artifacts" / "model.txt").read_text() == "trained"
    log = Path(info["logs"]) / f"{namespace}_{pod['metadata']['name']}_main.log"
    assert "trained" in log.read_text()
    assert kubectl("logs", "-n", namespace, pod["metadata"]["name"]).stdout == "trained\n"


def test_failing_container_fails_the_pod_and_the_job(kubectl: Kubectl, namespace: str) -> None:
    script = "import sys; print('bad data: no rows', file=sys.stderr); sys.exit(3)"
    apply(kubectl, namespace, job("broken", script, terminationMessagePolicy="FallbackToLogsOnError"))

    wait_job(kubectl, namespace, "broken", "Failed")

    [pod] = pods(kubectl, namespace, "job-name=broken")
    assert pod["status"]["phase"] == "Failed"
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"]) == (3, "Error")
    assert "bad data: no rows" in terminated["message"]


def web_objects() -> list[dict[str, Any]]:
    labels = {"app": "web", "app.kubernetes.io/name": "web"}
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}, "spec": {
        "replicas": 2, "selector": {"matchLabels": {"app": "web"}},
        "template": {
            "metadata": {"labels": labels, "annotations": {"prometheus.io/scrape": "true"}},
            "spec": {"containers": [{
                "name": "web", "image": "busybox:1.36",
                "command": ["python", "-m", "http.server", "8000", "--bind", "0.0.0.0"],
                "ports": [{"name": "http", "containerPort": 8000}],
                "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
                "livenessProbe": {"tcpSocket": {"port": 8000}, "periodSeconds": 5},
            }]}}}}
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
               "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": "http"}]}}
    return [deployment, service]


def ready_pods(kubectl: Kubectl, namespace: str, selector: str, count: int) -> list[dict[str, Any]] | None:
    found = [pod for pod in pods(kubectl, namespace, selector) if condition(pod, "Ready") == "True"
             and not pod["metadata"].get("deletionTimestamp")]
    return found if len(found) == count else None


def http_get(ip: str, port: int) -> int:
    connection = http.client.HTTPConnection(ip, port, timeout=5)
    try:
        connection.request("GET", "/")
        return connection.getresponse().status
    finally:
        connection.close()


def test_deployment_pods_get_ready_on_their_own_ips_behind_a_service(
        kubectl: Kubectl, namespace: str, runtime: Any, pytestconfig: pytest.Config) -> None:
    started = time.monotonic()
    apply(kubectl, namespace, *web_objects())

    web = wait_until(lambda: ready_pods(kubectl, namespace, "app=web", 2), 90, "2 ready web pods")
    # Shown in the session summary: apply -> controllers -> scheduler -> runtime -> probe -> Ready.
    pytestconfig.stash[timings_key]["deployment applied to 2 pods Ready"] = time.monotonic() - started

    ips = sorted(pod["status"]["podIP"] for pod in web)
    assert len(set(ips)) == 2 and all(ipaddress.ip_address(ip) in POD_SUBNET for ip in ips)

    def endpoint_ips() -> list[str] | None:
        subsets = get(kubectl, namespace, "endpoints", "web").get("subsets") or []
        found = sorted(a["ip"] for subset in subsets for a in subset.get("addresses") or [])
        return found if found == ips else None

    wait_until(endpoint_ips, 30, "the Service endpoints to list both pods")
    assert [http_get(ip, 8000) for ip in ips] == [200, 200]

    targets = wait_until(lambda: len(sd := http_json(runtime.sd_url)) >= 2 and sd, 10, "sd targets")
    ours = {t["labels"]["pod"]: t for t in targets if t["labels"]["namespace"] == namespace}
    assert {name: t["targets"] for name, t in ours.items()} == {
        pod["metadata"]["name"]: [f"{pod['status']['podIP']}:8000"] for pod in web}
    assert all(t["labels"]["pod_label_app"] == "web" and t["labels"]["pod_label_app_kubernetes_io_name"] == "web"
               for t in ours.values())


SLEEPER = """
import os, pathlib, signal, sys, time
out = pathlib.Path('/host')
def bye(*_):
    (out / 'sigterm').write_text('received')
    sys.exit(0)
signal.signal(signal.SIGTERM, bye)
(out / 'pid').write_text(str(os.getpid()))
time.sleep(600)
"""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_deleting_a_pod_terminates_its_process_and_network(kubectl: Kubectl, namespace: str,
                                                           tmp_path: Path) -> None:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "sleeper"}, "spec": {
        "terminationGracePeriodSeconds": 10,
        "containers": [{"name": "main", "image": "busybox", "command": ["python", "-c", SLEEPER],
                        "volumeMounts": [{"name": "host", "mountPath": "/host"}]}],
        "volumes": [{"name": "host", "hostPath": {"path": str(tmp_path), "type": "Directory"}}]}}
    apply(kubectl, namespace, pod)
    pid = int(wait_until(lambda: (tmp_path / "pid").exists() and (tmp_path / "pid").read_text(), 60, "the pid file"))
    uid = get(kubectl, namespace, "pod", "sleeper")["metadata"]["uid"]
    assert alive(pid) and uid in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout

    kubectl("delete", "-n", namespace, "pod", "sleeper", "--wait=false")

    def gone() -> bool:
        return kubectl("get", "-n", namespace, "pod", "sleeper", check=False).returncode != 0
    wait_until(gone, 30, "the pod to disappear")
    assert (tmp_path / "sigterm").read_text() == "received"  # graceful: SIGTERM first
    wait_until(lambda: not alive(pid), 5, "the process to end")
    assert uid not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout


def test_crashing_container_restarts_with_back_off(kubectl: Kubectl, namespace: str) -> None:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "crasher"}, "spec": {
        "containers": [{"name": "main", "image": "busybox", "command": ["python", "-c", "raise SystemExit(4)"]}]}}
    apply(kubectl, namespace, pod)

    def backing_off() -> dict[str, Any] | None:
        status = get(kubectl, namespace, "pod", "crasher")["status"]
        container = (status.get("containerStatuses") or [{}])[0]
        waiting = (container.get("state") or {}).get("waiting") or {}
        return status if waiting.get("reason") == "CrashLoopBackOff" else None

    status = wait_until(backing_off, 60, "CrashLoopBackOff")
    container = status["containerStatuses"][0]
    assert status["phase"] == "Running" and container["restartCount"] >= 1
    assert container["lastState"]["terminated"]["exitCode"] == 4


def test_failing_liveness_probe_restarts_the_container(kubectl: Kubectl, namespace: str) -> None:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "unwell"}, "spec": {
        "terminationGracePeriodSeconds": 2,
        "containers": [{"name": "main", "image": "busybox", "command": ["python", "-m", "http.server", "8000"],
                        "livenessProbe": {"httpGet": {"path": "/healthz", "port": 8000}, "periodSeconds": 1,
                                          "failureThreshold": 2}}]}}  # http.server answers 404 there
    apply(kubectl, namespace, pod)

    def restarted() -> dict[str, Any] | None:
        statuses = get(kubectl, namespace, "pod", "unwell")["status"].get("containerStatuses") or [{}]
        return statuses[0] if statuses[0].get("restartCount", 0) >= 1 else None

    container = wait_until(restarted, 60, "a liveness restart")
    assert container["lastState"]["terminated"]["exitCode"] == 143  # SIGTERM first, within the grace period
    events = get(kubectl, namespace, "events", "--field-selector", "involvedObject.name=unwell")["items"]
    assert {"Unhealthy", "Killing"} <= {event["reason"] for event in events}


def test_unmapped_image_fails_with_a_clear_reason(kubectl: Kubectl, namespace: str) -> None:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "mystery"}, "spec": {
        "restartPolicy": "Never", "containers": [{"name": "main", "image": "example.com/team/model:3"}]}}
    apply(kubectl, namespace, pod)

    wait_until(lambda: get(kubectl, namespace, "pod", "mystery")["status"].get("phase") == "Failed", 60, "Failed")
    terminated = get(kubectl, namespace, "pod", "mystery")["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["reason"] == "ImageNotMapped" and "IMAGE_ENTRYPOINTS" in terminated["message"]
