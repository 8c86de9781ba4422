"""A real Kubernetes 1.20 control plane on loopback: etcd, apiserver, controller-manager, scheduler.

There is no kubelet: Pods stay Pending until a test runtime plays the node
(see shared/notes/local-control-plane.md).
"""

from __future__ import annotations

import atexit
import fcntl
import json
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from mfl_testbed.netutil import (
    LOOPBACK,
    free_ports,
    http_json,
    http_request,
    insecure_tls_context,
    wait_until,
)
from mfl_testbed.process import (
    ManagedProcess,
    TestbedError,
    TestbedUnavailable,
    cache_dir,
    print_progress,
    run_script,
    tail,
    wait_for_process,
)

K8S_VERSION = "1.20.2"
BINARIES = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "kubelet", "kube-proxy")
BUILD_SCRIPT = Path(__file__).with_name("build-control-plane.sh")
# Outside 127/8 on purpose: a loopback advertise address makes the `kubernetes` Endpoints invalid.
ADVERTISE_ADDRESS = "10.0.0.1"
SERVICE_CLUSTER_IP_RANGE = "10.96.0.0/16"
# No node IPAM (Pod IPs come from the test runtime) and no node lifecycle (no kubelet heartbeats).
CONTROLLERS = "*,-nodeipam,-nodelifecycle"
# With a real kubelet, node lifecycle lifts the not-ready taint once the node reports Ready.
CONTROLLERS_WITH_NODE = "*,-nodeipam"


def binaries_dir() -> Path:
    return cache_dir() / f"k8s-{K8S_VERSION}" / "bin"


def missing_binaries() -> list[str]:
    """Names of the control plane programs this machine still lacks."""
    missing = [name for name in BINARIES if not os.access(binaries_dir() / name, os.X_OK)]
    if shutil.which("etcd") is None:
        missing.append("etcd")
    return missing


