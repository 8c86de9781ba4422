"""The label ledger: every accepted label, exactly once, in PostgreSQL (object store + database mode).

One table per tenant database, ``mfl_labels``, keyed by (model, prediction day, prediction id): a replica
records labels with ONE ``INSERT ... SELECT FROM unnest(...) ON CONFLICT DO NOTHING RETURNING id`` (a
transaction by itself) and counts only the ids it gets back, once the statement returned. The primary key
does what the claim files do on a volume (mfl_server.claims): whichever replica inserts an id first wins, the
others see a duplicate, and a client's retry after a lost answer is a duplicate too, never a second count.
The ledger IS the feedback log in this mode: the trainer and the CLI read it with ``read_labels``.

The table is partitioned by the prediction's UTC day, so retention drops whole days (``DROP TABLE``, no
row-by-row DELETE). A day is dropped only when no replica can accept a label for it any more: the longest
of the retention and the feedback max age plus ``CLOCK_MARGIN``, over every model recorded in the
database (``mfl_label_horizons``: loops sharing one database must not drop each other's live days, or a
late label could count twice). A day dated beyond every server's clock margin is dropped too (``future_day``).

psycopg 3 is imported lazily: the contracts package stays importable where it is not installed (the
operator's image). Everything that builds SQL here is pure and unit-tested.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

TABLE = "mfl_labels"
HORIZONS = "mfl_label_horizons"
DAY_SECONDS = 86400
CLOCK_MARGIN = 3600.0  # seconds of clock skew between replicas that retention tolerates (as the claims')
DDL_LOCK = 0x6D666C6C  # pg_advisory_xact_lock key ("mfll"): replicas creating the same partition at once
DDL_LOCK_TIMEOUT = "2s"  # DDL waits for the table's readers; queued DDL would block every insert behind it
_PARTITION = re.compile(rf"^{TABLE}_p(\d{{8}})$")
MAX_REASON_CHARS = 300

SCHEMA = (
    f"""CREATE TABLE IF NOT EXISTS {TABLE} (
  model text NOT NULL, prediction_day date NOT NULL, id text NOT NULL,
  label jsonb NOT NULL, prediction jsonb, version integer NOT NULL, track text NOT NULL,
  prediction_ts double precision NOT NULL, ts double precision NOT NULL,
  PRIMARY KEY (model, prediction_day, id)) PARTITION BY RANGE (prediction_day)""",
    f"""CREATE TABLE IF NOT EXISTS {HORIZONS} (
  model text PRIMARY KEY, keep_seconds double precision NOT NULL, updated double precision NOT NULL)""",
)

# Labels arrive as JSON text (the server's own encoder) and become jsonb here, per element. ``ts`` is per row:
# one statement may carry several requests' labels (the server's group commit), each received at its own time.
# Parameters in binary (%(...)b): psycopg dumps a text array element by element with an escaping regex, 2-3x
# the CPU of the binary form (~0.75 ms against ~0.25 ms for 32 rows), on the server's event loop; the
# database reads either at the same cost.
INSERT_LABELS = f"""INSERT INTO {TABLE}
  (model, prediction_day, id, label, prediction, version, track, prediction_ts, ts)
SELECT %(model)b, u.day, u.id, u.label::jsonb, u.prediction::jsonb, u.version, u.track, u.prediction_ts, u.ts
FROM unnest(%(days)b::date[], %(ids)b::text[], %(labels)b::text[], %(predictions)b::text[],
            %(versions)b::integer[], %(tracks)b::text[], %(prediction_ts)b::double precision[],
            %(ts)b::double precision[])
  AS u(day, id, label, prediction, version, track, prediction_ts, ts)
