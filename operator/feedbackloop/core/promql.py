"""PromQL templates: safe rendering for one loop, and batching one query across many loops.

A template names loop values with placeholders ({{model}}, {{namespace}}, {{version}}, {{track}}).
Rendering escapes each value for a PromQL string literal, so no value can close the string and inject
PromQL. Batching serves thousands of loops with one query per template: a template whose placeholders
all stand as exact label matchers (`label="{{model}}"`) is rewritten with regex matchers over every
loop's values (`label=~"a|b|c"`), and each result series is handed back to the loop whose values its
labels carry. A template that aggregates those labels away cannot be split and falls back to one query
per loop (its results carry no labels to split by).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

PLACEHOLDERS = ("model", "namespace", "version", "track")
_PLACEHOLDER = re.compile(r"\{\{\s*(model|namespace|version|track)\s*\}\}")
_UNKNOWN_PLACEHOLDER = re.compile(r"\{\{\s*([^}]*?)\s*\}\}")
# `label="{{placeholder}}"` (also with spaces around `=`): the only form batching can rewrite.
_EXACT_MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"\{\{\s*(model|namespace|version|track)\s*\}\}"')
_REGEX_SPECIALS = re.compile(r"([\\.^$|?*+()\[\]{}])")


def escape_string(value: str) -> str:
    """Escape a value for a double-quoted PromQL string literal."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_regex(value: str) -> str:
    """Escape a value so an RE2 alternation matches it literally."""
    return _REGEX_SPECIALS.sub(r"\\\1", value)


def check_template(template: str) -> list[str]:
    """Problems with a template, for spec validation (empty when fine)."""
    unknown = [name for name in _UNKNOWN_PLACEHOLDER.findall(template) if name not in PLACEHOLDERS]
    return [f"unknown placeholder {{{{{name}}}}} (use {', '.join(PLACEHOLDERS)})" for name in unknown]


def render(template: str, values: Mapping[str, str]) -> str:
    """Fill a template for one loop; every value is escaped as a string literal's content."""

    def substitute(match: re.Match[str]) -> str:
        return escape_string(str(values.get(match.group(1), "")))

    return _PLACEHOLDER.sub(substitute, template)


@dataclass(frozen=True)
class BatchPlan:
    """One query for many loops, and how to split its result back."""

    query: str
    label_of: dict[str, str]  # placeholder -> the label name its matcher constrains

    def key_of_series(self, labels: Mapping[str, str]) -> tuple[str, ...] | None:
        values = []
        for placeholder in sorted(self.label_of):
            value = labels.get(self.label_of[placeholder])
            if value is None:
                return None
            values.append(value)
        return tuple(values)

    def key_of_loop(self, values: Mapping[str, str]) -> tuple[str, ...]:
        return tuple(str(values.get(p, "")) for p in sorted(self.label_of))


def plan_batch(template: str, loops: Iterable[Mapping[str, str]]) -> BatchPlan | None:
    """A single query covering every loop, or None when the template cannot be batched."""
    matchers = _EXACT_MATCHER.findall(template)
    used = set(_PLACEHOLDER.findall(template))
    if not matchers or {p for _, p in matchers} != used:
        return None  # a placeholder outside a label matcher: nothing to split the result by
    label_of: dict[str, str] = {}
    for label, placeholder in matchers:
        if label_of.setdefault(placeholder, label) != label:
            return None  # one placeholder constrains two labels: ambiguous
    loops = list(loops)
    alternatives = {p: sorted({str(v.get(p, "")) for v in loops}) for p in label_of}

    def to_regex(match: re.Match[str]) -> str:
        label, placeholder = match.group(1), match.group(2)
        alternation = "|".join(escape_regex(v) for v in alternatives[placeholder])
        return f'{label}=~"{escape_string(alternation)}"'

    return BatchPlan(query=_EXACT_MATCHER.sub(to_regex, template), label_of=label_of)
