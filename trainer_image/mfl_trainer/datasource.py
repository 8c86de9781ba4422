"""Reading the artifact store: base CSV data and labelled feedback (predictions joined with feedback).

Layout (docs/contracts.md): ``<model>/data/*.csv``, ``<model>/predictions/date=YYYY-MM-DD/*.jsonl``,
``<model>/feedback/date=YYYY-MM-DD/*.jsonl``. Only day partitions overlapping the data window are read.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np

from .errors import TrainerError

MISSING_TEXT = frozenset({"", "na", "n/a", "null", "none"})
_HASH_CHUNK = 1 << 20


@dataclass
class BaseData:
    columns: dict[str, np.ndarray]  # float64 when every value parses as a number, else object (str)
    rows: int
    file_hashes: dict[str, str]  # file name -> sha256 of its bytes
    malformed_rows: int = 0


@dataclass(frozen=True)
class FeedbackRow:
    id: str
    ts: float  # prediction time: when the features were seen
    features: dict[str, Any]
    label: Any
    prediction: Any = None  # what the server answered (None in logs from before it was recorded)


@dataclass
class FeedbackData:
    rows: list[FeedbackRow]  # ordered by (ts, id)
    stats: Counter = field(default_factory=Counter)
    files_read: int = 0
    digest: str = ""  # sha256 of the joined rows: stable while files grow after `now`


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


def partition_files(folder: Path, start: float | None, end: float) -> list[Path]:
    """``*.jsonl`` files under ``date=YYYY-MM-DD`` folders whose UTC day overlaps [start, end]."""
    if not folder.is_dir():
        return []
    first_day = None if start is None else _utc_day(start)
    last_day = _utc_day(end)
    files: list[Path] = []
    for partition in sorted(folder.glob("date=*")):
        day = _partition_day(partition.name)
        if day is None or day > last_day or (first_day is not None and day < first_day):
            continue
        files.extend(sorted(partition.rglob("*.jsonl")))
    return files


def read_feedback(model_dir: Path, start: float | None, now: float) -> FeedbackData:
    """Labelled rows: predictions made in [start, now] joined by id with feedback given up to ``now``."""
    stats: Counter = Counter()
    prediction_files = partition_files(model_dir / "predictions", start, now)
    feedback_files = partition_files(model_dir / "feedback", start, now)
    predictions = _read_predictions(prediction_files, start, now, stats)
    labels = _read_labels(feedback_files, now, stats)
    rows = []
    for row_id, (label, _) in labels.items():
        if row_id not in predictions:
            stats["feedbackWithoutPrediction"] += 1
            continue
        ts, features, served = predictions[row_id]
        rows.append(FeedbackRow(row_id, ts, features, label, served))
    rows.sort(key=lambda r: (r.ts, r.id))
    return FeedbackData(
        rows=rows, stats=stats, files_read=len(prediction_files) + len(feedback_files), digest=_digest_rows(rows)
    )


def _read_predictions(
    files: list[Path], start: float | None, now: float, stats: Counter
) -> dict[str, tuple[float, dict[str, Any], Any]]:
    predictions: dict[str, tuple[float, dict[str, Any], Any]] = {}
    for record in _json_lines(files, stats, "malformedPredictionLines"):
        row_id, ts, features = record.get("id"), record.get("ts"), record.get("features")
        if not isinstance(row_id, str) or not _is_number(ts) or not isinstance(features, dict):
            stats["malformedPredictionLines"] += 1
        elif ts > now or (start is not None and ts < start):
            stats["predictionsOutsideWindow"] += 1
        elif row_id in predictions:
            stats["duplicatePredictionIds"] += 1
        else:
            predictions[row_id] = (float(ts), features, record.get("prediction"))
    return predictions


def _read_labels(files: list[Path], now: float, stats: Counter) -> dict[str, tuple[Any, float]]:
    """Label per prediction id: the first one given, as the server counted it in its metrics.

    The server records one label per id (docs/contracts.md, "Feedback"); a second line for an id
    (written by a server older than that rule) is counted in ``duplicateFeedback`` and ignored.
    """
    labels: dict[str, tuple[Any, float]] = {}
    for record in _json_lines(files, stats, "malformedFeedbackLines"):
        row_id, ts, label = record.get("id"), record.get("ts"), record.get("label")
        if not isinstance(row_id, str) or not _is_number(ts) or not isinstance(label, (str, int, float)):
            stats["malformedFeedbackLines"] += 1
        elif ts > now:
            stats["feedbackAfterNow"] += 1
        else:
            if row_id in labels:
                stats["duplicateFeedback"] += 1
                if labels[row_id][1] <= ts:  # files are read in no time order: keep the earliest
                    continue
            labels[row_id] = (label, float(ts))
    return labels


def _json_lines(files: list[Path], stats: Counter, malformed_key: str) -> Iterator[dict[str, Any]]:
    for path in files:
        try:
            content = path.read_bytes()
        except OSError as error:
            raise TrainerError(f"cannot read {path}: {_describe(error)}") from error
        for line in io.BytesIO(content):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:  # also a torn last line of a file still being appended to
                stats[malformed_key] += 1
                continue
            if isinstance(record, dict):
                yield record
            else:
                stats[malformed_key] += 1


def _digest_rows(rows: list[FeedbackRow]) -> str:
    digest = hashlib.sha256()
    for row in rows:
        served = [] if row.prediction is None else [row.prediction]  # older logs keep their digest
        digest.update(
            json.dumps([row.id, row.ts, row.features, row.label, *served], sort_keys=True, default=str).encode()
        )
        digest.update(b"\n")
    return digest.hexdigest()


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _utc_day(seconds: float) -> date:
    return datetime.fromtimestamp(seconds, tz=UTC).date()


def _partition_day(name: str) -> date | None:
    try:
        return date.fromisoformat(name.removeprefix("date="))
    except ValueError:
        return None


def _describe(error: BaseException) -> str:
    return getattr(error, "strerror", None) or str(error) or type(error).__name__
