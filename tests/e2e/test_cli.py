"""Issue 12, item 5 end to end: `kubectl mfl` as a real kubectl plugin (the test bed's kubectl finds the
installed `kubectl-mfl` script on PATH) acting on a running loop: a refused promote without a canary,
`retrain` starting a retraining, `abort` rolling its canary back, `promote` promoting the next one, all
without touching the spec; the namespace comes from the kubeconfig's context. Issue 23, item 3: kubectl's
output flags (-o name|wide|jsonpath=|custom-columns=), -l, --no-headers, --request-timeout as a duration,
`version` and the exit codes, through kubectl's own plugin mechanism (kubectl execs the plugin: its exit
code is the plugin's)."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from mfl_testbed.traffic import TrafficGenerator, service_endpoints

from .conftest import artifact_claim, seed_registry
from .test_loop import history_outcomes, loop_manifest

PLUGIN = Path(sys.executable).parent / "kubectl-mfl"  # installed by `pip install -e .` ([project.scripts])


class KubectlMfl:
    """`kubectl mfl ...` through the test bed's kubectl binary, with a kubeconfig whose context
    namespace is the test's, so no command needs -n."""

    def __init__(self, cluster, namespace: str, folder: Path) -> None:
        config = yaml.safe_load(Path(cluster.plane.kubeconfig).read_text())
        for context in config["contexts"]:
            context["context"]["namespace"] = namespace
        self.kubeconfig = folder / "kubeconfig"
        self.kubeconfig.write_text(yaml.safe_dump(config))
        self.kubectl = str(cluster.plane.bin_dir / "kubectl")
        self.env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "PATH": f"{PLUGIN.parent}{os.pathsep}{os.environ.get('PATH', '')}",
        }

    def __call__(self, *args: str, expect: int = 0) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [self.kubectl, "mfl", *args], capture_output=True, text=True, env=self.env, timeout=60, check=False
        )
        assert result.returncode == expect, f"kubectl mfl {' '.join(args)}: {result.returncode}\n{result.stderr}"
        assert "Traceback" not in result.stderr, result.stderr
        return result


