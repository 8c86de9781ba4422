"""Fixtures for the operator's own e2e tests: the CRD installed and the operator running."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import yaml

from feedbackloop.localdev.controlplane import ControlPlane
from feedbackloop.localdev.operatorproc import OperatorProcess, install_crd

from tests.conftest import start_component

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def crd_installed(control_plane: ControlPlane) -> None:
    install_crd(control_plane)


@pytest.fixture(scope="session")
def operator_process(control_plane: ControlPlane, crd_installed: None,
                     tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    """The operator as a process, as in a Pod (tests may kill and restart it)."""
    process = OperatorProcess(control_plane.kubeconfig, tmp_path_factory.mktemp("operator"),
                              env={"MFL_STATUS_REFRESH_SECONDS": "5", "MFL_ACTIVE_RECONCILE_SECONDS": "1"})
    start_component("operator", process.start, process.log_tail)
    yield process
    process.stop()


class Loops:
    """Apply loops and read them back through the API, as a user with kubectl would."""

    def __init__(self, control_plane: ControlPlane, operator: OperatorProcess) -> None:
        self.cp = control_plane
        self.operator = operator

    def apply(self, manifest: dict[str, Any]) -> None:
        self.cp.kubectl("apply", "-f", "-", input=yaml.safe_dump(manifest))

    def get(self, namespace: str, name: str) -> dict[str, Any]:
        return json.loads(self.cp.kubectl("get", "mfl", name, "-n", namespace, "-o", "json").stdout)

    def status(self, namespace: str, name: str) -> dict[str, Any]:
        return self.get(namespace, name).get("status") or {}

    def condition(self, namespace: str, name: str, type_: str) -> dict[str, Any]:
        return next((c for c in self.status(namespace, name).get("conditions", []) if c["type"] == type_), {})

    def events(self, namespace: str, name: str) -> list[dict[str, Any]]:
        items = json.loads(self.cp.kubectl("get", "events", "-n", namespace, "-o", "json",
                                           f"--field-selector=involvedObject.name={name}").stdout)["items"]
        return [e for e in items if e["involvedObject"].get("kind") == "ModelFeedbackLoop"]

    def reasons(self, namespace: str, name: str) -> list[str]:
        return [e["reason"] for e in self.events(namespace, name)]

    def wait(self, namespace: str, name: str, predicate: Callable[[dict[str, Any]], bool], timeout: float,
             what: str) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        status: dict[str, Any] = {}
        while time.monotonic() < deadline:
            status = self.status(namespace, name)
            if predicate(status):
                return status
            time.sleep(0.5)
        raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; status: "
                             f"{json.dumps(status, indent=1)[:3000]}\n--- operator log ---\n"
                             f"{self.operator.log_tail(40)}")


@pytest.fixture
def loops(control_plane: ControlPlane, operator_process: OperatorProcess) -> Loops:
    return Loops(control_plane, operator_process)


def condition_of(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions", []) if c["type"] == type_), {})


@pytest.fixture(scope="session")
def pod_runtime(control_plane: ControlPlane, prometheus, tmp_path_factory: pytest.TempPathFactory):
    """The kubelet stand-in: Pods run as local processes in network namespaces; Prometheus discovers them."""
    from feedbackloop.localdev.podruntime import PodRuntimeProcess

    from tests.conftest import require_root
    require_root("the pod runtime")
    runtime = PodRuntimeProcess(control_plane.kubeconfig, tmp_path_factory.mktemp("podruntime"))
    start_component("pod runtime", runtime.start, runtime.log_tail)
    prometheus.add_http_sd(runtime.sd_url)
    yield runtime
    runtime.stop()


def seed_registry(root: Path, model: str, rows: int = 3000, seed: int = 1) -> list[str]:
    """Base data of concept 0 and version 1 trained on it by the real trainer, as a first install would."""
    import os
    import subprocess
    import sys

    from feedbackloop import datasets
    names = datasets.write_base_csv(root / model / "data" / "base.csv", rows, seed=seed)
    config = {"model": model, "namespace": "seed", "storageRoot": str(root), "version": 1, "parentVersion": None,
              "task": "classification", "features": names, "target": "label", "now": time.time()}
    env = {**os.environ, "MFL_TRAINER_CONFIG": json.dumps(config), "MFL_TERMINATION_LOG": str(root / "seed.log")}
    subprocess.run([sys.executable, "-m", "mfl_trainer.main"], env=env, check=True, capture_output=True, timeout=300)
    return names
