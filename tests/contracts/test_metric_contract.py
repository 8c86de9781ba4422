"""The operator and the model server agree on metric names and labels (docs/contracts.md): every series
the operator's queries name (default rules, canary analysis, shipped examples) is one the reference server
exports, with the labels the queries select on. A renamed metric fails here, not as "no data" in a cluster."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from feedbackloop.core import api, inputdrift, monitoring
from feedbackloop.runtime import canary_queries
from mfl_server.metrics import ServerMetrics

ROOT = Path(__file__).resolve().parents[2]
SERIES = re.compile(r"\b(mfl_(?!operator_)[a-z_]+)\{([^}]*)\}")
# Labels the server does not set itself: Prometheus adds them when it scrapes (job/instance) or the
# Pod discovery maps them from the Pod (namespace, pod).
ADDED_BY_SCRAPING = {"namespace", "pod", "job", "instance"}


def exported() -> dict[str, set[str]]:
    """Series name -> label names, from the text a server exposes after it saw every kind of traffic."""
    metrics = ServerMetrics("churn", 1, "stable")
    metrics.count_predictions(1)
    metrics.observe_latency(0.01)
    metrics.count_request("predict", 200)
    metrics.count_request("predict", 500)
    metrics.count_rejected("bad_input")
    metrics.count_classification(1, "stable", True, "1", "1")
    metrics.count_classification(1, "stable", False, "0", "1")
    metrics.count_regression(1, "stable", 0.5)
    profile = {"features": {"x": {"min": 0.0, "max": 1.0, "edges": [0.5], "expected": {"b0": 0.5, "b1": 0.5}}}}
    metrics.watch_inputs(profile)
    metrics.count_inputs([{"x": 0.2}])
    names: dict[str, set[str]] = {}
    for line in metrics.exposition().decode().splitlines():
        if line and not line.startswith("#"):
            match = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{([^}]*)\})?", line)
            assert match is not None
            labels = {pair.split("=", 1)[0] for pair in (match.group(2) or "").split(",") if pair}
            names.setdefault(match.group(1), set()).update(labels)
    return names


def operator_queries() -> dict[str, str]:
    """Where -> PromQL text, for every query the operator sends or ships."""
    monitoring_spec = api.Monitoring.model_validate({"prometheus": {"url": "http://p:9090"}})
    queries = {}
    for task in ("classification", "regression"):
        for rule in monitoring.default_rules(monitoring_spec, task):
            queries[f"default {task} rule {rule.name}"] = rule.query
            if rule.samples_query:
                queries[f"default {task} rule {rule.name} samples"] = rule.samples_query
    spec = api.ModelFeedbackLoopSpec.model_validate(
        {
            "model": {"name": "churn", "storage": {"persistentVolumeClaim": {"claimName": "a"}}},
            "monitoring": {"prometheus": {"url": "http://p:9090"}},
        }
    )
    drift = api.InputDrift()
    queries["input drift check"], queries["input drift rows"] = (
        inputdrift.rule(drift).query,
        inputdrift.rule(drift).samples_query or "",
    )
    queries["input drift breakdown"] = inputdrift.breakdown_query(drift)
    for name, text in canary_queries.query_texts(spec, "team-a", "2", "5m").items():
        queries[f"canary query {name}"] = text
    queries["manifests/examples/loop.yaml"] = (ROOT / "manifests" / "examples" / "loop.yaml").read_text()
    return queries


@pytest.mark.parametrize("where", sorted(operator_queries()))
def test_every_series_the_operator_queries_is_exported_with_its_labels(where: str) -> None:
    series = exported()
    text = operator_queries()[where]
    used = SERIES.findall(text)
    assert used, f"no mfl_ series found in {where}"
    for name, selector in used:
        assert name in series, f"{where} queries {name}, which the server does not export ({sorted(series)})"
        selected = {m.group(1) for m in re.finditer(r"([a-z_]+)\s*(?:=~|!=|!~|=)", selector)}
        missing = selected - series[name] - ADDED_BY_SCRAPING
        assert not missing, f"{where} selects {name} on {missing}, labels the server does not set"
