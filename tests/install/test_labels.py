"""Every object of every install shape carries the recommended labels app.kubernetes.io/{name, instance, version,
component, part-of, managed-by}, with the release's version, on its metadata only: a Deployment's selector and
its Pods' labels stay `app.kubernetes.io/name` alone (a selector is immutable, so an upgrade that changed it
would fail, and the test bed, the e2e tests and the HA shape's anti-affinity select the operator's Pods by it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from feedbackloop.core import release

from .shapes import MANIFESTS, render
from .test_kubernetes_versions import ALL_SHAPES, rendered

RECOMMENDED = ("name", "instance", "version", "component", "part-of", "managed-by")
OPERATOR_PODS = {"app.kubernetes.io/name": "feedbackloop-operator"}
DASK_PODS = {"app.kubernetes.io/name": "dask-kubernetes-operator"}


def dask_kubernetes_version() -> str:
    [pin] = [
        line for line in (MANIFESTS.parent / "requirements" / "dask-operator.txt").read_text().splitlines()
        if line.startswith("dask-kubernetes==")
    ]  # fmt: skip
    return pin.split("==", 1)[1]


@pytest.mark.parametrize("shape", [*sorted(ALL_SHAPES), "dask"])
def test_every_object_has_the_recommended_labels_and_no_selector_changed(tmp_path: Path, shape: str) -> None:
    objects = rendered(tmp_path, shape)
    version = dask_kubernetes_version() if shape == "dask" else release.VERSION
    pods = DASK_PODS if shape == "dask" else OPERATOR_PODS
    for doc in objects:
        labels = doc["metadata"].get("labels", {})
        missing = [key for key in RECOMMENDED if f"app.kubernetes.io/{key}" not in labels]
        assert not missing, (doc["kind"], doc["metadata"]["name"], missing)
        assert labels["app.kubernetes.io/version"] == version
        assert labels["app.kubernetes.io/part-of"] == "model-feedback-loop"
        assert labels["app.kubernetes.io/managed-by"] == "kustomize"
        if doc["kind"] == "Deployment":
            assert doc["spec"]["selector"] == {"matchLabels": pods}
            assert doc["spec"]["template"]["metadata"]["labels"] == pods
        if doc["kind"] in ("Service", "PodDisruptionBudget"):
            selector = doc["spec"]["selector"]
            assert selector.get("matchLabels", selector) == pods
    components = {doc["metadata"]["labels"]["app.kubernetes.io/component"] for doc in objects}
    assert components <= {"operator", "monitoring", "dask-operator"}


def test_the_crd_service_account_and_rbac_are_labelled() -> None:
    """The objects that had none before the release (issue 23)."""
    objects = render(MANIFESTS)
    kinds = {"CustomResourceDefinition", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}
    labelled = {d["kind"] for d in objects if d["metadata"].get("labels", {}).get("app.kubernetes.io/version")}
    assert kinds <= labelled
