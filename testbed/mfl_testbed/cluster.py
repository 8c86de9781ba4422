"""The whole test bed: a one-node Kubernetes cluster with a real kubelet, Prometheus and Pod discovery,
and the services of s3 mode: an S3 store (SeaweedFS) and PostgreSQL, on the node's IP so Pods reach them.

    cluster = Cluster.create()            # a 0755 work folder under /var/tmp
    cluster.start(progress=print)         # control plane + node + Prometheus (+ discovery of Pods),
                                          # then cluster.seaweedfs and cluster.postgres
    cluster.install_operator(refs)        # manifests/ (images overridden by kustomize), as 1.20 takes it
    ...
    cluster.stop()                        # undoes every change to the machine (node.teardown)

What a cluster on this machine lacks is provided here, outside the product: Prometheus discovery
of Pods (`pod_discovery`, as kubernetes_sd would), cluster DNS for Services (`dns`: dnsmasq and a watcher of
Services, as CoreDNS would) and PersistentVolumes for claims
(`artifact_volume`: a hostPath PV bound to one claim, as a static provisioner would).
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from feedbackloop.core.resources import RUN_AS  # the images' user: hostPath folders it writes must be its own
from mfl_testbed import node as node_module
from mfl_testbed import render
from mfl_testbed.controlplane import ControlPlane, binaries_dir
from mfl_testbed.dns import ClusterDNS
from mfl_testbed.netutil import free_port, wait_until
from mfl_testbed.node import NODE_IP, NODE_NAME, Node, record
from mfl_testbed.postgres import Postgres
from mfl_testbed.process import ManagedProcess, TestbedError, TestbedUnavailable, cache_dir, print_progress
from mfl_testbed.prometheus import Prometheus
from mfl_testbed.replicas import PodLogKeeper
from mfl_testbed.seaweed import SeaweedFS

DASK_OPERATOR_NAMESPACE = "dask-operator"  # manifests/dask/
DASK_OPERATOR_DEPLOYMENT = "dask-kubernetes-operator"
DASK_CRDS = ("daskclusters", "daskworkergroups", "daskjobs", "daskautoscalers")  # .kubernetes.dask.org
OPERATOR_NAMESPACE = "feedbackloop-system"
OPERATOR_DEPLOYMENT = "feedbackloop-operator"
IMAGE_REPOSITORY = "ghcr.io/feedbackloop"
PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # where `mfl_testbed` is importable from
SETTINGS_CONFIGMAP = "mfl-operator-settings"  # the admin's settings (manifests/settings.yaml)
# The test bed is the admin of its own cluster, and sets what its tests need (docs/security.md): its
# Prometheus, object store and database, and the e2e tests' webhook and confirmPromotion receivers, all listen
# on the node's address (private: refused to receivers by default); e2e loops keep their files on hostPath.
OPERATOR_SETTINGS = {"MFL_EGRESS_ALLOW": NODE_IP, "MFL_ALLOW_HOST_PATH": "true"}


def settings_patch(
    settings: Mapping[str, str] = OPERATOR_SETTINGS, namespace: str | None = OPERATOR_NAMESPACE
) -> dict[str, Any]:
    """A strategic merge patch of the operator's settings ConfigMap to `settings`."""
    metadata = {"name": SETTINGS_CONFIGMAP, **({"namespace": namespace} if namespace else {})}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": dict(settings)}


