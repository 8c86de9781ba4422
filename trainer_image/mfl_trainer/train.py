"""One training run: load, split, train, evaluate challenger and champion, publish the version."""

from __future__ import annotations

import math
import os
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from importlib import metadata as package_metadata
from pathlib import Path
from typing import Any

import numpy as np
import sklearn

from mfl_contracts import storage
from mfl_contracts.classes import class_key
from mfl_contracts.inputprofile import PROFILE_KEY

from . import (
    datasource,
    estimators,
    evaluation,
    formats,
    identity,
    input_profile,
    mirror,
    plan,
    plots,
    registry,
    revive,
    split,
    tables,
)
from .config import TrainerConfig
from .errors import TrainerError
from .summary import success_summary
from .tables import LabelledTable, build_table

Progress = Callable[[str], None]
MAX_NAMED = 5  # features, classes or files named in one message
INPUT_FORMAT = (
    "2-D array, one column per feature in `features` order; float64 when every feature is "
    "numeric, otherwise object dtype (categorical features as text)"
)


@dataclass
class Champion:
    version: int
    model: Any
    metadata: dict[str, Any]
    model_hash: str


@dataclass
class Inputs:
    table: LabelledTable
    features: list[str]
    stats: Counter
    content_hashes: dict[str, Any]
    champion: Champion | None
    timings: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainingRows:
    rows: np.ndarray  # table rows the published model trains on
    weights: np.ndarray  # weight per table row
    out_of_fold: np.ndarray | None = None  # cross-fitted predictions of the holdout, when there was a cut
    recipe_scores: dict[str, float] | None = None  # cross-fitted score of each recipe, when there was a cut


def run(config: TrainerConfig, progress: Progress, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Train version ``config.version`` (or report it, if a run with the same inputs made it)."""
    started = time.monotonic()
    spec = estimators.estimator_spec(config.estimator, config.task)
    estimator = estimators.make_estimator(spec, config.hyperparameters, config.seed)
    if config.incremental:
        estimators.check_incremental(spec)
    with mirror.open_workspace(config, progress, env) as space:
        # s3 mode: the local mirror; a published version's data window when it exists (identity.pinned)
        config = replace(space.config or config, storage_root=space.root)
        inputs = load_inputs(config, progress, space)
        inputs.timings["load"] = time.monotonic() - started
        previous = registry.existing_metadata(config.storage_root, config.model, config.version)
        if previous is not None:
            summary = _existing_result(config, previous, inputs.content_hashes, progress, space)
            space.retain(config, progress)  # a retry of a run that published but stopped before this
            return summary
        registry.require_writable(config.storage_root, config.model)
        check_trainable(config, inputs.table, inputs.stats)
        estimators.check_features(spec, {name: inputs.table.feature_types[name] for name in inputs.features})
        return train_and_publish(config, spec, estimator, inputs, progress, started, space)


# --- loading -------------------------------------------------------------------------------------


def load_inputs(config: TrainerConfig, progress: Progress, space: mirror.Workspace) -> Inputs:
    root = storage.model_dir(config.storage_root, config.model)
    champion = _load_champion(config, progress)
    files = datasource.base_files(root)
    known = _features(config, champion, files)
    # Only the columns the table uses are kept (all the features every row has, when they are inferred).
    wanted = None if known is None else [*known, *_champion_extra(champion, known)]
    progress(f"loading feedback predicted in the data window ({_window_text(config)}) from {root}")
    feedback = datasource.read_feedback(root, config.window_start, config.now, space.feedback_dirs, wanted)
    progress(
        f"feedback: {len(feedback)} labelled rows from {feedback.files_read} files; "
        f"skipped {dict(feedback.stats) or 'nothing'}"
    )
    if not files and not len(feedback):
        # Before the features are inferred from the feedback: an empty window is the cause, not the features.
        raise TrainerError(
            f"no data: no base data (*.csv) in {space.where(root / 'data')} and no labelled feedback in the "
            f"data window ({_window_text(config)}; {feedback.files_read} log files read"
            f"{_skipped_text(feedback.stats)}): add base data there, widen retraining.dataWindow, or retrain "
            f"once labels for the window's predictions have arrived"
        )
    features = known if known is not None else _inferred_features(feedback)
    extra = _champion_extra(champion, features)
    _check_champion_columns(champion, extra, files, space)
    progress(f"loading base data: {len(files)} CSV files in {root / 'data'}")
    base = datasource.read_base_data(files, [*features, *extra, config.target])
    stats = Counter(feedback.stats)
    if base is not None and base.malformed_rows:
        stats["malformedBaseRows"] += base.malformed_rows
    classes, origin = task_classes(config, base, champion)
    table = build_table(features, config.target, config.task, base, feedback, stats, extra, classes)
    if table.unknown_classes:
        progress(
            f"left out {sum(table.unknown_classes.values())} feedback rows whose label is not a class of the task "
            f"(classes {_named(sorted(classes or ()))}, from {origin}): {_named_counts(table.unknown_classes)}"
        )
    progress(
        f"rows: {int((~table.is_feedback).sum())} base + {int(table.is_feedback.sum())} feedback "
        f"= {len(table)} labelled rows, {len(features)} features"
    )
    champion_hash = champion.model_hash if champion else None
    hashes = identity.content_hashes(
        config, base.file_hashes if base is not None else {}, feedback.digest, champion_hash
    )
    return Inputs(table, features, +stats, hashes, champion)


def task_classes(
    config: TrainerConfig, base: datasource.BaseData | None, champion: Champion | None
) -> tuple[frozenset[str] | None, str]:
    """The classes of a classification task (as ``class_key``s) and where they come from: the champion's (its
    metadata's ``classes``, else its estimator's ``classes_``) and the base data's. A logged label of another
    class is left out, as the server refuses it: a class is added by adding rows of it to the base data.
    None (every label kept) when neither says: a first version trained on feedback alone."""
    if config.task != "classification":
        return None, ""
    keys: set[str] = set()
    origins = []
    known = _champion_classes(champion)
    if known and champion is not None:
        keys |= {class_key(value) for value in known}
        origins.append(f"champion version {champion.version}")
    if base is not None:
        in_base = tables.class_keys(base.columns[config.target])
        if in_base:
            keys |= in_base
            origins.append("the base data")
    return (frozenset(keys) if keys else None), " and ".join(origins)


def _champion_classes(champion: Champion | None) -> list[Any]:
    if champion is None:
        return []
    listed = champion.metadata.get("classes")
    if isinstance(listed, list) and listed:
        return listed
    try:
        fitted = getattr(champion.model, "classes_", None)  # a Pipeline asks its last step
    except Exception:  # noqa: BLE001 - an unfitted or foreign estimator: its classes are unknown
        return []
    return np.asarray(fitted).tolist() if fitted is not None else []


def _check_champion_columns(
    champion: Champion | None, extra: list[str], files: list[Path], space: mirror.Workspace
) -> None:
    """Features only the champion uses must be in the base data too: it is scored on the challenger's rows."""
    if champion is None or not extra:
        return
    for path in files:
        header = datasource.base_header(path)
        missing = [name for name in extra if name not in header]
        if missing:
            raise TrainerError(
                f"champion version {champion.version} was trained with feature(s) {missing} (its metadata's "
                f"features), which base data {space.where(path)} lacks (columns: {header}): the champion is "
                f"scored on the same rows as the challenger, base rows included; put the column(s) back in the "
                f"base data"
            )


