"""The Dask engine's worker side: one task reads one partition of the window (a prediction log file, or a
base-data CSV file) and keeps it on the worker; the runner only ever receives small per-partition facts
(row counts, time ranges, label kinds, class keys, skip counts, digests) and, for the holdout, the vectors
the gate needs (labels, predictions, times) plus a bounded sample of feature rows.

A file is named by a :class:`Source`: a path on the volume the workers mount like the runner, or a key of
the object store the workers reach with the runner's ``MFL_S3_*`` env (s3 mode). Labels come from the
feedback log files of the window and, with ``MFL_DATABASE_URL`` in the worker's env, from the ledger; each
partition keeps only the labels of its own prediction ids, so no worker holds every label.
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
from collections import Counter
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import datasource, tables
from .errors import TrainerError

Y, TS, FEEDBACK, WEIGHT, HOLDOUT = "__y", "__ts", "__feedback", "__weight", "__holdout"
LEDGER = "ledger"


@dataclass(frozen=True)
class Source:
    """A file the workers read: ``path`` on the shared volume, or ``key`` in the object store."""

    path: str = ""
    key: str = ""

    @property
    def name(self) -> str:
        return (self.path or self.key).rpartition("/")[2]

    def where(self) -> str:
        return self.path or f"store key {self.key}"


@contextmanager
def local_file(source: Source) -> Iterator[Path]:
    """The file on this worker: the path itself, or the key downloaded to scratch space for the read."""
    if source.path:
        yield Path(source.path)
        return
    from mfl_contracts.objectstore import StoreError, s3_settings_from_env

    from . import mirror

    settings = s3_settings_from_env(os.environ)
    if settings is None:
        raise TrainerError(
            f"Dask worker: {source.key} is in the object store but MFL_S3_BUCKET is not set in the worker's env: "
            f"the workers need the runner's store env"
        )
    store = mirror.S3Store(settings)  # through mirror: the tests' fake store is patched there
    with tempfile.TemporaryDirectory(prefix="mfl-dask-") as folder:
        target = Path(folder) / source.name
        try:
            target.write_bytes(store.get(source.key))
        except StoreError as error:
            raise TrainerError(f"artifact store {error}") from error
        yield target


@dataclass(frozen=True)
class ReadSettings:
    """What every partition task of one run shares."""

    model: str
    target: str
    task: str
    start: float | None
    now: float
    columns: tuple[str, ...]  # features then columns only the champion uses
    features: tuple[str, ...]
    base_numeric: tuple[str, ...] | None  # base data decides the feature types when there is some
    classes: frozenset[str] | None
    labels: tuple[Source, ...]  # the window's feedback files
    ledger: bool = False  # also read the ledger at MFL_DATABASE_URL (the worker's env)


@dataclass
class Part:
    """One partition as a worker keeps it: its table rows and what the runner is told about them."""

    index: int
    table: tables.LabelledTable
    stats: Counter = field(default_factory=Counter)
    digest: str = ""
    malformed_base_rows: int = 0
    file_hash: str = ""  # base partitions: sha256 of the CSV
    matched: int = 0  # feedback partitions: labels joined to a prediction
    label_lines: int = 0  # partition 0: valid label lines in the window (for feedbackWithoutPrediction)


# --- reading -------------------------------------------------------------------------------------


def read_base_part(index: int, source: Source, settings: ReadSettings) -> Part:
    with local_file(source) as path:
        base = datasource.read_base_data([path], [*settings.columns, settings.target])
        assert base is not None
        file_hash = datasource.sha256_file(path)
    stats: Counter = Counter()
    table = tables.build_table(
        list(settings.features),
        settings.target,
        settings.task,
        base,
        datasource.feedback_from_records([]),
        stats,
        [name for name in settings.columns if name not in settings.features],
        None,
    )
    return Part(index, table, stats, file_hash, base.malformed_rows, file_hash)


def read_feedback_part(index: int, sources: Sequence[Source], settings: ReadSettings) -> Part:
    """The labelled rows of ``sources`` (prediction log files): predictions in the window joined with the
    labels of their ids, ordered by (ts, id), built into table rows as the Job engine builds its table."""
    stats: Counter = Counter()
    with _local_files(sources) as files:
        ids = _window_ids(files, settings)
        labels, label_lines = _labels_of(ids, settings, stats, count_files=index == 0)
        joined = datasource._join_predictions(files, settings.start, settings.now, labels, stats, settings.columns)
    matched = len(joined.slots)
    feedback = datasource._ordered(joined, labels)
    feedback.stats = stats
    feedback.digest = datasource._digest(feedback)
    base = _typed_empty_base(settings)
    table = tables.build_table(
        list(settings.features),
        settings.target,
        settings.task,
        base,
        feedback,
        stats,
        [name for name in settings.columns if name not in settings.features],
        settings.classes,
    )
    return Part(index, table, stats, feedback.digest, matched=matched, label_lines=label_lines)


@contextmanager
def _local_files(sources: Sequence[Source]) -> Iterator[list[Path]]:
    paths: list[Path] = []
    managers = [local_file(source) for source in sources]
    try:
        for manager in managers:
            paths.append(manager.__enter__())
        yield paths
    finally:
        for manager in reversed(managers[: len(paths)]):
            manager.__exit__(None, None, None)


def _window_ids(files: list[Path], settings: ReadSettings) -> set[str]:
    """The ids of the files' prediction lines inside the window (a first, cheap pass: only ids are kept)."""
    low = -math.inf if settings.start is None else settings.start
    ids: set[str] = set()
    ignored: Counter = Counter()  # the join's own pass counts the lines
    for record in chain.from_iterable(datasource._record_batches(files, ignored, "malformed")):
        row_id, ts = record.get("id"), record.get("ts")
        if type(row_id) is str and datasource._is_time(ts) and low <= ts <= settings.now:
            ids.add(row_id)
    return ids


