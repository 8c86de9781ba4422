"""The Grafana dashboard: generated (no drift), shaped as promised, and every query answered by a real
Prometheus scraping the real operator and model-server metrics with the component's rules loaded."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import prometheus_client
import pytest

from dashboards import generate
from feedbackloop.runtime import metrics as operator_metrics
from mfl_server.metrics import ServerMetrics
from mfl_testbed.prometheus import Prometheus
from mfl_testbed.pytest_plugin import start_component

from .tools import DASHBOARD, METRIC_NAME, known_series, rules, serving

# What Grafana puts in place of the template variables (a multi-value variable becomes a regex).
VARIABLES = {"$namespace": "shop|other", "$model": "churn", "$loop": "churn|other", "$__rate_interval": "1m"}
LABEL_VALUES = re.compile(r"^label_values\((.*),\s*[a-z_]+\)$")


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels() -> list[dict]:
    return [panel for panel in dashboard()["panels"] if panel["type"] != "row"]


def queries() -> dict[str, str]:
    """Where -> PromQL as Grafana sends it: every panel target and every query variable's series."""
    found = {}
    for panel in panels():
        for target in panel["targets"]:
            found[f"panel {panel['title']!r} {target['refId']}"] = target["expr"]
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            match = LABEL_VALUES.match(variable["query"])
            assert match, f"variable {variable['name']}: {variable['query']}"
            found[f"variable {variable['name']}"] = match.group(1)
    return found


def substituted(expr: str) -> str:
    for name, value in VARIABLES.items():
        expr = expr.replace(name, value)
    assert "$" not in expr, f"a template variable the test does not know: {expr}"
    return expr


def test_the_committed_files_are_what_the_generator_writes() -> None:
    for path, text in generate.outputs().items():
        assert path.read_text() == text, f"{path.name} drifted: run python -m dashboards.generate"


def test_the_dashboard_has_the_fleet_and_the_loop_views() -> None:
    board = dashboard()
    rows = [panel["title"] for panel in board["panels"] if panel["type"] == "row"]
    assert rows == ["Fleet", "Loops in $namespace", "Operator", "Loop: $model in $namespace"]
    titles = {panel["title"] for panel in panels()}
    assert {
        "Loops by phase",
        "Breaches (last hour)",
        "Retrainings (last hour)",
        "Canaries (last hour)",
        "Poll lag",
        "Accuracy by version and track",
        "Canary evidence: accuracy, canary minus stable",
        "Latency",
        "Phase by loop",
        "Breaching rules by loop",
        "Canary weight by loop",
    } <= titles
    assert [v["name"] for v in board["templating"]["list"]] == ["datasource", "namespace", "loop", "model"]
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels():
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"] and panel["description"], panel["title"]


def test_every_series_the_dashboard_reads_exists() -> None:
    known = known_series()
    for where, expr in queries().items():
        unknown = set(METRIC_NAME.findall(expr)) - known
        assert not unknown, f"{where} reads {unknown}, which nothing exports or records"


def test_the_loop_panels_show_only_the_chosen_loops() -> None:
    """The servers' series by `$namespace` and `$model`; the operator's per-loop series by `$namespace` and
    `$loop`, always aggregated to one series per loop (`max by (namespace, loop ...)`: a loop that moved
    between sharded replicas is still one line)."""
    per_loop = 0
    for where, expr in queries().items():
        if not where.startswith("panel"):
            continue
        for name, selector in re.findall(r"\b(mfl_(?!operator_)[a-z_]+)\{([^}]*)\}", expr):
            if name.startswith("mfl_loop_"):
                per_loop += 1
                assert 'namespace=~"$namespace"' in selector and 'loop=~"$loop"' in selector, where
                assert re.match(r"max by \(namespace, loop\b", expr), where
            else:
                assert 'namespace=~"$namespace"' in selector and 'model=~"$model"' in selector, where
    assert per_loop >= 5


# The loop as the operator's engine would export it while it runs: a canary, a breaching rule, a past rollback.
LOOP_STATUS = {
    "phase": "Canary",
    "currentVersion": 3,
    "rollout": {"version": 4, "step": 0, "weight": 30},
    "metrics": [{"name": "accuracy", "state": "Breaching"}],
    "conditions": [{"type": "MetricsAvailable", "status": "True", "reason": "QueriesSucceeded"}],
    "history": [{"version": 2, "outcome": "RolledBack", "trigger": "Breach", "at": "2026-01-01T00:00:00Z"}],
}


def traffic(stable: ServerMetrics, canary: ServerMetrics) -> None:
    """One second of a loop in its canary, and of the operator running it."""
    for server, version, track, right in ((stable, 3, "stable", 9), (canary, 4, "canary", 8)):
        server.count_predictions(10)
        server.observe_latency(0.004)
        server.count_request("predict", 200)
        server.count_request("feedback", 500)
        for label in range(10):
            server.count_classification(version, track, label < right, "1", "1" if label < right else "0")
        server.count_regression(version, track, 0.25)
    operator_metrics.observe_phases(["Monitoring", "Breached", "Canary"])
    operator_metrics.LOOP_SERIES.source = lambda: [("shop", "churn", LOOP_STATUS)]
    operator_metrics.POLL_LAG.observe(0.02)
    operator_metrics.POLL_SECONDS.observe(0.01)
    operator_metrics.QUERIES.inc(3)
    operator_metrics.QUERY_ERRORS.inc(0)
    operator_metrics.STATUS_WRITES.labels("change").inc()
    for reason in ("BreachStarted", "RetrainingStarted", "CandidatePassedGate", "CanaryStarted", "Promoted"):
        operator_metrics.EVENTS.labels(reason).inc()


@pytest.mark.integration
def test_every_query_returns_data_from_a_real_prometheus(tmp_path: Path) -> None:
    """The component's rules load and evaluate cleanly, and each panel's and variable's query parses and
    returns data once the operator and two model servers (stable v3, canary v4) have run for a while."""
    stable, canary = ServerMetrics("churn", 3, "stable"), ServerMetrics("churn", 4, "canary")
    with serving(stable.exposition, canary.exposition, lambda: prometheus_client.generate_latest()) as targets:
        prometheus = start_component("prometheus", lambda: Prometheus(tmp_path / "prometheus").start())
        try:
            # Target labels as the component's monitors set them (the file_sd job honours the servers' own).
            for exposition, pod in zip(targets[:2], ("churn-6b7d-a", "churn-canary-5f9c-b")):
                prometheus.add_target(exposition.address, {"namespace": "shop", "pod": pod, "job": "mfl-server"})
            operator_labels = {"namespace": "feedbackloop-system", "job": "feedbackloop-operator"}
            prometheus.add_target(targets[2].address, operator_labels)
            prometheus.add_rules("model-feedback-loop", rules())
            expected = {substituted(expr): where for where, expr in queries().items()}
            empty = dict(expected)
            deadline = time.monotonic() + 90
            while empty and time.monotonic() < deadline:
                traffic(stable, canary)
                time.sleep(1)
                # A parse error raises PrometheusError, naming the query.
                empty = {expr: where for expr, where in empty.items() if not prometheus.query(expr)}
            assert not empty, f"no data after 90 s for: {sorted(empty.values())}"
            for group in prometheus.rule_groups():
                for rule in group["rules"]:
                    assert rule["health"] == "ok", f"{rule['name']}: {rule.get('lastError')}"
        finally:
            operator_metrics.LOOP_SERIES.source = None
            prometheus.stop()