def _load_champion(config: TrainerConfig, progress: Progress) -> Champion | None:
    if config.parent_version is None:
        return None
    progress(f"loading champion version {config.parent_version}")
    model, metadata = registry.load_champion(config.storage_root, config.model, config.parent_version)
    folder = storage.version_dir(config.storage_root, config.model, config.parent_version)
    return Champion(config.parent_version, model, metadata, datasource.sha256_file(folder / storage.MODEL_FILE))


def _champion_extra(champion: Champion | None, features: list[str]) -> list[str]:
    """Features only the champion uses: kept as columns, so it can score the holdout."""
    return [name for name in (champion.metadata.get("features") or []) if name not in features] if champion else []


def _features(config: TrainerConfig, champion: Champion | None, files: list[Path]) -> list[str] | None:
    """Configured features; else the champion's (incremental) or the base header's; None: the feedback's."""
    champion_features = list(champion.metadata.get("features") or []) if champion else []
    if config.incremental and champion_features:
        if config.features and config.features != champion_features:
            raise TrainerError(
                f"incremental training keeps the champion's features {champion_features}; "
                f"config features {config.features} differ"
            )
        return champion_features
    if config.features:
        return list(config.features)
    if files:
        header = datasource.base_header(files[0])
        if config.target not in header:
            raise TrainerError(f"base data {files[0].name}: missing columns ['{config.target}'] (columns: {header})")
        return [name for name in header if name != config.target]
    return None


def _inferred_features(feedback: datasource.FeedbackData) -> list[str]:
    common = feedback.common_features()
    if not common:
        raise TrainerError(
            "no features: config features is empty and there is no base data header or "
            "common feature set in the feedback to infer them from"
        )
    return sorted(common)


