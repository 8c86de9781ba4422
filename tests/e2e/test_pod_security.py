"""Restricted Pod security is enforced for real by the kubelet, for the Pods the operator creates from the
server and trainer images (the operator's own Pod: test_install)."""

from __future__ import annotations

import json
import time
import uuid

import pytest

from feedbackloop.core import api, resources

PROBE = (
    "import os, getpass, json\n"
    "def attempt(path):\n"
    "    try:\n"
    "        open(path, 'w').write('x'); return 'written'\n"
    "    except OSError as error:\n"
    "        return error.strerror\n"
    "print(json.dumps({'uid': os.getuid(), 'user': getpass.getuser(), 'root_fs': attempt('/evil'),\n"
    "                  'scratch': attempt(os.path.join(os.environ['TMPDIR'], 'ok'))}))\n"
)


def loop_object(namespace: str) -> dict:
    return {
        "apiVersion": "feedbackloop.dev/v1alpha1",
        "kind": "ModelFeedbackLoop",
        "metadata": {"name": "churn", "namespace": namespace, "uid": str(uuid.uuid4())},
    }


def spec() -> api.ModelFeedbackLoopSpec:
    return api.validate_spec(
        {
            "model": {"name": "churn", "storage": {"hostPath": {"path": "/var/tmp"}}},
            "monitoring": {"prometheus": {"url": "http://127.0.0.1:9"}},
            "retraining": {"features": ["x0"], "target": "label"},
        }
    )


def pod_templates(namespace: str) -> dict[str, dict]:
    """The Pod templates the operator creates for the server and the trainer, exactly as it renders them."""
    loop = loop_object(namespace)
    server = resources.server_deployment(loop, spec(), 1, "stable", 1)["spec"]["template"]
    trainer = resources.training_job(loop, spec(), "churn-train-v1", 1, None, "Manual")["spec"]["template"]
    return {"server": server, "trainer": trainer}


def run_pod(kubectl, namespace: str, name: str, template: dict, command: list[str], timeout: float = 90) -> dict:
    pod_spec = {**template["spec"], "restartPolicy": "Never"}
    pod_spec["volumes"] = [v for v in pod_spec["volumes"] if v["name"] != "artifacts"]
    container = {**pod_spec["containers"][0], "command": command}
    container.pop("readinessProbe", None), container.pop("livenessProbe", None)
    container["volumeMounts"] = [m for m in container["volumeMounts"] if m["name"] != "artifacts"]
    container["env"] = [e for e in container["env"] if "secretKeyRef" not in e.get("valueFrom", {})]
    pod_spec["containers"] = [container]
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace}, "spec": pod_spec}
    kubectl("apply", "-f", "-", input=json.dumps(pod))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        current = json.loads(kubectl("get", "pod", name, "-n", namespace, "-o", "json").stdout)
        waiting = [s["state"].get("waiting", {}) for s in current["status"].get("containerStatuses", [])]
        if current["status"].get("phase") in {"Succeeded", "Failed"} or any(
            w.get("reason") == "CreateContainerConfigError" for w in waiting
        ):
            return current
        time.sleep(1)
    raise AssertionError(f"pod {name} did not finish: {json.dumps(current['status'])[:2000]}")


@pytest.mark.parametrize("component", ["server", "trainer"])
def test_root_filesystem_is_read_only_and_the_user_is_not_root(kubectl, image_refs, k8s_namespace, component):
    template = pod_templates(k8s_namespace)[component]
    template["spec"]["containers"][0]["image"] = image_refs[component]
    pod = run_pod(kubectl, k8s_namespace, f"{component}-probe", template, ["python", "-c", PROBE])
    logs = kubectl("logs", f"{component}-probe", "-n", k8s_namespace).stdout
    assert pod["status"]["phase"] == "Succeeded", logs
    seen = json.loads(logs.strip().splitlines()[-1])
    assert seen == {"uid": 65532, "user": "mfl", "root_fs": "Read-only file system", "scratch": "written"}


def test_run_as_non_root_refuses_a_root_container(kubectl, image_refs, k8s_namespace):
    template = pod_templates(k8s_namespace)["server"]
    container = template["spec"]["containers"][0]
    container["image"] = image_refs["server"]
    container["securityContext"] = {**container["securityContext"], "runAsUser": 0}
    pod = run_pod(kubectl, k8s_namespace, "root-probe", template, ["python", "-c", "print('ran as root')"])
    [status] = pod["status"]["containerStatuses"]
    assert status["state"]["waiting"]["reason"] == "CreateContainerConfigError"
    assert "non-root" in status["state"]["waiting"]["message"]