def _labels_of(
    ids: set[str], settings: ReadSettings, stats: Counter, count_files: bool
) -> tuple[datasource._Labels, int]:
    """The first label of each id in ``ids`` (by label time, as the Job engine keeps it). Per-file counts
    (malformed lines, labels after now) are counted by one partition only (``count_files``); the number of
    valid label lines it returns lets the runner count labels without a prediction."""
    labels = datasource._Labels()
    file_stats: Counter = Counter()
    lines = 0
    with _local_files(settings.labels) as files:
        records = chain.from_iterable(datasource._record_batches(files, file_stats, "malformedFeedbackLines"))
        if settings.ledger:
            records = chain(records, _ledger_records(settings))
        for record in records:
            row_id, ts, label = record.get("id"), record.get("ts"), record.get("label")
            if type(row_id) is not str or not datasource._is_time(ts) or not isinstance(label, (str, int, float)):
                file_stats["malformedFeedbackLines"] += 1
                continue
            if ts > settings.now:
                file_stats["feedbackAfterNow"] += 1
                continue
            lines += 1
            if row_id not in ids:
                continue
            slot = labels.slots.get(row_id)
            if slot is None:
                labels.slots[row_id] = len(labels.ids)
                labels.ids.append(row_id)
                labels.values.append(label)
                labels.ts.append(ts)
            else:
                stats["duplicateFeedback"] += 1
                if ts < labels.ts[slot]:
                    labels.values[slot], labels.ts[slot] = label, ts
    if count_files:
        stats.update(file_stats)
    return labels, lines


def _ledger_records(settings: ReadSettings) -> Iterator[dict[str, Any]]:
    from mfl_contracts import ledger

    url = os.environ.get("MFL_DATABASE_URL", "").strip()
    if not url:
        raise TrainerError("Dask worker: the runner reads labels from a ledger but MFL_DATABASE_URL is not set here")
    since = -1.0 if settings.start is None else settings.start
    try:
        yield from ledger.read_labels(url, settings.model, since)
    except ledger.LedgerError as error:
        raise TrainerError(f"label ledger: {error}") from error


def _typed_empty_base(settings: ReadSettings) -> datasource.BaseData | None:
    """No rows, but the base data's column types: they decide the feature types, as in the Job engine."""
    if settings.base_numeric is None:
        return None
    columns = {
        name: np.empty(0) if name in settings.base_numeric else np.empty(0, dtype=object)
        for name in [*settings.columns, settings.target]
    }
    return datasource.BaseData(columns, 0, {})


# --- what the runner learns about a partition ----------------------------------------------------