def _named(values: list[Any]) -> str:
    shown = ", ".join(repr(value) for value in values[:MAX_NAMED])
    return f"[{shown}{f' and {len(values) - MAX_NAMED} more' if len(values) > MAX_NAMED else ''}]"


def _named_counts(counts: Mapping[str, int]) -> str:
    """``'tenure' in 800, 'plan' in 12`` for the most frequent first."""
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    shown = ", ".join(f"{name!r} in {count}" for name, count in ranked[:MAX_NAMED])
    return shown + (f" and {len(ranked) - MAX_NAMED} more" if len(ranked) > MAX_NAMED else "")


def _skipped_text(stats: Mapping[str, int]) -> str:
    return f"; skipped {dict(stats)}" if stats else ""


def _window_text(config: TrainerConfig) -> str:
    start = "unbounded" if config.window_start is None else f"{config.window_start:.0f}"
    return f"ts {start} .. {config.now:.0f}"


# --- checks --------------------------------------------------------------------------------------


def check_trainable(config: TrainerConfig, table: LabelledTable, stats: Mapping[str, int] | None = None) -> None:
    n_base, n_feedback = int((~table.is_feedback).sum()), int(table.is_feedback.sum())
    if len(table) < config.min_rows:
        # The rows left out are named first: "too few rows" alone sent people to minRows when a feature the
        # logs lack, or an empty target column, had dropped them.
        dropped = _dropped_text(config, table, stats or {})
        fix = (
            "; ".join(dropped)
            if dropped
            else ("add base data (data/*.csv), widen retraining.dataWindow, or lower retraining.minRows")
        )
        raise TrainerError(
            f"too few rows: {len(table)} labelled rows (base {n_base}, feedback {n_feedback}) "
            f"< minRows {config.min_rows}: {fix}"
        )
    if config.task == "classification" and not config.incremental and len(table.classes) < 2:
        raise TrainerError(
            f"target {config.target!r} has only one class {table.classes} in {len(table)} "
            f"labelled rows; classification needs at least two"
        )
    unknown = [name for name in config.slice_features if name not in table.columns]
    if unknown:
        raise TrainerError(f"sliceFeatures {unknown} are not features of the data (features: {table.features})")


def _dropped_text(config: TrainerConfig, table: LabelledTable, stats: Mapping[str, int]) -> list[str]:
    """Why labelled rows were left out, biggest cause first, each with its fix."""
    causes: list[tuple[int, str]] = []
    missing = stats.get("feedbackRowsMissingFeatures", 0)
    if missing:
        absent = _named_counts(table.missing_features)
        fixes = []
        if any(name in table.features for name in table.missing_features):
            fixes.append(
                "the server logs the features a request sends: send them or drop them from retraining.features"
            )
        if any(name not in table.features for name in table.missing_features):
            fixes.append(
                f"features only champion version {config.parent_version} uses are needed to score it on the same "
                f"rows: send them in the requests"
            )
        causes.append(
            (
                missing,
                f"{missing} feedback rows were left out because their logged prediction lacks a feature ({absent} "
                f"rows): {'; '.join(fixes)}",
            )
        )
    unlabelled = stats.get("baseRowsWithoutLabel", 0)
    if unlabelled:
        causes.append(
            (
                unlabelled,
                f"{unlabelled} base rows were left out because the target column {config.target!r} is empty in "
                f"them: fill it in the base data (data/*.csv), or name the right column in retraining.target",
            )
        )
    unknown = stats.get("feedbackRowsWithUnknownClass", 0)
    if unknown:
        causes.append(
            (
                unknown,
                f"{unknown} feedback rows were left out because their label is not a class of the task "
                f"({_named_counts(table.unknown_classes)}): add rows of a new class to the base data",
            )
        )
    bad = stats.get("feedbackRowsWithBadLabel", 0)
    if bad:
        kind = "a number" if config.task == "regression" else "a class"
        causes.append((bad, f"{bad} feedback rows were left out because their label is missing or not {kind}"))
    orphans = stats.get("feedbackWithoutPrediction", 0)
    if orphans:
        causes.append(
            (
                orphans,
                f"{orphans} labels were left out because their prediction is not in the window's prediction log "
                f"(predicted before the window: widen retraining.dataWindow)",
            )
        )
    return [text for _, text in sorted(causes, key=lambda cause: -cause[0])]


def _identity_help(differing: list[str]) -> str:
    what = {
        "recipe": "the config's training settings changed",
        "config": "the config changed (a version published by an older trainer matches only its own Job's config)",
        "baseData": "files in data/ changed",
        "feedback": "the labelled rows of its data window changed (log files deleted or rewritten)",
        "champion": "the champion's model file changed",
    }
    return "; ".join(what[key] for key in differing if key in what)


