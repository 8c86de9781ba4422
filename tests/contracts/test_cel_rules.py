"""The CRD's CEL rules (x-kubernetes-validations, feedbackloop.core.celrules) say what the pydantic validators say.

Each spec below is judged twice: by the operator's own parser (api.validate_spec, the enforcement on every
Kubernetes version, the only one on 1.20) and by every CEL rule of the generated CRD, evaluated with cel-python
on the spec as a 1.25+ API server sees it (the CRD's structural defaults applied, `number` fields as doubles).
The two verdicts must agree, and a refusal must carry the rule's own message."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import celpy
import pytest
import yaml
from pydantic import ValidationError

from feedbackloop import crdgen
from feedbackloop.core import api, celrules

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = yaml.safe_load((ROOT / "manifests" / "examples" / "loop.yaml").read_text())["spec"]
CEL = celpy.Environment()


def spec_schema() -> dict[str, Any]:
    [version] = crdgen.crd()["spec"]["versions"]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    return schema


def defaulted(value: Any, schema: dict[str, Any]) -> Any:
    """`value` with the schema's defaults applied, as the API server does before it validates."""
    if isinstance(value, dict) and "properties" in schema:
        out = dict(value)
        for name, sub in schema["properties"].items():
            if name not in out and "default" in sub:
                out[name] = copy.deepcopy(sub["default"])
            if name in out:
                out[name] = defaulted(out[name], sub)
        return out
    if isinstance(value, list) and "items" in schema:
        return [defaulted(item, schema["items"]) for item in value]
    return value


