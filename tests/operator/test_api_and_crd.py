"""The CRD in crds/ is generated from the pydantic models; these tests fail when the two drift."""

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from feedbackloop import crdgen
from feedbackloop.core import api

ROOT = Path(__file__).resolve().parents[2]
CRD_FILE = ROOT / "crds" / "modelfeedbackloops.feedbackloop.dev.yaml"


def minimal_spec(**overrides):
    spec = {
        "model": {"name": "churn", "storage": {"hostPath": {"path": "/data"}}},
        "monitoring": {"prometheus": {"url": "http://prometheus:9090"}},
    }
    spec.update(overrides)
    return spec


def test_committed_crd_matches_the_models():
    assert CRD_FILE.read_text() == crdgen.render(), "run: python -m feedbackloop.crdgen > " + str(CRD_FILE)


def test_kustomize_ships_the_generated_crd():
    kustomization = yaml.safe_load((ROOT / "manifests" / "kustomization.yaml").read_text())
    assert "../crds" in kustomization["resources"] and "bases" not in kustomization
    crds = yaml.safe_load((ROOT / "crds" / "kustomization.yaml").read_text())
    assert crds["resources"] == [CRD_FILE.name]


def walk(node, path=""):
    yield path, node
    if isinstance(node, dict):
        for key, value in node.get("properties", {}).items():
            yield from walk(value, f"{path}.{key}")
        if "items" in node:
            yield from walk(node["items"], f"{path}[]")
        if isinstance(node.get("additionalProperties"), dict):
            yield from walk(node["additionalProperties"], f"{path}{{}}")


def test_schema_is_structural():
    schema = crdgen.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in walk(schema):
        assert not {"$ref", "anyOf", "oneOf", "allOf", "const", "$defs", "title"} & set(node), path
        assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), f"{path} has no type"
        assert not ("properties" in node and "additionalProperties" in node), path


def test_every_status_field_the_operator_writes_is_in_the_schema():
    """Fields missing from the schema are silently pruned by the API server."""
    status = crdgen.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    written = {
        "phase",
        "observedGeneration",
        "conditions",
        "currentVersion",
        "serving",
        "metrics",
        "summary",
        "breachSince",
        "retraining",
        "candidate",
        "rollout",
        "lastRetrainAt",
        "retrainTimes",
        "failureBackoffUntil",
        "lastFailure",
        "retrainBlockedBy",
        "history",
        "handledRequests",
    }
    assert written <= set(status["properties"])
    assert status["properties"]["conditions"]["x-kubernetes-list-map-keys"] == ["type"]
    record = status["properties"]["history"]["items"]["properties"]
    assert {"version", "trigger", "outcome", "at", "message", "metrics", "evidence"} <= set(record)


def test_required_fields_enums_bounds_and_patterns_reach_the_schema():
    spec = crdgen.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert set(spec["required"]) == {"model", "monitoring"}
    rule = spec["properties"]["monitoring"]["properties"]["metrics"]["items"]
    assert rule["properties"]["onNoData"]["enum"] == ["hold", "ignore", "breach"]
    assert rule["properties"]["for"]["pattern"] == api.DURATION_PATTERN
    assert "default" not in rule["properties"]["for"]  # a list item's default: applied by the operator (issue 23)
    replicas = spec["properties"]["model"]["properties"]["serving"]["properties"]["replicas"]
    assert (replicas["minimum"], replicas["maximum"], replicas["default"]) == (1, 100, 2)
    analysis = spec["properties"]["rollout"]["properties"]["analysis"]["properties"]
    detectable = analysis["detectableDegradation"]
    assert detectable["exclusiveMinimum"] is True and detectable["minimum"] == 0
    assert (analysis["alpha"]["minimum"], analysis["alpha"]["maximum"]) == (api.MIN_FRACTION, 0.5)


def test_printer_columns_and_names():
    version = crdgen.crd()["spec"]["versions"][0]
    assert [c["name"] for c in version["additionalPrinterColumns"]][:4] == ["Phase", "Version", "Metric", "Ready"]
    names = crdgen.crd()["spec"]["names"]
    assert names["shortNames"] == ["mfl"] and names["categories"] == ["ml"]
    assert version["subresources"] == {"status": {}}


