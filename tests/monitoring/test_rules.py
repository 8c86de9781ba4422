"""manifests/monitoring/: the rules (promtool check + unit tests of every alert), the PrometheusRule as
their one copy, the default loop rules on the labels the PodMonitor produces, and the component's render."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from dashboards import generate
from feedbackloop.core import api, monitoring, promql, resources

from .tools import (
    COMPONENT,
    DASHBOARD,
    METRIC_NAME,
    RULES,
    RULES_TEST,
    RUNBOOKS,
    alerting_rules,
    known_series,
    recording_rules,
    render_with_install,
    rules,
    run_promtool,
)

SEVERITIES = {"critical", "warning", "info"}
AGGREGATION = re.compile(r"\b(?:sum|max|min|avg|count) by \(([^)]*)\)")


def test_promtool_checks_the_rules_file() -> None:
    output = run_promtool("check", "rules", str(RULES))
    assert f"SUCCESS: {sum(len(g['rules']) for g in rules()['groups'])} rules found" in output


def test_promtool_unit_tests_of_every_alert_pass() -> None:
    output = run_promtool("test", "rules", RULES_TEST.name, cwd=RULES_TEST.parent)
    assert "SUCCESS" in output


def test_every_alert_has_a_case_where_it_fires_and_one_where_it_does_not() -> None:
    cases = [
        case for test in yaml.safe_load(RULES_TEST.read_text())["tests"] for case in test.get("alert_rule_test", [])
    ]
    fires = {case["alertname"] for case in cases if case["exp_alerts"]}
    silent = {case["alertname"] for case in cases if not case["exp_alerts"]}
    names = {rule["alert"] for rule in alerting_rules()}
    assert names - fires == set(), "alerts without a firing case"
    assert names - silent == set(), "alerts without a silent case"


def test_alerts_follow_the_conventions_and_have_a_runbook() -> None:
    headings = {
        re.sub(r"[^a-z0-9-]", "", line.lstrip("#").strip().lower().replace(" ", "-"))
        for line in RUNBOOKS.read_text().splitlines()
        if line.startswith("#")
    }
    for rule in alerting_rules():
        name = rule["alert"]
        assert re.fullmatch(r"ModelFeedbackLoop[A-Z][A-Za-z]+", name), name
        assert rule["labels"]["severity"] in SEVERITIES, name
        assert {"summary", "description", "runbook_url"} <= set(rule["annotations"]), name
        page, _, anchor = rule["annotations"]["runbook_url"].partition("#")
        assert page.endswith("/docs/monitoring.md"), name
        assert anchor == name.lower() and anchor in headings, f"{name}: no section `## {name}` in docs/monitoring.md"


def test_recording_rules_are_named_level_metric_operations() -> None:
    for rule in recording_rules():
        level, metric, operations = rule["record"].split(":")
        assert re.fullmatch(r"[a-z0-9_]+", operations) and metric.startswith("mfl_"), rule["record"]
        # The level names the labels the result keeps: the aggregation's `by`, plus the rule's own labels.
        kept = {label.strip() for label in AGGREGATION.findall(rule["expr"])[0].split(",")} - {"le"}
        assert set(level.split("_")) == kept | set(rule.get("labels", {})), rule["record"]


def test_every_series_the_rules_read_exists() -> None:
    known = known_series()
    for rule in rules()["groups"]:
        for entry in rule["rules"]:
            unknown = set(METRIC_NAME.findall(entry["expr"])) - known
            assert not unknown, f"{entry.get('alert') or entry.get('record')} reads {unknown}, which nothing exports"


def test_the_prometheus_rule_is_the_rules_file_generated() -> None:
    committed = (COMPONENT / "prometheusrule.yaml").read_text()
    assert committed == generate.prometheus_rule_yaml(RULES.read_text()), "run python -m dashboards.generate"
    rule = yaml.safe_load(committed)
    assert (rule["apiVersion"], rule["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    assert rule["spec"] == rules()


def podmonitor_series(name: str, pod: str, values: str, **labels: str) -> dict[str, str]:
    """A series as the component's PodMonitor labels it: the server's labels plus the target's namespace,
    pod, container, job and instance (`endpoint` is dropped by its relabelling)."""
    target = {"namespace": "shop", "pod": pod, "container": "server", "job": "mfl-server", "instance": f"{pod}:8080"}
    selector = ", ".join(f'{key}="{value}"' for key, value in {**target, **labels}.items())
    return {"series": f"{name}{{{selector}}}", "values": values}


def test_default_loop_rules_work_with_the_labels_the_podmonitor_produces(tmp_path: Path) -> None:
    """Two replicas of version 3 (stable), a canary and the previous version: each default rule selects
    exactly the serving version on the stable track, summed over the replicas. (Per-minute increments are
    multiples of 15, so every rate is exact in binary and promtool's exact comparison holds.)"""
    serving = {"model": "churn", "version": "3", "track": "stable"}
    series = []
    for pod, correct, ok, errors in (("churn-7d4b9-a", 45, 105, 15), ("churn-7d4b9-b", 30, 120, 0)):
        series += [
            podmonitor_series("mfl_feedback_total", pod, "0+60x10", **serving),
            podmonitor_series("mfl_feedback_correct_total", pod, f"0+{correct}x10", **serving),
            podmonitor_series("mfl_feedback_abs_error_sum", pod, "0+30x10", **serving),
            podmonitor_series("mfl_feedback_abs_error_count", pod, "0+60x10", **serving),
            podmonitor_series("mfl_http_requests_total", pod, f"0+{ok}x10", endpoint="predict", code="200", **serving),
            podmonitor_series(
                "mfl_http_requests_total", pod, f"0+{errors}x10", endpoint="predict", code="500", **serving
            ),
        ]
        # 99 of every 100 requests within 0.1 s: the p99 is 0.1 s.
        for le, per_minute in (("0.1", 5940), ("0.25", 6000), ("+Inf", 6000)):
            series.append(
                podmonitor_series("mfl_prediction_latency_seconds_bucket", pod, f"0+{per_minute}x10", le=le, **serving)
            )
    for other in ({"version": "3", "track": "canary"}, {"version": "2", "track": "stable"}):
        labels = {"model": "churn", **other}
        series += [
            podmonitor_series("mfl_feedback_total", "churn-other", "0+60x10", **labels),
            podmonitor_series("mfl_feedback_correct_total", "churn-other", "0+15x10", **labels),
            podmonitor_series(
                "mfl_http_requests_total", "churn-other", "0+60x10", endpoint="predict", code="500", **labels
            ),
        ]
    expected = {
        "accuracy": (45 + 30) / 120,
        "accuracy samples": 120 * 5,  # labels in the 5-minute window
        "errorRate": 15 / (105 + 15 + 120),
        "latencyP99": 0.1,
        "meanAbsError": 0.5,
    }
    spec = api.Monitoring.model_validate({"prometheus": {"url": "http://prometheus:9090"}})
    values = {"model": "churn", "namespace": "shop", "version": "3"}
    queries = {}
    for task in ("classification", "regression"):
        for rule in monitoring.default_rules(spec, task):
            queries[rule.name] = promql.render(rule.query, values)
            if rule.samples_query:
                queries[f"{rule.name} samples"] = promql.render(rule.samples_query, values)
    assert set(queries) == set(expected), "a default rule without an expected value here"
    tests = [
        {
            "expr": query,
            "eval_time": "10m",
            "exp_samples": [{"labels": '{model="churn", namespace="shop", version="3"}', "value": expected[name]}],
        }
        for name, query in sorted(queries.items())
    ]
    test_file = tmp_path / "default_rules_test.yaml"
    test_file.write_text(
        yaml.safe_dump({"tests": [{"interval": "1m", "input_series": series, "promql_expr_test": tests}]})
    )
    run_promtool("test", "rules", str(test_file))


def test_the_component_renders_with_the_install(tmp_path: Path) -> None:
    objects = {(doc["kind"], doc["metadata"]["name"]): doc for doc in render_with_install(tmp_path)}
    assert ("Deployment", "feedbackloop-operator") in objects, "the install itself is part of the render"
    added = {
        ("PodMonitor", "mfl-servers"),
        ("ServiceMonitor", "feedbackloop-operator"),
        ("PrometheusRule", "model-feedback-loop"),
        ("ConfigMap", "model-feedback-loop-dashboard"),
    }
    assert added <= set(objects)
    for key in added:
        assert objects[key]["metadata"]["namespace"] == "feedbackloop-system", key

    # The monitors select what the operator creates: its server Pods' labels and port, its own Service.
    server_pod = objects[("PodMonitor", "mfl-servers")]["spec"]
    loop = {"metadata": {"name": "churn", "namespace": "shop", "uid": "u"}}
    spec = api.ModelFeedbackLoopSpec.model_validate(
        {
            "model": {"name": "churn", "storage": {"persistentVolumeClaim": {"claimName": "a"}}},
            "monitoring": {"prometheus": {"url": "http://p:9090"}},
        }
    )
    template = resources.server_deployment(loop, spec, 3, "canary", 1)["spec"]["template"]
    assert server_pod["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
    assert server_pod["namespaceSelector"] == {"any": True}
    ports = {port["name"] for port in template["spec"]["containers"][0]["ports"]}
    assert {endpoint["port"] for endpoint in server_pod["podMetricsEndpoints"]} <= ports
    operator_service = objects[("Service", "feedbackloop-operator-metrics")]
    service_monitor = objects[("ServiceMonitor", "feedbackloop-operator")]["spec"]
    assert service_monitor["selector"]["matchLabels"].items() <= operator_service["metadata"]["labels"].items()
    assert {e["port"] for e in service_monitor["endpoints"]} <= {p["name"] for p in operator_service["spec"]["ports"]}

    dashboard = objects[("ConfigMap", "model-feedback-loop-dashboard")]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["data"] == {DASHBOARD.name: DASHBOARD.read_text()}

    # What the Prometheus Operator hands to Prometheus: the PrometheusRule's spec as a rules file.
    rendered_rules = tmp_path / "rendered-rules.yaml"
    rendered_rules.write_text(yaml.safe_dump(objects[("PrometheusRule", "model-feedback-loop")]["spec"]))
    run_promtool("check", "rules", str(rendered_rules))


def test_the_input_drift_queries_compute_the_profiles_psi_in_prometheus(tmp_path: Path) -> None:
    """The operator's PSI in PromQL (summed over replicas, the stable track of the serving version only) equals
    mfl_contracts.inputprofile.psi on the same counts; the breakdown names the features above the threshold."""
    from feedbackloop.core import inputdrift
    from mfl_contracts.inputprofile import psi

    serving = {"model": "churn", "version": "3", "track": "stable"}
    expected = {"x": {"below": 0.0, "b0": 0.5, "b1": 0.5, "above": 0.0, "missing": 0.0}}
    expected["y"] = dict(expected["x"])
    per_minute = {  # served per minute, per replica: x moved to b1 and beyond; y as trained
        "x": {"below": 0, "b0": 6, "b1": 30, "above": 24, "missing": 0},
        "y": {"below": 0, "b0": 30, "b1": 30, "above": 0, "missing": 0},
    }
    series = []
    for pod in ("churn-a", "churn-b"):
        for feature, bins in per_minute.items():
            for bin_, count in bins.items():
                labels = {**serving, "feature": feature, "bin": bin_}
                series.append(podmonitor_series("mfl_feature_bin_total", pod, f"0+{count}x20", **labels))
                share = expected[feature][bin_]
                series.append(podmonitor_series("mfl_feature_bin_expected", pod, f"{share}x20", **labels))
        # the canary's and the previous version's counts must not count
        other = {**serving, "track": "canary", "feature": "y", "bin": "above"}
        series.append(podmonitor_series("mfl_feature_bin_total", pod, "0+600x20", **other))
    settings = api.InputDrift.model_validate({"window": "5m", "maxPsi": 0.2, "minRows": 100})
    rule = inputdrift.rule(settings)
    values = {"model": "churn", "namespace": "shop", "version": "3"}
    psi_x, psi_y = psi(expected["x"], per_minute["x"]), psi(expected["y"], per_minute["y"])
    assert psi_x is not None and psi_x > 0.2 and psi_y is not None and psi_y < 0.01
    loop = '{model="churn", namespace="shop", version="3"}'

    def close_to(query: str, value: float, tolerance: float) -> str:
        return f"abs(({promql.render(query, values)}) - {value!r}) < bool {tolerance!r}"

    tests = [
        {"expr": close_to(rule.query, psi_x, 1e-9), "eval_time": "15m", "exp_samples": [{"labels": loop, "value": 1}]},
        {  # the window's rows, as the check's samples (increase() extrapolates: within 2 %)
            "expr": close_to(rule.samples_query or "", 2 * 60 * 5, 12.0),
            "eval_time": "15m",
            "exp_samples": [{"labels": loop, "value": 1}],
        },
        {
            "expr": promql.render(inputdrift.breakdown_query(settings), values) + " > bool 0",
            "eval_time": "15m",
            "exp_samples": [{"labels": '{model="churn", namespace="shop", version="3", feature="x"}', "value": 1}],
        },
    ]
    test_file = tmp_path / "input_drift_test.yaml"
    test_file.write_text(
        yaml.safe_dump({"tests": [{"interval": "1m", "input_series": series, "promql_expr_test": tests}]})
    )
    run_promtool("test", "rules", str(test_file))
