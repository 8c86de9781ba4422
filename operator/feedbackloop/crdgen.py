"""Generates the CustomResourceDefinition from the pydantic models (the one source of truth).

    python -m feedbackloop.crdgen > crds/modelfeedbackloops.feedbackloop.dev.yaml

pydantic emits JSON Schema 2020-12; Kubernetes wants a *structural* OpenAPI v3.0 subset: no $ref, no
anyOf-with-null (nullable instead), no `const`, no `additionalProperties` beside `properties`, and the
boolean form of exclusiveMinimum. This module converts one into the other.
"""

from __future__ import annotations

import sys
from typing import Any

import yaml

from feedbackloop.core import api, celrules, phases

_DROPPED_KEYS = {"title", "x-mfl-duration"}
CEL_RULES = "x-kubernetes-validations"  # 1.25+ evaluate them; 1.20's API server drops the field (docs/install.md)


def _resolve(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_resolve(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        name = node["$ref"].split("/")[-1]
        target = defs[name]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        if celrules.validations(name):  # the model's cross-field rules, wherever it is used
            merged[CEL_RULES] = celrules.validations(name)
        return _resolve(merged, defs)
    return {key: _resolve(value, defs) for key, value in node.items() if key != "$defs"}


def _structural(node: Any) -> Any:
    if isinstance(node, list):
        return [_structural(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {k: v for k, v in node.items() if k not in _DROPPED_KEYS}
    if "anyOf" in node:
        node = _collapse_nullable(node)
    if "const" in node:
        node["enum"] = [node.pop("const")]
    for bound, plain in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(node.get(bound), (int, float)) and not isinstance(node.get(bound), bool):
            node[plain] = node.pop(bound)
            node[bound] = True
    if node.get("type") == "object":
        node = _structural_object(node)
    if "items" in node:
        node["items"] = _structural(node["items"])
    if "properties" in node:
        node["properties"] = {k: _structural(v) for k, v in node["properties"].items()}
    if node.get("default") in (None, ""):  # Kubernetes 1.20 reads a "" default back as null and refuses it
        node.pop("default", None)
    return node


def _collapse_nullable(node: dict[str, Any]) -> dict[str, Any]:
    options = [o for o in node.pop("anyOf") if o.get("type") != "null"]
    if len(options) != 1:
        raise ValueError(f"cannot express a union of {options} structurally")
    option = {k: v for k, v in options[0].items() if k not in _DROPPED_KEYS}
    return {**option, **node, "nullable": True}


def _structural_object(node: dict[str, Any]) -> dict[str, Any]:
    extra = node.pop("additionalProperties", None)
    if "properties" in node:
        return node
    if isinstance(extra, dict) and extra:
        node["additionalProperties"] = _structural(extra)
    else:  # dict[str, Any]: free-form, kept as written
        node["x-kubernetes-preserve-unknown-fields"] = True
    return node


def openapi_schema(model: type[api.ApiModel]) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of one pydantic model."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    if celrules.validations(model.__name__):
        raw[CEL_RULES] = celrules.validations(model.__name__)
    schema: dict[str, Any] = _structural(_resolve(raw, raw.get("$defs", {})))
    return schema


def _status_schema() -> dict[str, Any]:
    schema: dict[str, Any] = _without_defaults(openapi_schema(api.ModelFeedbackLoopStatus))  # written, not defaulted
    conditions = schema["properties"]["conditions"]
    conditions["x-kubernetes-list-type"] = "map"
    conditions["x-kubernetes-list-map-keys"] = ["type"]
    schema["properties"]["history"]["maxItems"] = phases.HISTORY_LIMIT
    # Canary evidence values are free-form numbers; everything else is typed so nothing is pruned.
    return schema


def _without_list_item_defaults(schema: Any, in_items: bool = False) -> Any:
    """The schema without a `default` anywhere under an array's `items`. The API server would apply those to each
    list item, where Argo CD's diff cannot see them (a list is compared whole: every sync would show the applied
    items as changed). The operator applies the same defaults itself: it reads every spec through the pydantic
    models, whose fields keep them (tests/release/test_crd_for_gitops.py)."""
    if not isinstance(schema, dict):
        return schema
    node = {k: v for k, v in schema.items() if not (in_items and k == "default")}
    if "properties" in node:
        node["properties"] = {k: _without_list_item_defaults(v, in_items) for k, v in node["properties"].items()}
    if isinstance(node.get("additionalProperties"), dict):
        node["additionalProperties"] = _without_list_item_defaults(node["additionalProperties"], in_items)
    if "items" in node:
        node["items"] = _without_list_item_defaults(node["items"], True)
    return node


def _without_defaults(node: Any) -> Any:
    if isinstance(node, list):
        return [_without_defaults(item) for item in node]
    if isinstance(node, dict):
        return {k: _without_defaults(v) for k, v in node.items() if k != "default"}
    return node


PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Version", "type": "integer", "jsonPath": ".status.currentVersion"},
    {"name": "Metric", "type": "string", "jsonPath": ".status.summary", "description": "The first metric's last value"},
    {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
    {"name": "Reason", "type": "string", "priority": 1, "jsonPath": '.status.conditions[?(@.type=="Ready")].reason'},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def crd() -> dict[str, Any]:
    spec_schema = _without_list_item_defaults(openapi_schema(api.ModelFeedbackLoopSpec))
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{api.PLURAL}.{api.GROUP}"},
        "spec": {
            "group": api.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": api.KIND,
                "plural": api.PLURAL,
                "singular": api.SINGULAR,
                "shortNames": api.SHORT_NAMES,
                "categories": api.CATEGORIES,
            },
            "versions": [
                {
                    "name": api.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "One production model whose feedback loop the operator runs.",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string", "description": f"{api.GROUP}/{api.VERSION}."},
                                "kind": {"type": "string", "description": f"{api.KIND}."},
                                # Nothing but the type: the API server refuses a CRD that says more of
                                # metadata (1.20: "must not specify anything other than name and generateName").
                                "metadata": {"type": "object"},
                                "spec": spec_schema,
                                "status": _status_schema(),
                            },
                        }
                    },
                }
            ],
        },
    }


def render() -> str:
    header = "# Generated by `python -m feedbackloop.crdgen` from feedbackloop/api.py. Do not edit.\n"
    return header + str(yaml.safe_dump(crd(), sort_keys=False, width=110))


def main() -> None:
    sys.stdout.write(render())


if __name__ == "__main__":
    main()