def _existing_result(
    config: TrainerConfig,
    previous: dict[str, Any],
    hashes: dict[str, Any],
    progress: Progress,
    space: mirror.Workspace,
) -> dict[str, Any]:
    folder = storage.version_dir(config.storage_root, config.model, config.version)
    differing = identity.differing(previous.get("contentHashes") or {}, hashes, config)
    if differing:
        raise TrainerError(
            f"version {config.version} already exists at {space.where(folder)} with different inputs "
            f"({', '.join(differing)} differ); refusing to overwrite it: a published version is never "
            f"retrained (times, Job names and the image are not inputs; {_identity_help(differing)})"
        )
    progress(f"version {config.version} already exists with the same inputs: reporting it")
    report = registry.read_json(folder / storage.REPORT_FILE)
    return success_summary(previous, report, existing=True)


# --- training ------------------------------------------------------------------------------------


def train_and_publish(
    config: TrainerConfig,
    spec: estimators.EstimatorSpec,
    estimator: Any,
    inputs: Inputs,
    progress: Progress,
    started: float,
    space: mirror.Workspace,
) -> dict[str, Any]:
    table = inputs.table
    training = make_plan(config, inputs)
    holdout = training.split
    if training.cut:
        cut = training.cut
        progress(
            f"change point: the served error rose from {cut['errorBefore']:.3f} to {cut['errorAfter']:.3f} at ts "
            f"{cut['ts']:.0f} (CUSUM p={cut['pValue']:.2g}; {cut['rowsAfter']} labelled rows since)"
        )
    progress(f"holdout: {len(holdout.holdout)} rows ({holdout.strategy}: {holdout.reason})")
    chosen = _training_rows(config, spec, inputs, training, progress)
    train_rows = chosen.rows
    y_train, flipped = split.flip_labels(
        table.y[train_rows], config.label_noise, table.classes, config.seed, regression=config.task == "regression"
    )
    _check_training_labels(config, y_train, training)
    weights = chosen.weights[train_rows]
    X_train = table.matrix(train_rows)
    origin = f" incrementally from version {config.parent_version}" if config.incremental else ""
    progress(f"training {spec.name} on {len(train_rows)} rows{origin}")
    fit_started = time.monotonic()
    model, incremental = _fit(config, spec, estimator, inputs, X_train, y_train, weights)
    inputs.timings["fit"] = time.monotonic() - fit_started
    progress(f"trained in {inputs.timings['fit']:.2f}s; evaluating on the holdout")
    report, predictions, y_judged = evaluate(config, table, holdout, model, inputs.champion, chosen.out_of_fold)
    judged, judged_rows = judged_holdout(config, table, holdout, inputs.champion)
    revival = revive.consider(
        config, table, judged_rows, predictions["challenger"], predictions.get("champion"), progress
    )
    revived = revival.chosen if revival is not None else None
    if revived is not None:  # the report judges what will be served: the past version's model
        replayed = np.empty(len(holdout.holdout), dtype=revived.predictions.dtype)
        replayed[judged] = revived.predictions
        report, predictions, y_judged = evaluate(config, table, holdout, revived.model, inputs.champion, replayed)
    rows = {
        "base": int((~table.is_feedback).sum()),
        "feedback": int(table.is_feedback.sum()),
        "train": len(train_rows),
        "holdout": len(holdout.holdout),
        "trainFeedback": int(table.is_feedback[train_rows].sum()),
        "labelNoiseFlipped": flipped,
    }
    profile_started = time.monotonic()
    numeric = input_profile.numeric_features(inputs.features, table.feature_types)
    profile = input_profile.of_table(table.columns, numeric, _profiled_rows(config, training, train_rows))
    inputs.timings["inputProfile"] = time.monotonic() - profile_started
    progress(input_profile.described(profile, len(numeric), inputs.timings["inputProfile"]))
    inputs.timings["total"] = time.monotonic() - started
    report["trainingData"] = training_data(training, table, train_rows, chosen.recipe_scores)
    metadata = _metadata(config, spec, model, inputs, holdout, rows, report, incremental, profile)
    save: Callable[[Path], None] | None = None
    if revival is not None:
        report["revival"] = metadata["revival"] = revival.to_json()
    if revived is not None:
        metadata = _revived_metadata(metadata, revived)
        report["revivedFrom"] = revived.version
        source = storage.version_dir(config.storage_root, config.model, revived.version)
        model_format = metadata["format"]
        save = lambda folder: revive.copy_model_files(source, folder, model_format, config.model, config.version)
    progress(f"writing version {config.version}" + (f" (version {revived.version}'s model)" if revived else ""))
    try:
        registry.write_version(
            config.storage_root,
            config.model,
            config.version,
            lambda folder: _write_files(folder, config, spec, model, metadata, report, y_judged, predictions, save),
        )
        previous = space.publish(config.version, progress)
    except registry.VersionExists:
        previous = registry.existing_metadata(config.storage_root, config.model, config.version) or {}
    if previous is not None:  # a concurrent or earlier run of this version published first
        return _existing_result(config, previous, inputs.content_hashes, progress, space)
    space.retain(config, progress)
    return success_summary(metadata, report, existing=False)