def test_minimal_spec_gets_defaults():
    spec = api.validate_spec(minimal_spec())
    assert spec.monitoring.interval == "30s"
    assert spec.model.serving.replicas == 2
    assert spec.rollout.analysis.alpha == 0.05
    assert spec.retraining is None


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda s: s["model"].update(storage={}), "spec.model.storage"),
        (
            lambda s: s["model"].update(
                storage={"hostPath": {"path": "/a"}, "persistentVolumeClaim": {"claimName": "c"}}
            ),
            "spec.model.storage",
        ),
        (lambda s: s["monitoring"].update(metrics=[{"name": "acc", "query": "up"}]), "spec.monitoring.metrics.0"),
        (
            lambda s: s["monitoring"].update(metrics=[{"name": "acc", "query": "up", "min": 2, "max": 1}]),
            "spec.monitoring.metrics.0",
        ),
        (lambda s: s["monitoring"].update(interval="5 minutes"), "spec.monitoring.interval"),
        (lambda s: s.update(rollout={"steps": [{"weight": 50}, {"weight": 20}]}), "spec.rollout.steps"),
        (
            lambda s: s["monitoring"].update(
                metrics=[{"name": "a", "query": "x", "min": 1}, {"name": "a", "query": "y", "min": 1}]
            ),
            "spec.monitoring.metrics",
        ),
        (lambda s: s.update(unknownField=1), "spec.unknownField"),
    ],
)
def test_invalid_specs_name_the_field(mutate, field):
    spec = minimal_spec()
    mutate(spec)
    with pytest.raises(ValidationError) as caught:
        api.validate_spec(spec)
    assert api.describe_validation_error(caught.value).startswith(field)


@pytest.mark.parametrize("text, seconds", [("30s", 30), ("5m", 300), ("1h30m", 5400), ("7d", 604800), ("250ms", 0.25)])
def test_parse_duration(text, seconds):
    assert api.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5", "m", "1.5h", "-1s", "5 m"])
def test_parse_duration_refuses(text):
    with pytest.raises(ValueError):
        api.parse_duration(text)


def test_example_loop_in_manifests_is_valid():
    example = yaml.safe_load((ROOT / "manifests" / "examples" / "loop.yaml").read_text())
    api.validate_spec(example["spec"])


# --- ranges the schema cannot express on Kubernetes 1.20 (no CEL): the operator refuses them per loop ---

BASE = {
    "model": {"name": "churn", "storage": {"hostPath": {"path": "/data"}}},
    "monitoring": {"prometheus": {"url": "http://prometheus:9090"}},
}


def with_(path: str, value):  # noqa: ANN001, ANN201 - a spec with one nested field set
    import copy

    spec = copy.deepcopy(BASE)
    *parents, leaf = path.split(".")
    node = spec
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value
    return spec


@pytest.mark.parametrize(
    "path, value, field",
    [
        ("monitoring.interval", "0s", "monitoring.interval"),  # froze the whole fleet's poll
        ("monitoring.interval", "500ms", "monitoring.interval"),
        ("monitoring.prometheus.timeout", "0s", "monitoring.prometheus.timeout"),
        ("monitoring.prometheus.timeout", "10m", "monitoring.prometheus.timeout"),  # held every loop's poll
        ("rollout.analysis.interval", "0s", "rollout.analysis.interval"),
        ("rollout.analysis.maxDuration", "0s", "rollout.analysis.maxDuration"),
        ("rollout.analysis.maxSamples", 50, "rollout.analysis"),  # below minSamples (200)
        (
            "rollout.analysis.checks",
            [{"name": "p", "query": "x", "max": 1}, {"name": "p", "query": "y", "max": 1}],
            "rollout.analysis",
        ),
        ("rollout.analysis.checks", [{"name": "accuracy", "query": "x", "max": 1}], "rollout.analysis"),
    ],
)
def test_out_of_range_values_are_invalid_specs_naming_the_field(path, value, field):
    import pydantic

    with pytest.raises(pydantic.ValidationError) as error:
        api.validate_spec(with_(path, value))
    assert field in api.describe_validation_error(error.value)


@pytest.mark.parametrize(
    "path, value",
    [
        ("monitoring.interval", "1s"),
        ("monitoring.prometheus.timeout", "60s"),
        ("rollout.analysis.maxSamples", 200),
        ("rollout.analysis.maxDuration", "5m"),
    ],
)
def test_edge_values_in_range_are_accepted(path, value):
    api.validate_spec(with_(path, value))
