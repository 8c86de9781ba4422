"""kubectl's JSONPath templates (`-o jsonpath=...`, `-o custom-columns=...`), over plain JSON values.

No Python library speaks kubectl's dialect: jsonpath-ng and its kin evaluate one path, while kubectl's is a
template (client-go's util/jsonpath): literal text, `{...}` actions, `{range ...}{end}`, quoted literals such as
`{"\\n"}`, several results of one action printed space-separated, objects and lists printed as compact JSON.
This module is that template language, written for the subset a script uses on a ModelFeedbackLoop:

- text outside braces printed as it is; `{"..."}` / `{'...'}` literals (with Go's escapes: \\n, \\t, \\", ...);
- a path: `$` or `@` (the current object), `.field` (`\\.` escapes a dot, as in `.metadata.annotations.
  feedbackloop\\.dev/promote`), `['key']`, `.*` and `[*]`, `[n]` (negative from the end), `[a:b]` and
  `[a:b:step]`, unions `[0,2]` and `['a','b']`, recursive descent `..field`, filters `[?(@.type=="Ready")]`
  with ==, !=, <, >, <=, >= against a number, a quoted string, true/false or another `@` path, and
  `[?(@.field)]` for existence;
- `{range PATH}...{end}`, nested;
- a missing key prints nothing (kubectl's default, --allow-missing-template-keys=true); an index out of
  bounds is an error, as in kubectl.

Not supported (an error says so): the `=~` regexp operator of some kubectl forks, arithmetic, functions.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any


class JsonPathError(ValueError):
    """A template that does not parse, or a step that fails on the data (an index out of bounds)."""


# --- the parsed template ------------------------------------------------------------------------------------


@dataclass
class Step:
    kind: str  # field | wildcard | index | slice | union | recursive | filter
    name: str = ""
    start: int | None = None
    stop: int | None = None
    step: int | None = None
    parts: list[list[Step]] = field(default_factory=list)  # union: each a path
    left: list[Step] = field(default_factory=list)  # filter: the @ path
    op: str = ""  # filter: '' (exists) or a comparison
    right: Any = None  # filter: a literal, or a list[Step] for another @ path


@dataclass
class Text:
    text: str


@dataclass
class Path:
    steps: list[Step]


@dataclass
class Range:
    path: Path
    body: list[Node]


Node = Text | Path | Range


def parse(template: str) -> list[Node]:
    """The template's nodes; JsonPathError when it does not parse."""
    nodes, rest = _parse_nodes(list(_tokens(template)), top=True)
    assert not rest
    return nodes


def _tokens(template: str) -> Iterator[tuple[str, str]]:
    """('text', literal) and ('action', inside the braces), in order."""
    i, n = 0, len(template)
    while i < n:
        start = template.find("{", i)
        if start < 0:
            yield "text", template[i:]
            return
        if start > i:
            yield "text", template[i:start]
        j, quote = start + 1, ""
        while j < n:
            char = template[j]
            if quote:
                if char == "\\":
                    j += 1
                elif char == quote:
                    quote = ""
            elif char in "\"'":
                quote = char
            elif char == "}":
                break
            j += 1
        if j >= n:
            raise JsonPathError(f"unclosed action in {template!r}")
        yield "action", template[start + 1 : j]
        i = j + 1


def _parse_nodes(tokens: list[tuple[str, str]], top: bool) -> tuple[list[Node], list[tuple[str, str]]]:
    nodes: list[Node] = []
    while tokens:
        kind, text = tokens.pop(0)
        if kind == "text":
            nodes.append(Text(text))
            continue
        action = text.strip()
        if action == "end":
            if top:
                raise JsonPathError("{end} without a {range}")
            return nodes, tokens
        if action.startswith("range ") or action == "range":
            body, tokens = _parse_nodes(tokens, top=False)
            nodes.append(Range(Path(_parse_path(action[len("range") :].strip())), body))
            continue
        if action[:1] in "\"'":
            nodes.append(Text(_unquote(action)))
            continue
        nodes.append(Path(_parse_path(action)))
    if not top:
        raise JsonPathError("{range} without an {end}")
    return nodes, tokens


