"""Bounds on what a loop's spec may hold (issue 22, build 5), each refused when the spec is parsed, naming the
field: PromQL templates that do not parse, hyperparameters (and affinity) nested thousands deep or too large,
hostPath storage the admin has not allowed or that names the node's own folders.

Each of these was accepted before (or crashed the parse with a RecursionError naming no field):
- a broken template showed only at the first poll, as no data, and the loop never breached;
- hyperparameters nested 3,000 deep made the loop Invalid with "spec: RecursionError: ...";
- `hostPath: /` mounted the node's root filesystem into the loop's Pods.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from feedbackloop import crdgen
from feedbackloop.core import api, promql, validation
from feedbackloop.core.fleet import LoopMemory
from feedbackloop.core.monitoring import rules_of
from feedbackloop.core.settings import AdminSettings
from feedbackloop.runtime import canary_queries
from feedbackloop.runtime.engine import Engine, Settings

ROOT = Path(__file__).resolve().parents[2]
SPEC_SCHEMA = crdgen.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
ALLOW = AdminSettings(allow_host_path=True)
BASE: dict[str, Any] = {
    "model": {"name": "churn", "storage": {"persistentVolumeClaim": {"claimName": "artifacts"}}},
    "monitoring": {"prometheus": {"url": "http://prometheus:9090"}},
    "retraining": {"features": ["a", "b"], "target": "y"},
}
GOOD = 'sum(rate(mfl_requests_total{model="{{model}}",namespace="{{namespace}}"}[5m]))'


def with_(path: str, value: Any) -> dict[str, Any]:
    spec = copy.deepcopy(BASE)
    *parents, leaf = path.split(".")
    node = spec
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value
    return spec


def error_of(raw: dict[str, Any], admin: AdminSettings | None = None) -> str:
    spec, error = validation.parse_spec(raw, admin)
    assert spec is None, "the spec should be refused"
    return error


def parsed(raw: dict[str, Any], admin: AdminSettings | None = None) -> api.ModelFeedbackLoopSpec:
    spec, error = validation.parse_spec(raw, admin)
    assert spec is not None, error
    return spec


# --- PromQL templates are parsed when the spec is ------------------------------------------------------

BROKEN = [
    ('x{model="{{model}}"', "unexpected end of input inside braces"),  # an unbalanced brace
    ('x{model="{{model}}}', "unterminated quoted string"),  # an unterminated quote
    ("sum(rate(x[5m])", "unclosed left parenthesis"),
    ("sum(rate(x[5m])) /", "does not parse"),  # a dangling operator
    ("rat(x[5m])", "unknown function with name 'rat'"),  # a typo
    ('x{model="{{model}}"}[5m]', "range vector"),  # parses, but is many values a series: never one to judge
    ('"accuracy"', "a string"),
    ("-(" * 1000 + "x" + ")" * 1000, "brackets and operators"),  # would overflow the parser's stack: refused first
    ("x" + "+x" * 300, "brackets and operators"),
]


@pytest.mark.parametrize("query, problem", BROKEN)
def test_a_metric_query_that_does_not_parse_is_refused_naming_the_rule(query: str, problem: str) -> None:
    rules = [{"name": "latency", "query": GOOD, "max": 1}, {"name": "accuracy", "query": query, "min": 0.8}]
    error = error_of(with_("monitoring.metrics", rules))
    assert error.startswith("spec.monitoring.metrics[1].query: metric accuracy: the query "), error
    assert problem in error, error


@pytest.mark.parametrize("query, problem", BROKEN[:3])
def test_a_samples_query_and_a_canary_check_query_are_parsed_too(query: str, problem: str) -> None:
    rule = {"name": "accuracy", "query": GOOD, "min": 0.8, "minSamples": 10, "samplesQuery": query}
    error = error_of(with_("monitoring.metrics", [rule]))
    assert error.startswith("spec.monitoring.metrics[0].samplesQuery: metric accuracy: ") and problem in error
    checks = [{"name": "ok", "query": GOOD, "max": 1}, {"name": "gpu", "query": query, "max": 1}]
    error = error_of(with_("rollout.analysis.checks", checks))
    assert error.startswith("spec.rollout.analysis.checks[1].query: check gpu: ") and problem in error


def test_a_template_is_parsed_with_its_placeholders_filled_in() -> None:
    """The model's own name stands in for {{model}}: a name used outside a string must be a PromQL name."""
    name_outside_a_string = [{"name": "accuracy", "query": "{{model}}_accuracy", "min": 0.8}]
    assert parsed(with_("monitoring.metrics", name_outside_a_string))
    raw = with_("monitoring.metrics", name_outside_a_string)
    raw["model"]["name"] = "churn-2"  # churn - 2_accuracy: no query
    assert "does not parse" in error_of(raw)
    placeholders = 'x{model="{{model}}",namespace="{{ namespace }}",version="{{version}}",track="{{track}}"}'
    assert parsed(with_("monitoring.metrics", [{"name": "a", "query": placeholders, "min": 0}]))