def typed(value: Any, schema: dict[str, Any]) -> Any:
    """JSON as Kubernetes hands it to CEL: a `number` field is a double even when written as 1."""
    if isinstance(value, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties") if isinstance(schema.get("additionalProperties"), dict) else {}
        return {k: typed(v, props.get(k, extra)) for k, v in value.items()}
    if isinstance(value, list):
        return [typed(item, schema.get("items", {})) for item in value]
    if schema.get("type") == "number" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def cel_violations(value: Any, schema: dict[str, Any]) -> list[str]:
    """The messages of every CEL rule that fails anywhere in `value` (rules sit on the schema's nodes)."""
    found = []
    for rule in schema.get("x-kubernetes-validations", []) if value is not None else []:
        program = CEL.program(CEL.compile(rule["rule"]))
        if not program.evaluate({"self": celpy.json_to_cel(value)}):
            found.append(rule["message"])
    if isinstance(value, dict):
        for name, sub in schema.get("properties", {}).items():
            if name in value:
                found += cel_violations(value[name], sub)
    if isinstance(value, list) and "items" in schema:
        for item in value:
            found += cel_violations(item, schema["items"])
    return found


def judge_with_cel(spec: dict[str, Any]) -> list[str]:
    schema = spec_schema()
    return cel_violations(typed(defaulted(spec, schema), schema), schema)


def judge_with_pydantic(spec: dict[str, Any]) -> bool:
    try:
        api.validate_spec(spec)
    except ValidationError:
        return False
    return True


def edit(*changes: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    spec = copy.deepcopy(EXAMPLE)
    for change in changes:
        change(spec)
    return spec


def metric(spec: dict[str, Any]) -> dict[str, Any]:
    first: dict[str, Any] = spec["monitoring"]["metrics"][0]
    return first


def analysis(spec: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = spec["rollout"]["analysis"]
    return found


def check(name: str, **bounds: float) -> dict[str, Any]:
    return {"name": name, "query": 'sum(rate(errors_total{track="canary"}[1m]))', **bounds}


def serving(spec: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = spec["model"]["serving"]
    return found


SECRET = {"name": "creds", "key": "token"}
S3 = {"endpoint": "http://seaweedfs.storage:8333", "bucket": "models", "credentialsSecret": "s3-creds"}
DATABASE = {"urlSecret": {"name": "ledger"}}

# (case, the spec, the CEL message expected; None: the spec is valid)
CASES: list[tuple[str, dict[str, Any], str | None]] = [
    ("the example", edit(), None),
    ("a metric with max only", edit(lambda s: metric(s).pop("min"), lambda s: metric(s).update(max=2)), None),
    ("a metric with min = max", edit(lambda s: metric(s).update(max=0.85)), None),
    ("a metric with no bound", edit(lambda s: metric(s).pop("min")), "a metric needs min and/or max"),
    ("a metric's min above its max", edit(lambda s: metric(s).update(max=0.5)), "a metric's min is above its max"),
    (
        "minSamples without samplesQuery",
        edit(lambda s: metric(s).pop("samplesQuery")),
        "minSamples and samplesQuery go together",
    ),
    (
        "two metrics of one name",
        edit(lambda s: s["monitoring"]["metrics"].append({**metric(s), "min": 0.5})),
        "metric names must be unique",
    ),
    (
        "two metrics of two names",
        edit(lambda s: s["monitoring"]["metrics"].append({**metric(s), "name": "accuracy2"})),
        None,
    ),
    (
        "a volume and a node folder",
        edit(lambda s: s["model"]["storage"].update(hostPath={"path": "/srv/mfl"})),
        "set exactly one of persistentVolumeClaim, hostPath or s3",
    ),
    (
        "no storage at all",
        edit(lambda s: s["model"].update(storage={})),
        "set exactly one of persistentVolumeClaim, hostPath or s3",
    ),
    ("a node folder alone", edit(lambda s: s["model"].update(storage={"hostPath": {"path": "/srv/mfl"}})), None),
    ("s3 with a database", edit(lambda s: s["model"].update(storage={"s3": S3, "database": DATABASE})), None),
    (
        "s3 without a database",
        edit(lambda s: s["model"].update(storage={"s3": S3})),
        "s3 needs a database for the labels: set database.urlSecret to a Secret holding a postgresql:// URL",
    ),
    (
        "a variable from a Secret",
        edit(lambda s: serving(s).update(env=[{"name": "A", "valueFrom": {"secretKeyRef": SECRET}}])),
        None,
    ),
    (
        "a variable from a Secret and a ConfigMap",
        edit(
            lambda s: serving(s).update(
                env=[{"name": "A", "valueFrom": {"secretKeyRef": SECRET, "configMapKeyRef": SECRET}}]
            )
        ),
        "set exactly one of secretKeyRef or configMapKeyRef",
    ),
    (
        "a variable from nothing",
        edit(lambda s: serving(s).update(env=[{"name": "A", "valueFrom": {}}])),
        "set exactly one of secretKeyRef or configMapKeyRef",
    ),
    ("variables from a ConfigMap", edit(lambda s: serving(s).update(envFrom=[{"configMapRef": {"name": "c"}}])), None),
    (
        "variables from a Secret and a ConfigMap",
        edit(lambda s: serving(s).update(envFrom=[{"configMapRef": {"name": "c"}, "secretRef": {"name": "s"}}])),
        "set exactly one of secretRef or configMapRef",
    ),
    ("maxSamples above minSamples", edit(lambda s: analysis(s).update(maxSamples=400)), None),
    ("maxSamples = minSamples", edit(lambda s: analysis(s).update(maxSamples=200)), None),
    (
        "maxSamples below minSamples",
        edit(lambda s: analysis(s).update(maxSamples=100)),
        "maxSamples must be at least minSamples",
    ),
    (
        "maxSamples below the default minSamples",
        edit(lambda s: analysis(s).pop("minSamples"), lambda s: analysis(s).update(maxSamples=1)),
        "maxSamples must be at least minSamples",
    ),
    (
        "two checks",
        edit(lambda s: analysis(s).update(checks=[check("errors", max=1), check("p50", min=0, max=2)])),
        None,
    ),
    (
        "a check with no bound",
        edit(lambda s: analysis(s).update(checks=[check("errors")])),
        "a check needs min and/or max",
    ),
    (
        "a check's min above its max",
        edit(lambda s: analysis(s).update(checks=[check("errors", min=2, max=1)])),
        "a check's min is above its max",
    ),
    (
        "two checks of one name",
        edit(lambda s: analysis(s).update(checks=[check("errors", max=1), check("errors", max=2)])),
        "check names must be unique and not accuracy, availability, latency",
    ),
    (
        "a check named as a built-in one",
        edit(lambda s: analysis(s).update(checks=[check("latency", max=1)])),
        "check names must be unique and not accuracy, availability, latency",
    ),
]


@pytest.mark.parametrize("case, spec, expected", CASES, ids=[case for case, _, _ in CASES])
def test_cel_and_the_operator_agree(case: str, spec: dict[str, Any], expected: str | None) -> None:
    violations = judge_with_cel(spec)
    assert violations == ([expected] if expected else []), case
    assert judge_with_pydantic(spec) is (expected is None), case


def rules_in(node: Any) -> list[str]:
    if isinstance(node, list):
        return [rule for item in node for rule in rules_in(item)]
    if not isinstance(node, dict):
        return []
    own = [entry["rule"] for entry in node.get("x-kubernetes-validations", [])]
    return own + [rule for key, value in node.items() if key != "x-kubernetes-validations" for rule in rules_in(value)]


def test_every_rule_is_in_the_crd_on_its_model_and_was_exercised() -> None:
    in_crd = set(rules_in(crdgen.crd()))
    names = {name for name in dir(api) if isinstance(getattr(api, name), type)}
    exercised = {expected for _, _, expected in CASES if expected}
    for model, rules in celrules.RULES.items():
        assert model in names and issubclass(getattr(api, model), api.ApiModel), model
        for rule in rules:
            assert rule.rule in in_crd, (model, rule.rule)
            assert rule.message in exercised, f"no case refuses a spec by {model}: {rule.message}"


def test_every_rule_compiles_and_the_status_has_none() -> None:
    [version] = crdgen.crd()["spec"]["versions"]
    assert not rules_in(version["schema"]["openAPIV3Schema"]["properties"]["status"])
    for rules in celrules.RULES.values():
        for rule in rules:
            CEL.compile(rule.rule)