def _unquote(text: str) -> str:
    if len(text) < 2 or text[0] != text[-1] or text[0] not in "\"'":
        raise JsonPathError(f"unterminated quoted string {text!r}")
    body, out, i = text[1:-1], [], 0
    while i < len(body):
        if body[i] == "\\" and i + 1 < len(body):
            i += 1
            if body[i] not in ESCAPES:
                raise JsonPathError(f"cannot unquote {text!r}: unknown escape \\{body[i]}")
            out.append(ESCAPES[body[i]])
        else:
            out.append(body[i])
        i += 1
    return "".join(out)


ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "'": "'", "a": "\a", "b": "\b", "f": "\f", "v": "\v"}


SLICE = re.compile(r"^(-?\d*)(?::(-?\d*))?(?::(-?\d*))?$")
COMPARISON = re.compile(r"^(.+?)(==|!=|<=|>=|<|>|=~)(.+)$")


def _parse_path(text: str) -> list[Step]:
    steps: list[Step] = []
    i, n = 0, len(text)
    while i < n:
        char = text[i]
        if char in " \t$@":
            i += 1
        elif text.startswith("..", i):
            if steps and steps[-1].kind == "recursive":
                raise JsonPathError("invalid multiple recursive descent")
            steps.append(Step("recursive"))
            i += 2
            if i < n and text[i] not in ".[":
                i = _field(text, i, steps)
        elif char == ".":
            i = _field(text, i + 1, steps)
        elif text.startswith("[?(", i):
            end = _filter_end(text, i + 3)
            steps.append(_filter(text[i + 3 : end]))
            i = end + 2
        elif char == "[":
            end = text.find("]", i)
            if end < 0:
                raise JsonPathError(f"unterminated array in {text!r}")
            steps.append(_subscript(text[i + 1 : end].strip()))
            i = end + 1
        else:
            raise JsonPathError(f"unrecognized character in action: {char!r} in {text!r}")
    return steps


def _field(text: str, i: int, steps: list[Step]) -> int:
    name, n = [], len(text)
    while i < n and text[i] not in ".[ \t":
        if text[i] == "\\" and i + 1 < n:
            i += 1
        name.append(text[i])
        i += 1
    value = "".join(name)
    steps.append(Step("wildcard") if value == "*" else Step("field", value))
    return i


def _filter_end(text: str, i: int) -> int:
    """The index of the `)` closing a filter (quotes skipped); the filter must end with `)]`."""
    quote = ""
    while i < len(text):
        char = text[i]
        if quote:
            if char == "\\":
                i += 1
            elif char == quote:
                quote = ""
        elif char in "\"'":
            quote = char
        elif char == ")" and text.startswith(")]", i):
            return i
        i += 1
    raise JsonPathError(f"unterminated filter in {text!r}")


def _filter(text: str) -> Step:
    match = COMPARISON.match(text.strip())
    if match is None:
        return Step("filter", left=_parse_path(text.strip()))
    left, op, right = match[1].strip(), match[2], match[3].strip()
    if op == "=~":
        raise JsonPathError("the =~ operator is not supported")
    return Step("filter", left=_parse_path(left), op=op, right=_operand(right))


def _operand(text: str) -> Any:
    if text[:1] in "\"'":
        return _unquote(text)
    if text in ("true", "false"):
        return text == "true"
    if text[:1] in "@$":
        return _parse_path(text)
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise JsonPathError(f"cannot parse {text!r} in a filter") from None


