"""The trainer's configuration (docs/contracts.md, "Trainer"): parsing and validation."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mfl_contracts import storage

from .errors import TrainerError

DEFAULT_STORAGE_ROOT = "/var/lib/mfl/artifacts"
TASKS = ("classification", "regression")
DEFAULT_ESTIMATOR = {"classification": "hist_gradient_boosting", "regression": "hist_gradient_boosting_regressor"}


@dataclass(frozen=True)
class TrainerConfig:
    model: str
    version: int
    target: str
    storage_root: Path
    namespace: str = ""
    parent_version: int | None = None
    task: str = "classification"
    estimator: str = "hist_gradient_boosting"
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    features: list[str] = field(default_factory=list)  # empty: every base-data column but the target
    data_window_seconds: float | None = None  # None: all feedback up to `now`
    now: float = 0.0
    holdout_fraction: float = 0.25
    min_rows: int = 200
    min_holdout_rows: int = 50  # fewer recent feedback rows than this: base-data holdout instead
    incremental: bool = False
    incremental_steps: int | None = None  # partial_fit epochs, or trees/iterations added by warm start
    recent_weight: float = 1.0  # sample weight of feedback rows (base rows weigh 1)
    change_point: bool = True  # train on the concept since the served error last rose (plan.py)
    change_point_alpha: float = 0.01
    change_point_min_rows: int = 100
    slice_features: list[str] = field(default_factory=list)
    slice_bins: int = 5
    slice_min_rows: int = 20
    trainer_image: str = ""
    label_noise: float = 0.0  # tests only: flip this fraction of training labels
    seed: int = 0
    retain_versions: int = 0  # after publishing keep the newest N versions (and the protected ones); 0: keep all
    protected_versions: list[int] = field(default_factory=list)  # never deleted: the serving and canary versions
    revive_versions: int = 5  # past versions scored on the holdout, one revived if it is as good (revive.py); 0: off
    engine: str = "job"  # "job": in this process; "dask": on the Dask cluster at DASK_SCHEDULER_ADDRESS
    dask: dict[str, Any] = field(default_factory=dict)  # engine dask: {"workers": N, "waitSeconds": S}
    ignored_keys: list[str] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)  # the document as given, for the content hash

    @property
    def window_start(self) -> float | None:
        return None if self.data_window_seconds is None else self.now - self.data_window_seconds


def _int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TrainerError(f"config: {key} must be an integer, got {value!r}")
    return value


def _number(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TrainerError(f"config: {key} must be a number, got {value!r}")
    return float(value)


def _bool(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise TrainerError(f"config: {key} must be true or false, got {value!r}")
    return value


def _str(value: Any, key: str) -> str:
    if not isinstance(value, str):
        raise TrainerError(f"config: {key} must be a string, got {value!r}")
    return value


def _str_list(value: Any, key: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise TrainerError(f"config: {key} must be a list of non-empty strings, got {value!r}")
    if len(set(value)) != len(value):
        raise TrainerError(f"config: {key} has duplicates: {value!r}")
    return value


def _int_list(value: Any, key: str) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise TrainerError(f"config: {key} must be a list of integers, got {value!r}")
    return value


def _dict(value: Any, key: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TrainerError(f"config: {key} must be an object, got {value!r}")
    return value


# JSON key -> (TrainerConfig attribute, parser)
_FIELDS: dict[str, tuple[str, Any]] = {
    "model": ("model", _str),
    "namespace": ("namespace", _str),
    "storageRoot": ("storage_root", _str),
    "version": ("version", _int),
    "parentVersion": ("parent_version", _int),
    "task": ("task", _str),
    "estimator": ("estimator", _str),
    "hyperparameters": ("hyperparameters", _dict),
    "features": ("features", _str_list),
    "target": ("target", _str),
    "dataWindowSeconds": ("data_window_seconds", _number),
    "now": ("now", _number),
    "holdoutFraction": ("holdout_fraction", _number),
    "minRows": ("min_rows", _int),
    "minHoldoutRows": ("min_holdout_rows", _int),
    "incremental": ("incremental", _bool),
    "incrementalSteps": ("incremental_steps", _int),
    "recentWeight": ("recent_weight", _number),
    "changePoint": ("change_point", _bool),
    "changePointAlpha": ("change_point_alpha", _number),
    "changePointMinRows": ("change_point_min_rows", _int),
    "sliceFeatures": ("slice_features", _str_list),
    "sliceBins": ("slice_bins", _int),
    "sliceMinRows": ("slice_min_rows", _int),
    "trainerImage": ("trainer_image", _str),
    "labelNoise": ("label_noise", _number),
    "seed": ("seed", _int),
    "retainVersions": ("retain_versions", _int),
    "protectedVersions": ("protected_versions", _int_list),
    "reviveVersions": ("revive_versions", _int),
    "engine": ("engine", _str),
    "dask": ("dask", _dict),
}
ENGINES = ("job", "dask")

FIELD_ATTRIBUTES = {key: attribute for key, (attribute, _) in _FIELDS.items()}


def parse_config(
    document: Mapping[str, Any], env: Mapping[str, str] | None = None, clock: float | None = None
) -> TrainerConfig:
    """Validate the JSON document; missing optional fields get their defaults."""
    env = os.environ if env is None else env
    if not isinstance(document, Mapping):
        raise TrainerError("config: the document must be a JSON object")
    values: dict[str, Any] = {}
    for key, value in document.items():
        if key in _FIELDS and value is not None:
            attribute, parse = _FIELDS[key]
            values[attribute] = parse(value, key)
    for required in ("model", "version", "target"):
        if required not in values:
            raise TrainerError(f"config: {required} is required")
    values.setdefault("storage_root", env.get("MFL_STORAGE_ROOT", DEFAULT_STORAGE_ROOT))
    values["storage_root"] = Path(values["storage_root"])
    values.setdefault("now", time.time() if clock is None else clock)
    task = values.setdefault("task", "classification")
    if task not in TASKS:
        raise TrainerError(f"config: task must be one of {list(TASKS)}, got {task!r}")
    values.setdefault("estimator", DEFAULT_ESTIMATOR[task])
    values["engine"] = values.get("engine", "job").lower()
    values["ignored_keys"] = sorted(set(document) - set(_FIELDS))
    values["raw"] = dict(document)
    config = TrainerConfig(**values)
    _check_ranges(config)
    return config


def _check_ranges(c: TrainerConfig) -> None:
    problems = []
    if not storage.valid_model_name(c.model):
        problems.append(f"model must be a plain name (letters, digits, '.', '_', '-'), got {c.model!r}")
    if c.version < 1:
        problems.append(f"version must be >= 1, got {c.version}")
    if c.parent_version is not None and not 1 <= c.parent_version != c.version:
        problems.append(f"parentVersion must be >= 1 and differ from version, got {c.parent_version}")
    if c.data_window_seconds is not None and c.data_window_seconds <= 0:
        problems.append(f"dataWindowSeconds must be positive, got {c.data_window_seconds}")
    if not 0.0 < c.holdout_fraction < 1.0:
        problems.append(f"holdoutFraction must be in (0, 1), got {c.holdout_fraction}")
    if c.min_rows < 1 or c.min_holdout_rows < 1:
        problems.append("minRows and minHoldoutRows must be >= 1")
    if c.recent_weight <= 0:
        problems.append(f"recentWeight must be positive, got {c.recent_weight}")
    if not 0.0 < c.change_point_alpha < 0.5 or c.change_point_min_rows < 10:
        problems.append(
            f"changePointAlpha must be in (0, 0.5) and changePointMinRows >= 10, got {c.change_point_alpha}, "
            f"{c.change_point_min_rows}"
        )
    if not 0.0 <= c.label_noise < 1.0:
        problems.append(f"labelNoise must be in [0, 1), got {c.label_noise}")
    if c.slice_bins < 1 or c.slice_min_rows < 1:
        problems.append("sliceBins and sliceMinRows must be >= 1")
    if c.incremental_steps is not None and c.incremental_steps < 1:
        problems.append(f"incrementalSteps must be >= 1, got {c.incremental_steps}")
    if c.retain_versions < 0 or any(v < 1 for v in c.protected_versions):
        problems.append(
            f"retainVersions must be >= 0 and protectedVersions >= 1, got {c.retain_versions}, {c.protected_versions}"
        )
    if c.revive_versions < 0:
        problems.append(f"reviveVersions must be >= 0, got {c.revive_versions}")
    if c.incremental and c.parent_version is None:
        problems.append("incremental training needs parentVersion (the champion to start from)")
    if c.engine not in ENGINES:
        problems.append(f"engine must be one of {list(ENGINES)}, got {c.engine!r}")
    if c.engine == "dask":
        workers, wait = c.dask.get("workers", 1), c.dask.get("waitSeconds", 300)
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            problems.append(f"dask.workers must be an integer >= 1, got {workers!r}")
        if isinstance(wait, bool) or not isinstance(wait, (int, float)) or wait <= 0:
            problems.append(f"dask.waitSeconds must be a positive number, got {wait!r}")
    if c.target in c.features:
        problems.append(f"target {c.target!r} is also listed in features")
    if problems:
        raise TrainerError("config: " + "; ".join(problems))


def load_config_document(config_file: str | None, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The JSON document from ``--config FILE`` or env ``MFL_TRAINER_CONFIG``."""
    env = os.environ if env is None else env
    if config_file:
        try:
            text, origin = Path(config_file).read_text(), config_file
        except OSError as error:
            raise TrainerError(f"config: cannot read {config_file}: {error.strerror or error}") from error
    elif env.get("MFL_TRAINER_CONFIG"):
        text, origin = env["MFL_TRAINER_CONFIG"], "MFL_TRAINER_CONFIG"
    else:
        raise TrainerError("config: set MFL_TRAINER_CONFIG (JSON) or pass --config FILE")
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise TrainerError(f"config: {origin} is not valid JSON: {error}") from error
    if not isinstance(document, dict):
        raise TrainerError(f"config: {origin} must hold a JSON object")
    return document