ON CONFLICT DO NOTHING
RETURNING id"""

# prediction_day bounds the scan to the partitions of the window; prediction_ts is the exact cut.
SELECT_LABELS = f"""SELECT id, ts, label, version, track, prediction, prediction_ts FROM {TABLE}
WHERE model = %(model)s AND prediction_day >= %(day)s AND prediction_ts >= %(since)s
ORDER BY prediction_day, id"""

LIST_PARTITIONS = f"""SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = '{TABLE}'::regclass"""

RECORD_HORIZON = f"""INSERT INTO {HORIZONS} (model, keep_seconds, updated) VALUES (%(model)s, %(keep)s, %(now)s)
ON CONFLICT (model) DO UPDATE SET keep_seconds = excluded.keep_seconds, updated = excluded.updated"""
LONGEST_HORIZON = f"SELECT max(keep_seconds) FROM {HORIZONS}"


class LedgerError(Exception):
    """The database refused or is unreachable; the message names it (without the password) and why."""


@dataclass(frozen=True)
class LabelRow:
    """One accepted label, ready for the insert; ``label``/``prediction`` are JSON text."""

    id: str
    label: str
    prediction: str | None
    version: int
    track: str
    prediction_ts: float


# --- pure: days, partitions, statements --------------------------------------------------------


def day_of(ts: float) -> date:
    """The UTC day of a timestamp: the partition a prediction's label lives in."""
    return datetime.fromtimestamp(ts, tz=UTC).date()


def partition_name(day: date) -> str:
    return f"{TABLE}_p{day:%Y%m%d}"


def day_of_partition(name: str) -> date | None:
    """The day a partition holds, or None for a table that is not one of ours."""
    match = _PARTITION.match(name)
    if match is None:
        return None
    try:
        return datetime.strptime(match.group(1), "%Y%m%d").date()
    except ValueError:
        return None


def partition_ddl(day: date) -> str:
    """Names and bounds come from a ``date``, never from input: nothing here can be injected."""
    return (
        f"CREATE TABLE IF NOT EXISTS {partition_name(day)} PARTITION OF {TABLE} "
        f"FOR VALUES FROM ('{day.isoformat()}') TO ('{(day + timedelta(days=1)).isoformat()}')"
    )


def ddl_statements(days: Iterable[date], schema: bool = False) -> list[str]:
    """One transaction's statements: the advisory lock first (two replicas creating the same table at once
    collide in the catalog otherwise), a short lock timeout, then the tables."""
    head = [f"SELECT pg_advisory_xact_lock({DDL_LOCK})", f"SET LOCAL lock_timeout = '{DDL_LOCK_TIMEOUT}'"]
    return head + (list(SCHEMA) if schema else []) + [partition_ddl(day) for day in sorted(set(days))]


def insert_params(model: str, rows: Sequence[LabelRow], ts: float | Sequence[float]) -> dict[str, Any]:
    """Parameters of INSERT_LABELS: one array per column, so a batch is one statement and one round trip.
    ``ts``: when the labels were received, one for all rows or one per row."""
    received = [float(ts)] * len(rows) if isinstance(ts, (int, float)) else [float(value) for value in ts]
    if len(received) != len(rows):
        raise ValueError(f"{len(received)} receive times for {len(rows)} rows")
    return {
        "model": model,
        "ts": received,
        "days": [day_of(row.prediction_ts) for row in rows],
        "ids": [row.id for row in rows],
        "labels": [row.label for row in rows],
        "predictions": [row.prediction for row in rows],
        "versions": [row.version for row in rows],
        "tracks": [row.track for row in rows],
        "prediction_ts": [row.prediction_ts for row in rows],
    }


def horizon(keep_seconds: float, feedback_max_age: float) -> float:
    """Seconds after the end of a day that its labels are kept: retention, but never less than labels can
    still arrive for it (max age + margin). 0 (no retention) keeps them for ever."""
    if keep_seconds <= 0:
        return math.inf
    return max(keep_seconds, feedback_max_age + CLOCK_MARGIN)


def expired_partitions(names: Iterable[str], now: float, keep_seconds: float) -> list[str]:
    """Partitions whose whole day ended more than ``keep_seconds`` (a ``horizon``) ago, and partitions of days
    no server takes labels for yet (``future_day``)."""
    expired = []
    for name in names:
        day = day_of_partition(name)
        if day is None:
            continue
        day_start = datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()
        if now >= day_start + DAY_SECONDS + keep_seconds or future_day(day_start, now):
            expired.append(name)
    return sorted(expired)


def future_day(day_start: float, now: float) -> bool:
    """Servers refuse labels of predictions dated more than their clock margin (at most ``CLOCK_MARGIN``) ahead of
    their clock, itself at most ``CLOCK_MARGIN`` ahead of this one: a day starting later holds only labels taken
    before servers refused such ids, which no retention would reach until long after that day."""
    return day_start > now + 2 * CLOCK_MARGIN


