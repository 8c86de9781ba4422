"""PromQL templates: safe rendering for one loop, and batching one query across many loops.

A template names loop values with placeholders ({{model}}, {{namespace}}, {{version}}, {{track}}).
Rendering escapes each value for a PromQL string literal, so no value can close the string and inject
PromQL. Batching serves thousands of loops with one query per template: a template whose placeholders
all stand as exact label matchers (`label="{{model}}"`) is rewritten with regex matchers over every
loop's values (`label=~"a|b|c"`), and each result series is handed back to the loop whose values its
labels carry. A template that aggregates those labels away cannot be split and falls back to one query
per loop (its results carry no labels to split by).

Every template is parsed when the spec is (`syntax_problem`, after rendering with example values), by
promql-parser (a Rust port of Prometheus' own parser, compatible with Prometheus 2.45 and later functions):
a query that does not parse would otherwise show only at the first poll, as no data, and never breach.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import promql_parser

PLACEHOLDERS = ("model", "namespace", "version", "track")
_PLACEHOLDER = re.compile(r"\{\{\s*(model|namespace|version|track)\s*\}\}")
_UNKNOWN_PLACEHOLDER = re.compile(r"\{\{\s*([^}]*?)\s*\}\}")
# `label="{{placeholder}}"` (also with spaces around `=`): the only form batching can rewrite.
_EXACT_MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"\{\{\s*(model|namespace|version|track)\s*\}\}"')
_REGEX_SPECIALS = re.compile(r"([\\.^$|?*+()\[\]{}])")


MAX_QUERY_LENGTH = 4096  # characters of a template (the CRD's maxLength): real queries are a few hundred
MAX_RENDERED_LENGTH = 4 * MAX_QUERY_LENGTH  # after the placeholders are filled in
# Brackets and operators outside strings: the parser recurses on each, and about 1,000 nested ones overflow a
# 1 MiB thread stack (10,000 the main thread's): a segmentation fault, the operator gone. Checked first.
MAX_QUERY_NESTING = 256
MAX_ERROR_LENGTH = 300  # of the parser's message, which may quote the query
# Functions Prometheus 2.x has that the parser (Prometheus 3's set) dropped: a 2.x user may still write them.
_PROMETHEUS_2_FUNCTIONS = [
    promql_parser.Function(
        "holt_winters",
        [promql_parser.ValueType.Matrix, promql_parser.ValueType.Scalar, promql_parser.ValueType.Scalar],
        promql_parser.ValueType.Vector,
    ),
]
try:
    promql_parser.register_extra_functions(_PROMETHEUS_2_FUNCTIONS)
except ValueError:  # a later parser has them built in
    pass
_NESTING = re.compile(r"[(\[{]|==|!=|<=|>=|=~|!~|[-+*/%^<>]|\b(?:and|or|unless|atan2)\b")


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


def syntax_problem(query: str) -> str:
    """Why a rendered query is no PromQL the operator can evaluate ('' when it is): it must parse, and return
    one value per series (an instant vector or a scalar), as the instant queries the operator runs read."""
    if len(query) > MAX_RENDERED_LENGTH:
        return f"is {len(query)} characters once its placeholders are filled in: at most {MAX_RENDERED_LENGTH}"
    nesting = len(_NESTING.findall(_code_only(query)))
    if nesting > MAX_QUERY_NESTING:
        return f"holds {nesting} brackets and operators: at most {MAX_QUERY_NESTING}; simplify it"
    try:
        expr = promql_parser.parse(query)
    except Exception as error:  # ValueError: what Prometheus would answer (it may quote the query: cut short)
        return f"does not parse as PromQL: {str(error)[:MAX_ERROR_LENGTH]}"
    except BaseException as error:  # a Rust panic (pyo3's PanicException) on input the parser did not expect
        if type(error).__name__ != "PanicException":
            raise
        return f"does not parse as PromQL: the parser failed on it ({error})"
    while isinstance(expr, promql_parser.ParenExpr):
        expr = expr.expr
    if isinstance(expr, promql_parser.MatrixSelector | promql_parser.SubqueryExpr):
        return "returns a range vector (many values a series): the operator reads one; wrap it, e.g. rate(...[5m])"
    if isinstance(expr, promql_parser.StringLiteral):
        return "returns a string: the operator needs a number, an instant vector or a scalar"
    return ""


def _code_only(query: str) -> str:
    """The query without its string literals and # comments (where a bracket or an operator is only text)."""
    out, i, n = [], 0, len(query)
    while i < n:
        char = query[i]
        if char in "\"'`":
            i += 1
            while i < n and query[i] != char:
                i += 2 if char != "`" and query[i] == "\\" else 1
            i += 1
            out.append(" ")
        elif char == "#":
            while i < n and query[i] != "\n":
                i += 1
        else:
            out.append(char)
            i += 1
    return "".join(out)


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
