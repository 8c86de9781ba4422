"""JSON on the hot path: orjson when it is installed, else the standard library.

Rows of floats dominate request parsing and the prediction log; orjson parses and prints them about
ten times faster (measured: 32 rows x 20 floats, 200 -> 40 us to parse, 430 -> 25 us to print).
``MFL_JSON=stdlib`` forces the standard library (benchmarks compare both); an orjson older than
3.11.5 is ignored.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

# Older orjson overflows the C stack on deeply nested input (CVE-2024-27454, GHSA-hx9q-6w63-j58v).
SAFE_ORJSON = (3, 11, 5)


def _safe_orjson() -> Any:
    if os.environ.get("MFL_JSON", "").lower() == "stdlib":
        return None
    try:
        import orjson
    except ImportError:  # not a hard dependency
        return None
    return orjson if _version(orjson.__version__) >= SAFE_ORJSON else None


def _version(text: str) -> tuple[int, ...]:
    parts = []
    for part in text.split(".")[:3]:
        digits = "".join(ch for ch in part if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


orjson = _safe_orjson()

BACKEND = "orjson" if orjson is not None else "json"
DECODE_ERRORS: tuple[type[BaseException], ...] = (ValueError, RecursionError)  # incl. UnicodeDecodeError


def _stdlib_dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _orjson_dumps(value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except TypeError:  # an integer beyond 64 bits, or deep nesting: rare, so fall back
        return _stdlib_dumps(value)


loads: Callable[[bytes], Any] = orjson.loads if orjson is not None else json.loads
dumps: Callable[[Any], bytes] = _orjson_dumps if orjson is not None else _stdlib_dumps