def label_dict(row: Sequence[Any]) -> dict[str, Any]:
    """A SELECT_LABELS row as the feedback JSON line the trainer reads from a volume."""
    row_id, ts, label, version, track, prediction, prediction_ts = row
    return {
        "id": row_id,
        "ts": ts,
        "label": label,
        "version": version,
        "track": track,
        "prediction": prediction,
        "predictionTs": prediction_ts,
    }


def describe(url: str) -> str:
    """``postgresql://user@host:port/db``: the URL without its password, for messages."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "localhost"
        port = f":{parts.port}" if parts.port else ""
        user = f"{parts.username}@" if parts.username else ""
    except ValueError:
        return "the label database"
    return f"{parts.scheme}://{user}{host}{port}{parts.path}"


def reason(error: BaseException) -> str:
    """The first line of a driver error (libpq appends hints on the next lines), cut short."""
    text = str(error).strip().splitlines()
    first = text[0].strip() if text else ""
    return (first or type(error).__name__)[:MAX_REASON_CHARS]


# --- the synchronous reader and the retention (trainer, CLI, the server's hourly sweep) ----------


def _psycopg() -> Any:
    import psycopg

    return psycopg


@contextlib.contextmanager
def _connection(target: Any, connect_timeout: float) -> Iterator[Any]:
    """A connection of our own for a URL (closed after), or the caller's connection as it is."""
    if not isinstance(target, str):
        yield target
        return
    with _psycopg().connect(target, connect_timeout=max(1, int(connect_timeout))) as conn:
        yield conn


def _table_exists(conn: Any, table: str = TABLE) -> bool:
    return conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()[0] is not None


def read_labels(url: str, model: str, since: float, connect_timeout: float = 10.0) -> Iterator[dict[str, Any]]:
    """Labels of ``model`` whose prediction was made at or after ``since``, as feedback JSON lines' dicts.

    A database no server has written to yet holds no labels (no table): nothing is yielded. Rows stream
    through a server-side cursor, so a month of labels never sits in memory at once.
    """
    psycopg = _psycopg()
    params = {"model": model, "since": since, "day": day_of(max(since, 0.0))}
    try:
        with _connection(url, connect_timeout) as conn:
            if not _table_exists(conn):
                return
            with conn.cursor(name="mfl_read_labels") as cursor:
                cursor.itersize = 10000
                cursor.execute(SELECT_LABELS, params)
                for row in cursor:
                    yield label_dict(row)
    except psycopg.Error as error:
        raise LedgerError(f"cannot read labels from {describe(url)}: {reason(error)}") from error


def drop_expired_partitions(
    target: Any,
    now: float,
    keep_seconds: float,
    *,
    model: str,
    feedback_max_age: float,
    connect_timeout: float = 10.0,
) -> list[str]:
    """Drops the day partitions past every model's horizon in this database; returns their names.

    ``target``: a URL (a connection of its own) or a psycopg connection (committed here). This model's
    horizon (``horizon(keep_seconds, feedback_max_age)``) is recorded first, so a loop sharing the
    database with a longer one never drops the other's days. Several replicas may sweep at once (IF
    EXISTS); a drop that cannot get its lock within DDL_LOCK_TIMEOUT (a long read) waits for the next sweep.
    """
    psycopg = _psycopg()
    try:
        with _connection(target, connect_timeout) as conn:
            return _drop_expired(conn, now, horizon(keep_seconds, feedback_max_age), model)
    except psycopg.Error as error:
        where = describe(target) if isinstance(target, str) else "the label database"
        raise LedgerError(f"cannot drop expired label partitions in {where}: {reason(error)}") from error


def _drop_expired(conn: Any, now: float, own_horizon: float, model: str) -> list[str]:
    if not _table_exists(conn) or not _table_exists(conn, HORIZONS):
        return []
    conn.execute(RECORD_HORIZON, {"model": model, "keep": own_horizon, "now": now})
    longest = conn.execute(LONGEST_HORIZON).fetchone()[0]
    names = [row[0] for row in conn.execute(LIST_PARTITIONS).fetchall()]
    conn.commit()
    dropped = []
    for name in expired_partitions(names, now, longest):
        conn.execute(f"SET LOCAL lock_timeout = '{DDL_LOCK_TIMEOUT}'")
        conn.execute(f"DROP TABLE IF EXISTS {name}")  # the name matched _PARTITION: no injection
        conn.commit()
        dropped.append(name)
    return dropped
