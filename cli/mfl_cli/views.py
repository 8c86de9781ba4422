"""What `get` prints: the loop table (as the CRD's printer columns, with the canary) and -o json|yaml."""

from __future__ import annotations

import json
from typing import Any

from feedbackloop.core.timeutil import parse_time

FORMATS = ("json", "yaml")


def table(rows: list[list[Any]], header: list[str], rule: bool = True) -> str:
    """Columns padded to their widest cell; `rule` adds a dashed line under the header."""
    cells = [[str(c) for c in header]] + [[("" if c is None else str(c)) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
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
    rollout = (loop.get("status") or {}).get("rollout")
    if not rollout:
        return "-"
    steps = len(((loop.get("spec") or {}).get("rollout") or {}).get("steps") or [])
    step = f" step {rollout.get('step', 0) + 1}" + (f"/{steps}" if steps else "")
    return f"v{rollout.get('version')} {rollout.get('weight')}%{step}" + (" paused" if rollout.get("paused") else "")


def loops_table(loops: list[dict[str, Any]], now: float, all_namespaces: bool) -> str:
    """One row per loop, by namespace then name; NAMESPACE first with -A, as kubectl does."""
    rows = []
    for loop in sorted(loops, key=lambda x: (x["metadata"].get("namespace", ""), x["metadata"]["name"])):
        meta, status = loop["metadata"], loop.get("status") or {}
        row = [meta["name"], status.get("phase", ""), status.get("currentVersion"), canary(loop)]
        row.append(age(meta.get("creationTimestamp"), now))
        rows.append([meta.get("namespace"), *row] if all_namespaces else row)
    header = ["NAME", "PHASE", "VERSION", "CANARY", "AGE"]
    return table(rows, ["NAMESPACE", *header] if all_namespaces else header, rule=False) + "\n"


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