def part_facts(part: Part) -> dict[str, Any]:
    """Small facts: no row data but a time range and counts."""
    table = part.table
    y = table.y
    ts = table.ts[table.is_feedback]
    integral = y.dtype != object
    return {
        "index": part.index,
        "rows": len(table),
        "feedback": int(table.is_feedback.sum()),
        "tsMin": float(ts.min()) if len(ts) else None,
        "tsMax": float(ts.max()) if len(ts) else None,
        "integralLabels": integral,
        "classKeys": sorted(tables.class_keys(y)) if y.dtype != np.float64 else [],
        "labels": [] if y.dtype == np.float64 else sorted(set(y.tolist()), key=str),
        "featureTypes": dict(table.feature_types),
        "stats": dict(part.stats),
        "missingFeatures": dict(table.missing_features),
        "unknownClasses": dict(table.unknown_classes),
        "digest": part.digest,
        "fileHash": part.file_hash,
        "malformedBaseRows": part.malformed_base_rows,
        "matched": part.matched,
        "labelLines": part.label_lines,
    }


def common_features(sources: Sequence[Source], settings: ReadSettings) -> list[str] | None:
    """The feature names every labelled row of the partition has (None without rows): the features are
    inferred from the feedback when neither the config, the champion nor base data names them."""
    stats: Counter = Counter()
    with _local_files(sources) as files:
        labels, _ = _labels_of(_window_ids(files, settings), settings, stats, count_files=False)
        joined = datasource._join_predictions(files, settings.start, settings.now, labels, stats, None)
    feedback = datasource._ordered(joined, labels)
    return sorted(feedback.common_features()) if len(feedback) else None


def part_counts(data: pd.DataFrame) -> dict[str, Any]:
    held = data[HOLDOUT].to_numpy()
    y = data[Y].to_numpy()[~held]
    return {
        "train": int((~held).sum()),
        "holdout": int(held.sum()),
        "trainFeedback": int(data[FEEDBACK].to_numpy()[~held].sum()),
        "trainClasses": sorted(set(y.tolist())) if y.dtype == np.int64 else [],
    }


def feedback_times(part: Part) -> np.ndarray:
    """The feedback rows' prediction times (only asked of the partitions the holdout cut may fall in)."""
    return np.asarray(part.table.ts[part.table.is_feedback])


# --- frames --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FrameSettings:
    columns: tuple[str, ...]
    task: str
    text_labels: bool  # classification labels as text (some label is not an integral number)
    classes: tuple[Any, ...] | None  # classification: sorted classes; y becomes the class's position
    recent_weight: float
    holdout_fraction: float
    seed: int


@dataclass(frozen=True)
class HoldoutRule:
    """Which rows of a partition are held out: the newest feedback (rows after the cut key), or a stratified
    random share of base rows."""

    kind: str  # "time", "base" or "none"
    ts: float = math.inf
    part: int = 0
    position: int = 0


def frame(part: Part, settings: FrameSettings, rule: HoldoutRule) -> pd.DataFrame:
    """The partition as a pandas frame: feature columns, label (a class position for classification), time,
    feedback flag, sample weight and holdout flag."""
    table = part.table
    data: dict[str, Any] = {name: table.columns[name] for name in settings.columns}
    y = table.y
    if settings.task == "classification":
        labels = np.array([str(v) for v in y.tolist()], dtype=object) if settings.text_labels else y
        assert settings.classes is not None
        positions = {value: i for i, value in enumerate(settings.classes)}
        y = np.fromiter((positions[v] for v in labels.tolist()), dtype=np.int64, count=len(labels))
    data[Y] = y
    data[TS] = table.ts
    data[FEEDBACK] = table.is_feedback
    data[WEIGHT] = np.where(table.is_feedback, settings.recent_weight, 1.0)
    data[HOLDOUT] = holdout_mask(part, rule, settings)
    return pd.DataFrame(data)