def _subscript(text: str) -> Step:
    if text == "*":
        return Step("wildcard")
    if "," in text:
        return Step("union", parts=[[_subscript(part.strip())] for part in text.split(",")])
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return Step("field", text[1:-1])
    match = SLICE.match(text)
    if match is None or text == "":
        raise JsonPathError(f"invalid array index {text!r}")
    if ":" not in text:
        return Step("index", start=int(match[1]))
    start, stop, step = (int(g) if g not in (None, "") else None for g in match.groups())
    if step is not None and step <= 0:
        raise JsonPathError("step must be > 0")
    return Step("slice", start=start, stop=stop, step=step)


# --- evaluation ----------------------------------------------------------------------------------------------


def find(steps: list[Step], data: Any) -> list[Any]:
    """Every value the path reaches from `data`, in order."""
    values = [data]
    for step in steps:
        values = [result for value in values for result in _apply(step, value)]
    return values


def _apply(step: Step, value: Any) -> list[Any]:
    if step.kind == "field":
        return [value[step.name]] if isinstance(value, dict) and step.name in value else []
    if step.kind == "wildcard":
        return list(value.values()) if isinstance(value, dict) else list(value) if isinstance(value, list) else []
    if step.kind == "recursive":
        return list(_descend(value))
    if step.kind == "union":
        return [result for part in step.parts for result in find(part, value)]
    if not isinstance(value, list):
        if value is None:
            return []
        raise JsonPathError(f"{type(value).__name__} is not an array")
    if step.kind == "index":
        index = step.start if step.start is not None else 0
        if not -len(value) <= index < len(value):
            raise JsonPathError(f"array index out of bounds: index {index}, length {len(value)}")
        return [value[index]]
    if step.kind == "slice":
        return value[step.start : step.stop : step.step]
    return [item for item in value if _passes(step, item)]


def _descend(value: Any) -> Iterator[Any]:
    """The value and every object or list under it that has children (kubectl's `..`)."""
    children = list(value.values()) if isinstance(value, dict) else value if isinstance(value, list) else []
    if children:
        yield value
        for child in children:
            yield from _descend(child)


def _passes(step: Step, item: Any) -> bool:
    lefts = find(step.left, item)
    if not step.op:
        return bool(lefts)
    rights = find(step.right, item) if isinstance(step.right, list) else [step.right]
    if len(lefts) != 1 or len(rights) != 1:
        return False
    left, right = lefts[0], rights[0]
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (left, right))
    if step.op in ("==", "!="):
        same = (left == right) if numbers or type(left) is type(right) else False
        return same if step.op == "==" else not same
    if not (numbers or (isinstance(left, str) and isinstance(right, str))):
        return False
    return bool({"<": left < right, ">": left > right, "<=": left <= right, ">=": left >= right}[step.op])


# --- printing ------------------------------------------------------------------------------------------------


def text_of(value: Any) -> str:
    """A value as kubectl prints it: strings as they are, objects and lists as compact JSON (keys sorted,
    as Go's encoder does), numbers and booleans as JSON writes them."""
    if isinstance(value, str):
        return value
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e21:
        return str(int(value))
    if value is None:
        return ""
    return json.dumps(value, separators=(",", ":"), sort_keys=isinstance(value, (dict, list)), ensure_ascii=False)


def render(nodes: list[Node], data: Any) -> str:
    out: list[str] = []
    for node in nodes:
        if isinstance(node, Text):
            out.append(node.text)
        elif isinstance(node, Path):
            out.append(" ".join(text_of(v) for v in find(node.steps, data)))
        else:
            for item in find(node.path.steps, data):
                out.append(render(node.body, item))
    return "".join(out)


def execute(template: str, data: Any) -> str:
    """`kubectl get -o jsonpath=TEMPLATE` of `data` (no newline added, as kubectl adds none)."""
    return render(parse(template), data)


def relaxed(expression: str) -> str:
    """A custom-columns expression as kubectl relaxes it: `.status.phase`, `status.phase` and
    `{.status.phase}` all mean `{.status.phase}`."""
    text = expression.strip()
    if text.startswith("{") and text.endswith("}"):
        text = text[1:-1].strip()
    if not text.startswith((".", "$", "@", "[")):
        text = "." + text
    return "{" + text + "}"
