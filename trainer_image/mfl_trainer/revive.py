"""Reviving a past version (issue 24): a recurring concept is served by the version that learned it before.

After the challenger and the champion are scored on the holdout, the newest `reviveVersions` earlier versions
(not the champion, not the version being trained) are scored on the very same rows. When the best of them is
at least as good as the freshly trained challenger (the primary metric) and better than the champion, the new
version is published as that version's model: its artifact files copied byte for byte, its features, feature
types, classes and format, and a report computed for it, so the operator's gate judges what will be served.

A past version is skipped, with the reason kept in metadata (`revival.skipped`), when it cannot be read,
loaded or predict the holdout, was trained for another task or target, or may have trained on holdout rows
(its data window ends after the earliest judged row, or a judged row is base data, which has no time).
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import joblib
import numpy as np

from mfl_contracts.estimators import SKLEARN
from mfl_contracts.inputprofile import PROFILE_KEY
from mfl_contracts.storage import METADATA_FILE, MODEL_FILE, version_dir

from . import evaluation, formats, registry
from .config import TrainerConfig
from .tables import LabelledTable

Progress = Callable[[str], None]
ARTIFACT_FILES = (MODEL_FILE, formats.BOOSTER_FILE, formats.KERAS_FILE)  # what a format's model is made of
# The metadata keys that describe the model itself: a revived version carries the past version's.
MODEL_KEYS = (
    "estimator",
    "hyperparameters",
    "features",
    "featureTypes",
    "classes",
    "inputFormat",
    "format",
    "servingOutput",
    "libraries",
)


@dataclass
class Candidate:
    version: int
    model: Any
    metadata: dict[str, Any]
    predictions: np.ndarray  # of the judged holdout rows
    score: float | None  # the primary metric on them


@dataclass
class Revival:
    """What the run found: the version revived (or None), every score and every version skipped, and why."""

    considered: list[int] = field(default_factory=list)
    scores: dict[int, float | None] = field(default_factory=dict)
    skipped: dict[int, str] = field(default_factory=dict)
    challenger: float | None = None
    champion: float | None = None
    chosen: Candidate | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "considered": self.considered,
            "scores": {str(version): score for version, score in self.scores.items()},
            "skipped": {str(version): reason for version, reason in self.skipped.items()},
            "trainedChallenger": self.challenger,
            "champion": self.champion,
            "revivedFrom": self.chosen.version if self.chosen else None,
        }


def candidate_versions(published: Iterable[int], config: TrainerConfig) -> list[int]:
    """The newest `reviveVersions` published versions before this one, the champion left out."""
    if config.revive_versions <= 0 or config.parent_version is None:
        return []
    earlier = sorted((v for v in published if v < config.version and v != config.parent_version), reverse=True)
    return earlier[: config.revive_versions]


def published_versions(root: Path, model: str) -> list[int]:
    versions = version_dir(root, model, 0).parent
    if not versions.is_dir():
        return []
    return [
        int(folder.name)
        for folder in versions.iterdir()
        if folder.is_dir() and folder.name.isdigit() and (folder / METADATA_FILE).is_file()
    ]


def consider(
    config: TrainerConfig,
    table: LabelledTable,
    rows: np.ndarray,
    challenger: np.ndarray,
    champion: np.ndarray | None,
    progress: Progress,
) -> Revival | None:
    """Score the candidate versions on the judged holdout `rows`; the best one if it is to be revived.
    None when revival is off or there is no champion to compare with."""
    if champion is None or config.revive_versions <= 0:
        return None
    revival = Revival(considered=candidate_versions(published_versions(config.storage_root, config.model), config))
    metric = evaluation.PRIMARY_METRIC[config.task]
    sign = 1.0 if evaluation.GREATER_IS_BETTER[metric] else -1.0
    y_true = table.y[rows]
    revival.challenger = evaluation.metrics(config.task, y_true, challenger)[metric]
    revival.champion = evaluation.metrics(config.task, y_true, champion)[metric]
    if not revival.considered:
        return revival
    best: Candidate | None = None
    for version in revival.considered:  # newest first: a tie keeps the newer version
        try:
            candidate = _score(config, table, rows, version, metric)
        except _Skip as reason:
            revival.skipped[version] = str(reason)
            continue
        revival.scores[version] = candidate.score
        if candidate.score is not None and (best is None or sign * candidate.score > sign * _value(best)):
            best = candidate
    progress(
        f"past versions on the holdout ({metric}): {_scores_text(revival)}; trained challenger {revival.challenger}, "
        f"champion {revival.champion}"
    )
    if best is None or revival.challenger is None or revival.champion is None:
        return revival
    score = _value(best)
    if sign * score >= sign * revival.challenger and sign * score > sign * revival.champion:
        revival.chosen = best
        progress(
            f"reviving version {best.version}: {metric} {best.score} on the holdout, at least the trained "
            f"challenger's {revival.challenger} and better than the champion's {revival.champion}"
        )
    return revival


def _value(candidate: Candidate) -> float:
    assert candidate.score is not None  # only a scored candidate is ever the best
    return candidate.score


class _Skip(Exception):
    """Why a past version is not a candidate."""


def _score(config: TrainerConfig, table: LabelledTable, rows: np.ndarray, version: int, metric: str) -> Candidate:
    folder = version_dir(config.storage_root, config.model, version)
    try:
        metadata = registry.read_json(folder / METADATA_FILE)
    except Exception as error:  # noqa: BLE001 - any unreadable metadata is a reason to skip
        raise _Skip(f"cannot read {METADATA_FILE}: {error}") from error
    if metadata.get("task", config.task) != config.task or metadata.get("target", config.target) != config.target:
        raise _Skip(f"trained for task {metadata.get('task')!r}, target {metadata.get('target')!r}")
    _check_unseen(metadata, table.ts[rows])
    features = metadata.get("features") or table.features
    missing = [name for name in features if name not in table.columns]
    if missing:
        raise _Skip(f"its feature(s) {missing} are not columns of this run's data")
    if not (folder / MODEL_FILE).is_file():
        raise _Skip(f"{MODEL_FILE} not found")
    try:
        model = joblib.load(folder / MODEL_FILE)
    except Exception as error:  # noqa: BLE001 - unpickling can raise almost anything
        raise _Skip(f"cannot load {MODEL_FILE}: {type(error).__name__}: {error}") from error
    types = {**table.feature_types, **(metadata.get("featureTypes") or {})}
    try:
        predictions = np.asarray(model.predict(table.matrix(rows, features, types)))
        if predictions.shape != (len(rows),):
            raise ValueError(f"predictions of shape {predictions.shape} for {len(rows)} rows")
        score = evaluation.metrics(config.task, table.y[rows], predictions)[metric]
    except Exception as error:  # noqa: BLE001 - a model from another code version may fail in many ways
        raise _Skip(f"cannot score the holdout: {type(error).__name__}: {error}") from error
    return Candidate(version, model, metadata, predictions, score)


def _check_unseen(metadata: dict[str, Any], ts: np.ndarray) -> None:
    """A past version is judged only on rows it cannot have trained on: predicted after its data window."""
    end = (metadata.get("dataWindow") or {}).get("end")
    if isinstance(end, bool) or not isinstance(end, (int, float)) or not math.isfinite(end):
        raise _Skip("its data window is unknown: it may have trained on the holdout rows")
    if len(ts) == 0 or not np.isfinite(ts).all():
        raise _Skip("the holdout holds base data rows, which every version may have trained on")
    if float(np.min(ts)) <= float(end):
        raise _Skip(f"its data window ends at ts {end:.0f}, after holdout rows: it may have trained on them")


def _scores_text(revival: Revival) -> str:
    parts = [f"version {v}: {score}" for v, score in revival.scores.items()]
    parts += [f"version {v} skipped ({reason})" for v, reason in revival.skipped.items()]
    return "; ".join(parts) or "none"


def model_metadata(past: dict[str, Any]) -> dict[str, Any]:
    """The keys of a version's metadata that describe its model, as the past version has them."""
    kept = {key: past.get(key) for key in MODEL_KEYS}
    kept["format"] = past.get("format") or SKLEARN
    if PROFILE_KEY in past:
        kept[PROFILE_KEY] = past[PROFILE_KEY]
    return kept


def copy_model_files(source: Path, folder: Path, model_format: str, model: str, version: int) -> None:
    """The past version's model files, byte for byte, and model-settings.json naming the new version."""
    for name in ARTIFACT_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, folder / name)
    registry.save_json(folder / formats.MODEL_SETTINGS_FILE, formats.model_settings(model_format, model, version))
