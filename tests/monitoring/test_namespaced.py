"""A namespace-scoped install with monitoring (manifests/namespaced + manifests/namespaced/monitoring) scrapes its
own namespace only: two teams' installs never scrape each other's servers (each server once), and the operator's
per-loop series keep the loop's namespace (honorLabels), so alerts route by it."""

from __future__ import annotations

import copy
import os
import re
import subprocess
from pathlib import Path

import yaml

from .tools import COMPONENT, METRIC_NAME, alerting_rules, kustomize_kubectl, rules, run_promtool

MANIFESTS = COMPONENT.parent
CLUSTER_SCOPED = {"CustomResourceDefinition", "Namespace", "ClusterRole", "ClusterRoleBinding"}


def render(workdir: Path, namespace: str | None, components: list[Path]) -> dict[tuple[str, str], dict]:
    overlay = workdir / (namespace or "cluster")
    overlay.mkdir()
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(MANIFESTS, overlay)],
        "components": [os.path.relpath(component, overlay) for component in components],
    }
    if namespace:
        kustomization["namespace"] = namespace
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    done = subprocess.run([kustomize_kubectl(), "kustomize", str(overlay)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return {(doc["kind"], doc["metadata"]["name"]): doc for doc in yaml.safe_load_all(done.stdout) if doc}


def test_a_namespaced_install_scrapes_and_alerts_in_its_own_namespace(tmp_path: Path) -> None:
    components = [MANIFESTS / "namespaced", MANIFESTS / "namespaced" / "monitoring"]
    teams = {team: render(tmp_path, team, components) for team in ("team-a", "team-b")}
    for team, objects in teams.items():
        assert not {kind for kind, _ in objects} & CLUSTER_SCOPED, "a namespace admin applies it"
        pods = objects[("PodMonitor", "mfl-servers")]
        # No namespaceSelector: the Prometheus Operator selects Pods in the PodMonitor's own namespace.
        assert pods["metadata"]["namespace"] == team and "namespaceSelector" not in pods["spec"]
        operator = objects[("ServiceMonitor", "feedbackloop-operator")]
        assert operator["metadata"]["namespace"] == team
        assert [e.get("honorLabels") for e in operator["spec"]["endpoints"]] == [True]
        assert objects[("PrometheusRule", "model-feedback-loop")]["metadata"]["namespace"] == team
        env = {
            e["name"]: e
            for e in objects[("Deployment", "feedbackloop-operator")]["spec"]["template"]["spec"]["containers"][0][
                "env"
            ]
        }
        assert env["MFL_WATCH_NAMESPACES"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    # Everything else the same as the cluster-wide component's.
    cluster = render(tmp_path, None, [COMPONENT])
    assert cluster[("PodMonitor", "mfl-servers")]["spec"]["namespaceSelector"] == {"any": True}
    rules = {team: objects[("PrometheusRule", "model-feedback-loop")]["spec"] for team, objects in teams.items()}
    assert rules["team-a"] == rules["team-b"] == cluster[("PrometheusRule", "model-feedback-loop")]["spec"]


def enforced(rules: dict, namespace: str) -> dict:
    """The rules as a Prometheus with `enforcedNamespaceLabel: namespace` evaluates a PrometheusRule of
    `namespace` (the Prometheus Operator's rewrite): every series the expressions select, and every rule's
    labels, get `namespace="<its namespace>"`."""
    matcher = f'namespace="{namespace}"'

    def inject(expr: str) -> str:
        def one(match: re.Match[str]) -> str:
            name, brace = match.group(1), match.group(2)
            return f"{name}{{{matcher}," if brace else f"{name}{{{matcher}}}"

        return re.sub(METRIC_NAME.pattern + r"(\{)?", one, expr)

    groups = copy.deepcopy(rules["groups"])
    for group in groups:
        for rule in group["rules"]:
            rule["expr"] = inject(rule["expr"])
            rule["labels"] = {**rule.get("labels", {}), "namespace": namespace}
    return {"groups": groups}


def annotations(alertname: str, labels: dict[str, str]) -> dict[str, str]:
    """The alert's annotations with `{{ $labels.x }}` filled in (those of the alerts used here have no other)."""
    [rule] = [rule for rule in alerting_rules() if rule["alert"] == alertname]
    placeholder = re.compile(r"\{\{ \$labels\.([a-z_]+) \}\}")
    return {key: placeholder.sub(lambda m: labels[m.group(1)], text) for key, text in rule["annotations"].items()}


def test_each_namespaced_installs_rules_alert_on_its_own_namespace_when_the_prometheus_enforces_it(
    tmp_path: Path,
) -> None:
    """Two namespaced installs' rules in one Prometheus with enforcedNamespaceLabel: loop `a` of each team is
    Breached, team-a's operator runs and team-b's is down. Each team's rules fire for its own loop only, and
    team-b's OperatorDown fires although team-a's operator is up."""
    target = 'job="feedbackloop-operator", service="feedbackloop-operator-metrics", container="operator"'
    series = []
    for team in ("team-a", "team-b"):
        labels = f'namespace="{team}", loop="a", phase="Breached", version="3", canary_version="", {target}'
        series.append({"series": f'mfl_loop_info{{{labels}, pod="op-{team}"}}', "values": "1x20"})
    series.append(
        {
            "series": f'mfl_operator_poll_cycles_total{{namespace="team-a", {target}, pod="op-team-a"}}',
            "values": "0+1x20",
        }
    )
    cases = {
        "team-a": [
            ("ModelFeedbackLoopBreached", [{"severity": "warning", "namespace": "team-a", "loop": "a"}]),
            ("ModelFeedbackLoopOperatorDown", []),
        ],
        "team-b": [
            ("ModelFeedbackLoopBreached", [{"severity": "warning", "namespace": "team-b", "loop": "a"}]),
            ("ModelFeedbackLoopOperatorDown", [{"severity": "critical", "namespace": "team-b"}]),
        ],
    }
    for team, expected in cases.items():
        (tmp_path / f"{team}.yaml").write_text(yaml.safe_dump(enforced(rules(), team)))
        tests = [
            {
                "eval_time": "10m",
                "alertname": name,
                "exp_alerts": [
                    {"exp_labels": labels, "exp_annotations": annotations(name, labels)} for labels in alerts
                ],
            }
            for name, alerts in expected
        ]
        test_file = tmp_path / f"{team}_test.yaml"
        test_file.write_text(
            yaml.safe_dump(
                {
                    "rule_files": [f"{team}.yaml"],
                    "evaluation_interval": "1m",
                    "tests": [{"interval": "1m", "input_series": series, "alert_rule_test": tests}],
                }
            )
        )
        output = run_promtool("test", "rules", test_file.name, cwd=tmp_path)
        assert "SUCCESS" in output