def ensure_binaries(progress: Callable[[str], None] = print_progress) -> Path:
    """The folder of the cached Kubernetes binaries, building them first when incomplete.

    A cold build takes about 5 minutes on 2 cores and needs root (apt-get); the build script's
    output is streamed line by line to `progress`. A file lock keeps concurrent callers from
    building twice.
    """
    if not missing_binaries():
        return binaries_dir()
    if os.geteuid() != 0:
        raise TestbedUnavailable(
            f"control plane binaries missing ({', '.join(missing_binaries())}) and building them "
            f"needs root: run `sudo bash {BUILD_SCRIPT}`"
        )
    if not BUILD_SCRIPT.exists():
        raise TestbedUnavailable(f"build script {BUILD_SCRIPT} is not installed with the package")
    cache_dir().mkdir(parents=True, exist_ok=True)
    with (cache_dir() / f"k8s-{K8S_VERSION}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building right now
        if missing_binaries():
            _run_build_script(progress)
    if missing := missing_binaries():
        raise TestbedUnavailable(f"build finished but {', '.join(missing)} still missing")
    return binaries_dir()


def _run_build_script(progress: Callable[[str], None]) -> None:
    run_script(BUILD_SCRIPT, [], {**os.environ, "MFL_CACHE": str(cache_dir())}, progress)


class KubectlError(subprocess.CalledProcessError):
    """A failed kubectl call whose message includes kubectl's stderr."""

    def __str__(self) -> str:
        return f"{super().__str__()}\n{self.stderr}"


class KubeApiError(TestbedError):
    def __init__(self, method: str, path: str, status: int, body: bytes) -> None:
        super().__init__(f"{method} {path} -> HTTP {status}: {body[:500].decode(errors='replace')}")
        self.status = status
        self.body = body


class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager + kube-scheduler, all in `workdir`.

    Usage: `with ControlPlane(tmp) as cp: cp.kubectl("get", "ns")`. Logs land in
    `workdir/logs/<component>.log`; `log_tails()` collects their ends for failure reports.
    """

    def __init__(
        self, workdir: Path, bin_dir: Path | None = None, host: str = LOOPBACK, node_name: str | None = None
    ) -> None:
        """`host`: the address the apiserver listens on and advertises (a real node's IP when a
        kubelet joins; loopback otherwise). `node_name`: a kubelet of that name joins, so the
        apiserver authorizes it (Node authorizer) and the node lifecycle controller runs."""
        self.workdir = Path(workdir)
        self.bin_dir = bin_dir or binaries_dir()
        self.host = host
        self.node_name = node_name
        self.node_token = secrets.token_hex(16)
        self.node_kubeconfig = self.workdir / "kubelet.kubeconfig"
        self.pki_dir = self.workdir / "pki"
        self.logs_dir = self.workdir / "logs"
        self.kubeconfig = self.workdir / "kubeconfig"
        self.token = secrets.token_hex(16)
        self.server = ""
        self.etcd_url = ""
        self.startup_seconds: float | None = None
        self._processes: list[ManagedProcess] = []
        self._tls = insecure_tls_context()

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self, timeout: float = 120.0) -> ControlPlane:
        """Start every component and wait until the cluster can run workloads."""
        started = time.monotonic()
        deadline = started + timeout
        etcd = self._require_etcd()
        atexit.register(self.stop)
        try:
            self._prepare_files()
            etcd_port, etcd_peer_port = free_ports(2)
            api_port = free_ports(1, self.host)[0]
            self._start_etcd(etcd, etcd_port, etcd_peer_port, deadline)
            self._start_apiserver(api_port, deadline)
            self._start_controllers()
            self.wait_for_service_account("default", max(deadline - time.monotonic(), 1.0))
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started
        return self

    def stop(self) -> None:
        """Stop all components, newest first. Safe to call more than once."""
        while self._processes:
            self._processes.pop().stop()
        atexit.unregister(self.stop)

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def processes(self) -> list[ManagedProcess]:
        return list(self._processes)

    def detach(self) -> None:
        """Leave the components running when this process exits (`mfl demo --keep`)."""
        atexit.unregister(self.stop)
        self._processes.clear()

    @property
    def running(self) -> bool:
        return bool(self._processes) and all(process.running for process in self._processes)

    @property
    def advertise_address(self) -> str:
        return ADVERTISE_ADDRESS if self.host == LOOPBACK else self.host

    # ---- clients ---------------------------------------------------------------------------

    @property
    def env(self) -> dict[str, str]:
        """Environment for child processes (kopf, kubectl, the kubernetes client)."""
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig)}

    def kubectl(
        self,
        *args: str,
        check: bool = True,
        input: str | None = None,  # noqa: A002 - mirrors subprocess.run
        timeout: float = 60.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run the built kubectl (same version as the server) against this control plane."""
        command = [
            str(self.bin_dir / "kubectl"),
            f"--kubeconfig={self.kubeconfig}",
            # A private discovery cache: another run may have used the same address before.
            f"--cache-dir={self.workdir / 'kubectl-cache'}",
            *args,
        ]
        result = subprocess.run(command, input=input, capture_output=True, text=True, timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise KubectlError(result.returncode, command, result.stdout, result.stderr)
        return result

    def api(
        self,
        method: str,
        path: str,
        body: Any = None,
        content_type: str = "application/json",
        timeout: float = 10.0,
    ) -> Any:
        """One raw API request as admin, e.g. to patch a status subresource; returns the JSON."""
        data = None if body is None else json.dumps(body).encode()
        headers = {**self._auth_headers(), "Content-Type": content_type}
        status, reply = http_request(self.server + path, method, data, headers, timeout, context=self._tls)
        if status >= 400:
            raise KubeApiError(method, path, status, reply)
        return json.loads(reply) if reply else None

    def log_tails(self, lines: int = 30) -> str:
        """The end of every component's log, for failure messages."""
        logs = sorted(self.logs_dir.glob("*.log")) if self.logs_dir.exists() else []
        return "\n".join(f"----- {log.name} -----\n{tail(log, lines)}" for log in logs)

    def wait_for_service_account(self, namespace: str = "default", timeout: float = 30.0) -> None:
        """Wait for the namespace's `default` ServiceAccount and its token Secret.

        Kubernetes 1.20 admits a Pod only once its ServiceAccount has a token Secret.
        """
        path = f"/api/v1/namespaces/{namespace}/serviceaccounts/default"

        def has_token() -> bool:
            return bool(self.api("GET", path).get("secrets"))

        try:
            wait_until(
                has_token,
                timeout=timeout,
                what=f"the default ServiceAccount of namespace {namespace} and its token",
                on_poll=self._check_all_running,
            )
        except TimeoutError as error:
            raise TestbedError(f"{error}\n{self.log_tails()}") from error

    # ---- start-up steps --------------------------------------------------------------------

    def _require_etcd(self) -> str:
        missing = [name for name in BINARIES if not os.access(self.bin_dir / name, os.X_OK)]
        if missing:
            raise TestbedUnavailable(
                f"{', '.join(missing)} not found in {self.bin_dir}: call ensure_binaries() or run `bash {BUILD_SCRIPT}`"
            )
        etcd = shutil.which("etcd")
        if etcd is None:
            raise TestbedUnavailable("etcd not found: `apt-get install etcd-server`")
        return etcd

    def _prepare_files(self) -> None:
        for folder in (self.pki_dir, self.logs_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self._generate_keys()
        token_file = self.pki_dir / "tokens.csv"
        lines = [f'{self.token},admin,admin,"system:masters"']
        if self.node_name:
            user = f"system:node:{self.node_name}"
            lines.append(f'{self.node_token},{user},{user},"system:nodes"')
        token_file.write_text("\n".join(lines) + "\n")
        token_file.chmod(0o600)

    def _generate_keys(self) -> None:
        """A self-signed serving certificate and the service-account signing key pair."""
        if shutil.which("openssl") is None:
            raise TestbedUnavailable("openssl not found: `apt-get install openssl`")
        subject_alt_names = ",".join(
            [f"IP:{LOOPBACK}", f"IP:{self.advertise_address}", "IP:10.96.0.1", "DNS:localhost"]
            + [f"DNS:kubernetes.default.svc{suffix}" for suffix in ("", ".cluster.local")]
        )
        self._openssl(
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
            "-subj", "/CN=kube-apiserver", "-addext", f"subjectAltName={subject_alt_names}",
            "-keyout", str(self.pki_dir / "apiserver.key"),
            "-out", str(self.pki_dir / "apiserver.crt"),
        )  # fmt: skip
        self._openssl("genrsa", "-out", str(self.pki_dir / "sa.key"), "2048")
        self._openssl(
            "rsa", "-pubout",
            "-in", str(self.pki_dir / "sa.key"), "-out", str(self.pki_dir / "sa.pub"),
        )  # fmt: skip

    @staticmethod
    def _openssl(*args: str) -> None:
        result = subprocess.run(["openssl", *args], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise TestbedError(f"openssl {args[0]} failed: {result.stderr}")

    def _spawn(self, name: str, args: list[str]) -> ManagedProcess:
        process = ManagedProcess(name, args, self.logs_dir / f"{name}.log", cwd=self.workdir)
        process.start()
        self._processes.append(process)
        return process

    def _start_etcd(self, etcd: str, port: int, peer_port: int, deadline: float) -> None:
        self.etcd_url = f"http://{LOOPBACK}:{port}"
        peer_url = f"http://{LOOPBACK}:{peer_port}"
        process = self._spawn("etcd", [
            etcd, "--name=testbed", f"--data-dir={self.workdir / 'etcd'}",
            f"--listen-client-urls={self.etcd_url}", f"--advertise-client-urls={self.etcd_url}",
            f"--listen-peer-urls={peer_url}", f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=testbed={peer_url}",
        ])  # fmt: skip

        def healthy() -> bool:
            return http_json(f"{self.etcd_url}/health").get("health") == "true"

        wait_for_process(process, healthy, deadline)

    def _start_apiserver(self, port: int, deadline: float) -> None:
        self.server = f"https://{self.host}:{port}"
        pki = self.pki_dir
        process = self._spawn("kube-apiserver", [
            str(self.bin_dir / "kube-apiserver"),
            f"--etcd-servers={self.etcd_url}",
            f"--bind-address={self.host}", f"--secure-port={port}", "--insecure-port=0",
            f"--advertise-address={self.advertise_address}",
            f"--cert-dir={pki}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--token-auth-file={pki / 'tokens.csv'}",
            "--authorization-mode=" + ("Node,RBAC" if self.node_name else "RBAC"),
            "--kubelet-preferred-address-types=InternalIP,Hostname",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            "--allow-privileged=true",
            "--profiling=false",
        ])  # fmt: skip
        self._write_kubeconfig()

        def ready() -> bool:
            status, body = http_request(f"{self.server}/readyz", headers=self._auth_headers(), context=self._tls)
            return status == 200 and body.strip() == b"ok"

        wait_for_process(process, ready, deadline)

    def _start_controllers(self) -> None:
        kubeconfig = f"--kubeconfig={self.kubeconfig}"
        self._spawn("kube-controller-manager", [
            str(self.bin_dir / "kube-controller-manager"), kubeconfig,
            f"--service-account-private-key-file={self.pki_dir / 'sa.key'}",
            f"--root-ca-file={self.pki_dir / 'apiserver.crt'}",
            f"--controllers={CONTROLLERS_WITH_NODE if self.node_name else CONTROLLERS}",
            "--leader-elect=false", "--secure-port=0", "--port=0",
        ])  # fmt: skip
        self._spawn("kube-scheduler", [
            str(self.bin_dir / "kube-scheduler"), kubeconfig,
            "--leader-elect=false", "--secure-port=0", "--port=0",
        ])  # fmt: skip

    def _check_all_running(self) -> None:
        for process in self._processes:
            process.check_running()

    def _auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def _write_kubeconfig(self) -> None:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "testbed",
                    "cluster": {"server": self.server, "insecure-skip-tls-verify": True},
                }
            ],
            "users": [{"name": "admin", "user": {"token": self.token}}],
            "contexts": [
                {
                    "name": "testbed",
                    "context": {"cluster": "testbed", "user": "admin", "namespace": "default"},
                }
            ],
            "current-context": "testbed",
        }
        self.kubeconfig.write_text(yaml.safe_dump(config, sort_keys=False))
        self.kubeconfig.chmod(0o600)
        if self.node_name:
            config["users"] = [{"name": "admin", "user": {"token": self.node_token}}]
            self.node_kubeconfig.write_text(yaml.safe_dump(config, sort_keys=False))
            self.node_kubeconfig.chmod(0o600)