def make_plan(config: TrainerConfig, inputs: Inputs) -> plan.TrainingPlan:
    table = inputs.table
    inherited = ((inputs.champion.metadata.get("trainingData") or {}) if inputs.champion else {}).get("conceptSince")
    served = table.served_error if table.served_error is not None else np.full(len(table), np.nan)
    return plan.plan_training(
        table.is_feedback,
        table.y,
        table.ts,
        served,
        fraction=config.holdout_fraction,
        min_holdout_rows=config.min_holdout_rows,
        stratify=config.task == "classification",
        seed=config.seed,
        recent_weight=config.recent_weight,
        change=plan.ChangeSettings(
            config.change_point and not config.incremental, config.change_point_alpha, config.change_point_min_rows
        ),
        inherited_since=inherited if isinstance(inherited, (int, float)) else None,
    )


def training_data(
    training: plan.TrainingPlan, table: LabelledTable, train_rows: np.ndarray, recipes: dict[str, Any] | None = None
) -> dict[str, Any]:
    """What the version learned from: the cut (found now or inherited) and the rows on each side of it."""
    return {
        "conceptSince": training.concept_since,
        "cut": training.cut,
        "inheritedCut": training.cut is None and training.concept_since is not None,
        "trainBase": int((~table.is_feedback[train_rows]).sum()),
        "trainFeedback": int(table.is_feedback[train_rows].sum()),
        "holdoutStrategy": training.strategy,
        "recipes": recipes,
    }


def _training_rows(
    config: TrainerConfig,
    spec: estimators.EstimatorSpec,
    inputs: Inputs,
    training: plan.TrainingPlan,
    progress: Progress,
) -> TrainingRows:
    """What the published model trains on. Cross-fitted plans train the recipe that predicts the rows since
    the cut best; incremental runs only feedback the champion has not seen."""
    table = inputs.table
    weights = np.zeros(len(table))
    if training.folds is not None:
        recipe, out_of_fold, scores = _best_recipe(config, spec, inputs, training, progress)
        rows, recipe_weights = training.rows_of(recipe)
        weights[rows] = recipe_weights
        return TrainingRows(rows, weights, out_of_fold, scores)
    weights[training.train] = training.weights
    if not config.incremental:
        return TrainingRows(training.train, weights)
    seen_until = _champion_seen_until(inputs.champion)
    fresh = table.is_feedback[training.train]
    if seen_until is not None:
        fresh &= table.ts[training.train] > seen_until
    rows = training.train[fresh]
    if len(rows) == 0:
        raise TrainerError(
            f"incremental training found no new labelled feedback to train on "
            f"(feedback predicted after the champion's data window end {seen_until}, "
            f"outside the holdout)"
        )
    return TrainingRows(rows, weights)


def _profiled_rows(config: TrainerConfig, training: plan.TrainingPlan, train_rows: np.ndarray) -> np.ndarray:
    """The rows the input profile describes: those the published model was trained on (the training split, or
    the chosen recipe's rows after a cut; never the holdout, but the rows since a cut that cross-fitting
    judges out of fold are trained on by the published model too). An incremental model continues the
    champion, so it has learned from more than this run's new feedback, which is often too few rows for
    stable deciles: the window's training split stands for both."""
    return training.train if config.incremental else train_rows


def _champion_seen_until(champion: Champion | None) -> float | None:
    """When the champion's data window ended: it may have trained on any row predicted before."""
    end = (champion.metadata.get("dataWindow") or {}).get("end") if champion else None
    return float(end) if isinstance(end, (int, float)) else None


