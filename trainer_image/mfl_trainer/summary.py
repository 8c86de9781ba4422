"""The JSON summary the operator reads from the termination message (< 4 KiB, Kubernetes' limit)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

SUMMARY_LIMIT_BYTES = 4000  # Kubernetes keeps at most 4096 bytes of a termination message
DEFAULT_TERMINATION_LOG = "/dev/termination-log"


def success_summary(metadata: Mapping[str, Any], report: Mapping[str, Any], existing: bool) -> dict[str, Any]:
    metrics = metadata["metrics"]
    rows = metadata["rows"]
    return {
        "ok": True,
        "model": metadata.get("model"),
        "version": metadata["version"],
        "parentVersion": metadata.get("parentVersion"),
        "task": metadata.get("task"),
        "metric": metrics["metric"],
        "greaterIsBetter": metrics.get("greaterIsBetter"),
        "challenger": metrics["challenger"],
        "champion": metrics.get("champion"),
        "rows": {key: rows[key] for key in ("base", "feedback", "train", "holdout")},
        "holdout": metadata.get("holdout", {}).get("strategy"),
        "paired": report.get("paired"),
        "conceptSince": (metadata.get("trainingData") or {}).get("conceptSince"),
        "existing": existing,
        # The past version whose model this version is (a recurring concept, revive.py); null when trained.
        "revivedFrom": metadata.get("revivedFrom"),
        # Rows left out and why (e.g. feedbackRowsWithUnknownClass: labels that are not a class of the task).
        "skipped": dict(metadata.get("skipped") or {}),
        "worstSlices": report.get("worstSlices", {}).get("challenger", []),
    }


def error_summary(message: str, config: Any = None) -> dict[str, Any]:
    summary: dict[str, Any] = {"ok": False, "error": message}
    if config is not None:
        summary.update(model=config.model, version=config.version)
    return summary


def to_json_line(summary: dict[str, Any], limit: int = SUMMARY_LIMIT_BYTES) -> str:
    """Compact JSON within ``limit`` bytes: worst slices are dropped first, then the error is cut."""
    summary = dict(summary)
    slices = list(summary.get("worstSlices", []))
    while True:
        line = json.dumps(summary, separators=(",", ":"), allow_nan=False, default=str)
        if len(line.encode()) <= limit:
            return line
        if slices:
            slices.pop()
            summary["worstSlices"] = slices
            summary["worstSlicesTruncated"] = True
        elif len(str(summary.get("error", ""))) > 200:
            summary["error"] = _shorten(str(summary["error"]), len(line.encode()) - limit)
        else:
            return json.dumps({"ok": summary.get("ok", False), "error": "summary too large"})


def _shorten(text: str, excess: int) -> str:
    keep = max(100, len(text) - excess - 20)
    return text[:keep] + " ...[truncated]"


def emit(line: str, env: Mapping[str, str] | None = None) -> None:
    """Print the summary as the last stdout line and write it as the termination message.

    Without ``MFL_TERMINATION_LOG`` the Kubernetes default is used only if it exists, so a run
    outside a pod does not create files under /dev.
    """
    env = os.environ if env is None else env
    print(line, flush=True)
    target = env.get("MFL_TERMINATION_LOG")
    path = Path(target or DEFAULT_TERMINATION_LOG)
    if not target and not path.exists():
        return
    try:
        path.write_text(line)
    except OSError as error:
        print(
            f"[mfl-trainer] note: cannot write the termination message to {path}: {error}", file=sys.stderr, flush=True
        )
