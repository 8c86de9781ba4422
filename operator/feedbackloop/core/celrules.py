"""The spec's cross-field rules as CEL, for the API servers that evaluate `x-kubernetes-validations`.

Each entry names the pydantic model (in api.py) whose `model_validator` / `field_validator` enforces the same rule;
crdgen puts the rules on that model's schema in the CRD, wherever the model is used. The pydantic validators stay
the enforcement everywhere (Kubernetes 1.20 has no CEL: the operator refuses such a spec with InvalidSpec); on
1.25+ the API server refuses it at `kubectl apply`, with the message below. tests/contracts/test_cel_rules.py
evaluates every rule with cel-python against good and bad specs and checks that the two verdicts agree.

Rules are written for Kubernetes' CEL cost estimate: iterations run over lists with a maxItems (metrics 20,
checks 10) and strings with a maxLength, so the CRD stays within the per-rule and per-CRD budgets.
"""

from __future__ import annotations

from dataclasses import dataclass

BUILT_IN_CHECKS = ("accuracy", "availability", "latency")  # api.Analysis: a threshold check may not take these names


@dataclass(frozen=True)
class Rule:
    rule: str  # CEL over `self`, the object the model describes
    message: str  # what the API server answers when the rule is false


def _min_max(what: str) -> tuple[Rule, ...]:
    return (
        Rule("has(self.min) || has(self.max)", f"a {what} needs min and/or max"),
        Rule("!has(self.min) || !has(self.max) || self.min <= self.max", f"a {what}'s min is above its max"),
    )


def _exactly_one(*fields: str) -> Rule:
    count = " + ".join(f"(has(self.{field}) ? 1 : 0)" for field in fields)
    return Rule(f"{count} == 1", f"set exactly one of {', '.join(fields[:-1])} or {fields[-1]}")


# api.py model name -> its cross-field rules.
RULES: dict[str, tuple[Rule, ...]] = {
    "EnvVarSource": (_exactly_one("secretKeyRef", "configMapKeyRef"),),
    "EnvFromSource": (_exactly_one("secretRef", "configMapRef"),),
    "Storage": (
        _exactly_one("persistentVolumeClaim", "hostPath", "s3"),
        Rule(
            "!has(self.s3) || has(self.database)",
            "s3 needs a database for the labels: set database.urlSecret to a Secret holding a postgresql:// URL",
        ),
    ),
    "MetricRule": (
        *_min_max("metric"),
        Rule("has(self.minSamples) == has(self.samplesQuery)", "minSamples and samplesQuery go together"),
    ),
    "Monitoring": (
        Rule(
            "!has(self.metrics) || self.metrics.all(m, self.metrics.exists_one(n, n.name == m.name))",
            "metric names must be unique",
        ),
    ),
    "ThresholdCheck": _min_max("check"),
    "Analysis": (
        Rule(
            "!has(self.maxSamples) || self.maxSamples >= self.minSamples",
            "maxSamples must be at least minSamples",
        ),
        Rule(
            "!has(self.checks) || self.checks.all(c, !(c.name in "
            + "["
            + ", ".join(f"'{name}'" for name in BUILT_IN_CHECKS)
            + "]"
            + ") && self.checks.exists_one(d, d.name == c.name))",
            f"check names must be unique and not {', '.join(BUILT_IN_CHECKS)}",
        ),
    ),
}


def validations(model: str) -> list[dict[str, str]]:
    """The `x-kubernetes-validations` of one model's schema (empty: none)."""
    return [{"rule": rule.rule, "message": rule.message} for rule in RULES.get(model, ())]