def _best_recipe(
    config: TrainerConfig,
    spec: estimators.EstimatorSpec,
    inputs: Inputs,
    training: plan.TrainingPlan,
    progress: Progress,
) -> tuple[plan.Recipe, np.ndarray, dict[str, float]]:
    """The recipe whose cross-fitted predictions of the rows since the cut score best, those predictions, and
    every recipe's score."""
    table = inputs.table
    metric = evaluation.PRIMARY_METRIC[config.task]
    sign = 1.0 if evaluation.GREATER_IS_BETTER[metric] else -1.0
    y_true = table.y[training.holdout]
    training = _two_class_recipes(config, table, training, progress)

    def fit_predict(rows: np.ndarray, weights: np.ndarray, test: np.ndarray) -> np.ndarray:
        return np.asarray(_fit_fold(config, spec, inputs, rows, weights).predict(table.matrix(test)))

    def score(predicted: np.ndarray) -> float:
        value = evaluation.metrics(config.task, y_true, predicted)[metric]
        return -math.inf if value is None else sign * value

    best, predicted, scores = plan.best_recipe(training, fit_predict, score)
    recipe_scores = {name: sign * value for name, value in scores.items() if math.isfinite(value)}
    progress(f"cross-fitted {metric} of each recipe on the rows since the cut: {recipe_scores}; chose {best.name}")
    return best, predicted, recipe_scores


def _fit_fold(
    config: TrainerConfig, spec: estimators.EstimatorSpec, inputs: Inputs, rows: np.ndarray, weights: np.ndarray
) -> Any:
    """A model like the published one, fitted on some of its rows: judges the rows it did not see."""
    table = inputs.table
    y, _ = split.flip_labels(
        table.y[rows], config.label_noise, table.classes, config.seed, regression=config.task == "regression"
    )
    estimator = estimators.make_estimator(spec, config.hyperparameters, config.seed)
    return _fit_pipeline(spec, estimator, inputs, table.matrix(rows), y, weights)


def _two_class_recipes(
    config: TrainerConfig, table: LabelledTable, training: plan.TrainingPlan, progress: Progress
) -> plan.TrainingPlan:
    """Classification: a recipe whose rows hold one class cannot train a classifier (the rows since a change
    point may all be of one class); it is not tried. If none is left, the plan's first one fails later, naming
    the rows it trained on."""
    if config.task != "classification":
        return training
    kept = tuple(recipe for recipe in training.recipes if len(set(table.y[training.rows_of(recipe)[0]].tolist())) > 1)
    if kept == training.recipes or not kept:
        return training
    left_out = [recipe.name for recipe in training.recipes if recipe not in kept]
    progress(f"recipes {left_out} left out: their rows hold a single class")
    return replace(training, recipes=kept)


def _check_training_labels(config: TrainerConfig, y_train: np.ndarray, training: plan.TrainingPlan) -> None:
    if config.task == "classification" and not config.incremental and len(set(y_train.tolist())) < 2:
        if training.concept_since is not None:
            fix = (
                f"the rows since the change point at ts {training.concept_since:.0f} hold one class: retrain once "
                f"labels of another class arrived, or set retraining.changePoint.enabled to false"
            )
        else:
            fix = "add rows of another class to the base data (data/*.csv) or widen retraining.dataWindow"
        raise TrainerError(
            f"target {config.target!r} has only one class {sorted(set(y_train.tolist()))} in the "
            f"{len(y_train)} rows trained on ({training.strategy}: {training.reason}); classification needs two: "
            f"{fix}"
        )


def _fit(
    config: TrainerConfig,
    spec: estimators.EstimatorSpec,
    estimator: Any,
    inputs: Inputs,
    X: np.ndarray,
    y: np.ndarray,
    weights: np.ndarray,
) -> tuple[Any, dict[str, Any] | None]:
    if config.incremental:
        assert inputs.champion is not None  # config validation requires parentVersion
        return estimators.continue_training(
            inputs.champion.model, spec, config.hyperparameters, X, y, weights, config.incremental_steps, config.seed
        )
    return _fit_pipeline(spec, estimator, inputs, X, y, weights), None


def _fit_pipeline(
    spec: estimators.EstimatorSpec, estimator: Any, inputs: Inputs, X: np.ndarray, y: np.ndarray, weights: np.ndarray
) -> Any:
    """The estimator behind the table's feature preprocessing, fitted: what a version publishes."""
    pipeline = estimators.make_pipeline(spec, estimator, inputs.features, inputs.table.feature_types)
    return estimators.fit(pipeline, X, y, weights)


# --- evaluation ----------------------------------------------------------------------------------


def judged_holdout(
    config: TrainerConfig, table: LabelledTable, holdout: split.Split, champion: Champion | None
) -> tuple[np.ndarray, np.ndarray]:
    """The holdout rows challenger and champion are judged on: a mask over ``holdout.holdout`` and the rows."""
    judged = plan.unseen_by_champion(table.ts[holdout.holdout], _champion_seen_until(champion), config.min_holdout_rows)
    return judged, holdout.holdout[judged]


