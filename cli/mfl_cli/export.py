"""`mfl feedback export`: served predictions that have no label yet, sampled for people to label.

Reads the prediction logs of the last `--since` from the artifact store (`<model>/predictions/date=YYYY-MM-DD/`,
the volume's daily `.jsonl` files or the s3 mode's `.jsonl.gz` segments), drops the ids already labelled (the
ledger when the loop has a database, else the feedback logs), samples (mfl_cli.sampling) and writes one row per
prediction: id, ts, version, prediction, the features, and an empty `label` column to fill in. The file goes
back with `mfl feedback import`.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import random
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

from mfl_cli import sampling
from mfl_cli.kube import CliError
from mfl_cli.views import table
from mfl_contracts.objectstore import ArtifactStore, NotFound, ObjectInfo, VolumeStore

FIXED_COLUMNS = ("id", "ts", "version", "prediction")
LABEL_COLUMN = "label"
LOG_NAME = re.compile(r"\.jsonl(\.gz)?$")
PROGRESS_SECONDS = 2.0  # a read shorter than this prints no progress, a longer one a line this often
DAY = 86400.0


@dataclass
class ReadStats:
    objects: int = 0
    total_objects: int = 0
    bytes: int = 0
    lines: int = 0
    bad_lines: int = 0


@dataclass
class Progress:
    """Progress of a long read on stderr (stdout is the command's answer), one line every PROGRESS_SECONDS."""

    what: str
    stream: IO[str] = field(default_factory=lambda: sys.stderr)
    clock: Any = time.monotonic
    started: float = 0.0
    shown: float = 0.0

    def __post_init__(self) -> None:
        self.started = self.shown = self.clock()

    def update(self, stats: ReadStats, force: bool = False) -> None:
        now = self.clock()
        if not force and now - self.shown < PROGRESS_SECONDS:
            return
        self.shown = now
        print(
            f"{self.what}: {stats.objects}/{stats.total_objects} objects, {stats.bytes / 1e6:,.1f} MB, "
            f"{stats.lines:,} lines ({now - self.started:.0f} s)",
            file=self.stream,
            flush=True,
        )

    def finish(self, stats: ReadStats) -> None:
        if self.clock() - self.started >= PROGRESS_SECONDS:
            self.update(stats, force=True)


# --- reading the logs ------------------------------------------------------------------------------------


def day_prefixes(folder: str, since: float, now: float) -> list[str]:
    """One list prefix per UTC day from `since` to `now`: the logs are partitioned by day."""
    first = datetime.fromtimestamp(since, UTC).date()
    last = datetime.fromtimestamp(now, UTC).date()
    days = (last - first).days
    return [f"{folder}/date={(first + timedelta(days=n)).isoformat()}/" for n in range(days + 1)]


def log_objects(store: ArtifactStore, folder: str, since: float, now: float) -> list[ObjectInfo]:
    return [
        info for prefix in day_prefixes(folder, since, now) for info in store.list(prefix) if LOG_NAME.search(info.key)
    ]


def read_log(store: ArtifactStore, infos: list[ObjectInfo], stats: ReadStats, progress: Progress) -> Iterator[dict]:
    """Every JSON line of the objects; a torn or foreign line is counted and skipped, as the trainer does."""
    stats.total_objects += len(infos)
    for info in infos:
        for line in _lines(store, info):
            stats.lines += 1
            try:
                record = json.loads(line)
            except ValueError:
                stats.bad_lines += 1
                continue
            if isinstance(record, dict) and isinstance(record.get("id"), str):
                yield record
            else:
                stats.bad_lines += 1
        stats.objects += 1
        stats.bytes += info.size
        progress.update(stats)
    progress.finish(stats)


def _lines(store: ArtifactStore, info: ObjectInfo) -> Iterator[bytes]:
    """A volume's daily file may be large: streamed from the folder; an object is read whole (a few MB)."""
    gz = info.key.endswith(".gz")
    if isinstance(store, VolumeStore):
        path = store.root / info.key
        try:
            with gzip.open(path, "rb") if gz else path.open("rb") as file:
                yield from (line for line in file if line.strip())
        except FileNotFoundError:
            return  # deleted by retention while we read
        except (OSError, EOFError) as error:
            print(f"skipped {info.key}: {error}", file=sys.stderr)
        return
    try:
        data = store.get(info.key)
    except NotFound:
        return
    try:
        data = gzip.decompress(data) if gz else data
    except (OSError, EOFError) as error:
        print(f"skipped {info.key}: {error}", file=sys.stderr)
        return
    yield from (line for line in io.BytesIO(data) if line.strip())


def labelled_ids(
    store: ArtifactStore, model: str, since: float, now: float, database_url: str | None
) -> tuple[set[str], str]:
    """The ids labelled already and where that was read: the ledger, else the feedback logs (whose days are the
    labels' days, never before their predictions')."""
    if database_url:
        return _ledger_ids(database_url, model, since), "the label ledger"
    stats = ReadStats()
    infos = log_objects(store, f"{model}/feedback", since, now)
    ids = {record["id"] for record in read_log(store, infos, stats, Progress("reading feedback"))}
    return ids, "the feedback logs"


def _ledger_ids(url: str, model: str, since: float) -> set[str]:
    try:
        from mfl_contracts.ledger import read_labels
    except ImportError as error:
        raise CliError(f"reading the label ledger needs psycopg: pip install 'psycopg[binary]' ({error})") from None
    try:
        return {str(row["id"]) for row in read_labels(url, model, since)}
    except Exception as error:  # psycopg's errors: one line, never the URL (it holds the password)
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CliError(
            f"cannot read the labels from the database: {reason} (from outside the cluster: --database-url, e.g. "
            "through kubectl port-forward)"
        ) from None


# --- the rows --------------------------------------------------------------------------------------------


def iso(ts: Any) -> str:
    if not isinstance(ts, (int, float)) or isinstance(ts, bool):
        return ""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def feature_columns(rows: list[dict[str, Any]], known: list[str]) -> list[str]:
    """The model's features in its order, then any other feature the logs carry (an older version's)."""
    seen = {name for row in rows for name in (row.get("features") or {})}
    return [name for name in known if name in seen] + sorted(seen - set(known))


def column_names(features: list[str]) -> list[str]:
    """A feature named like a fixed column gets a `feature_` prefix: the file's columns must be unique."""
    taken = {*FIXED_COLUMNS, LABEL_COLUMN}
    return [*FIXED_COLUMNS, *(f"feature_{n}" if n in taken else n for n in features), LABEL_COLUMN]


def table_rows(rows: list[dict[str, Any]], features: list[str]) -> list[list[Any]]:
    return [
        [
            row["id"],
            iso(row.get("ts")),
            row.get("version"),
            row.get("prediction"),
            *((row.get("features") or {}).get(name) for name in features),
            None,
        ]
        for row in rows
    ]


def write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows([["" if v is None else v for v in row] for row in rows])


def write_parquet(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    pa, pq = pyarrow_modules()
    arrays = [_arrow_column(pa, [row[i] for row in rows]) for i in range(len(header))]
    arrays[-1] = pa.array([None] * len(rows), type=pa.string())  # the label, filled in by people
    pq.write_table(pa.Table.from_arrays(arrays, names=header), path)


def pyarrow_modules() -> tuple[Any, Any]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise CliError("Parquet needs pyarrow (pip install pyarrow); or use --format csv") from None
    return pa, pq


def _arrow_column(pa: Any, values: list[Any]) -> Any:
    """Mixed types in one feature (a number here, text there) become text rather than failing the export."""
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array([None if v is None else str(v) for v in values], type=pa.string())


# --- the command -----------------------------------------------------------------------------------------


@dataclass
class ExportRequest:
    model: str
    output: Path
    since: float  # seconds
    size: int
    format: str
    version: int | None  # whose report's worst slices are oversampled (None: the newest)
    database_url: str | None
    seed: int | None = None


def serving_documents(store: ArtifactStore, model: str, version: int | None) -> tuple[dict, dict, int | None]:
    """metadata.json and report.json of `version` (else the newest version): the task, features, slices."""
    if version is None:
        pattern = re.compile(rf"^{re.escape(model)}/versions/(\d+)/metadata\.json$")
        found = [int(m[1]) for info in store.list(f"{model}/versions/") if (m := pattern.match(info.key))]
        version = max(found, default=None)
    if version is None:
        return {}, {}, None
    return (
        _json(store, f"{model}/versions/{version}/metadata.json"),
        _json(store, f"{model}/versions/{version}/report.json"),
        version,
    )


def _json(store: ArtifactStore, key: str) -> dict[str, Any]:
    try:
        value = json.loads(store.get(key))
    except NotFound:
        return {}
    except ValueError:
        print(f"ignored {key}: not valid JSON", file=sys.stderr)
        return {}
    return value if isinstance(value, dict) else {}


def export(store: ArtifactStore, request: ExportRequest, task: str | None, now: float) -> int:
    metadata, report, version = serving_documents(store, request.model, request.version)
    task = metadata.get("task") or task or "classification"
    slices = sampling.worst_slices(report)
    sampler = sampling.Sampler(request.size, slices, task == "classification", random.Random(request.seed))
    if not read_unlabelled(store, request, now, sampler):
        print(
            f"no unlabelled predictions of {request.model} in the last {_days(request.since)}: nothing written",
            file=sys.stderr,
        )
        return 2
    rows = sampler.sample()
    features = feature_columns(rows, [str(f) for f in metadata.get("features") or []])
    header, body = column_names(features), table_rows(rows, features)
    (write_parquet if request.format == "parquet" else write_csv)(request.output, header, body)
    sys.stdout.write(summary(request, rows, sampler, version))
    return 0


def read_unlabelled(store: ArtifactStore, request: ExportRequest, now: float, sampler: sampling.Sampler) -> int:
    """Feeds the sampler every prediction of the window without a label; their count."""
    start = now - request.since
    labelled, source = labelled_ids(store, request.model, start, now, request.database_url)
    stats = ReadStats()
    infos = log_objects(store, f"{request.model}/predictions", start, now)
    unlabelled = 0
    for record in read_log(store, infos, stats, Progress("reading predictions")):
        ts = record.get("ts")
        if record["id"] in labelled or not isinstance(ts, (int, float)) or not start <= ts <= now:
            continue
        unlabelled += 1
        sampler.add(record)
    print(
        f"read {stats.lines:,} prediction lines from {_count(stats.objects, 'object')} "
        f"({stats.bytes / 1e6:,.1f} MB) in {store.description}; {len(labelled):,} ids labelled already ({source}); "
        f"{unlabelled:,} unlabelled" + (f"; {stats.bad_lines} unreadable lines skipped" if stats.bad_lines else ""),
        file=sys.stderr,
    )
    return unlabelled


def summary(request: ExportRequest, rows: list[dict[str, Any]], sampler: sampling.Sampler, version: int | None) -> str:
    """What was written, per class: how many were there, how many were taken, how many from the worst slices."""
    taken: dict[str, list[int]] = {}
    for row in rows:
        counts = taken.setdefault(sampler.class_of(row), [0, 0])
        counts[0] += 1
        counts[1] += sampler.in_slices(row)
    lines = [
        [
            name if sampler.classification else "(all)",
            f"{sampler.seen(name, True) + sampler.seen(name, False):,}",
            f"{sampler.seen(name, True):,}",
            taken.get(name, [0, 0])[0],
            taken.get(name, [0, 0])[1],
        ]
        for name in sampler.classes()
    ]
    header = ["PREDICTED", "UNLABELLED", "IN WORST SLICES", "SAMPLED", "SAMPLED IN WORST SLICES"]
    return (
        f"wrote {len(rows)} unlabelled predictions of {request.model} to {request.output} ({request.format}); "
        f"fill in the `label` column, then: mfl feedback import {request.model} {request.output}\n"
        + table(lines, header)
        + "\n"
        + oversampling_note(sampler.slices, version)
        + "\n"
    )


def oversampling_note(slices: list[sampling.Slice], version: int | None) -> str:
    if version is None:
        return "no version in the store: no worst slices to oversample"
    if not slices:
        return f"version {version}'s report has no slice worse than the model overall: nothing oversampled"
    shown = ", ".join(str(s) for s in slices[:5]) + (f" and {len(slices) - 5} more" if len(slices) > 5 else "")
    return f"oversampled x{sampling.OVERSAMPLE:g} (version {version}'s worst slices): {shown}"


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def _days(seconds: float) -> str:
    return f"{seconds / DAY:g} days" if seconds >= DAY else f"{seconds / 3600:g} hours"


def parse_since(text: str) -> float:
    """'7d', '36h', '90m', '1d12h' or plain seconds: how far back to read predictions."""
    value = text.strip()
    try:
        seconds = float(value)
    except ValueError:
        if not re.fullmatch(r"(\d+(\.\d+)?[dhms])+", value):
            raise ValueError(f"invalid duration {text!r}: use e.g. 7d, 36h, 90m") from None
        unit = {"d": DAY, "h": 3600.0, "m": 60.0, "s": 1.0}
        seconds = sum(float(n) * unit[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)([dhms])", value))
    if not seconds > 0:
        raise ValueError(f"invalid duration {text!r}: must be more than 0")
    return seconds
