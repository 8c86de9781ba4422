"""The Dask engine (config ``"engine": "dask"``): the trainer as a DaskJob's runner.

It connects to the scheduler at ``DASK_SCHEDULER_ADDRESS``, waits for ``dask.workers`` workers, and has the
workers read the data window, one task per partition (a group of prediction log files, at most
``PARTITION_BYTES`` of them, in day order; one task per base-data CSV file). The partitions stay on the
workers; the runner learns their sizes, time ranges, classes and skip counts, places the holdout (the
newest ``holdoutFraction`` of labelled feedback, as the Job engine) from those, fits
``lightgbm.dask`` on the training rows and wraps ``.to_local()`` into the pipeline the Job engine's
``lightgbm`` estimator publishes. Champion and challenger score the holdout on the workers; only the
labels, predictions and times of the holdout rows and a bounded sample of their features come back, into
the Job engine's evaluation, gate metrics, report, metadata and summary (plus ``engine`` and ``workers``).
The input profile (metadata ``inputProfile``) is made from the numeric features of at most ``input_profile.ROWS``
(100,000) training rows, evenly spaced over the partitions' training rows in order, each partition sending its
share: the rows the Job engine profiles when the training rows are the same.

Not on this engine (said in the summary's ``daskNotes`` and metadata ``dask.notes``): the change-point search
and its cross-fitted recipes, incremental training (a fresh model is trained), label noise (a test aid).
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from mfl_contracts import storage
from mfl_contracts.inputprofile import MAX_FEATURES
from mfl_contracts.objectstore import s3_settings_from_env

from . import (
    datasource,
    estimators,
    evaluation,
    identity,
    input_profile,
    mirror,
    plan,
    registry,
    split,
    tables,
    train,
)
from .config import TrainerConfig
from .dask_data import (
    FrameSettings,
    HoldoutRule,
    ReadSettings,
    Scorer,
    Source,
)
from .errors import TrainerError
from .summary import success_summary

Progress = Callable[[str], None]
# Prediction log bytes per partition task, as JSON text: a partition's rows are parsed and held by one worker,
# so it is sized by what it expands to (~0.5 KiB of memory per row parsed), not by what it weighs in the store.
PARTITION_BYTES = 64 << 20
GZIP_RATIO = 8  # a gzip segment of JSON lines counts as this many bytes of text per stored byte (measured 6-9)
SAMPLE_ROWS = 50_000  # holdout rows whose features come back for the error analysis' slices
DEFAULT_WAIT_SECONDS = 300.0
ENGINE_ESTIMATORS = ("lightgbm", "lightgbm_regressor")
NOT_HERE = "not on the Dask engine"


# --- the cluster ---------------------------------------------------------------------------------


def connect(config: TrainerConfig, progress: Progress, env: Mapping[str, str]) -> Any:
    """A client of the scheduler once ``dask.workers`` workers joined; TrainerError naming the address and
    how many came otherwise."""
    from distributed import Client

    address = env.get("DASK_SCHEDULER_ADDRESS", "").strip()
    if not address:
        raise TrainerError(
            "engine dask: DASK_SCHEDULER_ADDRESS is not set (the dask-kubernetes operator sets it in a DaskJob's "
            "runner; set it to the scheduler, e.g. tcp://<name>-scheduler.<namespace>.svc.cluster.local:8786)"
        )
    wanted, wait = int(config.dask.get("workers", 1)), float(config.dask.get("waitSeconds", DEFAULT_WAIT_SECONDS))
    progress(f"connecting to the Dask scheduler at {address}; waiting up to {wait:g} s for {wanted} workers")
    try:
        client = Client(address, timeout=f"{wait}s")
    except (OSError, TimeoutError) as error:
        raise TrainerError(
            f"engine dask: cannot reach the Dask scheduler at {address} within {wait:g} s: "
            f"{type(error).__name__}: {error}"
        ) from error
    try:
        client.wait_for_workers(wanted, timeout=wait)
    except TimeoutError as error:
        joined = len(client.nthreads())
        client.close()
        raise TrainerError(
            f"{wanted} Dask workers expected, {joined} joined within {wait:g} s at {address}: check the DaskJob's "
            f"worker Pods (image, resources, scheduling) or lower retraining.dask.workers"
        ) from error
    except BaseException:
        client.close()
        raise
    progress(f"{len(client.nthreads())} Dask workers joined")
    return client


# --- where the data is ---------------------------------------------------------------------------


@dataclass
class Listing:
    base: list[Source]  # one per CSV file
    base_local: list[Path]  # the same files on the runner (headers, the champion's columns)
    partitions: list[list[Source]]  # prediction log files, grouped
    labels: list[Source]
    ledger: bool


@contextmanager
def open_workspace(
    config: TrainerConfig, progress: Progress, env: Mapping[str, str]
) -> Iterator[tuple[mirror.Workspace, TrainerConfig, Listing]]:
    """The runner's workspace (the volume; in s3 mode a scratch mirror of the base data and the champion
    only) and the window's files as the workers name them."""
    try:
        settings = s3_settings_from_env(env)
    except ValueError as error:
        raise TrainerError(f"artifact store settings: {error}") from error
    ledger = bool(env.get("MFL_DATABASE_URL", "").strip())
    if settings is None:
        published = registry.existing_metadata(config.storage_root, config.model, config.version)
        config = identity.pinned(config, published, progress)
        space = mirror.Workspace(config.storage_root, config.model)
        space.config = config
        with space:
            yield space, config, _volume_listing(config, ledger)
        return
    store = mirror.S3Store(settings)
    scratch = mirror.new_scratch(config)
    with mirror.Workspace(scratch, config.model, store, scratch) as space:
        with mirror.store_errors():
            store.check()
            published = mirror.remote_metadata(store, config.model, config.version)
            config = space.config = identity.pinned(config, published, progress)
            prefixes = [f"{config.model}/data/"]
            if config.parent_version is not None:
                prefixes.append(f"{config.model}/versions/{config.parent_version}/")
            if published is not None:
                prefixes.append(f"{config.model}/versions/{config.version}/")
            copied = sum(store.download(prefix, scratch / prefix) for prefix in prefixes)
            progress(
                f"mirrored {copied} objects (base data, champion) from {store.description}; the workers read the logs"
            )
            listing = _store_listing(store, config, scratch, ledger)
        yield space, config, listing


