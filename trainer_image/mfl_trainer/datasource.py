"""Reading the artifact store: base CSV data and labelled feedback (predictions joined with feedback).

Layout (docs/contracts.md): ``<model>/data/*.csv``, ``<model>/predictions/date=YYYY-MM-DD/*.jsonl[.gz]``,
``<model>/feedback/date=YYYY-MM-DD/*.jsonl[.gz]``. Only day partitions overlapping the data window are read.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import math
import os
import warnings
import zlib
from array import array
from collections import Counter
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np

from .columns import ABSENT, ColumnBuilder, FeatureColumn, columns_from_dicts
from .errors import TrainerError

_DIGEST_BATCH = 1 << 16
# Log lines parsed per batch: small enough that the parsed records are still in the CPU cache when the join
# reads them (1 MiB batches were ~30 % slower on 1M rows).
_BATCH_BYTES = 1 << 16
_FLOAT_INT_LIMIT = 2**1023  # integers beyond it do not convert to a float
MISSING_TEXT = frozenset({"", "na", "n/a", "null", "none"})
_HASH_CHUNK = 1 << 20


@dataclass
class BaseData:
    columns: dict[str, np.ndarray]  # float64 when every value parses as a number, else object (str)
    rows: int
    file_hashes: dict[str, str]  # file name -> sha256 of its bytes
    malformed_rows: int = 0


@dataclass
class FeedbackData:
    """Labelled rows (predictions joined with their labels), column-wise, ordered by (ts, id)."""

    ids: list[str]
    ts: np.ndarray  # float64 prediction time: when the features were seen
    labels: list[Any]
    predictions: list[Any]  # what the server answered (None in logs from before it was recorded)
    features: dict[str, FeatureColumn]  # every feature name seen; rows without it are ABSENT there
    stats: Counter = field(default_factory=Counter)
    files_read: int = 0
    digest: str = ""  # sha256 of the joined rows: stable while files grow after `now`

    def __len__(self) -> int:
        return len(self.ids)

    def common_features(self) -> set[str]:
        """The feature names every row has."""
        return {name for name, column in self.features.items() if column.present().all()} if self.ids else set()

    def row(self, index: int) -> dict[str, Any]:
        """One row as its log lines had it (tests, debugging)."""
        features = {
            name: column.value(index) for name, column in self.features.items() if column.kinds[index] != ABSENT
        }
        return {
            "id": self.ids[index],
            "ts": float(self.ts[index]),
            "features": features,
            "label": self.labels[index],
            "prediction": self.predictions[index],
        }


def feedback_from_records(records: Iterable[dict[str, Any]]) -> FeedbackData:
    """FeedbackData from joined rows given as dicts (id, ts, features, label, optional prediction)."""
    ordered = sorted(records, key=lambda r: (float(r["ts"]), r["id"]))
    data = FeedbackData(
        ids=[r["id"] for r in ordered],
        ts=np.array([r["ts"] for r in ordered], dtype=np.float64),
        labels=[r["label"] for r in ordered],
        predictions=[r.get("prediction") for r in ordered],
        features=columns_from_dicts([r["features"] for r in ordered]),
    )
    data.digest = _digest(data)
    return data


# --- base data -----------------------------------------------------------------------------------


def base_files(model_dir: Path) -> list[Path]:
    return sorted((model_dir / "data").glob("*.csv"))


def base_header(path: Path) -> list[str]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            return [name.strip() for name in next(csv.reader(handle), [])]
    except (OSError, UnicodeDecodeError) as error:
        raise TrainerError(f"base data {path.name}: cannot read: {_describe(error)}") from error


def read_base_data(files: list[Path], columns: list[str]) -> BaseData | None:
    """The ``columns`` of every file, concatenated in file-name order; None without files."""
    if not files:
        return None
    parts = [_read_csv(path, columns) for path in files]
    merged = {name: _concat([part[0][name] for part in parts]) for name in columns}
    return BaseData(
        columns=merged,
        rows=sum(len(part[0][columns[0]]) for part in parts),
        file_hashes={path.name: sha256_file(path) for path in files},
        malformed_rows=sum(part[1] for part in parts),
    )


def _read_csv(path: Path, columns: list[str]) -> tuple[dict[str, np.ndarray], int]:
    header = base_header(path)
    missing = [name for name in columns if name not in header]
    if missing:
        raise TrainerError(f"base data {path.name}: missing columns {missing} (columns: {header})")
    indices = [header.index(name) for name in columns]
    numeric = _read_numeric_csv(path, indices)
    if numeric is not None:
        return {name: numeric[:, i].copy() for i, name in enumerate(columns)}, 0
    return _read_text_csv(path, header, columns)


def _read_numeric_csv(path: Path, indices: list[int]) -> np.ndarray | None:
    """Fast path for all-numeric files (numpy's C parser); None when some cell is not a number."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "empty input file" for a header-only CSV
            return np.loadtxt(
                path,
                delimiter=",",
                skiprows=1,
                usecols=indices,
                dtype=np.float64,
                ndmin=2,
                quotechar='"',
                encoding="utf-8",
            )
    except (ValueError, IndexError):
        return None
    except (OSError, UnicodeDecodeError) as error:
        raise TrainerError(f"base data {path.name}: cannot read: {_describe(error)}") from error


def _read_text_csv(path: Path, header: list[str], columns: list[str]) -> tuple[dict[str, np.ndarray], int]:
    cells: dict[str, list[str]] = {name: [] for name in columns}
    indices = [header.index(name) for name in columns]
    malformed = 0
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            next(reader, None)
            for record in reader:
                if not record:
                    continue
                if len(record) != len(header):
                    malformed += 1
                    continue
                for name, index in zip(columns, indices):
                    cells[name].append(record[index].strip())
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise TrainerError(f"base data {path.name}: cannot read: {_describe(error)}") from error
    return {name: parse_column(values) for name, values in cells.items()}, malformed


def parse_column(values: list[str]) -> np.ndarray:
    """Numbers (missing -> NaN) when every value parses, else the text as an object array."""
    try:
        return np.array([math.nan if v.lower() in MISSING_TEXT else float(v) for v in values], dtype=np.float64)
    except ValueError:
        return np.array(values, dtype=object)


def _concat(arrays: list[np.ndarray]) -> np.ndarray:
    if all(a.dtype == np.float64 for a in arrays):
        return np.concatenate(arrays)
    return np.concatenate([a if a.dtype == object else _numbers_as_text(a) for a in arrays])


def _numbers_as_text(values: np.ndarray) -> np.ndarray:
    return np.array(["" if math.isnan(v) else f"{v:g}" for v in values], dtype=object)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            while chunk := handle.read(_HASH_CHUNK):
                digest.update(chunk)
    except OSError as error:
        raise TrainerError(f"cannot read {path}: {_describe(error)}") from error
    return digest.hexdigest()


# --- feedback ------------------------------------------------------------------------------------

# Prediction log files: the server's daily files (volume mode) and its gzip segments (s3 mode).
LOG_SUFFIXES = (".jsonl", ".jsonl.gz")


def partition_files(folder: Path, start: float | None, end: float) -> list[Path]:
    """Log files under ``date=YYYY-MM-DD`` folders whose UTC day overlaps [start, end]."""
    if not folder.is_dir():
        return []
    first_day = None if start is None else utc_day(start)
    last_day = utc_day(end)
    files: list[Path] = []
    for partition in sorted(folder.glob("date=*")):
        day = _partition_day(partition.name)
        if day is None or day > last_day or (first_day is not None and day < first_day):
            continue
        files.extend(sorted(path for path in partition.rglob("*") if path.name.endswith(LOG_SUFFIXES)))
    return files


def read_feedback(
    model_dir: Path,
    start: float | None,
    now: float,
    feedback_dirs: Sequence[Path] | None = None,
    features: Collection[str] | None = None,
) -> FeedbackData:
    """Labelled rows: predictions made in [start, now] joined by id with feedback given up to ``now``.

    Labels are read first, so a prediction nobody labelled is dropped as soon as it is parsed: memory grows
    with the labelled rows only. ``feedback_dirs`` (default ``<model_dir>/feedback``) lists every folder of
    feedback partitions, e.g. the volume's plus the labels a ledger read wrote elsewhere. ``features``: the
    feature columns to keep; None keeps those every row has (to infer the features from).
    """
    stats: Counter = Counter()
    prediction_files = partition_files(model_dir / "predictions", start, now)
    folders = [model_dir / "feedback"] if feedback_dirs is None else list(feedback_dirs)
    feedback_files = [path for folder in folders for path in partition_files(folder, start, now)]
    labels = _read_labels(feedback_files, now, stats)
    joined = _join_predictions(prediction_files, start, now, labels, stats, features)
    stats["feedbackWithoutPrediction"] += len(labels.ids) - len(joined.slots)
    labels.slots.clear()  # the join is done: ~70 bytes an id, before the sorted copies are made
    data = _ordered(joined, labels)
    data.stats, data.files_read = +stats, len(prediction_files) + len(feedback_files)
    data.digest = _digest(data)
    return data


@dataclass
class _Labels:
    """The label per prediction id: the first one given, as the server counted it in its metrics."""

    slots: dict[str, int] = field(default_factory=dict)  # id -> position in the lists below
    ids: list[str] = field(default_factory=list)
    values: list[Any] = field(default_factory=list)
    ts: array = field(default_factory=lambda: array("d"))


@dataclass
class _Joined:
    """Labelled predictions in read order, before sorting."""

    slots: array  # label position per row
    ts: array
    predictions: list[Any]
    features: dict[str, FeatureColumn]


def _read_labels(files: list[Path], now: float, stats: Counter) -> _Labels:
    """The server records one label per id (docs/contracts.md, "Feedback"); a second line for an id
    (written by a server older than that rule) is counted in ``duplicateFeedback`` and ignored."""
    labels = _Labels()
    texts: dict[str, str] = {}  # one object per distinct text label ("yes"/"no"), not one per line
    for record in chain.from_iterable(_record_batches(files, stats, "malformedFeedbackLines")):
        row_id, ts, label = record.get("id"), record.get("ts"), record.get("label")
        if type(row_id) is not str or not _is_time(ts) or not isinstance(label, (str, int, float)):
            stats["malformedFeedbackLines"] += 1
        elif ts > now:
            stats["feedbackAfterNow"] += 1
        elif (slot := labels.slots.get(row_id)) is None:
            labels.slots[row_id] = len(labels.ids)
            labels.ids.append(row_id)
            labels.values.append(texts.setdefault(label, label) if type(label) is str else label)
            labels.ts.append(ts)
        else:
            stats["duplicateFeedback"] += 1
            if ts < labels.ts[slot]:  # files are read in no time order: keep the earliest
                labels.values[slot], labels.ts[slot] = label, ts
    return labels


def _join_predictions(
    files: list[Path],
    start: float | None,
    now: float,
    labels: _Labels,
    stats: Counter,
    features: Collection[str] | None,
) -> _Joined:
    """The first prediction line of each labelled id inside [start, now]; ``duplicatePredictionIds`` counts
    further lines of a labelled id (those of unlabelled ids are not kept, so not counted)."""
    low = -math.inf if start is None else start
    matched = bytearray(len(labels.ids))
    slots, times, served = array("q"), array("d"), []
    builder = ColumnBuilder(len(labels.ids), features)  # at most one row per label
    find, add = labels.slots.get, builder.add
    for record in chain.from_iterable(_record_batches(files, stats, "malformedPredictionLines")):
        row_id, ts, row = record.get("id"), record.get("ts"), record.get("features")
        if type(row_id) is not str or not _is_time(ts) or type(row) is not dict:
            stats["malformedPredictionLines"] += 1
        elif ts > now or ts < low:
            stats["predictionsOutsideWindow"] += 1
        elif (slot := find(row_id)) is None:
            continue
        elif matched[slot]:
            stats["duplicatePredictionIds"] += 1
        else:
            matched[slot] = 1
            slots.append(slot)
            times.append(ts)
            served.append(record.get("prediction"))
            add(row)
    return _Joined(slots, times, served, builder.finish())


def _ordered(joined: _Joined, labels: _Labels) -> FeedbackData:
    ts = np.frombuffer(joined.ts, dtype=np.float64) if len(joined.ts) else np.empty(0)
    slots = np.frombuffer(joined.slots, dtype=np.int64) if len(joined.slots) else np.empty(0, dtype=np.int64)
    order = _order(ts, [labels.ids[slot] for slot in joined.slots])
    sorted_slots = array("q", slots[order].tobytes())  # iterated as Python ints one at a time, not a list
    columns = joined.features
    return FeedbackData(
        ids=[labels.ids[slot] for slot in sorted_slots],
        ts=ts[order],
        labels=[labels.values[slot] for slot in sorted_slots],
        predictions=[joined.predictions[row] for row in array("q", order.astype(np.int64).tobytes())],
        features={name: columns.pop(name).take(order) for name in list(columns)},  # one column copy at a time
    )


def _order(ts: np.ndarray, ids: list[str]) -> np.ndarray:
    """Row positions sorted by (ts, id): numpy sorts the times, rows logged at the same time (rare) by id."""
    order = np.argsort(ts, kind="stable")
    ordered_ts = ts[order]
    tied = np.flatnonzero(ordered_ts[1:] == ordered_ts[:-1])  # p: rows order[p] and order[p + 1] share a time
    if tied.size == 0:
        return order
    breaks = np.diff(tied) > 1
    starts, ends = tied[np.r_[True, breaks]], tied[np.r_[breaks, True]] + 2
    for start, end in zip(starts.tolist(), ends.tolist()):
        order[start:end] = sorted(order[start:end].tolist(), key=ids.__getitem__)
    return order


# --- JSON lines ----------------------------------------------------------------------------------


def _record_batches(files: list[Path], stats: Counter, malformed_key: str) -> Iterator[list[dict[str, Any]]]:
    """The JSON objects of the files' lines, a batch at a time; blank lines are skipped, other lines that are
    not one counted.

    Batches, parsed with one ``map``: a generator step per line would cost about what orjson needs to parse
    it. A batch with a bad line is parsed again line by line.
    """
    for path in files:
        for batch in _line_batches(path, stats):
            try:
                parsed = list(map(_fast_loads, batch))
            except (ValueError, RecursionError):
                parsed = [_parse_line(line, stats, malformed_key) for line in batch if not line.isspace()]
            records = [record for record in parsed if type(record) is dict]
            if len(records) < len(parsed):
                stats[malformed_key] += sum(
                    1 for record in parsed if record is not _MALFORMED and type(record) is not dict
                )
            yield records


def _parse_line(line: bytes, stats: Counter, malformed_key: str) -> Any:
    """The line's JSON value; counted and ``_MALFORMED`` if it is not JSON (e.g. the torn last line of a file
    still being appended to)."""
    try:
        return _loads(line)
    except (ValueError, RecursionError):
        stats[malformed_key] += 1
        return _MALFORMED


def _line_batches(path: Path, stats: Counter) -> Iterator[list[bytes]]:
    """The lines of a ``.jsonl`` or ``.jsonl.gz`` file, a batch at a time: a file is never held in memory whole."""
    try:
        with gzip.open(path, "rb") if path.name.endswith(".gz") else path.open("rb") as handle:
            while batch := handle.readlines(_BATCH_BYTES):
                yield batch
    except (gzip.BadGzipFile, EOFError, zlib.error):
        # A damaged segment (an object is written whole, so it will never heal) must not stop every future
        # training: its lines up to the damage are used, and the file is counted.
        stats["corruptLogFiles"] += 1
    except OSError as error:
        raise TrainerError(f"cannot read {path}: {_describe(error)}") from error


def _safe_orjson() -> Any:
    """orjson parses a logged row of floats ~8x faster than the standard library; used when installed and
    not older than 3.11.5 (stack overflow on deep nesting, CVE-2024-27454). ``MFL_JSON=stdlib`` turns it off."""
    if os.environ.get("MFL_JSON", "").lower() == "stdlib":
        return None
    try:
        import orjson
    except ImportError:
        return None
    version = tuple(int("".join(c for c in part if c.isdigit()) or 0) for part in orjson.__version__.split(".")[:3])
    return orjson if version >= (3, 11, 5) else None


_orjson = _safe_orjson()
_fast_loads = json.loads if _orjson is None else _orjson.loads
_MALFORMED = object()


def _loads(line: bytes) -> Any:
    if _orjson is not None:
        try:
            return _orjson.loads(line)
        except ValueError:
            pass  # NaN/Infinity literals and integers beyond 64 bits, which the standard library reads
    return json.loads(line)


def dumps_line(record: dict[str, Any]) -> bytes:
    """One JSON line (the labels a ledger read writes for this reader)."""
    if _orjson is not None:
        try:
            return _orjson.dumps(record) + b"\n"
        except TypeError:
            pass  # an integer beyond 64 bits
    return json.dumps(record, separators=(",", ":")).encode() + b"\n"


def _digest(data: FeedbackData) -> str:
    """sha256 over the joined rows' columns (ids, times, labels, served predictions, feature cells)."""
    digest = hashlib.sha256(b"mfl-feedback-columns-1\n")  # the digest's format: rows used to be hashed one by one
    for first in range(0, len(data.ids), _DIGEST_BATCH):  # batches: no second copy of every id at once
        digest.update(json.dumps(data.ids[first : first + _DIGEST_BATCH]).encode())
    digest.update(np.ascontiguousarray(data.ts, dtype=np.float64).tobytes())
    digest.update(json.dumps([data.labels, data.predictions], default=str).encode())
    for name in sorted(data.features):
        column = data.features[name]
        digest.update(json.dumps(name).encode())
        digest.update(column.numbers.tobytes())
        digest.update(column.kinds.tobytes())
        digest.update(json.dumps(sorted(column.others.items()), default=str).encode())
    return digest.hexdigest()


def _is_time(value: Any) -> bool:
    return math.isfinite(value) if type(value) is float else _is_number(value)  # the common case first


def _is_number(value: Any) -> bool:
    """A finite JSON number that fits a float (not a boolean; ``type`` is quicker than isinstance here)."""
    kind = type(value)
    if kind is float:
        return math.isfinite(value)
    return kind is int and -_FLOAT_INT_LIMIT < value < _FLOAT_INT_LIMIT


def utc_day(seconds: float) -> date:
    return datetime.fromtimestamp(seconds, tz=UTC).date()


def _partition_day(name: str) -> date | None:
    try:
        return date.fromisoformat(name.removeprefix("date="))
    except ValueError:
        return None


def _describe(error: BaseException) -> str:
    return getattr(error, "strerror", None) or str(error) or type(error).__name__
