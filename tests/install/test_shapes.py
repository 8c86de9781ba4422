"""Every install shape renders with `kubectl kustomize` (a kustomize that knows Components), and what it
renders is what docs/install.md promises: least-privilege RBAC, one leader Lease in the operator's
namespace, two replicas and a PodDisruptionBudget for HA, nothing cluster-scoped in the namespaced shape."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kopf
import pytest
import yaml

from feedbackloop import main
from feedbackloop.runtime import leader
from mfl_testbed.pytest_plugin import unavailable

from .shapes import (
    MANIFESTS,
    SHAPES,
    by_kind,
    env_of,
    for_kubernetes_1_20,
    image_overrides,
    one,
    operator_container,
    overlay,
    render,
    render_shape,
)

CLUSTER_SCOPED = {"Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"}
SYSTEM = "feedbackloop-system"
RBAC = "rbac.authorization.k8s.io"


def rules_of(role: dict[str, Any]) -> list[tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...], tuple[str, ...]]]:
    return sorted(
        (tuple(r["apiGroups"]), tuple(r["resources"]), tuple(sorted(r["verbs"])), tuple(r.get("resourceNames", ())))
        for r in role["rules"]
    )


def identity(doc: dict[str, Any]) -> tuple[str, str | None, str]:
    return doc["kind"], doc["metadata"].get("namespace"), doc["metadata"]["name"]


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_every_shape_renders_one_operator_deployment_with_leader_election(tmp_path: Path, shape: str) -> None:
    objects = render_shape(tmp_path, shape)
    deployment = one(objects, "Deployment", "feedbackloop-operator")
    surge = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    assert deployment["spec"]["strategy"] == surge  # safe with leader election: the surge Pod stands by
    env = env_of(operator_container(objects))
    assert env["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}  # the Lease holder
    assert env["POD_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}  # where the Lease lives
    assert "MFL_LEADER_ELECTION" not in env  # on by default
    lease_role = one(objects, "Role", "feedbackloop-operator-leader-election")
    assert lease_role["metadata"]["namespace"] == SYSTEM
    assert rules_of(lease_role) == [
        (("coordination.k8s.io",), ("leases",), ("create",), ()),
        (("coordination.k8s.io",), ("leases",), ("get", "update"), (leader.DEFAULT_LEASE,)),
    ]
    binding = one(objects, "RoleBinding", "feedbackloop-operator-leader-election")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "feedbackloop-operator", "namespace": SYSTEM}]
    for role in by_kind(objects, "ClusterRole"):  # leader election never needs anything cluster-wide
        assert not [r for r in role["rules"] if "leases" in r["resources"]], role


def test_default_shape_is_cluster_wide_with_one_replica(tmp_path: Path) -> None:
    objects = render_shape(tmp_path, "cluster-wide")
    assert one(objects, "Deployment")["spec"]["replicas"] == 1  # the crash tests' single operator Pod
    assert not by_kind(objects, "PodDisruptionBudget")  # minAvailable 1 of 1 would block every drain
    assert {identity(d) for d in objects if d["kind"] in CLUSTER_SCOPED} == {
        ("Namespace", None, SYSTEM),
        ("CustomResourceDefinition", None, "modelfeedbackloops.feedbackloop.dev"),
        ("ClusterRole", None, "feedbackloop-operator"),
        ("ClusterRoleBinding", None, "feedbackloop-operator"),
    }
    assert "MFL_WATCH_NAMESPACES" not in env_of(operator_container(objects))


def test_every_kustomization_lists_resources_never_the_deprecated_bases() -> None:
    """What kubectl 1.20 needs (`bases:` for a directory, no `labels:`) lives in the test bed
    (mfl_testbed.render), not in manifests/: the install is written for the kubectl users run."""
    found = sorted(MANIFESTS.rglob("kustomization.yaml")) + [MANIFESTS.parent / "crds" / "kustomization.yaml"]
    assert len(found) >= 8
    for path in found:
        kustomization = yaml.safe_load(path.read_text())
        assert "bases" not in kustomization and "commonLabels" not in kustomization, path
        assert "patchesStrategicMerge" not in kustomization and "patchesJson6902" not in kustomization, path
    assert "../crds" in yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())["resources"]


def test_the_test_beds_kubectl_1_20_cannot_render_the_install_so_the_test_bed_renders_it(tmp_path: Path) -> None:
    old = sorted(Path.home().glob(".cache/mfl/k8s-1.20*/bin/kubectl"))
    if not old:
        unavailable("the test bed's kubectl 1.20 is not built (make control-plane)")
    with pytest.raises(AssertionError):  # kustomize 2.0.3: a directory under resources, `labels:`
        render(MANIFESTS, str(old[-1]))
    rendered = render(MANIFESTS)
    assert for_kubernetes_1_20(rendered) == [
        {**d, "spec": {**d["spec"], "versions": [without_cel(v) for v in d["spec"]["versions"]]}}
        if d["kind"] == "CustomResourceDefinition"
        else d
        for d in rendered
    ]


def without_cel(node: Any) -> Any:
    if isinstance(node, list):
        return [without_cel(item) for item in node]
    if isinstance(node, dict):
        return {k: without_cel(v) for k, v in node.items() if k != "x-kubernetes-validations"}
    return node


def test_ha_shape_has_two_replicas_spread_and_a_disruption_budget(tmp_path: Path) -> None:
    base = {identity(d): d for d in render_shape(tmp_path, "cluster-wide")}
    objects = render_shape(tmp_path, "ha")
    deployment = one(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    pods = deployment["spec"]["template"]["metadata"]["labels"]
    [preferred] = deployment["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    term = preferred["podAffinityTerm"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"].items() <= pods.items()
    pdb = one(objects, "PodDisruptionBudget")
    assert pdb["apiVersion"] == "policy/v1" and pdb["metadata"]["namespace"] == SYSTEM
    assert pdb["spec"]["minAvailable"] == 1 and pdb["spec"]["selector"]["matchLabels"].items() <= pods.items()
    # Nothing else changes: the same RBAC, CRD, Service; the container is the base's.
    changed = {identity(d) for d in objects if base.get(identity(d)) != d}
    assert changed == {(kind, SYSTEM, "feedbackloop-operator") for kind in ("Deployment", "PodDisruptionBudget")}
    assert operator_container(objects) == operator_container(list(base.values()))


@pytest.mark.parametrize("namespace", [None, "team-a"])
def test_namespaced_shape_renders_namespaced_objects_only_on_a_role(tmp_path: Path, namespace: str | None) -> None:
    objects = render_shape(tmp_path, "namespaced", namespace)
    served = namespace or SYSTEM
    assert not [identity(d) for d in objects if d["kind"] in CLUSTER_SCOPED]  # a namespace admin can apply it
    assert {d["metadata"].get("namespace") for d in objects} == {served}
    env = env_of(operator_container(objects))
    assert env["MFL_WATCH_NAMESPACES"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}  # its own namespace
    role = one(objects, "Role", "feedbackloop-operator")
    binding = one(objects, "RoleBinding", "feedbackloop-operator")
    assert binding["roleRef"] == {"apiGroup": RBAC, "kind": "Role", "name": "feedbackloop-operator"}
    account = {"kind": "ServiceAccount", "name": "feedbackloop-operator", "namespace": served}
    for rolebinding in by_kind(objects, "RoleBinding"):  # the subject moved with the overlay's namespace
        assert rolebinding["subjects"] == [account]
    # The same permissions as the cluster-wide ClusterRole on namespaced resources, and none on CRDs.
    cluster_role = one(render_shape(tmp_path, "cluster-wide"), "ClusterRole", "feedbackloop-operator")
    namespaced_rules = [r for r in rules_of(cluster_role) if r[1] != ("customresourcedefinitions",)]
    assert rules_of(role) == namespaced_rules
    assert len(namespaced_rules) == len(rules_of(cluster_role)) - 1


def test_shapes_combine_namespaced_ha_and_monitoring(tmp_path: Path) -> None:
    objects = render(overlay(tmp_path / "all", ("namespaced", "ha", "monitoring"), "team-b"))
    assert one(objects, "Deployment")["spec"]["replicas"] == 2
    assert one(objects, "PodDisruptionBudget")["metadata"]["namespace"] == "team-b"
    assert {"PodMonitor", "ServiceMonitor", "PrometheusRule"} <= {d["kind"] for d in objects}
    assert not [d for d in objects if d["kind"] in CLUSTER_SCOPED]


# --- how the operator reads the namespace-scoped shape ---------------------------------------------------
@pytest.mark.parametrize(
    "flags, env, expected",
    [
        ([], "", []),
        ([], "team-a", ["team-a"]),
        ([], " team-b, team-a ,team-b", ["team-a", "team-b"]),
        (["x"], "team-a", ["x"]),
        ([], "team-a team-c", ["team-a", "team-c"]),
    ],  # fmt: skip
)
def test_watched_namespaces(flags: list[str], env: str, expected: list[str]) -> None:
    assert main.watched_namespaces(flags, env) == expected


@pytest.mark.parametrize("env, clusterwide", [("", True), ("team-a,team-b", False)])
def test_main_runs_kopf_on_the_watched_namespaces_without_scanning(
    monkeypatch: pytest.MonkeyPatch, env: str, clusterwide: bool
) -> None:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(kopf, "run", lambda **kwargs: calls.append(kwargs))
    monkeypatch.setenv("MFL_WATCH_NAMESPACES", env)
    main.main(["--metrics-port=0", "--liveness="])
    [call] = calls
    assert call["clusterwide"] is clusterwide
    assert list(call["namespaces"]) == ([] if clusterwide else ["team-a", "team-b"])
    # Listed namespaces: no cluster-wide list of namespaces or watch of CRDs (the Role grants neither).
    assert call["settings"].scanning.disabled is not clusterwide


def test_the_test_bed_gets_its_disruption_budget_as_policy_v1beta1(tmp_path: Path) -> None:
    objects = render_shape(tmp_path, "ha")
    adapted = for_kubernetes_1_20(objects)
    assert one(adapted, "PodDisruptionBudget")["apiVersion"] == "policy/v1beta1"
    assert one(adapted, "PodDisruptionBudget")["spec"] == one(objects, "PodDisruptionBudget")["spec"]
    crd = one(objects, "CustomResourceDefinition")
    assert "x-kubernetes-validations" in yaml.safe_dump(crd)  # the CEL rules, which 1.20's kubectl refuses
    assert one(adapted, "CustomResourceDefinition") == without_cel(crd)
    unchanged = {"PodDisruptionBudget", "CustomResourceDefinition"}
    assert [d for d in adapted if d["kind"] not in unchanged] == [d for d in objects if d["kind"] not in unchanged]
    refs = {"operator": "localhost/mfl-operator:tree-1a2b"}
    path = overlay(tmp_path / "bed", ("ha",), images=image_overrides(refs))
    assert operator_container(render(path))["image"] == "localhost/mfl-operator:tree-1a2b"


def test_the_documented_patch_for_more_namespaces_renders(tmp_path: Path) -> None:
    """docs/install.md's `patches:` block for a namespace-scoped operator serving several namespaces."""
    text = (MANIFESTS.parent / "docs" / "install.md").read_text()
    [block] = [b.split("```", 1)[0] for b in text.split("```yaml\n")[1:] if b.startswith("patches:")]
    patches = yaml.safe_load(block)["patches"]
    objects = render(overlay(tmp_path / "more", ("namespaced",), "team-a", patches=patches))
    env = [e for e in operator_container(objects)["env"] if e["name"] == "MFL_WATCH_NAMESPACES"]
    assert env == [{"name": "MFL_WATCH_NAMESPACES", "value": "team-a,team-b"}]
    assert main.watched_namespaces([], env[0]["value"]) == ["team-a", "team-b"]