def _volume_listing(config: TrainerConfig, ledger: bool) -> Listing:
    root = storage.model_dir(config.storage_root, config.model)
    files = datasource.base_files(root)
    predictions = datasource.partition_files(root / "predictions", config.window_start, config.now)
    sized = [(Source(path=str(path)), path.stat().st_size) for path in predictions]
    labels = datasource.partition_files(root / "feedback", config.window_start, config.now)
    return Listing(
        [Source(path=str(path)) for path in files],
        files,
        group(sized, PARTITION_BYTES),
        [Source(path=str(path)) for path in labels],
        ledger,
    )


def _store_listing(store: Any, config: TrainerConfig, scratch: Path, ledger: bool) -> Listing:
    model = config.model
    files = datasource.base_files(scratch / model)
    logs: dict[str, list[tuple[Source, int]]] = {}
    for folder in mirror.LOG_FOLDERS:
        found = []
        for day in mirror.window_partitions(config):
            for info in store.list(f"{model}/{folder}/{day}"):
                if info.key.endswith(datasource.LOG_SUFFIXES) and _day_in_window(info.key, config):
                    found.append((Source(key=info.key), info.size))
        logs[folder] = sorted(found, key=lambda item: item[0].key)
    return Listing(
        [Source(key=f"{model}/data/{path.name}") for path in files],
        files,
        group(logs["predictions"], PARTITION_BYTES),
        [source for source, _ in logs["feedback"]],
        ledger,
    )


def _day_in_window(key: str, config: TrainerConfig) -> bool:
    parts = [part for part in key.split("/") if part.startswith("date=")]
    if not parts:
        return False
    day = datasource._partition_day(parts[0])
    if day is None or day > datasource.utc_day(config.now):
        return False
    return config.window_start is None or day >= datasource.utc_day(config.window_start)


def group(files: Sequence[tuple[Source, int]], limit: int) -> list[list[Source]]:
    """Consecutive files (day order) into partitions of at most ``limit`` bytes (a bigger file alone)."""
    groups: list[list[Source]] = []
    size = 0
    for source, stored in files:
        compressed = (source.path or source.key or "").endswith(".gz")
        length = stored * GZIP_RATIO if compressed else stored
        if not groups or size + length > limit:
            groups.append([])
            size = 0
        groups[-1].append(source)
        size += length
    return groups


# --- the run -------------------------------------------------------------------------------------