class Cluster:
    def __init__(self, workdir: Path, images: list[Path] | None = None) -> None:
        self.workdir = Path(workdir)
        self.images = images or []
        self.plane = ControlPlane(self.workdir / "controlplane", host=NODE_IP, node_name=NODE_NAME)
        self.node = Node(
            self.workdir / "node", binaries_dir(), self.plane.kubeconfig, self.plane.node_kubeconfig, self.images
        )
        self.prometheus = Prometheus(self.workdir / "prometheus", host=NODE_IP)
        self.seaweedfs = SeaweedFS(self.workdir / "seaweedfs", host=NODE_IP, tls=True)
        self.postgres = Postgres(self.workdir / "postgres", host=NODE_IP)
        self.dns = ClusterDNS(self.workdir / "dns", NODE_IP, self.plane.bin_dir / "kubectl", self.plane.kubeconfig)
        self.discovery: ManagedProcess | None = None
        self.log_keepers: dict[str, PodLogKeeper] = {}  # namespace -> the copier of its containers' logs
        self.started_at = 0.0  # Unix time of start()
        self.timings: dict[str, float] = {}
        self._kept = False

    @classmethod
    def create(cls, images: list[Path] | None = None, prefix: str = "mfl-testbed-") -> Cluster:
        # Not under pytest's 0700 temp folders: hostPath volumes here are read by the images' user.
        workdir = Path(tempfile.mkdtemp(prefix=prefix, dir="/var/tmp"))
        workdir.chmod(0o755)
        return cls(workdir, images)

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self, progress: Callable[[str], None] = print_progress) -> Cluster:
        running, state = node_module.running_components(), node_module.read_state()
        if running and (state.get("kept") or node_module.pid_exists(state.get("owner"))):
            raise TestbedUnavailable(
                f"a test bed is already running on this machine ({', '.join(running)}); `mfl testbed down` removes it"
            )
        left = node_module.teardown(progress)  # what a crashed test run left behind: undo it first
        if left:
            raise TestbedError(f"an earlier test bed could not be torn down: {', '.join(left)}")
        record(workdirs=[str(self.workdir)], owner=os.getpid(), kept=False)
        self.started_at = time.time()
        atexit.register(self.stop)
        try:
            self._step("network", self.node.prepare_network, progress)
            self._step("control plane", self.plane.start, progress)
            record(pids={p.name: p.pid for p in self.plane.processes})
            self._step("cluster dns", self._start_dns, progress)
            self._step("containerd and images", self.node.start_runtime, progress)
            self._step("kubelet and kube-proxy", self.node.join, progress)
            self._step("prometheus", self._start_prometheus, progress)
            self._step("seaweedfs", self._start_seaweedfs, progress)
            self._step("postgres", self._start_postgres, progress)
        except BaseException:
            self.stop()
            raise
        return self

    def _step(self, what: str, step: Callable[[], Any], progress: Callable[[str], None]) -> None:
        started = time.monotonic()
        step()
        self.timings[what] = time.monotonic() - started
        progress(f"test bed: {what} up in {self.timings[what]:.1f}s")

    def _start_dns(self) -> None:
        self.dns.start()
        record(pids={p.name: p.pid for p in self.dns.processes})

    def _start_prometheus(self) -> None:
        port = free_port()
        self.discovery = ManagedProcess(
            "pod-discovery",
            [
                sys.executable,
                "-m",
                "mfl_testbed.pod_discovery",
                f"--kubectl={self.plane.bin_dir / 'kubectl'}",
                f"--kubeconfig={self.plane.kubeconfig}",
                f"--port={port}",
            ],
            self.workdir / "logs" / "pod-discovery.log",
            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(PACKAGE_ROOT), os.environ.get("PYTHONPATH", "")])},
        )
        self.discovery.start()
        record(pids={"pod-discovery": self.discovery.pid})
        self.prometheus.add_http_sd(f"http://127.0.0.1:{port}/sd")
        self.prometheus.on_start = lambda pid: record(pids={"prometheus": pid})  # restarts by tests too
        self.prometheus.start()

    def _start_seaweedfs(self) -> None:
        self.seaweedfs.start()
        record(pids={"seaweedfs": self.seaweedfs.pid})

    def _start_postgres(self) -> None:
        self.postgres.start()
        record(pids={"postgres": self.postgres.pid})

    def stop(self) -> list[str]:
        """Stop everything and restore the machine; returns what could not be undone (nothing, normally).
        Safe to call more than once."""
        atexit.unregister(self.stop)
        if self._kept:
            return []
        for keeper in self.log_keepers.values():
            keeper.stop()
        self.postgres.stop()
        self.seaweedfs.stop()
        self.prometheus.stop()
        if self.discovery is not None:
            self.discovery.stop()
        self.dns.stop()
        self.plane.stop()
        return self.node.stop()

    def keep(self) -> str:
        """Leave the cluster running after this process exits; returns how to use and remove it."""
        self._kept = True
        record(kept=True)
        atexit.unregister(self.stop)
        self.plane.detach()
        self.node.detach()
        self.prometheus.detach()
        self.seaweedfs.detach()
        self.postgres.detach()
        self.dns.detach()
        return (
            f"The cluster keeps running.\n"
            f"  export KUBECONFIG={self.plane.kubeconfig}\n"
            f"  {self.plane.bin_dir / 'kubectl'} get pods -A -o wide\n"
            f"  Prometheus: {self.prometheus.url}\n"
            f"  S3 (SeaweedFS): {self.seaweedfs.url}, PostgreSQL: {self.postgres.host}:{self.postgres.port}\n"
            f"  logs: {self.workdir}\n"
            f"Tear it down (processes, containers, mounts, bridge, iptables, sysctls): mfl testbed down"
        )

    def log_tails(self) -> str:
        return f"{self.plane.log_tails()}\n{self.node.log_tails()}"

    # ---- clients ---------------------------------------------------------------------------

    @property
    def kubeconfig(self) -> Path:
        return self.plane.kubeconfig

    def kubectl(self, *args: str, **kwargs: Any):  # noqa: ANN201 - subprocess.CompletedProcess[str]
        return self.plane.kubectl(*args, **kwargs)

    # ---- what users install ----------------------------------------------------------------

    def install_operator(
        self,
        manifests: Path,
        image_refs: Mapping[str, str],
        env: Mapping[str, str] | None = None,
        timeout: float = 240.0,
        settings: Mapping[str, str] = OPERATOR_SETTINGS,
    ) -> str:
        """An overlay that points `manifests/` at these images, with the test bed's admin `settings`
        (OPERATOR_SETTINGS) in the operator's settings ConfigMap (and nothing else, unless `env` adds variables to
        the operator's container, as the demo does to refresh faster), rendered by a current kustomize and
        applied by the test bed's kubectl 1.20 as `render.for_kubernetes_1_20` adapts it."""
        overlay = self.workdir / "install"
        overlay.mkdir(exist_ok=True)
        kustomization: dict[str, Any] = {
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "resources": [os.path.relpath(manifests, overlay)],
            "images": [
                {
                    "name": f"{IMAGE_REPOSITORY}/mfl-{component}",
                    "newName": ref.rsplit(":", 1)[0],
                    "newTag": ref.rsplit(":", 1)[1],
                }
                for component, ref in image_refs.items()
            ],
        }
        (overlay / "settings.yaml").write_text(yaml.safe_dump(settings_patch(settings), sort_keys=False))
        kustomization["patches"] = [{"path": "settings.yaml"}]
        if env:
            patch = {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": OPERATOR_DEPLOYMENT, "namespace": OPERATOR_NAMESPACE},
                "spec": {
                    "template": {
                        "spec": {
                            "containers": [
                                {"name": "operator", "env": [{"name": k, "value": v} for k, v in env.items()]}
                            ]
                        }
                    }
                },
            }
            (overlay / "env.yaml").write_text(yaml.safe_dump(patch, sort_keys=False))
            kustomization["patches"] = [{"path": "settings.yaml"}, {"path": "env.yaml"}]
        (overlay / "kustomization.yaml").write_text(yaml.safe_dump(kustomization, sort_keys=False))
        applied = self.kubectl("apply", "-f", "-", input=render.render_for_kubernetes_1_20(overlay)).stdout
        self.kubectl(
            "rollout",
            "status",
            f"deployment/{OPERATOR_DEPLOYMENT}",
            "-n",
            OPERATOR_NAMESPACE,
            f"--timeout={timeout:.0f}s",
            timeout=timeout + 10,
        )
        return applied

    def install_dask_operator(self, manifests: Path, image_ref: str, timeout: float = 180.0) -> str:
        """The dask-kubernetes operator as a user installs it (manifests/dask/kustomization.yaml): its CRDs from the
        dask-kubernetes wheel (`kubectl create`, the ones missing only: daskjob.yaml is too large for a client-side
        apply), then `kubectl apply -k` of an overlay pointing `manifests` at `image_ref`; returns once the
        controller's Pod is ready. Idempotent."""
        crds = dask_crds(_pinned_dask_kubernetes(manifests))
        present = set(self.kubectl("get", "crd", "-o", "name").stdout.split())
        for path in sorted(crds.glob("*.yaml")):
            name = yaml.safe_load(path.read_text())["metadata"]["name"]
            if f"customresourcedefinition.apiextensions.k8s.io/{name}" not in present:
                self.kubectl("create", "-f", str(path))
        self.kubectl(
            "wait",
            "--for=condition=Established",
            *(f"crd/{plural}.kubernetes.dask.org" for plural in DASK_CRDS),
            "--timeout=60s",
            timeout=70,
        )
        overlay = self.workdir / "install-dask"
        overlay.mkdir(exist_ok=True)
        name, tag = image_ref.rsplit(":", 1)
        kustomization = {
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "resources": [os.path.relpath(manifests, overlay)],
            "images": [{"name": f"{IMAGE_REPOSITORY}/dask-kubernetes-operator", "newName": name, "newTag": tag}],
        }
        (overlay / "kustomization.yaml").write_text(yaml.safe_dump(kustomization, sort_keys=False))
        # Rendered by a current kustomize (manifests/dask uses `labels:`), applied by the test bed's kubectl.
        applied = self.kubectl("apply", "-f", "-", input=render.render_for_kubernetes_1_20(overlay)).stdout
        self.kubectl(
            "rollout",
            "status",
            f"deployment/{DASK_OPERATOR_DEPLOYMENT}",
            "-n",
            DASK_OPERATOR_NAMESPACE,
            f"--timeout={timeout:.0f}s",
            timeout=timeout + 10,
        )
        return applied

    def dask_operator_logs(self, lines: int = 60) -> str:
        result = self.kubectl(
            "logs",
            f"deployment/{DASK_OPERATOR_DEPLOYMENT}",
            "-n",
            DASK_OPERATOR_NAMESPACE,
            f"--tail={lines}",
            check=False,
        )
        return result.stdout + result.stderr

    def keep_pod_logs(self, namespace: str = OPERATOR_NAMESPACE) -> PodLogKeeper:
        """Copy every container log of `namespace`'s Pods to `<workdir>/logs/pods/<namespace>/` as they appear
        and grow, until the cluster stops (the kubelet keeps a Pod's current and previous container's only, and
        nothing of a deleted Pod); `.text()` reads them all. One copier per namespace."""
        keeper = self.log_keepers.get(namespace)
        if keeper is None:
            keeper = PodLogKeeper(namespace, self.workdir / "logs" / "pods" / namespace, since=self.started_at)
            keeper.start()
            self.log_keepers[namespace] = keeper
        return keeper

    def operator_logs(self, lines: int = 60) -> str:
        result = self.kubectl(
            "logs", f"deployment/{OPERATOR_DEPLOYMENT}", "-n", OPERATOR_NAMESPACE, f"--tail={lines}", check=False
        )
        return result.stdout + result.stderr

    def crash_operator(self, timeout: float = 120.0) -> None:
        """SIGKILL the operator's process, as a crash would; the kubelet restarts the container."""
        [pod] = [
            p
            for p in self.pods(OPERATOR_NAMESPACE, "app.kubernetes.io/name=feedbackloop-operator")
            if not p["metadata"].get("deletionTimestamp")
        ]
        [container] = pod["status"]["containerStatuses"]
        restarts = container["restartCount"]
        node_module.ctr("tasks", "kill", "-s", "SIGKILL", container["containerID"].split("://", 1)[1])

        def restarted_and_ready() -> bool:
            pod_now = json.loads(
                self.kubectl("get", "pod", pod["metadata"]["name"], "-n", OPERATOR_NAMESPACE, "-o", "json").stdout
            )
            [status] = pod_now["status"]["containerStatuses"]
            return status["restartCount"] > restarts and status["ready"]

        wait_until(restarted_and_ready, timeout, "the operator's container to restart after SIGKILL", interval=1.0)

    def kill_container(self, namespace: str, pod_name: str) -> int:
        """SIGKILL one Pod's (only) container, as a crash would; returns its restart count before the kill
        (the kubelet restarts it, with its crash-loop back-off)."""
        pod = json.loads(self.kubectl("get", "pod", pod_name, "-n", namespace, "-o", "json").stdout)
        [container] = pod["status"]["containerStatuses"]
        node_module.ctr("tasks", "kill", "-s", "SIGKILL", container["containerID"].split("://", 1)[1])
        return int(container["restartCount"])

    def artifact_volume(self, namespace: str, claim: str, size: str = "1Gi") -> Path:
        """A folder owned by the images' user, as a PV bound to claim `namespace/claim` (ReadWriteMany)."""
        path = self.workdir / "volumes" / f"{namespace}-{claim}"
        path.mkdir(parents=True, exist_ok=True)
        (self.workdir / "volumes").chmod(0o755)
        os.chown(path, RUN_AS, RUN_AS)
        name = f"{namespace}-{claim}"[:253]
        manifests = [
            {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {"name": name},
                "spec": {
                    "capacity": {"storage": size},
                    "accessModes": ["ReadWriteMany"],
                    "storageClassName": "",
                    "persistentVolumeReclaimPolicy": "Retain",
                    "hostPath": {"path": str(path), "type": "Directory"},
                    "claimRef": {"namespace": namespace, "name": claim},
                },
            },
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": claim, "namespace": namespace},
                "spec": {
                    "accessModes": ["ReadWriteMany"],
                    "storageClassName": "",
                    "volumeName": name,
                    "resources": {"requests": {"storage": size}},
                },
            },
        ]
        self.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(manifests))
        return path

    def pods(self, namespace: str, selector: str = "") -> list[dict[str, Any]]:
        args = ["get", "pods", "-n", namespace, "-o", "json"] + ([f"-l={selector}"] if selector else [])
        return json.loads(self.kubectl(*args).stdout)["items"]


