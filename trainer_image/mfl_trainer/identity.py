"""What makes two runs of one version the same run: the identity of a version's inputs (docs/contracts.md,
"Trainer", "Re-runs").

A version is never overwritten. A run that finds its version published reports it when its inputs are the
published run's: the same **recipe** (what the config tells the code to do: task, estimator, hyperparameters,
features, target, the window's length, the holdout, the plan's settings, the seed, the champion's version),
the same **base data** (each file's sha256), the same **champion** (its model file's sha256) and the same
**feedback**: the labelled rows of the published run's data window (``dataWindow.end`` is pinned, so a Job
re-created later reads the window the version was trained on; labels given after it are left out).

Not identity: when the Job was made (``now``), where the store is mounted (``storageRoot``), the image that ran
(``trainerImage``, kept in metadata), the namespace, retention settings (``retainVersions``,
``protectedVersions``) and any field this trainer does not know (a Job's name or uid, a newer operator's field).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from .config import FIELD_ATTRIBUTES, TrainerConfig

Progress = Callable[[str], None]
RECIPE_KEYS = (
    "model",
    "version",
    "parentVersion",
    "task",
    "estimator",
    "hyperparameters",
    "features",
    "target",
    "dataWindowSeconds",
    "holdoutFraction",
    "minRows",
    "minHoldoutRows",
    "incremental",
    "incrementalSteps",
    "recentWeight",
    "changePoint",
    "changePointAlpha",
    "changePointMinRows",
    "sliceFeatures",
    "sliceBins",
    "sliceMinRows",
    "labelNoise",
    "seed",
)
# Keys of the hash trainers wrote before the recipe ("config": the whole document but these keys).
LEGACY_NOT_INPUTS = frozenset({"storageRoot", "retainVersions", "protectedVersions"})
DATA_KEYS = ("baseData", "feedback", "champion")


def recipe(config: TrainerConfig) -> dict[str, Any]:
    """The config's identity, defaults filled in: a field left out and its default given are one recipe."""
    return {key: getattr(config, FIELD_ATTRIBUTES[key]) for key in RECIPE_KEYS}


def content_hashes(
    config: TrainerConfig, base_hashes: Mapping[str, str], feedback_digest: str, champion_hash: str | None
) -> dict[str, Any]:
    return {
        "recipe": sha256_json(recipe(config)),
        "baseData": dict(base_hashes),
        "feedback": feedback_digest,
        "champion": champion_hash,
    }


def legacy_config_hash(config: TrainerConfig) -> str:
    """The ``config`` hash of versions published before the recipe: the document as given (``now`` included),
    so only a retry of the very same Job matched it."""
    return sha256_json({key: value for key, value in config.raw.items() if key not in LEGACY_NOT_INPUTS})


def differing(published: Mapping[str, Any], current: Mapping[str, Any], config: TrainerConfig) -> list[str]:
    """The parts of the inputs that differ from the published version's (its ``contentHashes``)."""
    if "recipe" in published:
        keys, mine = ("recipe", *DATA_KEYS), dict(current)
    else:
        keys, mine = ("config", *DATA_KEYS), {**current, "config": legacy_config_hash(config)}
    return [key for key in keys if published.get(key) != mine.get(key)]


def published_window_end(metadata: Mapping[str, Any] | None) -> float | None:
    """The end (the config's ``now``) of the data window a published version was trained on."""
    window = metadata.get("dataWindow") if isinstance(metadata, Mapping) else None
    end = window.get("end") if isinstance(window, Mapping) else None
    if isinstance(end, bool) or not isinstance(end, (int, float)) or not math.isfinite(end):
        return None
    return float(end)


def pinned(config: TrainerConfig, published: Mapping[str, Any] | None, progress: Progress) -> TrainerConfig:
    """``config`` reading the published version's data window, when its version is published already."""
    end = published_window_end(published)
    if end is None or end == config.now:
        return config
    progress(
        f"version {config.version} is published (data window ending at ts {end:.0f}); reading that window, not "
        f"the one ending at ts {config.now:.0f}, to compare this run's inputs with it"
    )
    return replace(config, now=end)


def sha256_json(document: Any) -> str:
    return hashlib.sha256(json.dumps(document, sort_keys=True, default=str).encode()).hexdigest()
