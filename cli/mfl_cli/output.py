"""kubectl's `-o/--output` for `mfl`: parsing the flag's value, and printing loops (and any other document) in
each format: the table, `wide`, `name`, `json`, `yaml`, `jsonpath=TEMPLATE`, `custom-columns=SPEC`."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mfl_cli import jsonpath, views

RESOURCE_NAME = "modelfeedbackloop.feedbackloop.dev"  # what `-o name` prints before the slash, as kubectl does
TEMPLATED = ("jsonpath", "custom-columns")


@dataclass(frozen=True)
class Output:
    """A parsed `-o` value: its format, and the template of jsonpath= or custom-columns=."""

    format: str
    template: str = ""
    nodes: tuple[Any, ...] = ()  # jsonpath: the parsed template
    columns: tuple[tuple[str, tuple[Any, ...]], ...] = ()  # custom-columns: (header, parsed template)


def output_type(*allowed: str) -> Callable[[str], Output]:
    """The argparse `type` of a verb's -o: the formats it takes (kubectl's names), a usage error otherwise."""

    def parse(text: str) -> Output:
        name, _, template = text.partition("=")
        if name not in allowed:
            choices = ", ".join(f"{a}=..." if a in TEMPLATED else a for a in allowed)
            raise argparse.ArgumentTypeError(
                f"unable to match a printer suitable for the output format {text!r}, allowed formats are: {choices}"
            )
        if name in TEMPLATED and not template.strip():
            raise argparse.ArgumentTypeError(f"{name} needs a template: -o {name}=...")
        if name not in TEMPLATED and template:
            raise argparse.ArgumentTypeError(f"-o {name} takes no template")
        try:
            if name == "jsonpath":
                return Output(name, template, nodes=tuple(jsonpath.parse(template)))
            if name == "custom-columns":
                return Output(name, template, columns=custom_columns(template))
        except jsonpath.JsonPathError as error:
            raise argparse.ArgumentTypeError(f"error parsing {name} {template!r}: {error}") from None
        return Output(name)

    parse.__name__ = "output format"  # argparse names the type in its message
    return parse


def custom_columns(spec: str) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    """`NAME:.metadata.name,PHASE:.status.phase` as kubectl reads it: each column a header and a path."""
    columns = []
    for part in spec.split(","):
        header, colon, expression = part.partition(":")
        if not colon or not header or not expression:
            raise jsonpath.JsonPathError(
                f"unexpected custom-columns spec: {part!r}, expected <header>:<json-path-expr>"
            )
        columns.append((header, tuple(jsonpath.parse(jsonpath.relaxed(expression)))))
    return tuple(columns)


def document(value: Any, output: Output) -> str:
    """Any document (a status block, a report, a version list) in a machine format: json, yaml, jsonpath."""
    if output.format == "jsonpath":
        return jsonpath.render(list(output.nodes), value)
    return views.dump(value, output.format)


# --- loops ----------------------------------------------------------------------------------------------------

HEADER = ["NAME", "PHASE", "VERSION", "CANARY", "AGE"]
WIDE = ["MODEL", "READY", "REASON", "METRIC"]  # the CRD's printer columns the default table leaves out, + model
READY = jsonpath.parse('{.status.conditions[?(@.type=="Ready")].status}')
REASON = jsonpath.parse('{.status.conditions[?(@.type=="Ready")].reason}')


def loop_header(output: Output | None, all_namespaces: bool) -> list[str]:
    if output is not None and output.format == "custom-columns":
        header = [name for name, _ in output.columns]
    else:
        header = HEADER + (WIDE if output is not None and output.format == "wide" else [])
    return (["NAMESPACE"] if all_namespaces else []) + header


def loop_row(loop: dict[str, Any], output: Output | None, now: float, all_namespaces: bool) -> list[Any]:
    meta, status = views.mapping(loop.get("metadata")), views.mapping(loop.get("status"))
    if output is not None and output.format == "custom-columns":
        row: list[Any] = [column_value(list(nodes), loop) for _, nodes in output.columns]
    else:
        row = [meta.get("name"), status.get("phase", ""), status.get("currentVersion"), views.canary(loop)]
        row.append(views.age(meta.get("creationTimestamp"), now))
        if output is not None and output.format == "wide":
            model = views.mapping(views.mapping(loop.get("spec")).get("model")).get("name")
            ready, reason = jsonpath.render(READY, loop), jsonpath.render(REASON, loop)
            row += [model, ready or "-", reason or "-", status.get("summary") or "-"]
    return ([meta.get("namespace")] if all_namespaces else []) + row


def column_value(nodes: list[Any], loop: dict[str, Any]) -> str:
    """A custom column's cell: its values joined by commas, `<none>` when there is none (as kubectl)."""
    values = [jsonpath.text_of(v) for node in nodes for v in _found(node, loop)]
    return ",".join(values) if values else "<none>"


def _found(node: Any, loop: dict[str, Any]) -> list[Any]:
    if isinstance(node, jsonpath.Path):
        return jsonpath.find(node.steps, loop)
    return [node.text] if isinstance(node, jsonpath.Text) else []


def sorted_loops(loops: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(loops, key=lambda x: (x["metadata"].get("namespace", ""), x["metadata"]["name"]))


class LoopPrinter:
    """Prints loops in the table formats (default, wide, custom-columns) or the others; the table keeps the
    widths it has printed so that a watch's rows stay under its header (and widens when a cell is longer)."""

    def __init__(self, output: Output | None, all_namespaces: bool, no_headers: bool, now: Callable[[], float]):
        self.output, self.all_namespaces, self.no_headers, self.now = output, all_namespaces, no_headers, now
        self.widths: list[int] = []
        self.header_printed = False

    @property
    def tabular(self) -> bool:
        return self.output is None or self.output.format in ("wide", "custom-columns")

    def rows(self, loops: list[dict[str, Any]]) -> str:
        """The table's lines for these loops (the header before the first ones, unless --no-headers)."""
        header = loop_header(self.output, self.all_namespaces)
        rows = [[views.cell(c) for c in loop_row(loop, self.output, self.now(), self.all_namespaces)] for loop in loops]
        shown = ([] if self.header_printed or self.no_headers else [header]) + rows
        for row in ([] if self.no_headers else [header]) + rows:
            self.widths = [max(w, len(c)) for w, c in zip(self.widths or [0] * len(row), row)]
        self.header_printed = True
        return "".join("   ".join(c.ljust(w) for c, w in zip(row, self.widths)).rstrip() + "\n" for row in shown)

    def objects(self, loops: list[dict[str, Any]], as_list: bool) -> str:
        """Loops in a machine format: a v1 List when `as_list` (kubectl's list form), else each object."""
        assert self.output is not None
        if self.output.format == "name":
            return "".join(f"{RESOURCE_NAME}/{loop['metadata']['name']}\n" for loop in loops)
        if as_list:
            return document(views.as_list(loops), self.output)
        separator = "---\n" if self.output.format == "yaml" else ""
        return separator.join(document(loop, self.output) for loop in loops)

    def print(self, loops: list[dict[str, Any]], as_list: bool) -> str:
        return self.rows(loops) if self.tabular else self.objects(loops, as_list)