def test_a_template_too_long_is_refused_by_the_schema_and_the_operator() -> None:
    too_long = "x" * (promql.MAX_QUERY_LENGTH + 1)
    error = error_of(with_("monitoring.metrics", [{"name": "a", "query": too_long, "min": 0}]))
    assert error.startswith("spec.monitoring.metrics.0.query:"), error
    rule = SPEC_SCHEMA["properties"]["monitoring"]["properties"]["metrics"]["items"]["properties"]
    assert rule["query"]["maxLength"] == rule["samplesQuery"]["maxLength"] == promql.MAX_QUERY_LENGTH
    # Placeholders grow when filled in: the rendered query is bounded as well.
    growing = "+".join(["{{model}}"] * 400)
    raw = with_("monitoring.metrics", [{"name": "a", "query": growing, "min": 0}])
    raw["model"]["name"] = "m" * 40
    assert "once its placeholders are filled in" in error_of(raw)


def test_deep_nesting_is_refused_before_the_parser_sees_it() -> None:
    """promql-parser recurses per bracket and operator: 10,000 nested parentheses, or 1,000 `-(x+` in a thread
    of 1 MiB stack, are a segmentation fault (the operator gone). The bound leaves real queries far below it."""
    assert "brackets and operators" in promql.syntax_problem("(" * 5000 + "x" + ")" * 5000)
    assert "brackets and operators" in promql.syntax_problem("-(x+" * 1000 + "x" + ")" * 1000)
    assert promql.syntax_problem("(" * 100 + "x" + ")" * 100) == ""
    # Brackets and operators inside strings and comments are text, not nesting.
    assert promql.syntax_problem('x{a="' + "(+" * 1000 + '"} # ' + "((" * 1000) == ""


ACCEPTED = [
    GOOD,
    'histogram_quantile(0.99, sum by (le) (rate(x_bucket{model="{{model}}"}[5m])))',
    "x and on() vector(1)",
    "x / on(a) group_left(b) y",
    "max_over_time((x)[1h:5m] offset 1d)",  # a subquery
    "holt_winters(x[5m], 0.5, 0.5)",  # Prometheus 2.x
    "double_exponential_smoothing(x[5m], 0.5, 0.5)",  # its name in Prometheus 3
    "x @ start()",
    "x{a=`raw`} # a comment",
    "1",
    "vector(1) > bool 0",
]


@pytest.mark.parametrize("query", ACCEPTED)
def test_queries_prometheus_runs_are_accepted(query: str) -> None:
    assert parsed(with_("monitoring.metrics", [{"name": "a", "query": query, "min": 0}]))


def test_the_default_rules_and_the_canary_queries_parse() -> None:
    for task in ("classification", "regression"):
        spec = parsed(with_("model.task", task) | {"retraining": None})
        values = {"model": "churn", "namespace": "team-a", "version": "3", "track": "stable"}
        for rule in rules_of(spec.monitoring, task):
            for text in (rule.query, rule.samples_query):
                if text is not None:
                    assert promql.syntax_problem(promql.render(text, values)) == "", (rule.name, text)
        for name, text in canary_queries.query_texts(spec, "team-a", "3", "5m").items():
            assert promql.syntax_problem(text) == "", (name, text)


def example_loops() -> list[tuple[str, dict[str, Any]]]:
    """Every ModelFeedbackLoop the repository shows: manifests/examples, docs/examples, the README and docs."""
    found: list[tuple[str, dict[str, Any]]] = []
    files = [*sorted((ROOT / "manifests" / "examples").glob("*.yaml")), *sorted((ROOT / "docs").rglob("*.yaml"))]
    for path in files:
        found += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if isinstance(doc, dict)]
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for block in re.findall(r"```yaml\n(.*?)```", path.read_text(), re.S):
            try:
                docs = list(yaml.safe_load_all(block))
            except yaml.YAMLError:
                continue  # a fragment with placeholders
            found += [(path.name, doc) for doc in docs if isinstance(doc, dict)]
    return [(name, doc) for name, doc in found if doc.get("kind") == api.KIND and isinstance(doc.get("spec"), dict)]


def test_every_example_loop_parses_templates_and_all() -> None:
    loops = example_loops()
    assert len(loops) >= 5, [name for name, _ in loops]
    for name, loop in loops:
        spec, error = validation.parse_spec(loop["spec"])  # a default operator: no hostPath in them
        assert spec is not None, f"{name}: {error}"


# --- hyperparameters (and affinity): bounded in depth and size ----------------------------------------


def nested(depth: int, leaf: Any = 1) -> Any:
    value = leaf
    for _ in range(depth):
        value = {"a": value}
    return value


@pytest.mark.parametrize("depth", [9, 3000, 100_000])
def test_hyperparameters_nested_too_deep_are_refused_naming_the_field(depth: int) -> None:
    error = error_of(with_("retraining.hyperparameters", nested(depth)))
    assert error.startswith("spec.retraining.hyperparameters: "), error
    assert "deeper than 8 levels" in error and "RecursionError" not in error


