"""Errors the trainer reports as ``{"ok": false, "error": ...}``."""

from __future__ import annotations

EXIT_UNEXPECTED = 1
EXIT_BAD_INPUT = 2


class TrainerError(Exception):
    """Bad configuration or bad data: the operator should not retry without a change (exit 2)."""

    exit_code = EXIT_BAD_INPUT
