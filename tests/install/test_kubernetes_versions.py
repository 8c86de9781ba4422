"""Every install shape, as rendered for users, against the schemas of the oldest and newest Kubernetes versions
docs/install.md supports with schema checks (1.25 and 1.37: kubernetes-validate 1.37.0 ships 1.25 to 1.37), in
strict mode: an unknown field, a wrong type or an API version that the release no longer serves (policy/v1beta1
is gone in 1.25) fails. The Prometheus Operator's kinds (the monitoring component) are not Kubernetes' own: they
are the only objects left unchecked here (tests/monitoring checks them). The test bed's 1.20 runs the e2e tier."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from .shapes import MANIFESTS, SHAPES, overlay, render

OLDEST, NEWEST = "1.25.0", "1.37.0"
NOT_KUBERNETES = {"monitoring.coreos.com/v1": {"PodMonitor", "ServiceMonitor", "PrometheusRule"}}
ALL_SHAPES = {
    **SHAPES,
    "monitoring": ("monitoring",),
    "namespaced-monitoring": ("namespaced", "namespaced/monitoring"),
    "namespaced-ha-sharded-monitoring": ("namespaced", "ha", "sharded", "namespaced/monitoring"),
}


def rendered(tmp_path: Path, shape: str) -> list[dict[str, Any]]:
    if shape == "dask":
        return render(MANIFESTS / "dask")
    return render(overlay(tmp_path / shape, ALL_SHAPES[shape]))


def check(objects: list[dict[str, Any]], version: str) -> list[str]:
    problems = []
    for doc in objects:
        if doc["kind"] in NOT_KUBERNETES.get(doc["apiVersion"], ()):
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except (kubernetes_validate.ValidationError, kubernetes_validate.SchemaNotFoundError) as error:
            said = (str(error) or repr(error)).splitlines()[0]
            problems.append(f"{doc['kind']}/{doc['metadata']['name']} on {version}: {said}")
    return problems


@pytest.mark.parametrize("shape", [*sorted(ALL_SHAPES), "dask"])
def test_every_shape_is_valid_on_the_oldest_and_newest_supported_versions(tmp_path: Path, shape: str) -> None:
    objects = rendered(tmp_path, shape)
    assert objects
    assert check(objects, OLDEST) + check(objects, NEWEST) == []


def test_the_check_catches_what_a_version_refuses(tmp_path: Path) -> None:
    """The same check fails on what an API server of that version refuses: an API version it no longer
    serves, an unknown field in the CRD's schema, a field of the wrong type."""
    objects = rendered(tmp_path, "ha")
    pdb = next(d for d in objects if d["kind"] == "PodDisruptionBudget")
    crd = next(d for d in objects if d["kind"] == "CustomResourceDefinition")
    deployment = next(d for d in objects if d["kind"] == "Deployment")
    old_pdb = {**pdb, "apiVersion": "policy/v1beta1"}  # removed in 1.25: what the test bed's 1.20 is given
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    bad_crd = {
        **crd,
        "spec": {
            **crd["spec"],
            "versions": [
                {**crd["spec"]["versions"][0], "schema": {"openAPIV3Schema": {**schema, "x-kubernetes-validation": []}}}
            ],
        },
    }
    bad_deployment = {**deployment, "spec": {**deployment["spec"], "replicas": "two"}}
    for version in (OLDEST, NEWEST):
        assert len(check([old_pdb, bad_crd, bad_deployment], version)) == 3
