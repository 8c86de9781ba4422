"""Bounds on what a client may send, shared by the model server and the feedback sidecar (no numpy here)."""

from __future__ import annotations

MAX_ABS_NUMBER = 3.4e38  # float32's largest value: tree estimators cast to it, and error sums stay finite
MAX_TEXT_CHARS = 1024  # per categorical value or class label
