"""What the monitoring tests share: the component's files, the tools they run, the metric names that exist."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import prometheus_client
import yaml

from feedbackloop.runtime import metrics as operator_metrics  # noqa: F401  (registers the operator's metrics)
from mfl_server.metrics import CONTENT_TYPE
from mfl_testbed import render
from mfl_testbed.netutil import LOOPBACK
from mfl_testbed.process import TestbedUnavailable
from mfl_testbed.pytest_plugin import unavailable
from tests.contracts.test_metric_contract import exported

ROOT = Path(__file__).resolve().parents[2]
COMPONENT = ROOT / "manifests" / "monitoring"
RULES = COMPONENT / "rules.yaml"
RULES_TEST = Path(__file__).parent / "rules_test.yaml"
DASHBOARD = COMPONENT / "dashboards" / "model-feedback-loop.json"
RUNBOOKS = ROOT / "docs" / "monitoring.md"
# Metric names and recording-rule names as PromQL spells them (not label names, functions or keywords).
METRIC_NAME = re.compile(r"\b(mfl_[a-z_]+|[a-z_]+:[a-z0-9_]+:[a-z0-9_]+)\b")
SUFFIXES = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""], "info": ["_info"]}


def rules() -> dict:
    return yaml.safe_load(RULES.read_text())


def alerting_rules() -> list[dict]:
    return [rule for group in rules()["groups"] for rule in group["rules"] if "alert" in rule]


def recording_rules() -> list[dict]:
    return [rule for group in rules()["groups"] for rule in group["rules"] if "record" in rule]


def known_series() -> set[str]:
    """Every series name the operator and the model server export, and every recorded one."""
    operator = {
        family.name + suffix
        for family in prometheus_client.REGISTRY.collect()
        if family.name.startswith(("mfl_operator_", "mfl_loop"))  # the fleet's and the per-loop families
        for suffix in SUFFIXES[family.type]
    }
    return operator | set(exported()) | {rule["record"] for rule in recording_rules()}


def promtool() -> str:
    """Debian's `prometheus` package provides it; under CI=true a missing promtool fails, never skips."""
    binary = shutil.which("promtool")
    if binary is None:
        unavailable("promtool not found: `apt-get install prometheus`")
    return binary


def run_promtool(*args: str, cwd: Path | None = None) -> str:
    done = subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=120, cwd=cwd)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"promtool {' '.join(args)} failed:\n{output}"
    return output


def kustomize_kubectl() -> str:
    """A kubectl whose kustomize knows Components (>= 3.7), as the test bed finds it (mfl_testbed.render: the test
    bed's kubectl 1.20 embeds kustomize 2.0.3, which does not); none: unavailable (a failure under CI)."""
    try:
        return render.kustomize_kubectl()
    except TestbedUnavailable as error:
        unavailable(str(error))
        raise


def render_with_install(workdir: Path) -> list[dict]:
    """`kubectl kustomize` of an overlay of the install with the component, as README tells users."""
    overlay = workdir / "overlay"
    overlay.mkdir(exist_ok=True)
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        # kustomize refuses absolute paths
        "resources": [os.path.relpath(COMPONENT.parent, overlay)],
        "components": [os.path.relpath(COMPONENT, overlay)],
    }
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    done = subprocess.run([kustomize_kubectl(), "kustomize", str(overlay)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


class Exposition:
    """/metrics on a free loopback port, serving what `render()` returns at each scrape."""

    def __init__(self, render: Callable[[], bytes]) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = render()
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.server.server_address[1]}"


@contextmanager
def serving(*renders: Callable[[], bytes]) -> Iterator[list[Exposition]]:
    expositions = [Exposition(render) for render in renders]
    try:
        yield expositions
    finally:
        for exposition in expositions:
            exposition.server.shutdown()
            exposition.server.server_close()
