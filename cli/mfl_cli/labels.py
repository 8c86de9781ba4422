"""`mfl feedback import`: the labels people filled in (a file `mfl feedback export` wrote, CSV or Parquet) sent to
the loop's server as `POST /feedback` batches, through the API server's service proxy (nothing to expose or
port-forward) or to `--url`. The server's exactly-once rule makes a second import harmless: every row already
recorded comes back as `duplicate`, so an import cut short is simply run again.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import re
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mfl_cli.kube import CliError, Loops, first_line, parse_status
from mfl_cli.views import table

ID_COLUMN, LABEL_COLUMN = "id", "label"
SERVICE_PORT = "http"  # the loop's Service port (feedbackloop.core.resources.service)
SHOWN_ID = 24  # characters of an id in the table; the row number finds it in the file
ACCEPTED, DUPLICATE, REFUSED = "accepted", "duplicate", "refused"
# What answered a batch: (HTTP status, body).
Sender = Callable[[dict[str, Any]], tuple[int, bytes]]


@dataclass(frozen=True)
class LabelRow:
    row: int  # 1-based data row of the file (the header is not counted)
    id: str
    label: Any


@dataclass(frozen=True)
class Outcome:
    row: LabelRow
    result: str  # accepted | duplicate | refused
    reason: str = ""  # the server's: bad_signature, expired, bad_label, malformed
    error: str = ""


# --- the loop's Service ----------------------------------------------------------------------------------
# Named as the operator names it (feedbackloop.core.resources.service_name; a test keeps the two equal), copied so
# that the CLI does not import the operator's resource code.
DNS1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
MAX_LABEL = 63


def service_name(loop_name: str) -> str:
    """The Service of both tracks: the loop's name when it is a DNS-1035 label, else one derived from it."""
    if len(loop_name) <= MAX_LABEL and DNS1035_LABEL.fullmatch(loop_name):
        return loop_name
    tail = f"-{hashlib.sha256(loop_name.encode()).hexdigest()[:8]}"
    stem = re.sub(r"[^a-z0-9]+", "-", loop_name.lower()).strip("-")
    if not stem[:1].isalpha():
        stem = f"mfl-{stem}"
    return stem[: MAX_LABEL - len(tail)].rstrip("-") + tail


# --- reading the file ------------------------------------------------------------------------------------


def read_records(path: Path) -> list[dict[str, Any]]:
    """The file's rows as dicts: Parquet by its name (.parquet, .pq) or magic bytes, else CSV."""
    try:
        with path.open("rb") as file:
            parquet = path.suffix.lower() in (".parquet", ".pq") or file.read(4) == b"PAR1"
        return _parquet(path) if parquet else _csv(path)
    except OSError as error:
        raise CliError(f"cannot read {path}: {error.strerror or error}") from None


def _csv(path: Path) -> list[dict[str, Any]]:
    with path.open(newline="", encoding="utf-8-sig") as file:  # -sig: a spreadsheet's byte order mark
        reader = csv.DictReader(file)
        _check_columns(path, reader.fieldnames or [])
        return list(reader)


def _parquet(path: Path) -> list[dict[str, Any]]:
    from mfl_cli.export import pyarrow_modules

    _, pq = pyarrow_modules()
    _check_columns(path, pq.read_schema(path).names)
    return pq.read_table(path, columns=[ID_COLUMN, LABEL_COLUMN]).to_pylist()


def _check_columns(path: Path, columns: Sequence[str]) -> None:
    missing = [c for c in (ID_COLUMN, LABEL_COLUMN) if c not in columns]
    if missing:
        raise CliError(f"{path} has no {' or '.join(repr(c) for c in missing)} column (it has: {', '.join(columns)})")


def label_rows(records: list[dict[str, Any]], task: str | None) -> tuple[list[LabelRow], int]:
    """The rows with a label, typed for the model; and how many had none (not labelled yet: skipped)."""
    kept = [(n, r) for n, r in enumerate(records, 1) if not _blank(r.get(LABEL_COLUMN))]
    raws = [r[LABEL_COLUMN] for _, r in kept]
    numeric = task == "regression" or (task is None and all(_number(v) is not None for v in raws))
    rows = [
        LabelRow(n, _text(r.get(ID_COLUMN)), _as_number(r[LABEL_COLUMN]) if numeric else _text(r[LABEL_COLUMN]))
        for n, r in kept
    ]
    return rows, len(records) - len(kept)


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip()) or _is_nan(value)


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _as_number(value: Any) -> Any:
    """A regression label as a JSON number (an integer stays one); text that is no finite number is sent as
    it is, for the server to refuse with its reason."""
    number = _number(value)
    if number is None:
        return _text(value)
    if isinstance(value, int) or (isinstance(value, str) and re.fullmatch(r"\s*[-+]?\d+\s*", value)):
        return int(value)
    return number


