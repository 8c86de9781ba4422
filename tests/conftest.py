"""Shared fixtures, mainly the e2e test bed (feedbackloop.localdev).

Each test bed component starts once per session. A component that cannot start makes its tests
skip, or fail when CI=true, with the reason and the end of the component's logs.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator, NoReturn, TypeVar

import pytest

from feedbackloop.localdev import TestbedError
from feedbackloop.localdev.controlplane import ControlPlane, ensure_binaries
from feedbackloop.localdev.exporter import TestExporter
from feedbackloop.localdev.prometheus import Prometheus

E2E_DIR = Path(__file__).parent / "e2e"
T = TypeVar("T")
Kubectl = Callable[..., "subprocess.CompletedProcess[str]"]
timings_key = pytest.StashKey[dict[str, float]]()


# ---- markers and reporting ------------------------------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    config.stash[timings_key] = {}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Everything under tests/e2e is an e2e test, marked or not (`-m "not e2e"` skips it)."""
    for item in items:
        if E2E_DIR in Path(item.path).parents:
            item.add_marker(pytest.mark.e2e)


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:  # noqa: ANN001
    timings = config.stash.get(timings_key, {})
    if timings:
        summary = ", ".join(f"{name} {seconds:.1f}s" for name, seconds in timings.items())
        terminalreporter.write_line(f"test bed start-up: {summary}")


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
    except (TestbedError, OSError, subprocess.SubprocessError) as error:
        reason = f"{what} could not start: {error}\n{logs()}"
    unavailable(reason)  # outside the except block: no chained traceback in the report


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        unavailable(f"{what} needs root")


def _print_build_progress(line: str) -> None:
    # Straight to the terminal: a cold build takes minutes and pytest captures fixture output.
    print(f"[control plane build] {line}", file=sys.__stderr__, flush=True)


# ---- control plane ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def control_plane(
    tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config
) -> Iterator[ControlPlane]:
    """A real kube-apiserver (1.20) with controller-manager and scheduler; no kubelet."""
    start_component("control plane binaries", lambda: ensure_binaries(_print_build_progress))
    plane = ControlPlane(tmp_path_factory.mktemp("controlplane"))
    start_component("control plane", plane.start, plane.log_tails)
    pytestconfig.stash[timings_key]["control plane"] = plane.startup_seconds or 0.0
    yield plane
    plane.stop()


@pytest.fixture(scope="session")
def kubectl(control_plane: ControlPlane) -> Kubectl:
    """`kubectl("get", "pods", "-o", "json", check=True, input=None)` with the built kubectl."""
    return control_plane.kubectl


@pytest.fixture
def k8s_namespace(control_plane: ControlPlane, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace per test, ready for Pods (its default ServiceAccount has a token)."""
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40]
    name = f"{slug}-{uuid.uuid4().hex[:6]}".strip("-")
    control_plane.kubectl("create", "namespace", name)
    control_plane.wait_for_service_account(name)
    yield name
    control_plane.kubectl("delete", "namespace", name, "--wait=false", check=False)


# ---- metrics ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def exporter() -> Iterator[TestExporter]:
    """An in-process /metrics endpoint, scraped by the `prometheus` fixture."""
    with TestExporter() as test_exporter:
        yield test_exporter


@pytest.fixture(scope="session")
def prometheus(
    tmp_path_factory: pytest.TempPathFactory, exporter: TestExporter, pytestconfig: pytest.Config
) -> Iterator[Prometheus]:
    """Prometheus scraping `exporter` every second (job "testbed").

    More targets: `prometheus.add_target(address, labels)`; a pod runtime's service discovery:
    `prometheus.add_http_sd(url)`.
    """
    server = Prometheus(tmp_path_factory.mktemp("prometheus"))
    server.add_target(exporter.address, {})
    started = time.monotonic()

    def start_and_scrape() -> Prometheus:
        server.start()
        # Prometheus applies discovered targets every 5 s: wait here, not in the first test.
        server.wait_for(f'up{{job="testbed",instance="{exporter.address}"}} == 1', timeout=30)
        return server

    start_component("prometheus", start_and_scrape, server.log_tail)
    pytestconfig.stash[timings_key]["prometheus"] = time.monotonic() - started
    yield server
    server.stop()


# ---- pod runtime and operator ----------------------------------------------------------------
# Add session fixtures for the pod runtime (plays the kubelet; depends on `control_plane` and
# registers its http_sd URL with `prometheus.add_http_sd`) and for the operator process here,
# built on start_component()/unavailable() so they skip or fail like the fixtures above.