def kubectl_conventions(mfl: KubectlMfl) -> None:
    """The flags of issue 23 on the running loop `churn` (the context's namespace), as kubectl's mean them."""
    resource = "modelfeedbackloop.feedbackloop.dev/churn"
    assert mfl("get", "-o", "name").stdout == f"{resource}\n"
    assert mfl("get", "churn", "-o", "name").stdout == f"{resource}\n"
    assert mfl("get", "-o", "jsonpath={.items[*].metadata.name}").stdout == "churn"  # no newline, as kubectl
    ready = 'jsonpath={.status.conditions[?(@.type=="ServingReady")].status}'
    assert mfl("get", "churn", "-o", ready).stdout == "True"
    ranged = mfl("get", "-o", 'jsonpath={range .items[*]}{.metadata.name}{"\\t"}{.status.currentVersion}{"\\n"}{end}')
    assert ranged.stdout == "churn\t1\n"
    columns = mfl("get", "-o", "custom-columns=LOOP:.metadata.name,SERVING:.status.currentVersion").stdout
    assert [line.split() for line in columns.splitlines()] == [["LOOP", "SERVING"], ["churn", "1"]]
    assert mfl("get", "-o", "wide").stdout.splitlines()[0].split()[-4:] == ["MODEL", "READY", "REASON", "METRIC"]
    headless = mfl("get", "--no-headers", "--request-timeout", "30s").stdout.splitlines()
    assert len(headless) == 1 and headless[0].split()[0] == "churn" and headless[0].split()[2] == "1"

    labelled = subprocess.run(
        [mfl.kubectl, "label", "modelfeedbackloop", "churn", "team=ml", "--overwrite"],
        capture_output=True,
        text=True,
        env=mfl.env,
        timeout=60,
        check=False,
    )
    assert labelled.returncode == 0, labelled.stderr
    assert mfl("get", "-l", "team=ml", "-o", "name").stdout == f"{resource}\n"
    nobody = mfl("get", "-l", "team=nobody")
    assert nobody.stdout == "" and "no modelfeedbackloops found" in nobody.stderr

    usage = mfl("get", "--bogus", expect=2)
    assert usage.stderr.startswith("kubectl mfl: unrecognized arguments: --bogus") and usage.stdout == ""
    missing = mfl("get", "nope", expect=1)
    assert missing.stderr.startswith("kubectl mfl: modelfeedbackloop 'nope' not found")

    # version: the client's (the installed distribution), the operator's as its Deployment says it
    found = subprocess.run(
        [
            mfl.kubectl,
            "get",
            "deployment",
            "-n",
            "feedbackloop-system",
            "-l",
            "app.kubernetes.io/name=feedbackloop-operator",
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        env=mfl.env,
        timeout=60,
        check=True,
    )
    [deployment] = json.loads(found.stdout)["items"]
    label = deployment["metadata"].get("labels", {}).get("app.kubernetes.io/version")
    image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    client = importlib.metadata.version("model-feedback-loop")
    lines = mfl("version").stdout.splitlines()
    assert lines[0] == f"Client Version: {client}"
    assert lines[1].startswith(f"Operator Version: {label or image.rsplit(':', 1)[-1]} (feedbackloop-system/")
    if label:  # the release's recommended label: one version for the client and the operator
        assert label == client
    assert mfl("version", "--client").stdout == f"Client Version: {client}\n"
    assert json.loads(mfl("version", "-o", "json").stdout)["operatorVersion"]["image"] == image


def annotation(loops, ns: str, verb: str) -> str | None:
    return (loops.get(ns, "churn")["metadata"].get("annotations") or {}).get(f"feedbackloop.dev/{verb}")


def test_kubectl_mfl_retrain_abort_and_promote_a_running_loop(loops, prometheus, kubectl, k8s_namespace, tmp_path):
    assert PLUGIN.exists(), "kubectl-mfl is not installed: pip install -e '.[test]'"
    ns = k8s_namespace
    mfl = KubectlMfl(loops.cluster, ns, tmp_path)
    claim, storage = artifact_claim(loops.cluster, ns)
    seed_registry(storage, "churn")
    # Long step pauses and deadline: the canaries wait for our promote/abort instead of deciding alone.
    manifest = loop_manifest(ns, prometheus.url, claim, initial_version=1, max_degradation=1.0, pauses=("10m", "10m"))
    manifest["spec"]["rollout"]["analysis"]["maxDuration"] = "30m"
    loops.apply(manifest)
    loops.wait_condition(ns, "churn", "ServingReady", "True", 120)
    generation = loops.get(ns, "churn")["metadata"]["generation"]

    listed = mfl("get").stdout.splitlines()  # the context's namespace, no -n
    assert listed[0].split() == ["NAME", "PHASE", "VERSION", "CANARY", "AGE"]
    assert listed[1].split()[0] == "churn" and listed[1].split()[2:4] == ["1", "-"]
    assert json.loads(mfl("status", "churn", "-o", "json").stdout)["currentVersion"] == 1

    kubectl_conventions(mfl)

    refused = mfl("promote", "churn", expect=1)
    assert refused.stderr.startswith("kubectl mfl: churn has no canary running") and refused.stdout == ""
    assert annotation(loops, ns, "promote") is None

    traffic = TrafficGenerator(service_endpoints(kubectl, ns, "churn"), rate=80, batch=8, label_delay=1.0).start()
    try:
        # retrain -> a Manual retraining -> the candidate's canary -> abort -> rolled back
        out = mfl("retrain", "churn").stdout
        assert out.startswith(f"{ns}/churn: requested a retraining") and "asynchronously" in out
        status = loops.wait(ns, "churn", lambda s: s.get("phase") == "Retraining", 30, "the retraining")
        assert status["retraining"]["trigger"] == "Manual" and status["retraining"]["version"] == 2
        assert status["handledRequests"]["retrain"] == annotation(loops, ns, "retrain")
        status = loops.wait(ns, "churn", lambda s: s.get("phase") == "Canary", 240, "the canary of version 2")
        assert status["rollout"]["version"] == 2
        row = mfl("get", "-n", ns).stdout.splitlines()[1].split()
        assert row[:4] == ["churn", "Canary", "1", "v2"]
        assert "rollback of canary version 2" in mfl("abort", "churn").stdout
        status = loops.wait(ns, "churn", lambda s: (2, "RolledBack") in history_outcomes(s), 60, "the abort")
        assert status["currentVersion"] == 1 and status.get("rollout") is None
        assert (
            status["history"][-1]["message"] == "aborted by annotation" and status["history"][-1]["trigger"] == "Manual"
        )

        # retrain again (a manual request skips the cooldown) -> canary of version 3 -> promote
        mfl("retrain", "churn")
        status = loops.wait(
            ns, "churn", lambda s: (s.get("rollout") or {}).get("version") == 3, 240, "the canary of version 3"
        )
        assert "promotion of canary version 3" in mfl("promote", "churn").stdout
        status = loops.wait(ns, "churn", lambda s: s.get("currentVersion") == 3, 60, "the promotion")
    finally:
        traffic.stop()
    assert (
        history_outcomes(status)[-1] == (3, "Promoted") and status["history"][-1]["message"] == "promoted by annotation"
    )
    assert status["handledRequests"]["promote"] == annotation(loops, ns, "promote")
    assert loops.get(ns, "churn")["metadata"]["generation"] == generation  # annotations only: the spec is untouched
    assert "Promoted" in loops.reasons(ns, "churn")