def _text(value: Any) -> str:
    """A class as text; a whole float (Parquet reads 1 as 1.0) as the integer the server and trainer see."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return "" if value is None else str(value).strip()


# --- sending ---------------------------------------------------------------------------------------------


def batches(rows: list[LabelRow], size: int) -> Iterator[list[LabelRow]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def send(rows: list[LabelRow], sender: Sender, target: str) -> list[Outcome]:
    """One batch: each row accepted, duplicate or refused (with the server's reason), by the server's answer."""
    status, body = sender({"feedback": [{"id": row.id, "label": row.label} for row in rows]})
    answer = _json(body)
    if status not in (200, 422) or not isinstance(answer.get("accepted"), int):
        raise CliError(f"{target} answered {status}: {answer_message(status, body)}")
    rejected = {
        item["index"]: item for item in answer.get("rejected") or [] if isinstance(item, dict) and "index" in item
    }
    outcomes = []
    for index, row in enumerate(rows):
        item = rejected.get(index)
        if item is None:
            outcomes.append(Outcome(row, ACCEPTED))
        elif item.get("reason") == "duplicate":
            outcomes.append(Outcome(row, DUPLICATE, "duplicate", str(item.get("error") or "")))
        else:
            outcomes.append(Outcome(row, REFUSED, str(item.get("reason") or ""), str(item.get("error") or "")))
    return outcomes


def answer_message(status: int, body: bytes) -> str:
    """The server's {"error"}, the API server's Status message (403, 503 without endpoints), or the text."""
    answer = _json(body) or parse_status(body)
    message = answer.get("error") or answer.get("message") or first_line(body) or "no message"
    if status == 413:
        message += " (send smaller batches: --batch)"
    return str(message)


def _json(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body or b"")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def url_sender(url: str, timeout: float | None) -> Sender:
    """POST to the server directly (`--url`): its base URL, or its /feedback endpoint."""
    endpoint = url.rstrip("/") if url.rstrip("/").endswith("/feedback") else url.rstrip("/") + "/feedback"
    if "://" not in endpoint:
        endpoint = "http://" + endpoint

    def post(body: dict[str, Any]) -> tuple[int, bytes]:
        request = urllib.request.Request(
            endpoint, json.dumps(body).encode(), {"Content-Type": "application/json"}, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read() or b""
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise CliError(f"cannot reach {endpoint}: {reason}") from None

    return post


def proxy_sender(loops: Loops, namespace: str, loop_name: str) -> tuple[Sender, str]:
    """POST to the loop's Service through the API server's proxy: the kubeconfig's credentials, no
    port-forward; the Service spreads the batches over the stable and canary Pods, as it does clients'."""
    service = service_name(loop_name)

    def post(body: dict[str, Any]) -> tuple[int, bytes]:
        return loops.post_to_service(namespace, service, SERVICE_PORT, "feedback", body)

    return post, f"Service {namespace}/{service} (through the API server)"


# --- the report ------------------------------------------------------------------------------------------


def outcome_table(outcomes: list[Outcome]) -> str:
    rows = [
        [
            o.row.row,
            o.row.id if len(o.row.id) <= SHOWN_ID else o.row.id[: SHOWN_ID - 3] + "...",
            o.row.label,
            o.result,
            f"{o.reason}: {o.error}" if o.result == REFUSED else "",
        ]
        for o in outcomes
    ]
    return table(rows, ["ROW", "ID", "LABEL", "RESULT", "REASON"])


def summary_line(outcomes: list[Outcome], skipped: int, target: str) -> str:
    counts = {result: sum(o.result == result for o in outcomes) for result in (ACCEPTED, DUPLICATE, REFUSED)}
    return (
        f"{plural(len(outcomes), 'label')} sent to {target}: {counts[ACCEPTED]} accepted, {counts[DUPLICATE]} "
        f"duplicate (recorded before), {counts[REFUSED]} refused; {plural(skipped, 'row')} without a label skipped"
    )


def plural(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def import_labels(rows: list[LabelRow], skipped: int, sender: Sender, target: str, batch: int) -> int:
    """Sends every batch, prints a line per row and the summary; 1 when a row was refused (a duplicate is
    not a failure: it was recorded before) or the server could not be reached."""
    outcomes: list[Outcome] = []
    failure = None
    try:
        for chunk in batches(rows, batch):
            outcomes += send(chunk, sender, target)
    except CliError as error:
        failure = error
    if outcomes:
        sys.stdout.write(outcome_table(outcomes) + "\n")
    sys.stdout.write(summary_line(outcomes, skipped, target) + "\n")
    if failure is not None:
        left = plural(len(rows) - len(outcomes), "label")
        raise CliError(f"{failure}; {left} not sent: import the file again (labels recorded come back as duplicate)")
    return 1 if any(o.result == REFUSED for o in outcomes) else 0
