"""Text someone else wrote, made inert before an administrator's terminal shows it.

What a tenant controls reaches status and Events (a Prometheus error, a trainer's termination message, a
Pod's waiting message, a webhook's answer) and from there `mfl status`, `kubectl describe` and logs. A
terminal obeys what it is sent: ESC sequences (colours, cursor moves, OSC 8 links, OSC 52 clipboard writes),
BEL, backspace and carriage return (which overwrite what was shown), C1 controls (0x80-0x9f, e.g. CSI 0x9b),
and Unicode bidi overrides and isolates (U+202A-U+202E, U+2066-U+2069) that reorder what is shown.

`inert` replaces every such character by its escape as Python writes it (`\\x1b`, `\\r`, `\\u202e`): the
message stays readable and says what was there, and nothing in it acts. Forbidden: the Unicode categories
Cc (C0, DEL, C1), Cf (format: bidi marks, zero-width characters, tags), Cs (lone surrogates, which also
fail to encode), Cn (unassigned: a newer terminal may know one as a format character), Zl and Zp (line and
paragraph separators). Kept: every other character, so printable text is unchanged. A newline and a tab
are kept only where a multi-line text is meant (`multiline=True`). Pure and cheap: a printable string is
checked once at C speed and returned as it is.
"""

from __future__ import annotations

import unicodedata
from typing import Any, TypeVar, cast

T = TypeVar("T")

FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Cn", "Zl", "Zp"})
MULTILINE_KEPT = frozenset("\n\t")
NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
CUT = "..."  # marks a text cut at its limit


def forbidden(char: str, multiline: bool = False) -> bool:
    """Whether one character may not reach a terminal as it is."""
    if multiline and char in MULTILINE_KEPT:
        return False
    return unicodedata.category(char) in FORBIDDEN_CATEGORIES


def escape(char: str) -> str:
    """One character as Python's escape for it: \\n, \\x1b, \\u202e, \\U000e0041."""
    named = NAMED_ESCAPES.get(char)
    if named is not None:
        return named
    point = ord(char)
    if point < 0x100:
        return f"\\x{point:02x}"
    return f"\\u{point:04x}" if point < 0x10000 else f"\\U{point:08x}"


class _Escapes(dict[int, str]):
    """str.translate's table: a code point to its escape, or to itself when harmless; filled as characters are
    met (at most MEMO entries: beyond, computed each time), so a text is translated at C speed."""

    MEMO = 65536

    def __init__(self, multiline: bool) -> None:
        super().__init__()
        self.multiline = multiline

    def __missing__(self, point: int) -> str:
        char = chr(point)
        value = escape(char) if forbidden(char, self.multiline) else char
        if len(self) < self.MEMO:
            self[point] = value
        return value


_TABLES = {False: _Escapes(False), True: _Escapes(True)}


def inert(text: str, limit: int | None = None, multiline: bool = False) -> str:
    """`text` with every forbidden character escaped, at most `limit` characters (cut with "..." at the end).

    Idempotent (an escape is printable); printable text within the limit is returned unchanged. With
    `multiline`, newlines and tabs stay and a CRLF line end becomes a newline. The work is bounded by the
    limit, not by the text: a longer text is cut first to what can still reach the result.
    """
    if limit is not None and len(text) > 2 * limit + 2:
        text = text[: 2 * limit + 2]  # its result is cut at `limit` too: a CRLF at most halves, escapes lengthen
    if not text.isprintable():  # every forbidden character is non-printable; most text is printable
        if multiline:
            text = text.replace("\r\n", "\n")
        text = text.translate(_TABLES[multiline])
    if limit is not None and len(text) > limit:
        text = text[: limit - len(CUT)] + CUT if limit >= len(CUT) else text[:limit]
    return text


def inert_tree(value: T, limit: int | None = None, multiline: bool = False) -> T:
    """A JSON value with every string in it, keys too, made `inert`: a new value, the given one untouched.
    Numbers, booleans and None are kept; so is any other object, as it is."""
    return cast(T, _tree(value, limit, multiline))


def _tree(value: Any, limit: int | None, multiline: bool) -> Any:
    if isinstance(value, str):
        return inert(value, limit, multiline)
    if isinstance(value, dict):
        return {_leaf(k, limit, multiline): _leaf(v, limit, multiline) for k, v in value.items()}
    if isinstance(value, list):
        return [_leaf(v, limit, multiline) for v in value]
    return value


def _leaf(value: Any, limit: int | None, multiline: bool) -> Any:
    """The common leaf (a printable string within the limit, a number) without a further call."""
    if isinstance(value, str) and value.isprintable() and (limit is None or len(value) <= limit):
        return value
    if isinstance(value, (int, float)) or value is None:
        return value
    return _tree(value, limit, multiline)