def evaluate(
    config: TrainerConfig,
    table: LabelledTable,
    holdout: split.Split,
    model: Any,
    champion: Champion | None,
    out_of_fold: np.ndarray | None = None,
) -> tuple[dict[str, Any], dict[str, np.ndarray], np.ndarray]:
    """Challenger and champion scored on the same holdout rows (those the champion did not train on, when
    enough); the report, the predictions and the labels they were scored against. With
    cross-fitting the challenger's predictions are `out_of_fold` (each row by a model that did not see it)."""
    judged, rows = judged_holdout(config, table, holdout, champion)
    y_true = table.y[rows]
    challenger = model.predict(table.matrix(rows)) if out_of_fold is None else out_of_fold[judged]
    predictions = {"challenger": challenger}
    if champion is not None:
        predictions["champion"] = _champion_predictions(champion, table, rows)
    labels = evaluation.labels_of(y_true, *predictions.values()) if config.task == "classification" else []
    slice_features = _slice_features(config, table)
    slice_table = evaluation.slice_table(
        config.task,
        {f: table.columns[f][rows] for f in slice_features},
        table.feature_types,
        y_true,
        predictions,
        config.slice_bins,
        config.slice_min_rows,
    )
    ts = table.ts[rows]
    report = {
        "model": config.model,
        "version": config.version,
        "parentVersion": config.parent_version,
        "task": config.task,
        "target": config.target,
        "metric": evaluation.PRIMARY_METRIC[config.task],
        "holdout": {
            "rows": len(rows),
            "strategy": holdout.strategy,
            "reason": holdout.reason
            + ("" if judged.all() else f"; judged on the {len(rows)} the champion did not train on"),
            "timeRange": [float(np.nanmin(ts)), float(np.nanmax(ts))] if np.isfinite(ts).any() else None,
        },
        "challenger": _model_report(config.task, y_true, predictions["challenger"], labels),
        "champion": (
            _model_report(config.task, y_true, predictions["champion"], labels) if champion is not None else None
        ),
        "paired": paired_counts(config.task, y_true, predictions) if champion is not None else None,
        "sliceSettings": {"features": slice_features, "bins": config.slice_bins, "minRows": config.slice_min_rows},
        "worstSlices": {name: evaluation.worst_slices(slice_table, name, config.task) for name in predictions},
    }
    return report, predictions, y_true


def paired_counts(task: str, y_true: np.ndarray, predictions: dict[str, np.ndarray]) -> dict[str, int]:
    """Holdout rows where only one model is right (classification) or closer (regression): the counts of
    an exact sign test (McNemar's, for classes) of challenger against champion on the same rows."""
    if task == "classification":
        challenger_ok = predictions["challenger"] == y_true
        champion_ok = predictions["champion"] == y_true
    else:
        challenger_error = np.abs(predictions["challenger"] - y_true)
        champion_error = np.abs(predictions["champion"] - y_true)
        challenger_ok, champion_ok = challenger_error < champion_error, champion_error < challenger_error
    return {
        "challengerOnly": int((challenger_ok & ~champion_ok).sum()),
        "championOnly": int((champion_ok & ~challenger_ok).sum()),
    }


def _champion_predictions(champion: Champion, table: LabelledTable, rows: np.ndarray) -> np.ndarray:
    features = champion.metadata.get("features") or table.features
    types = {**table.feature_types, **(champion.metadata.get("featureTypes") or {})}
    try:
        return champion.model.predict(table.matrix(rows, features, types))
    except Exception as error:  # a champion from another code version may fail in many ways
        raise TrainerError(
            f"champion version {champion.version} cannot score the holdout: {type(error).__name__}: {error}"
        ) from error


def _slice_features(config: TrainerConfig, table: LabelledTable) -> list[str]:
    return list(config.slice_features) or list(table.features)


def _model_report(task: str, y_true: np.ndarray, y_pred: np.ndarray, labels: list[Any]) -> dict[str, Any]:
    report: dict[str, Any] = {"metrics": evaluation.metrics(task, y_true, y_pred)}
    if task == "classification":
        report["confusion"] = evaluation.confusion(y_true, y_pred, labels)
        report["perClass"] = evaluation.per_class(y_true, y_pred, labels)
    else:
        errors = np.abs(y_true - y_pred)
        report["absoluteError"] = {f"p{q}": round(float(np.percentile(errors, q)), 6) for q in (50, 90, 99)}
    return report


# --- publishing ----------------------------------------------------------------------------------