def holdout_mask(part: Part, rule: HoldoutRule, settings: FrameSettings) -> np.ndarray:
    table = part.table
    mask = np.zeros(len(table), dtype=bool)
    if rule.kind == "time":
        feedback = np.flatnonzero(table.is_feedback)
        ts = table.ts[feedback]
        after = (ts > rule.ts) | (
            (ts == rule.ts)
            & ((part.index > rule.part) | ((part.index == rule.part) & (np.arange(len(ts)) >= rule.position)))
        )
        mask[feedback[after]] = True
    elif rule.kind == "base":
        base = np.flatnonzero(~table.is_feedback)
        rng = np.random.default_rng([settings.seed, part.index])
        if settings.task != "classification":
            size = max(1, round(settings.holdout_fraction * len(base))) if len(base) else 0
            mask[rng.choice(base, size=size, replace=False)] = True
        else:
            labels = table.y[base]
            for label in sorted(set(labels.tolist()), key=str):
                members = base[labels == label]
                size = round(settings.holdout_fraction * len(members))
                mask[rng.choice(members, size=size, replace=False)] = True
    return mask


def training_part(data: pd.DataFrame, what: str, columns: Sequence[str] = ()) -> np.ndarray:
    """The training rows' feature matrix (``what`` "X"), labels ("y") or sample weights ("w")."""
    kept = data[~data[HOLDOUT].to_numpy()]
    if what == "X":
        return kept[list(columns)].to_numpy(np.float64)
    return kept[Y if what == "y" else WEIGHT].to_numpy()


def training_columns(data: pd.DataFrame, columns: Sequence[str], positions: np.ndarray) -> dict[str, np.ndarray]:
    """Numeric ``columns`` of the training rows at ``positions`` (in the partition's training-row order): the
    partition's share of the input profile's evenly spaced rows."""
    kept = data[~data[HOLDOUT].to_numpy()]
    return {name: kept[name].to_numpy(np.float64)[positions] for name in columns}


def sample_rows(data: pd.DataFrame, columns: Sequence[str], size: int, seed: int, index: int) -> pd.DataFrame:
    """A uniform random sample of ``size`` rows (a bounded sample of a bounded-size training set)."""
    size = min(size, len(data))
    rng = np.random.default_rng([seed, index, 7])
    picked = np.sort(rng.choice(len(data), size=size, replace=False)) if size else np.empty(0, dtype=np.int64)
    return data.iloc[picked][list(columns)]


# --- holdout scoring -----------------------------------------------------------------------------


def matrix(data: pd.DataFrame, features: Sequence[str], types: dict[str, str]) -> np.ndarray:
    """Model input as ``LabelledTable.matrix`` makes it: float64, or object when a feature is categorical."""
    picked = [data[name].to_numpy() for name in features]
    if all(types.get(name, tables.NUMERIC) == tables.NUMERIC for name in features):
        return np.column_stack(picked).astype(np.float64, copy=False)
    return np.column_stack([column.astype(object) for column in picked])


@dataclass(frozen=True)
class Scorer:
    model: Any
    features: tuple[str, ...]
    types: dict[str, str]
    name: str


def score_holdout(
    data: pd.DataFrame, scorers: Sequence[Scorer], sample_columns: Sequence[str], rate: float, seed: int, index: int
) -> dict[str, Any]:
    """The holdout rows' labels (class positions or values), times and each model's predictions, and the
    features of a random ``rate`` share of them (the error analysis' slices)."""
    held = data[data[HOLDOUT].to_numpy()]
    out: dict[str, Any] = {"y": held[Y].to_numpy(), "ts": held[TS].to_numpy(), "predictions": {}}
    for scorer in scorers:
        if len(held):
            try:
                predicted = np.asarray(scorer.model.predict(matrix(held, scorer.features, scorer.types)))
            except Exception as error:  # a champion from another code version may fail in many ways
                raise TrainerError(
                    f"{scorer.name} cannot score the holdout: {type(error).__name__}: {error}"
                ) from error
        else:
            predicted = np.empty(0)
        out["predictions"][scorer.name] = predicted
    rng = np.random.default_rng([seed, index, 11])
    picked = rng.random(len(held)) < rate
    out["sample"] = np.flatnonzero(picked)
    out["sampleColumns"] = {name: held[name].to_numpy()[picked] for name in sample_columns}
    return out


def combine_digests(digests: Collection[str]) -> str:
    digest = hashlib.sha256(b"mfl-feedback-dask-partitions-1\n")
    for value in digests:
        digest.update(value.encode() + b"\n")
    return digest.hexdigest()
