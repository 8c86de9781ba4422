"""The PodMonitor's labels on a real Prometheus scraping a real model server's /metrics.

No Prometheus Operator can run here, so the scrape job is written as it generates one for a PodMonitor
endpoint: Pod meta labels become `namespace`, `pod`, `container`, `job` (from `jobLabel`) and `endpoint`
(the port's name), then the PodMonitor's own `relabelings` apply, with honor_labels off.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
import yaml

from feedbackloop.core import api, monitoring, promql
from mfl_server.metrics import ServerMetrics
from mfl_testbed.prometheus import Prometheus
from mfl_testbed.pytest_plugin import start_component

from .tools import COMPONENT, serving


def pod_monitor() -> dict:
    docs = yaml.safe_load_all((COMPONENT / "monitors.yaml").read_text())
    return next(doc for doc in docs if doc["kind"] == "PodMonitor")


def snake(key: str) -> str:
    return re.sub(r"[A-Z]", lambda m: "_" + m.group(0).lower(), key)


def scrape_job(namespace: str, address: str, relabelings: list[dict]) -> dict:
    """The job for one server Pod in `namespace`, as the Prometheus Operator writes it."""
    spec = pod_monitor()["spec"]
    endpoint = spec["podMetricsEndpoints"][0]
    job_meta = "__meta_kubernetes_pod_label_" + re.sub(r"[^a-zA-Z0-9_]", "_", spec["jobLabel"])
    generated = [
        {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
        {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
        {"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"},
        {"source_labels": [job_meta], "target_label": "job"},
        {"target_label": "endpoint", "replacement": endpoint["port"]},
    ]
    pod = {
        "__meta_kubernetes_namespace": namespace,
        "__meta_kubernetes_pod_name": "churn-7d4b9-a",
        "__meta_kubernetes_pod_container_name": "server",
        "__meta_kubernetes_pod_label_app_kubernetes_io_name": "mfl-server",
    }
    own = [{snake(key): value for key, value in relabeling.items()} for relabeling in relabelings]
    return {
        "job_name": f"podMonitor/{namespace}",
        "honor_labels": False,
        "metrics_path": endpoint["path"],
        "static_configs": [{"targets": [address], "labels": pod}],
        "relabel_configs": generated + own,
    }


@pytest.mark.integration
def test_the_podmonitor_keeps_the_contracts_labels_and_the_default_rules_answer(tmp_path: Path) -> None:
    server = ServerMetrics("churn", 3, "stable")
    with serving(server.exposition) as (target,):
        relabelings = pod_monitor()["spec"]["podMetricsEndpoints"][0]["relabelings"]
        # The same Pod again as if in namespace "control", without the PodMonitor's relabelings.
        jobs = [scrape_job("shop", target.address, relabelings), scrape_job("control", target.address, [])]
        prometheus = start_component(
            "prometheus", lambda: Prometheus(tmp_path / "prometheus", extra_scrape_configs=jobs).start()
        )
        try:
            spec = api.Monitoring.model_validate({"prometheus": {"url": "http://prometheus:9090"}})
            values = {"model": "churn", "namespace": "shop", "version": "3"}
            rules = {r.name: promql.render(r.query, values) for r in monitoring.default_rules(spec, "classification")}
            answered: dict[str, list] = {}
            deadline = time.monotonic() + 60
            while len(answered) < len(rules) and time.monotonic() < deadline:
                server.count_predictions(4)
                server.observe_latency(0.003)
                server.count_request("predict", 200)
                server.count_request("feedback", 200)
                server.count_classification(3, "stable", True, "1", "1")
                time.sleep(1)
                answered = {name: r for name, query in rules.items() if (r := prometheus.query(query))}
            assert set(answered) == set(rules), f"default rules without data: {set(rules) - set(answered)}"
            for name, result in answered.items():
                assert [sample["metric"] for sample in result] == [values], name

            # The server's `endpoint` (the API route) survives; without the relabelling it is renamed.
            kept = [sample["metric"] for sample in prometheus.query('mfl_http_requests_total{namespace="shop"}')]
            assert sorted(m["endpoint"] for m in kept) == ["feedback", "infer", "predict"]
            assert not [m for m in kept if "exported_endpoint" in m]
            control = [s["metric"] for s in prometheus.query('mfl_http_requests_total{namespace="control"}')]
            assert sorted(m["exported_endpoint"] for m in control) == ["feedback", "infer", "predict"]
            assert {m["endpoint"] for m in control} == {"http"}
        finally:
            prometheus.stop()
