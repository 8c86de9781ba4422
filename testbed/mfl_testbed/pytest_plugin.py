"""The test bed as pytest fixtures: `pytest_plugins = ["mfl_testbed.pytest_plugin"]` in a conftest.

Each test bed component starts once per session. A component that cannot start makes its tests
skip, or fail when CI=true, with the reason and the end of the component's logs.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import NoReturn, TypeVar

import pytest

from mfl_testbed import TestbedError
from mfl_testbed.bedlock import bed_lock
from mfl_testbed.cluster import Cluster
from mfl_testbed.controlplane import ControlPlane, ensure_binaries
from mfl_testbed.exporter import TestExporter
from mfl_testbed.postgres import Postgres
from mfl_testbed.prometheus import Prometheus
from mfl_testbed.seaweed import SeaweedFS

T = TypeVar("T")
Kubectl = Callable[..., "subprocess.CompletedProcess[str]"]
timings_key = pytest.StashKey[dict[str, float]]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[timings_key] = {}


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:  # noqa: ANN001
    timings = config.stash.get(timings_key, {})
    if timings:
        summary = ", ".join(f"{name} {seconds:.1f}s" for name, seconds in timings.items())
        terminalreporter.write_line(f"test bed stages: {summary}")


# ---- helpers for test bed fixtures (reuse them for new components) ---------------------------


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"true", "1", "yes"}


def unavailable(reason: str) -> NoReturn:
    """A component cannot run here: fail under CI, skip elsewhere."""
    if in_ci():
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def _no_logs() -> str:
    return ""


def start_component(what: str, start: Callable[[], T], logs: Callable[[], str] = _no_logs) -> T:
    """Run `start()`, turning a start-up failure into `unavailable()` with the logs' tails."""
    try:
        return start()
    except (TestbedError, OSError, subprocess.SubprocessError, TimeoutError) as error:
        reason = f"{what} could not start: {error}\n{logs()}"
    unavailable(reason)  # outside the except block: no chained traceback in the report


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        unavailable(f"{what} needs root")


# ---- the cluster: control plane + a real node (kubelet, containerd, kube-proxy) + Prometheus ----


def _progress(line: str) -> None:
    # Straight to the terminal: cold builds take minutes and pytest captures fixture output.
    print(f"[test bed] {line}", file=sys.__stderr__, flush=True)


def _timed(config: pytest.Config, stage: str, step: Callable[[], T]) -> T:
    started = time.monotonic()
    result = step()
    config.stash[timings_key][stage] = time.monotonic() - started
    return result


@pytest.fixture(scope="session")
def image_refs(pytestconfig: pytest.Config) -> dict[str, str]:
    """The operator, server and trainer images built from this tree (`make images`), by content tag."""
    from mfl_testbed.images import ensure_images

    require_root("building the images")
    return start_component("images", lambda: _timed(pytestconfig, "images", lambda: ensure_images(_progress)))


@pytest.fixture(scope="session")
def cluster(pytestconfig: pytest.Config, image_refs: dict[str, str]) -> Iterator[Cluster]:
    """One real cluster per session; everything it changed on the machine is undone at the end."""
    from mfl_testbed.images import image_archives

    require_root("the real node")
    start_component(
        "Kubernetes binaries", lambda: _timed(pytestconfig, "kubernetes build", lambda: ensure_binaries(_progress))
    )
    with ExitStack() as held:  # one bed per machine: a second run waits for this one (mfl_testbed.bedlock)
        start_component("the test bed's lock", lambda: held.enter_context(bed_lock(_progress)))
        bed = Cluster.create(image_archives())
        start_component("cluster", lambda: bed.start(_progress), bed.log_tails)
        pytestconfig.stash[timings_key].update({f"cluster: {k}": v for k, v in bed.timings.items()})
        yield bed
        left = bed.stop()
    assert not left, f"the test bed's teardown left {left} on the machine"


@pytest.fixture(scope="session")
def control_plane(cluster: Cluster) -> ControlPlane:
    return cluster.plane


@pytest.fixture(scope="session")
def kubectl(cluster: Cluster) -> Kubectl:
    """`kubectl("get", "pods", "-o", "json", check=True, input=None)` with the built kubectl."""
    return cluster.kubectl


@pytest.fixture
def k8s_namespace(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace per test, ready for Pods (its default ServiceAccount has a token)."""
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40]
    name = f"{slug}-{uuid.uuid4().hex[:6]}".strip("-")
    cluster.kubectl("create", "namespace", name)
    cluster.plane.wait_for_service_account(name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


# ---- metrics ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def exporter() -> Iterator[TestExporter]:
    """An in-process /metrics endpoint, scraped by the `prometheus` fixture."""
    with TestExporter() as test_exporter:
        yield test_exporter


@pytest.fixture(scope="session")
def prometheus(cluster: Cluster, exporter: TestExporter) -> Prometheus:
    """The cluster's Prometheus (it discovers annotated Pods), also scraping `exporter` (job "testbed").

    It listens on the node's address, so the operator's Pod reaches it at `prometheus.url`.
    """
    server = cluster.prometheus
    server.add_target(exporter.address, {})
    start_component(
        "prometheus",
        lambda: server.wait_for(f'up{{job="testbed",instance="{exporter.address}"}} == 1', timeout=30),
        server.log_tail,
    )
    return server


# ---- the services of s3 mode, on loopback (the cluster has its own on the node's IP) ----------


def _slug(request: pytest.FixtureRequest, length: int = 30) -> str:
    return re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:length] or "test"


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """A real SeaweedFS S3 gateway on 127.0.0.1: `seaweedfs.url` (HTTP), `seaweedfs.https_url` (its certificate:
    `seaweedfs.ca_file`), tenants `tenant_a` / `tenant_b` (S3Credentials: access_key, secret_key, bucket = a
    bucket of their own that exists, the other's refused) and `admin`."""
    store = SeaweedFS(tmp_path_factory.mktemp("seaweedfs"), tls=True)
    start_component("seaweedfs", store.start, store.log_tail)
    yield store
    store.stop()


@pytest.fixture
def s3_env(seaweedfs: SeaweedFS, request: pytest.FixtureRequest) -> dict[str, str]:
    """The MFL_S3_* variables for tenant A's bucket under a prefix of this test's own."""
    return seaweedfs.s3_env(seaweedfs.tenant_a, prefix=f"{_slug(request)}-{uuid.uuid4().hex[:6]}")


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """A real PostgreSQL on 127.0.0.1 (password auth); `postgres.create_tenant(name)` returns a database URL."""
    # Not under pytest's 0700 folders: as root the server runs as the `postgres` user, which must reach it.
    workdir = Path(tempfile.mkdtemp(prefix="mfl-postgres-", dir="/var/tmp"))
    workdir.chmod(0o755)
    server = Postgres(workdir / "server")
    try:
        start_component("postgres", server.start, server.log_tail)
        yield server
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres: Postgres, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh tenant database (its own role, which owns it) for this test: its URL. Dropped afterwards."""
    name = f"{_slug(request, 20).replace('-', '_')}_{uuid.uuid4().hex[:6]}"
    yield postgres.create_tenant(name)
    postgres.drop_tenant(name)
