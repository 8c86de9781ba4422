"""Every check a loop's spec must pass, in one place: the models' own (pydantic, which the CRD mirrors)
and what the CRD cannot express on Kubernetes 1.20 (PromQL templates, the cron schedule).

A spec the API server accepted either parses here or yields the message for InvalidSpec, naming the
field; nothing later re-validates it.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from feedbackloop.core import api, cron, promql
from feedbackloop.core.api import ModelFeedbackLoopSpec


def parse_spec(raw: dict[str, Any]) -> tuple[ModelFeedbackLoopSpec | None, str]:
    """(the spec, "") or (None, what is wrong with it, field by field)."""
    try:
        spec = api.validate_spec(raw)
        problems = _template_problems(spec)
        if spec.retraining and spec.retraining.schedule:
            try:
                cron.parse(spec.retraining.schedule)
            except ValueError as error:
                problems.append(f"spec.retraining.schedule: {error}")
        if problems:
            raise ValueError("; ".join(problems))
        return spec, ""
    except (ValidationError, ValueError) as error:
        return None, api.describe_validation_error(error)


def _template_problems(spec: ModelFeedbackLoopSpec) -> list[str]:
    """Unknown placeholders would reach Prometheus verbatim: every look or poll would fail."""
    templates = [
        (f"monitoring.metrics[{i}].{field}", text)
        for i, rule in enumerate(spec.monitoring.metrics)
        for field, text in (("query", rule.query), ("samplesQuery", rule.samples_query or ""))
    ]
    templates += [(f"rollout.analysis.checks[{i}].query", c.query) for i, c in enumerate(spec.rollout.analysis.checks)]
    return [f"spec.{path}: {problem}" for path, text in templates for problem in promql.check_template(text)]