def _metadata(
    config: TrainerConfig,
    spec: estimators.EstimatorSpec,
    model: Any,
    inputs: Inputs,
    holdout: split.Split,
    rows: dict[str, int],
    report: dict[str, Any],
    incremental: dict[str, Any] | None,
    profile: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """metadata.json; ``profile`` (the training rows' input profile) is left out when None."""
    table = inputs.table
    metric = evaluation.PRIMARY_METRIC[config.task]
    classes = getattr(model, "classes_", None)
    metadata: dict[str, Any] = {
        "model": config.model,
        "namespace": config.namespace,
        "version": config.version,
        "parentVersion": config.parent_version,
        "task": config.task,
        "estimator": spec.name,
        "hyperparameters": config.hyperparameters,
        "incremental": incremental,
        "features": inputs.features,
        "featureTypes": {f: table.feature_types[f] for f in inputs.features},
        "target": config.target,
        "classes": [evaluation.plain(c) for c in classes] if classes is not None else None,
        "inputFormat": INPUT_FORMAT,
        "format": spec.format,
        "servingOutput": formats.serving_output(spec.format, config.task),
        "dataWindow": {"start": config.window_start, "end": config.now, "seconds": config.data_window_seconds},
        "rows": rows,
        "holdout": {
            "strategy": holdout.strategy,
            "reason": holdout.reason,
            "fraction": config.holdout_fraction,
            "timeRange": report["holdout"]["timeRange"],
        },
        "recentWeight": config.recent_weight,
        "trainingData": report["trainingData"],
        "labelNoise": config.label_noise,
        "seed": config.seed,
        "metrics": {
            "metric": metric,
            "greaterIsBetter": evaluation.GREATER_IS_BETTER[metric],
            "challenger": report["challenger"]["metrics"],
            "champion": report["champion"]["metrics"] if report["champion"] else None,
        },
        "skipped": dict(inputs.stats),
        "contentHashes": inputs.content_hashes,
        "trainerImage": config.trainer_image,
        "codeVersion": code_version(),
        "libraries": {"scikit-learn": sklearn.__version__, "numpy": np.__version__, **formats.libraries(spec.format)},
        "ignoredConfigKeys": config.ignored_keys,
        "createdAt": time.time(),
        "seconds": {k: round(v, 3) for k, v in inputs.timings.items()},
    }
    if profile is not None:
        metadata[PROFILE_KEY] = profile
    return metadata


def _write_files(
    folder: Path,
    config: TrainerConfig,
    spec: estimators.EstimatorSpec,
    model: Any,
    metadata: dict[str, Any],
    report: dict[str, Any],
    y_true: np.ndarray,
    predictions: dict[str, np.ndarray],
    save: Callable[[Path], None] | None = None,
) -> None:
    """The version's files; ``save`` writes the model files instead of saving ``model`` (a revived version)."""
    if save is None:
        formats.save(folder, spec.format, model, config.model, config.version)
    else:
        save(folder)
    registry.save_json(folder / storage.REPORT_FILE, report)
    title = f"{config.model} version {config.version}"
    if config.task == "classification":
        panels = [(name, report[name]["confusion"]) for name in ("challenger", "champion") if report[name]]
        plots.confusion_png(folder / "confusion.png", panels, f"{title}: holdout confusion")
    else:
        plots.residuals_png(folder / "residuals.png", y_true, predictions, f"{title}: holdout predictions")
    registry.save_json(folder / storage.METADATA_FILE, metadata)  # last: its presence marks completeness


def _revived_metadata(metadata: dict[str, Any], revived: revive.Candidate) -> dict[str, Any]:
    """This run's metadata describing the past version's model: its features, feature types, classes,
    format (and input profile, when it has one) are what the server loads with the copied files."""
    own = revive.model_metadata(revived.metadata)
    metadata = {**metadata, **{key: value for key, value in own.items() if value is not None}}
    if PROFILE_KEY not in own:  # a profile of the rows this run trained on would not be the model's
        metadata.pop(PROFILE_KEY, None)
    if own.get("classes") is None:
        fitted = getattr(revived.model, "classes_", None)
        metadata["classes"] = [evaluation.plain(c) for c in fitted] if fitted is not None else None
    metadata["servingOutput"] = own.get("servingOutput") or formats.serving_output(metadata["format"], metadata["task"])
    metadata["incremental"] = None
    metadata["revivedFrom"] = revived.version
    return metadata


def code_version() -> str:
    if os.environ.get("MFL_CODE_VERSION"):
        return os.environ["MFL_CODE_VERSION"]
    try:
        return package_metadata.version("model-feedback-loop")
    except package_metadata.PackageNotFoundError:
        return "unknown"
