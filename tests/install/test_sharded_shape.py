"""The sharded shape (manifests/sharded): what runtime/shards.py needs is what it renders. Three replicas with
MFL_SHARDING=true and their Pod name as identity; RBAC to renew, list, take and delete the replica Leases in
the operator's namespace only; patch on the loops (labels) in whichever role the shape grants the loops."""

from __future__ import annotations

from pathlib import Path

import pytest

from feedbackloop.runtime import shards

from .shapes import by_kind, env_of, one, operator_container, render_shape
from .test_shapes import CLUSTER_SCOPED, SYSTEM, identity, rules_of

LOOP_PATCH = (("feedbackloop.dev",), ("modelfeedbackloops",), ("patch",), ())
LEASES = (("coordination.k8s.io",), ("leases",), ("create", "delete", "get", "list", "update"), ())


def test_sharded_shape_runs_three_replicas_with_sharding_on(tmp_path: Path) -> None:
    base = {identity(d): d for d in render_shape(tmp_path, "cluster-wide")}
    objects = render_shape(tmp_path, "sharded")
    assert one(objects, "Deployment")["spec"]["replicas"] == 3
    env = env_of(operator_container(objects))
    assert env["MFL_SHARDING"] == "true"
    assert shards.sharding_from_env({"MFL_SHARDING": env["MFL_SHARDING"]}).enabled
    assert env["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}  # identity, Lease and shard label
    assert env["POD_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}  # where the Leases live
    role = one(objects, "Role", "feedbackloop-operator-shards")
    assert role["metadata"]["namespace"] == SYSTEM and rules_of(role) == [LEASES]
    binding = one(objects, "RoleBinding", "feedbackloop-operator-shards")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "feedbackloop-operator", "namespace": SYSTEM}]
    cluster_role = one(objects, "ClusterRole", "feedbackloop-operator")
    assert rules_of(cluster_role) == sorted(
        [*rules_of(base[("ClusterRole", None, "feedbackloop-operator")]), LOOP_PATCH]
    )
    for role in by_kind(objects, "ClusterRole"):  # the Leases are never granted cluster-wide
        assert not [r for r in role["rules"] if "leases" in r["resources"]], role
    # Nothing else changes; the container only gains MFL_SHARDING.
    changed = {identity(d) for d in objects if base.get(identity(d)) != d}
    assert changed == {
        ("Deployment", SYSTEM, "feedbackloop-operator"),
        ("ClusterRole", None, "feedbackloop-operator"),
        ("Role", SYSTEM, "feedbackloop-operator-shards"),
        ("RoleBinding", SYSTEM, "feedbackloop-operator-shards"),
    }
    container = operator_container(objects)
    container["env"] = [e for e in container["env"] if e["name"] != "MFL_SHARDING"]
    assert container == operator_container(list(base.values()))


def test_ha_then_sharded_keeps_the_budget_and_spread_with_three_replicas(tmp_path: Path) -> None:
    objects = render_shape(tmp_path, "ha-sharded")
    deployment = one(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    assert one(objects, "PodDisruptionBudget")["spec"]["minAvailable"] == 1
    assert env_of(operator_container(objects))["MFL_SHARDING"] == "true"


@pytest.mark.parametrize("namespace", [None, "team-a"])
def test_namespaced_sharded_grants_on_roles_only(tmp_path: Path, namespace: str | None) -> None:
    objects = render_shape(tmp_path, "namespaced-sharded", namespace)
    served = namespace or SYSTEM
    assert not [identity(d) for d in objects if d["kind"] in CLUSTER_SCOPED]
    assert LOOP_PATCH in rules_of(one(objects, "Role", "feedbackloop-operator"))
    shards_role = one(objects, "Role", "feedbackloop-operator-shards")
    assert shards_role["metadata"]["namespace"] == served and rules_of(shards_role) == [LEASES]
    binding = one(objects, "RoleBinding", "feedbackloop-operator-shards")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "feedbackloop-operator", "namespace": served}]
    assert one(objects, "Deployment")["spec"]["replicas"] == 3
