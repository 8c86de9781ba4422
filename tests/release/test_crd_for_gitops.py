"""The CRD sets no default inside a list item: the API server would fill those into each applied item, and Argo CD
(whose diff compares a list whole) would show every such list as out of sync. crdgen leaves them out; the operator
applies the same defaults itself, since it reads every spec through the pydantic models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from feedbackloop import crdgen
from feedbackloop.core import api

ROOT = Path(__file__).resolve().parents[2]
CRD_FILE = ROOT / "crds" / "modelfeedbackloops.feedbackloop.dev.yaml"
EXAMPLE = yaml.safe_load((ROOT / "manifests" / "examples" / "loop.yaml").read_text())["spec"]


def defaults_under_items(node: Any, path: str = "", in_items: bool = False) -> list[str]:
    if not isinstance(node, dict):
        return []
    found = [f"{path}: {node['default']!r}"] if in_items and "default" in node else []
    for name, sub in node.get("properties", {}).items():
        found += defaults_under_items(sub, f"{path}.{name}", in_items)
    if isinstance(node.get("additionalProperties"), dict):
        found += defaults_under_items(node["additionalProperties"], f"{path}.*", in_items)
    if "items" in node:
        found += defaults_under_items(node["items"], f"{path}[]", True)
    return found


def test_no_default_sits_under_an_items_schema() -> None:
    [version] = yaml.safe_load(CRD_FILE.read_text())["spec"]["versions"]
    assert defaults_under_items(version["schema"]["openAPIV3Schema"]) == []
    assert "default" in yaml.safe_dump(version["schema"])  # plain fields keep theirs (Argo CD sees those)


def test_the_models_have_defaults_in_list_items_that_the_crd_leaves_out() -> None:
    """Not vacuous: the models do default list items' fields; the generated CRD drops exactly those."""
    unstripped = defaults_under_items(crdgen.openapi_schema(api.ModelFeedbackLoopSpec))
    assert {".monitoring.metrics[].for: '5m'", ".rollout.steps[].pause: '1m'"} <= set(unstripped)
    assert ".notifications[].format: 'generic'" in unstripped


def test_the_operator_applies_the_list_items_defaults_when_it_reads_the_spec() -> None:
    metric = {k: v for k, v in EXAMPLE["monitoring"]["metrics"][0].items() if k not in ("for", "onNoData")}
    rollout = {**EXAMPLE["rollout"], "steps": [{"weight": 20}, {"weight": 50}]}
    toleration = {"key": "gpu", "value": "yes", "effect": "NoSchedule"}
    serving = {**EXAMPLE["model"]["serving"], "tolerations": [toleration]}
    spec = api.validate_spec(
        {
            **EXAMPLE,
            "model": {**EXAMPLE["model"], "serving": serving},
            "monitoring": {**EXAMPLE["monitoring"], "metrics": [metric]},
            "rollout": rollout,
        }
    )
    [rule] = spec.monitoring.metrics
    assert str(rule.for_) == "5m" and rule.on_no_data == "hold"
    assert [str(step.pause) for step in spec.rollout.steps] == ["1m", "1m"]
    assert spec.model.serving.tolerations[0].operator == "Equal"
