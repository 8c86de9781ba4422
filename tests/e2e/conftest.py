"""Fixtures for the operator's own e2e tests: the CRD installed and the operator running."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from mfl_testbed.cluster import Cluster, give_to_images
from mfl_testbed.pytest_plugin import start_component

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def operator(cluster: Cluster, image_refs: dict[str, str], prometheus) -> Cluster:
    """The operator running in-cluster from its image, installed as users install it:
    `kubectl apply -k` of manifests/, unchanged but for kustomize `images:` naming this tree's build."""
    start_component(
        "operator",
        lambda: cluster.install_operator(ROOT / "manifests", {"operator": image_refs["operator"]}),
        cluster.operator_logs,
    )
    return cluster


@pytest.fixture(scope="session")
def dask_operator(cluster: Cluster, image_refs: dict[str, str]) -> Cluster:
    """The dask-kubernetes operator (DaskCluster, DaskJob) running in-cluster from its image, installed as a user
    would: its CRDs from the dask-kubernetes wheel, then `kubectl apply -k manifests/dask` (image overridden by
    kustomize to this tree's build, image_refs["dask-operator"]). Dask's images: image_refs["trainer-dask"]."""
    start_component(
        "dask operator",
        lambda: cluster.install_dask_operator(ROOT / "manifests" / "dask", image_refs["dask-operator"]),
        cluster.dask_operator_logs,
    )
    return cluster


class Loops:
    """Apply loops and read them back through the API, as a user with kubectl would."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.cp = cluster.plane

    def apply(self, manifest: dict[str, Any]) -> None:
        self.cp.kubectl("apply", "-f", "-", input=yaml.safe_dump(manifest))

    def get(self, namespace: str, name: str) -> dict[str, Any]:
        return json.loads(self.cp.kubectl("get", "mfl", name, "-n", namespace, "-o", "json").stdout)

    def status(self, namespace: str, name: str) -> dict[str, Any]:
        return self.get(namespace, name).get("status") or {}

    def condition(self, namespace: str, name: str, type_: str) -> dict[str, Any]:
        return next((c for c in self.status(namespace, name).get("conditions", []) if c["type"] == type_), {})

    def events(self, namespace: str, name: str) -> list[dict[str, Any]]:
        items = json.loads(
            self.cp.kubectl(
                "get", "events", "-n", namespace, "-o", "json", f"--field-selector=involvedObject.name={name}"
            ).stdout
        )["items"]
        return [e for e in items if e["involvedObject"].get("kind") == "ModelFeedbackLoop"]

    def reasons(self, namespace: str, name: str) -> list[str]:
        return [e["reason"] for e in self.events(namespace, name)]

    def wait_condition(self, namespace: str, name: str, type_: str, status: str, timeout: float) -> dict[str, Any]:
        """Wait until condition `type_` has `status` ("True"/"False"); returns the loop's status."""
        return self.wait(
            namespace, name, lambda s: condition_of(s, type_).get("status") == status, timeout, f"{type_}={status}"
        )

    def wait_recovered(self, namespace: str, name: str, version: int, timeout: float) -> dict[str, Any]:
        """Wait until `version` serves, its accuracy rule is Healthy and the loop is back to Monitoring."""
        return self.wait(
            namespace,
            name,
            lambda s: (
                s.get("currentVersion") == version
                and (s.get("metrics") or [{}])[0].get("state") == "Healthy"
                and s.get("phase") == "Monitoring"
            ),
            timeout,
            f"version {version} healthy on the drifted traffic",
        )

    def wait(
        self, namespace: str, name: str, predicate: Callable[[dict[str, Any]], bool], timeout: float, what: str
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        status: dict[str, Any] = {}
        while time.monotonic() < deadline:
            status = self.status(namespace, name)
            if predicate(status):
                return status
            time.sleep(0.5)
        raise AssertionError(
            f"timed out after {timeout:.0f}s waiting for {what}; status: "
            f"{json.dumps(status, indent=1)[:3000]}\n--- operator log ---\n"
            f"{self.cluster.operator_logs(40)}"
        )


@pytest.fixture
def loops(operator: Cluster) -> Loops:
    return Loops(operator)


def condition_of(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions", []) if c["type"] == type_), {})


def seed_registry(root: Path, model: str, rows: int = 3000, seed: int = 1, estimator: str | None = None) -> list[str]:
    """Base data of concept 0 and version 1 trained on it by the real trainer, as a first install would."""
    import os
    import subprocess
    import sys

    from mfl_testbed import datasets

    names = datasets.write_base_csv(root / model / "data" / "base.csv", rows, seed=seed)
    config = {
        "model": model,
        "namespace": "seed",
        "storageRoot": str(root),
        "version": 1,
        "parentVersion": None,
        "task": "classification",
        "features": names,
        "target": "label",
        "now": time.time(),
        **({"estimator": estimator} if estimator else {}),
    }
    env = {**os.environ, "MFL_TRAINER_CONFIG": json.dumps(config), "MFL_TERMINATION_LOG": str(root / "seed.log")}
    subprocess.run([sys.executable, "-m", "mfl_trainer.main"], env=env, check=True, capture_output=True, timeout=300)
    give_to_images(root)
    return names


def write_base_data(root: Path, model: str, rows: int, seed: int = 1) -> list[str]:
    from mfl_testbed import datasets

    names = datasets.write_base_csv(root / model / "data" / "base.csv", rows, seed=seed)
    give_to_images(root)
    return names


def artifact_claim(cluster: Cluster, namespace: str) -> tuple[dict[str, Any], Path]:
    """A PersistentVolumeClaim for the loop's artifacts (bound to a hostPath PV) and its folder on the host."""
    path = cluster.artifact_volume(namespace, "churn-artifacts")
    return {"persistentVolumeClaim": {"claimName": "churn-artifacts"}}, path