def give_to_images(path: Path) -> None:
    """Hand files written on the host (as root) to the images' user, as a seeding Job would write them."""
    for root, folders, files in os.walk(path):
        os.chown(root, RUN_AS, RUN_AS)
        for name in folders + files:
            os.chown(os.path.join(root, name), RUN_AS, RUN_AS)


def _pinned_dask_kubernetes(manifests: Path) -> str:
    """The dask-kubernetes version the image is built from (requirements/dask-operator.txt beside manifests/)."""
    requirements = Path(manifests).resolve().parents[1] / "requirements" / "dask-operator.txt"
    for line in requirements.read_text().splitlines():
        if line.startswith("dask-kubernetes=="):
            return line.split("==", 1)[1].strip()
    raise TestbedError(f"no dask-kubernetes==<version> pin in {requirements}")


def dask_crds(version: str) -> Path:
    """The folder of the dask-kubernetes operator's CRDs (its Helm chart's crds/, in the wheel) of `version`: the
    installed package's when it is that version, else from the wheel (`pip download`, cached under cache_dir())."""
    chart_crds = Path("operator/deployment/helm/dask-kubernetes-operator/crds")
    try:
        from importlib.metadata import version as installed_version

        if installed_version("dask-kubernetes") == version:
            import importlib.util

            spec = importlib.util.find_spec("dask_kubernetes")
            if spec is not None and spec.origin is not None:
                folder = Path(spec.origin).parent / chart_crds
                if folder.is_dir():
                    return folder
    except ImportError:  # importlib.metadata.PackageNotFoundError: not installed here
        pass
    target = cache_dir() / "dask-kubernetes" / version
    folder = target / "dask_kubernetes" / chart_crds
    if folder.is_dir():
        return folder
    downloads = target.with_name(f"{version}.download")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--no-deps",
            f"dask-kubernetes=={version}",
            "-d",
            str(downloads),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    wheels = sorted(downloads.glob(f"dask_kubernetes-{version}-*.whl"))
    if result.returncode != 0 or not wheels:
        raise TestbedUnavailable(
            f"the dask-kubernetes {version} wheel (its CRDs) could not be downloaded: {result.stderr.strip()[-500:]}"
        )
    partial = target.with_name(f"{version}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    with zipfile.ZipFile(wheels[0]) as wheel:
        members = [m for m in wheel.namelist() if m.startswith(f"dask_kubernetes/{chart_crds}/")]
        wheel.extractall(partial, members)
    shutil.rmtree(target, ignore_errors=True)
    partial.replace(target)
    shutil.rmtree(downloads, ignore_errors=True)
    return folder
