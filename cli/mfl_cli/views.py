"""What `get` prints: the loop table (as the CRD's printer columns, with the canary) and -o json|yaml; and
what every view prints through: text made inert (feedbackloop.core.text), values read whatever their shape.

A loop's status, a bucket's metadata and report, a server's answer: what the CLI shows was written by
someone else, a tenant's trainer, Prometheus or webhook among them. Every table cell and every line built
from such a value is one line of inert text (`cell`, `line`: control characters, escape sequences and bidi
overrides shown as their escapes, a newline too, so no row can be forged); `inert_output` makes whatever a
command writes inert as well (newlines kept), for what a view may have missed. `mapping`, `entries` and
`integer` read a value of an unexpected shape as absent, so no status the schema admits stops a view.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

from feedbackloop.core.text import inert
from feedbackloop.core.timeutil import parse_time


def cell(value: Any, limit: int | None = None) -> str:
    """A value as one line of inert text, at most `limit` characters ("" for None)."""
    if value is None:
        return ""
    return inert(value if isinstance(value, str) else str(value), limit)


def line(text: str) -> str:
    """A line of a view built from others' values: inert, its newlines shown as \\n."""
    return inert(text)


def mapping(value: Any) -> dict[str, Any]:
    """`value` when it is an object, else {} (read as absent)."""
    return value if isinstance(value, dict) else {}


def entries(value: Any) -> list[dict[str, Any]]:
    """The objects of a list (anything else in it, or a value that is no list, is skipped)."""
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def integer(value: Any, default: int = 0) -> int:
    """An integer field (a boolean or anything else reads as `default`)."""
    return value if isinstance(value, int) and not isinstance(value, bool) else default


class InertStream:
    """A text stream whose every write is made inert (newlines and tabs kept); the rest is the stream's."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        self.stream.write(inert(text, multiline=True))
        return len(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


@contextmanager
def inert_output() -> Iterator[None]:
    """Within: sys.stdout and sys.stderr write inert text."""
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = InertStream(saved[0]), InertStream(saved[1])  # type: ignore[assignment]
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved


def table(rows: list[list[Any]], header: list[str], rule: bool = True) -> str:
    """Columns padded to their widest cell; `rule` adds a dashed line under the header. Every cell is one line
    of inert text; a row shorter or longer than the others is padded, not cut."""
    cells = [[cell(c) for c in header]] + [[cell(c) for c in row] for row in rows]
    columns = max(len(row) for row in cells)
    cells = [row + [""] * (columns - len(row)) for row in cells]
    widths = [max(len(row[i]) for row in cells) for i in range(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join([lines[0], *(["  ".join("-" * w for w in widths)] if rule else []), *lines[1:]])


def age(created: str | None, now: float) -> str:
    """kubectl's AGE: the two most significant units while they matter (90s, 5m3s, 3h12m, 4d2h, 200d)."""
    start = parse_time(created)
    if start is None:
        return "<unknown>"
    seconds = max(int(now - start), 0)
    minutes, hours, days = seconds // 60, seconds // 3600, seconds // 86400
    if seconds < 120:
        return f"{seconds}s"
    if minutes < 10:
        return f"{minutes}m{seconds % 60}s" if seconds % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 192:
        return f"{days}d{hours % 24}h" if hours % 24 else f"{days}d"
    if days < 730:
        return f"{days}d"
    return f"{days // 365}y{days % 365}d" if days < 2920 else f"{days // 365}y"


def canary(loop: dict[str, Any]) -> str:
    """The running canary in a cell: version, weight, step of steps, paused; '-' when none runs."""
    rollout = mapping(mapping(loop.get("status")).get("rollout"))
    if not rollout:
        return "-"
    listed = mapping(mapping(loop.get("spec")).get("rollout")).get("steps")
    steps = len(listed) if isinstance(listed, list) else 0
    step = f" step {integer(rollout.get('step')) + 1}" + (f"/{steps}" if steps else "")
    return f"v{rollout.get('version')} {rollout.get('weight')}%{step}" + (" paused" if rollout.get("paused") else "")


def no_loops(namespace: str | None) -> str:
    return "no modelfeedbackloops found" + (f" in namespace {namespace!r}" if namespace else "")


def dump(value: Any, fmt: str) -> str:
    """`value` as `-o json` or `-o yaml` print it (yaml keeps the API's key order, like kubectl)."""
    if fmt == "json":
        return json.dumps(value, indent=4) + "\n"
    import yaml

    return yaml.safe_dump(value, sort_keys=False, default_flow_style=False)


def as_list(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Several objects as kubectl prints them with -o json|yaml: one v1 List."""
    return {"apiVersion": "v1", "kind": "List", "items": items, "metadata": {"resourceVersion": ""}}