def run(config: TrainerConfig, progress: Progress, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    env = os.environ if env is None else env
    started = time.monotonic()
    spec = estimators.estimator_spec(config.estimator, config.task)
    if spec.name not in ENGINE_ESTIMATORS:
        raise TrainerError(
            f"engine dask trains estimator {' or '.join(ENGINE_ESTIMATORS)} (lightgbm.dask); estimator is "
            f"{spec.name!r}: set retraining.estimator to one of them or use retraining.engine Job"
        )
    estimator = estimators.make_estimator(spec, config.hyperparameters, config.seed)  # names and values checked
    client = connect(config, progress, env)
    try:
        with open_workspace(config, progress, env) as (space, config, listing):
            config = replace(config, storage_root=space.root)
            return _DaskRun(config, spec, estimator, client, progress, space, listing, started).run()
    finally:
        client.close()


class _DaskRun:
    def __init__(
        self,
        config: TrainerConfig,
        spec: estimators.EstimatorSpec,
        estimator: Any,
        client: Any,
        progress: Progress,
        space: mirror.Workspace,
        listing: Listing,
        started: float,
    ) -> None:
        self.config, self.spec, self.estimator, self.client = config, spec, estimator, client
        self.progress, self.space, self.listing, self.started = progress, space, listing, started
        self.timings: dict[str, float] = {}
        self.workers = len(client.nthreads())
        self.notes: dict[str, str] = {}
        if config.change_point:
            self.notes["changePoint"] = NOT_HERE
        if config.incremental:
            self.notes["incremental"] = f"{NOT_HERE}: trained from scratch"
        if config.label_noise:
            self.notes["labelNoise"] = NOT_HERE

    # --- reading ---

    def run(self) -> dict[str, Any]:
        config, client, listing = self.config, self.client, self.listing
        champion = train._load_champion(config, self.progress)
        features = train._features(config, champion, listing.base_local)
        if features is None:
            features = self._inferred_features()
        extra = train._champion_extra(champion, features)
        train._check_champion_columns(champion, extra, listing.base_local, self.space)
        columns = (*features, *extra)
        read = ReadSettings(
            config.model,
            config.target,
            config.task,
            config.window_start,
            config.now,
            columns,
            tuple(features),
            None,
            None,
            tuple(listing.labels),
            listing.ledger,
        )
        self.progress(
            f"reading on {self.workers} workers: {len(listing.base)} base-data files and {len(listing.partitions)} "
            f"partitions of {sum(map(len, listing.partitions))} prediction log files ({train._window_text(config)})"
        )
        from .dask_data import part_facts, read_base_part, read_feedback_part

        base_parts = client.map(read_base_part, range(len(listing.base)), listing.base, settings=read, pure=False)
        base_facts = client.gather(client.map(part_facts, base_parts))
        numeric = None
        if base_facts:
            numeric = tuple(
                name for name in columns if all(f["featureTypes"][name] == tables.NUMERIC for f in base_facts)
            )
        classes, origin = self._task_classes(champion, base_facts)
        read = replace(read, base_numeric=numeric, classes=classes)
        feedback_parts = client.map(
            read_feedback_part, range(len(listing.partitions)), listing.partitions, settings=read, pure=False
        )
        feedback_facts = client.gather(client.map(part_facts, feedback_parts))
        self.timings["load"] = time.monotonic() - self.started
        facts = [*base_facts, *feedback_facts]
        stats = self._stats(base_facts, feedback_facts)
        unknown: Counter = Counter()
        for fact in feedback_facts:
            unknown.update(fact["unknownClasses"])
        if unknown:
            self.progress(
                f"left out {sum(unknown.values())} feedback rows whose label is not a class of the task "
                f"(classes {train._named(sorted(classes or ()))}, from {origin}): {train._named_counts(unknown)}"
            )
        n_base = sum(f["rows"] for f in base_facts)
        n_feedback = sum(f["feedback"] for f in feedback_facts)
        self.progress(
            f"rows: {n_base} base + {n_feedback} feedback = {n_base + n_feedback} labelled rows in "
            f"{len(facts)} partitions, {len(features)} features"
        )
        if not base_facts and not n_feedback and not feedback_facts:
            raise TrainerError(
                f"no data: no base data (*.csv) and no labelled feedback in the data window "
                f"({train._window_text(config)}): add base data, widen retraining.dataWindow, or retrain once "
                f"labels for the window's predictions have arrived"
            )
        types = _feature_types(features, extra, facts)
        champion_hash = champion.model_hash if champion else None
        hashes = identity.content_hashes(
            config,
            {path.name: f["fileHash"] for path, f in zip(listing.base_local, base_facts)},
            _combined_digest(feedback_facts),
            champion_hash,
        )
        previous = registry.existing_metadata(config.storage_root, config.model, config.version)
        if previous is not None:
            summary = train._existing_result(config, previous, hashes, self.progress, self.space)
            self.space.retain(config, self.progress)
            return self._engine_summary(summary)
        registry.require_writable(config.storage_root, config.model)
        labels = _labels(config.task, facts)
        self._check_trainable(features, types, stats, facts, n_base, n_feedback, labels)
        estimators.check_features(self.spec, {name: types[name] for name in features})
        inputs = SimpleNamespace(
            features=features,
            table=SimpleNamespace(feature_types=types),
            stats=+stats,
            content_hashes=hashes,
            timings=self.timings,
        )
        return self._train(champion, features, extra, types, labels, base_parts, feedback_parts, facts, inputs)

    def _inferred_features(self) -> list[str]:
        from .dask_data import common_features

        read = ReadSettings(
            self.config.model,
            self.config.target,
            self.config.task,
            self.config.window_start,
            self.config.now,
            (),
            (),
            None,
            None,
            tuple(self.listing.labels),
            self.listing.ledger,
        )
        found = self.client.gather(self.client.map(common_features, self.listing.partitions, settings=read, pure=False))
        common: set[str] | None = None
        for names in found:
            if names is not None:
                common = set(names) if common is None else common & set(names)
        if not common:
            raise TrainerError(
                "no features: config features is empty and there is no base data header or "
                "common feature set in the feedback to infer them from"
            )
        return sorted(common)

    def _task_classes(
        self, champion: train.Champion | None, base_facts: list[dict[str, Any]]
    ) -> tuple[frozenset[str] | None, str]:
        from mfl_contracts.classes import class_key

        if self.config.task != "classification":
            return None, ""
        keys: set[str] = set()
        origins = []
        known = train._champion_classes(champion)
        if known and champion is not None:
            keys |= {class_key(value) for value in known}
            origins.append(f"champion version {champion.version}")
        in_base = {key for fact in base_facts for key in fact["classKeys"]}
        if in_base:
            keys |= in_base
            origins.append("the base data")
        return (frozenset(keys) if keys else None), " and ".join(origins)

    def _stats(self, base_facts: list[dict[str, Any]], feedback_facts: list[dict[str, Any]]) -> Counter:
        stats: Counter = Counter()
        for fact in [*base_facts, *feedback_facts]:
            stats.update(fact["stats"])
        malformed = sum(f["malformedBaseRows"] for f in base_facts)
        if malformed:
            stats["malformedBaseRows"] += malformed
        if feedback_facts:
            matched = sum(f["matched"] for f in feedback_facts)
            lines = feedback_facts[0]["labelLines"]
            orphans = lines - stats.get("duplicateFeedback", 0) - matched
            if orphans > 0:
                stats["feedbackWithoutPrediction"] += orphans
        return +stats

    def _check_trainable(
        self,
        features: list[str],
        types: dict[str, str],
        stats: Counter,
        facts: list[dict[str, Any]],
        n_base: int,
        n_feedback: int,
        labels: list[Any],
    ) -> None:
        """train.check_trainable's rules and messages, on the partitions' counts."""
        config = self.config
        total = n_base + n_feedback
        missing: Counter = Counter()
        unknown: Counter = Counter()
        for fact in facts:
            missing.update(fact["missingFeatures"])
            unknown.update(fact["unknownClasses"])
        if total < config.min_rows:
            table = SimpleNamespace(features=features, missing_features=dict(missing), unknown_classes=dict(unknown))
            dropped = train._dropped_text(config, table, stats)  # type: ignore[arg-type]
            fix = (
                "; ".join(dropped)
                if dropped
                else "add base data (data/*.csv), widen retraining.dataWindow, or lower retraining.minRows"
            )
            raise TrainerError(
                f"too few rows: {total} labelled rows (base {n_base}, feedback {n_feedback}) "
                f"< minRows {config.min_rows}: {fix}"
            )
        if config.task == "classification" and len(labels) < 2:
            raise TrainerError(
                f"target {config.target!r} has only one class {labels} in {total} "
                f"labelled rows; classification needs at least two"
            )
        absent = [name for name in config.slice_features if name not in types]
        if absent:
            raise TrainerError(f"sliceFeatures {absent} are not features of the data (features: {features})")

    # --- training ---

    def _train(
        self,
        champion: train.Champion | None,
        features: list[str],
        extra: list[str],
        types: dict[str, str],
        labels: list[Any],
        base_parts: list[Any],
        feedback_parts: list[Any],
        facts: list[dict[str, Any]],
        inputs: Any,
    ) -> dict[str, Any]:
        from .dask_data import feedback_times, frame, part_counts

        config, client = self.config, self.client
        base_facts, feedback_facts = facts[: len(base_parts)], facts[len(base_parts) :]
        holdout, base_rule, time_rule = self._holdout(base_facts, feedback_facts, feedback_parts, feedback_times)
        self.progress(f"holdout: {holdout.reason} ({holdout.strategy})")
        text = config.task == "classification" and any(isinstance(label, str) for label in labels)
        frame_settings = FrameSettings(
            tuple(dict.fromkeys([*features, *extra])),
            config.task,
            text,
            tuple(labels) if config.task == "classification" else None,
            config.recent_weight,
            config.holdout_fraction,
            config.seed,
        )
        frames = [
            *client.map(frame, base_parts, settings=frame_settings, rule=base_rule),
            *client.map(frame, feedback_parts, settings=frame_settings, rule=time_rule),
        ]
        del base_parts[:], feedback_parts[:]  # the frames hold the rows now
        counts = client.gather(client.map(part_counts, frames))
        n_train = sum(c["train"] for c in counts)
        n_holdout = sum(c["holdout"] for c in counts)
        train_positions = sorted({p for c in counts for p in c["trainClasses"]})
        if config.task == "classification" and len(train_positions) < 2:
            named = [labels[p] for p in train_positions]
            raise TrainerError(
                f"target {config.target!r} has only one class {named} in the {n_train} rows trained on "
                f"({holdout.strategy}: {holdout.reason}); classification needs two: add rows of another class to "
                f"the base data (data/*.csv) or widen retraining.dataWindow"
            )
        if n_holdout == 0:
            raise TrainerError(f"no holdout rows ({holdout.reason}): add base data or labelled feedback")
        self.progress(f"training {self.spec.name} with lightgbm.dask on {n_train} rows over {self.workers} workers")
        fit_started = time.monotonic()
        with_rows = [(f, c["train"]) for f, c in zip(frames, counts) if c["train"]]
        model = self._fit(with_rows, features, types, [labels[p] for p in train_positions], with_rows[0][0])
        self.timings["fit"] = time.monotonic() - fit_started
        self.progress(f"trained in {self.timings['fit']:.2f}s; scoring the holdout on the workers")
        held = [(i, f) for i, (f, c) in enumerate(zip(frames, counts)) if c["holdout"]]
        report, predictions, y_judged = self._evaluate(
            model, champion, features, types, labels, held, n_holdout, holdout
        )
        n_base = sum(f["rows"] for f in base_facts)
        n_feedback = sum(f["feedback"] for f in feedback_facts)
        train_feedback = sum(c["trainFeedback"] for c in counts)
        rows = {
            "base": n_base,
            "feedback": n_feedback,
            "train": n_train,
            "holdout": n_holdout,
            "trainFeedback": train_feedback,
            "labelNoiseFlipped": 0,
        }
        report["trainingData"] = {
            "conceptSince": None,
            "cut": None,
            "inheritedCut": False,
            "trainBase": n_train - train_feedback,
            "trainFeedback": train_feedback,
            "holdoutStrategy": holdout.strategy,
            "recipes": None,
        }
        profile_started = time.monotonic()
        numeric = input_profile.numeric_features(features, types)
        profile = self._input_profile(with_rows, numeric)
        self.timings["inputProfile"] = time.monotonic() - profile_started
        self.progress(input_profile.described(profile, len(numeric), self.timings["inputProfile"]))
        self.timings["total"] = time.monotonic() - self.started
        metadata = train._metadata(config, self.spec, model, inputs, holdout, rows, report, None, profile)
        metadata["engine"] = "dask"
        metadata["dask"] = {"workers": self.workers, "partitions": len(frames), "notes": self.notes}
        return self._publish(model, metadata, report, y_judged, predictions, inputs)

    def _input_profile(self, with_rows: list[tuple[Any, int]], numeric: list[str]) -> dict[str, Any] | None:
        """The input profile of the training rows (``with_rows``: each partition's frame and training-row count),
        from at most ``input_profile.ROWS`` of them, evenly spaced in partition order, as the Job engine picks
        them. Only their numeric columns come back, ``MAX_FEATURES`` at a time: more only if one had no value."""
        from .dask_data import training_columns

        starts = np.cumsum([0, *(n for _, n in with_rows)])
        picked = input_profile.sample_positions(int(starts[-1]))
        bounds = np.searchsorted(picked, starts)  # each partition's slice of the picked positions
        shares = [
            (frame, picked[low:high] - start)
            for (frame, _), start, low, high in zip(with_rows, starts, bounds, bounds[1:])
            if high > low
        ]
        columns: dict[str, list[float]] = {}
        remaining = list(numeric)
        while remaining and shares and len(columns) < MAX_FEATURES:
            batch, remaining = remaining[: MAX_FEATURES - len(columns)], remaining[MAX_FEATURES - len(columns) :]
            parts = self.client.gather(
                [self.client.submit(training_columns, frame, batch, positions) for frame, positions in shares]
            )
            gathered = ((name, np.concatenate([part[name] for part in parts])) for name in batch)
            columns.update(input_profile.profiled(gathered))
        return input_profile.make(columns)

    def _holdout(
        self,
        base_facts: list[dict[str, Any]],
        feedback_facts: list[dict[str, Any]],
        feedback_parts: list[Any],
        feedback_times: Callable[..., Any],
    ) -> tuple[split.Split, HoldoutRule, HoldoutRule]:
        """split.choose_holdout's rule on partition counts: the newest feedback rows, else a base share."""
        config = self.config
        n_feedback = sum(f["feedback"] for f in feedback_facts)
        n_base = sum(f["rows"] for f in base_facts)
        n_recent = math.ceil(config.holdout_fraction * n_feedback)
        empty = np.empty(0, dtype=np.int64)
        none = HoldoutRule("none")
        if n_recent >= config.min_holdout_rows or (n_base == 0 and n_recent >= 1):

            def times(indices: list[int]) -> list[np.ndarray]:
                return self.client.gather(self.client.map(feedback_times, [feedback_parts[i] for i in indices]))

            rule = find_cut(feedback_facts, n_recent, times)
            reason = f"the {n_recent} most recent of {n_feedback} labelled feedback rows"
            return split.Split(empty, empty, split.TIME_ORDERED, reason), none, rule
        strategy = split.STRATIFIED_BASE if config.task == "classification" else split.RANDOM_BASE
        reason = (
            f"only {n_feedback} labelled feedback rows: a {config.holdout_fraction:g} share would hold out "
            f"{n_recent} < minHoldoutRows {config.min_holdout_rows}; held out a share of each base-data file instead"
        )
        return split.Split(empty, empty, strategy, reason), HoldoutRule("base"), none

    def _fit(
        self,
        with_rows: list[tuple[Any, int]],
        features: list[str],
        types: dict[str, str],
        classes: list[Any],
        first: Any,
    ) -> Any:
        import dask.array as da
        import lightgbm.dask as lgb_dask

        from .dask_data import matrix, sample_rows, training_part

        client = self.client
        frames = [frame for frame, _ in with_rows]
        # Arrays of known shapes from the partitions' futures (the booster's features are Column_0.., no
        # feature names, as the Job engine's fitted on a matrix); nothing of them comes to the runner.
        xs = client.map(training_part, frames, what="X", columns=list(features))
        ys = client.map(training_part, frames, what="y")
        ws = client.map(training_part, frames, what="w")
        label_type = np.int64 if self.config.task == "classification" else np.float64
        X = da.concatenate(
            [da.from_delayed(f, shape=(n, len(features)), dtype=np.float64) for f, (_, n) in zip(xs, with_rows)]
        )
        y = da.concatenate([da.from_delayed(f, shape=(n,), dtype=label_type) for f, (_, n) in zip(ys, with_rows)])
        weights = da.concatenate([da.from_delayed(f, shape=(n,), dtype=np.float64) for f, (_, n) in zip(ws, with_rows)])
        params = dict(self.estimator.get_params(deep=False))
        threads = params.pop("n_jobs", None)
        if "n_jobs" in self.config.hyperparameters:
            params["n_jobs"] = threads
        factory = lgb_dask.DaskLGBMClassifier if self.config.task == "classification" else lgb_dask.DaskLGBMRegressor
        distributed = factory(client=client, **params)
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Parameter n_jobs will be ignored")
                distributed.fit(X, y, sample_weight=weights)
        except estimators._training_errors() as error:
            raise TrainerError(f"training failed: {error}") from error
        local = distributed.to_local()
        local.set_params(n_jobs=threads)
        if self.config.task == "classification":
            _relabel(local, classes)
        pipeline = estimators.make_pipeline(self.spec, local, features, types)
        # The preprocessing (numeric passthrough for LightGBM) is fitted on a bounded sample of rows.
        sample = client.submit(sample_rows, first, features, 100, self.config.seed, 0).result()
        pipeline.steps[0][1].fit(matrix(sample, features, types))
        return pipeline

    # --- evaluation ---

    def _evaluate(
        self,
        model: Any,
        champion: train.Champion | None,
        features: list[str],
        types: dict[str, str],
        labels: list[Any],
        held: list[tuple[int, Any]],
        n_holdout: int,
        holdout: split.Split,
    ) -> tuple[dict[str, Any], dict[str, np.ndarray], np.ndarray]:
        """train.evaluate on the gathered holdout vectors (slices on a bounded sample of the rows)."""
        from .dask_data import score_holdout

        config, client = self.config, self.client
        scorers = [Scorer(model, tuple(features), types, "challenger")]
        if champion is not None:
            champion_features = tuple(champion.metadata.get("features") or features)
            champion_types = {**types, **(champion.metadata.get("featureTypes") or {})}
            scorers.append(
                Scorer(champion.model, champion_features, champion_types, f"champion version {champion.version}")
            )
        scattered = client.scatter(scorers, broadcast=True)
        slice_features = list(config.slice_features) or list(features)
        rate = min(1.0, SAMPLE_ROWS / max(1, n_holdout))
        results = client.gather(
            [
                client.submit(score_holdout, data, scattered, slice_features, rate, config.seed, index, pure=False)
                for index, data in held
            ]
        )
        positions = np.concatenate([r["y"] for r in results])
        y_all = np.asarray(labels, dtype=object if any(isinstance(v, str) for v in labels) else None)
        if config.task == "classification":
            y_all = y_all[positions.astype(np.int64)]
        else:
            y_all = positions.astype(np.float64)
        ts = np.concatenate([r["ts"] for r in results])
        names = {"challenger": "challenger"}
        if champion is not None:
            names["champion"] = f"champion version {champion.version}"
        predicted = {key: np.concatenate([r["predictions"][name] for r in results]) for key, name in names.items()}
        offsets = np.cumsum([0, *[len(r["y"]) for r in results[:-1]]])
        sample = np.concatenate([r["sample"] + offset for r, offset in zip(results, offsets)])
        sample_columns = {name: np.concatenate([r["sampleColumns"][name] for r in results]) for name in slice_features}
        judged = plan.unseen_by_champion(ts, train._champion_seen_until(champion), config.min_holdout_rows)
        y_true = y_all[judged]
        predictions = {key: values[judged] for key, values in predicted.items()}
        report_labels = evaluation.labels_of(y_true, *predictions.values()) if config.task == "classification" else []
        in_sample = judged[sample]
        sampled = sample[in_sample]
        slice_table = evaluation.slice_table(
            config.task,
            {name: values[in_sample] for name, values in sample_columns.items()},
            types,
            y_all[sampled],
            {key: values[sampled] for key, values in predicted.items()},
            config.slice_bins,
            config.slice_min_rows,
        )
        judged_ts = ts[judged]
        report = {
            "model": config.model,
            "version": config.version,
            "parentVersion": config.parent_version,
            "task": config.task,
            "target": config.target,
            "metric": evaluation.PRIMARY_METRIC[config.task],
            "holdout": {
                "rows": int(judged.sum()),
                "strategy": holdout.strategy,
                "reason": holdout.reason
                + ("" if judged.all() else f"; judged on the {int(judged.sum())} the champion did not train on"),
                "timeRange": (
                    [float(np.nanmin(judged_ts)), float(np.nanmax(judged_ts))] if np.isfinite(judged_ts).any() else None
                ),
            },
            "challenger": train._model_report(config.task, y_true, predictions["challenger"], report_labels),
            "champion": (
                train._model_report(config.task, y_true, predictions["champion"], report_labels)
                if champion is not None
                else None
            ),
            "paired": train.paired_counts(config.task, y_true, predictions) if champion is not None else None,
            "sliceSettings": {"features": slice_features, "bins": config.slice_bins, "minRows": config.slice_min_rows},
            "worstSlices": {name: evaluation.worst_slices(slice_table, name, config.task) for name in predictions},
            "errorAnalysisSample": {"rows": int(len(sampled)), "of": int(judged.sum())},
            "engine": "dask",
        }
        return report, predictions, y_true

    # --- publishing ---

    def _publish(
        self,
        model: Any,
        metadata: dict[str, Any],
        report: dict[str, Any],
        y_judged: np.ndarray,
        predictions: dict[str, np.ndarray],
        inputs: Any,
    ) -> dict[str, Any]:
        config, space = self.config, self.space
        self.progress(f"writing version {config.version}")
        try:
            registry.write_version(
                config.storage_root,
                config.model,
                config.version,
                lambda folder: train._write_files(
                    folder, config, self.spec, model, metadata, report, y_judged, predictions
                ),
            )
            previous = space.publish(config.version, self.progress)
        except registry.VersionExists:
            previous = registry.existing_metadata(config.storage_root, config.model, config.version) or {}
        if previous is not None:
            summary = train._existing_result(config, previous, inputs.content_hashes, self.progress, space)
            return self._engine_summary(summary)
        space.retain(config, self.progress)
        return self._engine_summary(success_summary(metadata, report, existing=False))

    def _engine_summary(self, summary: dict[str, Any]) -> dict[str, Any]:
        summary = {**summary, "engine": "dask", "workers": self.workers}
        if self.notes:
            summary["daskNotes"] = dict(self.notes)
        return summary


# --- helpers -------------------------------------------------------------------------------------


def find_cut(facts: list[dict[str, Any]], n_recent: int, times: Callable[[list[int]], list[np.ndarray]]) -> HoldoutRule:
    """The key (time, partition, position) of the ``n_recent``-th newest feedback row: rows from it on are
    the holdout. Found from the partitions' counts and time ranges; only the rows of the partitions whose
    range the cut may fall in (one or two for time-ordered log files) are asked for their times."""
    parts = [(i, f["feedback"], f["tsMin"], f["tsMax"]) for i, f in enumerate(facts) if f["feedback"]]
    # Highest t with at least n_recent rows in partitions reaching t (an upper bound of the cut's time) ...
    high = -math.inf
    total = 0
    for _, n, _, top in sorted(parts, key=lambda p: -p[3]):
        total += n
        if total >= n_recent:
            high = top
            break
    # ... and the lowest t with fewer than n_recent rows in partitions starting after it (a lower bound).
    low = -math.inf
    total = 0
    for _, n, bottom, _ in sorted(parts, key=lambda p: -p[2]):
        total += n
        if total >= n_recent:
            low = bottom
            break
    above = sum(n for _, n, bottom, _ in parts if bottom > high)
    candidates = [i for i, _, bottom, top in parts if bottom <= high and top >= low]
    gathered = times(candidates)
    ts = np.concatenate(gathered) if gathered else np.empty(0)
    part = np.concatenate([np.full(len(t), i) for i, t in zip(candidates, gathered)]) if gathered else np.empty(0)
    position = np.concatenate([np.arange(len(t)) for t in gathered]) if gathered else np.empty(0)
    k = n_recent - above
    if not 1 <= k <= len(ts):
        raise TrainerError(f"internal: holdout cut out of range ({k} of {len(ts)} candidate rows)")
    order = np.lexsort((-position, -part, -ts))  # newest first
    chosen = order[k - 1]
    return HoldoutRule("time", float(ts[chosen]), int(part[chosen]), int(position[chosen]))


def _feature_types(features: list[str], extra: list[str], facts: list[dict[str, Any]]) -> dict[str, str]:
    """Numeric unless some partition with rows has the column as categorical (as the Job engine's table)."""
    types = {}
    for name in dict.fromkeys([*features, *extra]):
        kinds = {f["featureTypes"].get(name, tables.NUMERIC) for f in facts if f["rows"]}
        types[name] = tables.CATEGORICAL if tables.CATEGORICAL in kinds else tables.NUMERIC
    return types


def _labels(task: str, facts: list[dict[str, Any]]) -> list[Any]:
    """The classes in the data, sorted, as the Job engine's labels (text when some label is not integral)."""
    if task != "classification":
        return []
    values = {value for f in facts if f["rows"] for value in f["labels"]}
    if all(f["integralLabels"] for f in facts if f["rows"]):
        return sorted(values)
    return sorted({str(value) for value in values})


def _combined_digest(feedback_facts: list[dict[str, Any]]) -> str:
    from .dask_data import combine_digests

    return combine_digests([f["digest"] for f in feedback_facts])


def _relabel(local: Any, classes: list[Any]) -> None:
    """The classifier was fitted on class positions 0..k-1: give it the classes themselves."""
    from lightgbm.compat import _LGBMLabelEncoder

    values = np.asarray(classes, dtype=object if any(isinstance(v, str) for v in classes) else None)
    encoder = _LGBMLabelEncoder().fit(values)
    local._le = encoder
    local._classes = encoder.classes_
    local._class_map = dict(zip(encoder.classes_, range(len(values))))
    local._n_classes = len(values)
