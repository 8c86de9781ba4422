"""Every check a loop's spec must pass, in one place: the models' own (pydantic, which the CRD mirrors)
and what the CRD cannot express on Kubernetes 1.20 (PromQL templates; the models check the cron schedule) or
what depends on the operator's admin settings (hostPath storage).

A spec the API server accepted either parses here or yields the message for InvalidSpec, naming the
field; nothing later re-validates it.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from feedbackloop.core import api, promql
from feedbackloop.core.api import ModelFeedbackLoopSpec
from feedbackloop.core.settings import AdminSettings

# What the placeholders stand for when a template is parsed: the loop's own model name (a name used outside
# a string must make a valid PromQL name), plausible values for the rest (each is escaped as a string's content).
EXAMPLE_NAMESPACE = "default"
EXAMPLE_VERSION = "1"


def parse_spec(raw: dict[str, Any], admin: AdminSettings | None = None) -> tuple[ModelFeedbackLoopSpec | None, str]:
    """(the spec, "") or (None, what is wrong with it, field by field). `admin`: the operator admin's policy
    (omitted: the defaults, which refuse hostPath)."""
    admin = admin if admin is not None else AdminSettings()
    try:
        spec = api.validate_spec(raw)
        problems = _template_problems(spec)
        if spec.model.storage.host_path is not None and not admin.allow_host_path:
            problems.append(
                "spec.model.storage.hostPath: a directory on the node is not allowed by this operator's admin "
                "(its setting MFL_ALLOW_HOST_PATH is not true): use persistentVolumeClaim or s3"
            )
        if problems:
            raise ValueError("; ".join(problems))
        return spec, ""
    except (ValidationError, ValueError) as error:
        return None, api.describe_validation_error(error)


def _template_problems(spec: ModelFeedbackLoopSpec) -> list[str]:
    """Every PromQL template, rendered with example values and parsed: unknown placeholders would reach
    Prometheus verbatim, and a query that does not parse fails every poll (the loop never breaches)."""
    templates = [
        (f"monitoring.metrics[{i}].{field}", f"metric {rule.name}", "stable", text)
        for i, rule in enumerate(spec.monitoring.metrics)
        for field, text in (("query", rule.query), ("samplesQuery", rule.samples_query))
        if text is not None
    ]
    templates += [
        (f"rollout.analysis.checks[{i}].query", f"check {check.name}", "canary", check.query)
        for i, check in enumerate(spec.rollout.analysis.checks)
    ]
    problems = []
    for path, owner, track, text in templates:
        unknown = promql.check_template(text)
        if unknown:
            problems += [f"spec.{path}: {owner}: {problem}" for problem in unknown]
            continue
        values = {"model": spec.model.name, "namespace": EXAMPLE_NAMESPACE, "version": EXAMPLE_VERSION, "track": track}
        problem = promql.syntax_problem(promql.render(text, values))
        if problem:
            problems.append(f"spec.{path}: {owner}: the query {problem}")
    return problems
