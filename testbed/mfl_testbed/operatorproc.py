"""The operator as a host process against a local control plane (the scale and latency benchmarks)."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from .netutil import free_port, http_request
from .process import ManagedProcess, TestbedError, tail


def install_crd(control_plane) -> None:  # noqa: ANN001 - a ControlPlane
    """Apply the ModelFeedbackLoop CRD (rendered from the models, so it works from a wheel too) and wait
    until the API serves it. Without its CEL rules: the test bed's kubectl 1.20 refuses the field
    (render.for_kubernetes_1_20)."""
    import yaml

    from feedbackloop.crdgen import crd

    from .render import for_kubernetes_1_20

    control_plane.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(for_kubernetes_1_20([crd()]), sort_keys=False))
    for attempt in range(5):
        # A CRD read before the API server set its first condition fails the wait ("accessor error"): retry.
        waited = control_plane.kubectl(
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/modelfeedbackloops.feedbackloop.dev",
            check=attempt == 4,
        )
        if waited.returncode == 0:
            return
        time.sleep(1)


# The bed is the admin of its own control plane: its Prometheus and exporters listen on loopback, which the
# operator's egress policy refuses unless its admin allows it (docs/security.md).
LOCAL_ADMIN_SETTINGS = {"MFL_EGRESS_ALLOW": "127.0.0.1", "MFL_ALLOW_HOST_PATH": "true"}


def sharded_env(identity: str, lease_namespace: str) -> dict[str, str]:
    """The settings of one sharded replica (MFL_SHARDING=true): its identity is a Pod name (the downward
    API's POD_NAME in a cluster), its Lease and the leader's live in `lease_namespace` (which must exist)."""
    return {
        "MFL_SHARDING": "true",
        "MFL_LEADER_ELECTION": "true",
        "POD_NAME": identity,
        "POD_NAMESPACE": lease_namespace,
        "MFL_LEASE_NAMESPACE": lease_namespace,
    }


class OperatorProcess:
    """`mfl-operator` with its metrics and liveness ports on loopback; `kill()` simulates a crash."""

    def __init__(
        self, kubeconfig: Path, workdir: Path, env: Mapping[str, str] | None = None, name: str = "operator"
    ) -> None:
        """`name`: its log files' prefix (`<name>-<start>.log`), distinct per replica sharing a `workdir`."""
        self.kubeconfig = kubeconfig
        self.workdir = workdir
        self.extra_env = dict(env or {})
        self.name = name
        self.metrics_port = free_port()
        self.health_port = free_port()
        self.starts = 0
        self._process: ManagedProcess | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}-{self.starts}.log"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.running

    def start(self, timeout: float = 60.0) -> OperatorProcess:
        """Launch it and wait until its liveness endpoint answers."""
        return self.launch().wait_healthy(timeout)

    def launch(self) -> OperatorProcess:
        """Launch it without waiting (several replicas start side by side; then `wait_healthy` each)."""
        self.starts += 1
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "PYTHONUNBUFFERED": "1",
            **LOCAL_ADMIN_SETTINGS,
            **self.extra_env,
        }
        args = [
            sys.executable,
            "-m",
            "feedbackloop.main",
            f"--metrics-port={self.metrics_port}",
            "--metrics-address=127.0.0.1",
            f"--liveness=http://127.0.0.1:{self.health_port}/healthz",
        ]
        self._process = ManagedProcess(self.name, args, self.log_path, env=env)
        self._process.start()
        return self

    def wait_healthy(self, timeout: float = 60.0) -> OperatorProcess:
        assert self._process is not None, "launch() first"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._process.check_running()
            try:
                status, _ = http_request(f"http://127.0.0.1:{self.health_port}/healthz", timeout=1.0)
                if status == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.2)
        raise TestbedError(f"operator not healthy in {timeout:.0f}s:\n{self.log_tail()}")

    def metrics(self) -> str:
        return http_request(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5.0)[1].decode()

    def metric_value(self, name: str) -> float:
        """Sum of a metric's samples (all label sets) in the operator's /metrics."""
        total = 0.0
        for line in self.metrics().splitlines():
            if line.startswith(name) and (line[len(name)] in " {"):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def probes(self) -> dict:
        """The liveness endpoint's probe results, e.g. {"loops": <loops its engine knows>}."""
        return json.loads(http_request(f"http://127.0.0.1:{self.health_port}/healthz", timeout=5.0)[1] or b"{}")

    def rss_mib(self) -> float:
        """Resident memory of the operator process (MiB); NaN once it has exited."""
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except (OSError, TypeError):
            pass
        return float("nan")

    def kill(self) -> None:
        """SIGKILL, as a crash or an evicted Pod would end it: no cleanup runs."""
        if self._process is not None and self._process.pid:
            os.killpg(self._process.pid, signal.SIGKILL)
            self._process.stop()

    def stop(self) -> None:
        if self._process is not None:
            self._process.stop()

    def log_tail(self, lines: int = 60) -> str:
        return tail(self.log_path, lines)