@pytest.mark.parametrize(
    "hyperparameters, problem",
    [
        ({f"p{i}": i for i in range(65)}, "at most 64 items"),
        ({"layers": list(range(2000))}, "more than 1024 values"),
        ({"vocabulary": "w" * 20_000}, "bytes as JSON: at most 16384"),
    ],
)
def test_hyperparameters_too_large_are_refused_naming_the_field(hyperparameters: Any, problem: str) -> None:
    error = error_of(with_("retraining.hyperparameters", hyperparameters))
    assert error.startswith("spec.retraining.hyperparameters: ") and problem in error, error


def test_hyperparameters_within_the_bounds_are_kept_as_written() -> None:
    hyperparameters = {"max_iter": 200, "hidden_layer_sizes": [64, 32], "deep": nested(7), "class_weight": None}
    spec = parsed(with_("retraining.hyperparameters", hyperparameters))
    assert spec.retraining is not None and spec.retraining.hyperparameters == hyperparameters
    schema = SPEC_SCHEMA["properties"]["retraining"]["properties"]["hyperparameters"]
    assert schema["maxProperties"] == api.MAX_HYPERPARAMETERS


def test_an_affinity_nested_too_deep_is_refused_naming_the_field() -> None:
    error = error_of(with_("model.serving", {"affinity": {"nodeAffinity": nested(5000)}}))
    assert error.startswith("spec.model.serving.affinity: ") and "deeper than 12 levels" in error, error
    term = {"labelSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["churn"]}]}}
    anti = {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"podAffinityTerm": term}]}}
    assert parsed(with_("model.serving", {"affinity": anti}))  # a real one, 9 deep


# --- storage: claims; hostPath only when the admin allows it, never the node's own folders -------------


def test_host_path_is_refused_unless_the_admin_allows_it() -> None:
    raw = with_("model.storage", {"hostPath": {"path": "/srv/mfl/team-a"}})
    error = error_of(raw)
    assert error.startswith("spec.model.storage.hostPath: ") and "MFL_ALLOW_HOST_PATH" in error, error
    assert error_of(raw, AdminSettings()) == error
    assert parsed(raw, ALLOW).model.storage.host_path is not None
    assert parsed(BASE).model.storage.persistent_volume_claim is not None  # a claim needs no permission


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "//",
        "/proc",
        "/proc/1/root",
        "/sys/fs/cgroup",
        "/etc",
        "/etc/kubernetes/pki",
        "/var/run",
        "/var/run/docker.sock",
        "/run/containerd",
        "/dev",
        "/var/lib/kubelet",
        "/var/lib/kubelet/pods",
        "/var/lib/containerd",
        "/var/lib/etcd",
        "/root",
        "/boot",
        "/usr/bin",
        "/var",  # holds /var/run and /var/lib/kubelet
        "/var/lib",
        "/opt",  # holds /opt/cni
        "/data/..",
        "/data/../etc",
        "/srv/./mfl",
        "/srv//mfl",
        "/srv/mfl/",
        "relative/path",
        "/srv/a b",
    ],
)
def test_host_paths_of_the_node_itself_are_refused_even_when_allowed(path: str) -> None:
    error = error_of(with_("model.storage", {"hostPath": {"path": path}}), ALLOW)
    assert error.startswith("spec.model.storage.hostPath.path: "), error
    pattern = SPEC_SCHEMA["properties"]["model"]["properties"]["storage"]["properties"]["hostPath"]["properties"]
    schema_refuses = re.search(pattern["path"]["pattern"], path) is None  # the API server matches as Go does
    assert schema_refuses or api.host_path_problem(path), path


@pytest.mark.parametrize("path", ["/srv/mfl/team-a", "/data", "/tmp/mfl-e2e", "/var/tmp", "/mnt/disk1/.mfl", "/..."])
def test_a_folder_of_its_own_is_a_host_path(path: str) -> None:
    assert parsed(with_("model.storage", {"hostPath": {"path": path}}), ALLOW)


def test_the_engine_parses_with_the_admins_settings() -> None:
    """runtime/engine.py passes Settings.admin (from MFL_ALLOW_HOST_PATH) to parse_spec."""
    loop = {
        "metadata": {"name": "churn", "namespace": "team-a", "generation": 1, "uid": "u"},
        "spec": with_("model.storage", {"hostPath": {"path": "/srv/mfl/team-a"}}),
    }
    refused, allowed = LoopMemory(), LoopMemory()
    Engine(kube=object())._parse(loop, refused)  # type: ignore[arg-type] - parsing touches no Kubernetes API
    Engine(kube=object(), settings=Settings(admin=ALLOW))._parse(loop, allowed)  # type: ignore[arg-type]
    assert refused.spec is None and refused.spec_error.startswith("spec.model.storage.hostPath: ")
    assert allowed.spec is not None and allowed.spec_error == ""
