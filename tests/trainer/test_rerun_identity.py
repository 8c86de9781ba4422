"""A re-created training Job for a published version (issue 22, Build 5): reported when its inputs are the
published run's, whatever the time it was made, its Job's name or uid, or the image; refused when the
recipe, the base data, the champion or the window's labelled rows differ."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mfl_trainer import config as config_module
from mfl_trainer import identity
from tests.trainer.test_train import (
    DAY,
    NOW,
    config,
    model_dir,
    run_trainer,
    version_path,
    write_base,
    write_feedback,
)

FAST = {"hyperparameters": {"max_iter": 30}}
# What the operator's Job for the same version may carry on a re-creation: a later `now`, other names.
RECREATED = {
    "now": NOW + 2 * DAY,
    "trainerImage": "ghcr.io/feedbackloop/mfl-trainer:newer",
    "jobName": "churn-train-v2-x7k2p",
    "jobUid": "7d1c1d8e-1111-2222-3333-444455556666",
    "createdAt": "2025-11-30T14:26:40Z",
    "namespace": "renamed",
    "retainVersions": 3,
    "protectedVersions": [1],
}


@pytest.fixture
def published_v2(root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> tuple[Path, dict]:
    """Version 1 on base data, then version 2 on base data and the feedback of the week to NOW."""
    write_base(root, n=1000)
    assert run_trainer(config(root, now=NOW - 3 * DAY, **FAST), tmp_path, monkeypatch, capsys)[0] == 0
    write_feedback(root, n=600, start=NOW - 6 * DAY, step=600.0)  # spans the whole window
    document = config(root, version=2, parentVersion=1, **FAST)
    code, summary, _ = run_trainer(document, tmp_path, monkeypatch, capsys)
    assert code == 0, summary
    return root, summary


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "artifacts"
    path.mkdir()
    return path


def test_a_recreated_job_made_later_with_other_names_reports_the_published_version(
    published_v2, tmp_path, monkeypatch, capsys
):
    root, first = published_v2
    model_bytes = (version_path(root, 2) / "model.joblib").read_bytes()
    # Labels kept coming after the version was trained: predicted after its window, and labels given later
    # for predictions inside it.
    write_feedback(root, n=300, start=NOW + 600, step=300.0, seed=5)
    document = {**config(root, version=2, parentVersion=1, **FAST), **RECREATED}

    code, again, err = run_trainer(document, tmp_path, monkeypatch, capsys)

    assert code == 0, again
    assert again["existing"] is True
    assert {k: v for k, v in again.items() if k != "existing"} == {k: v for k, v in first.items() if k != "existing"}
    assert f"reading that window, not the one ending at ts {NOW + 2 * DAY:.0f}" in err
    assert "already exists with the same inputs" in err
    assert (version_path(root, 2) / "model.joblib").read_bytes() == model_bytes


def _rewrite_a_log_in_the_window(root: Path) -> None:
    day = sorted((model_dir(root) / "feedback").glob("date=*"))[2]
    for path in day.glob("*.jsonl"):
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        lines[0]["label"] = 1 - lines[0]["label"]
        path.write_text("".join(json.dumps(line) + "\n" for line in lines))


def _replace_champion(root: Path) -> None:
    path = version_path(root, 1) / "model.joblib"
    path.write_bytes(path.read_bytes() + b"\0")  # joblib ignores trailing bytes: the hash does not


@pytest.mark.parametrize(
    "case, change, differ",
    [
        ("hyperparameters", {"hyperparameters": {"max_iter": 31}}, "recipe"),
        ("seed", {"seed": 7}, "recipe"),
        ("window length", {"dataWindowSeconds": 6 * DAY}, "recipe"),
        ("base data", lambda root: write_base(root, n=900, seed=4), "baseData"),
        ("a label in the window", _rewrite_a_log_in_the_window, "feedback"),
        ("the champion's model", _replace_champion, "champion"),
    ],
)
def test_a_recreated_job_whose_inputs_differ_is_refused_naming_them(
    case, change, differ, published_v2, tmp_path, monkeypatch, capsys
):
    root, _ = published_v2
    document = {**config(root, version=2, parentVersion=1, **FAST), **RECREATED}
    if callable(change):
        change(root)
    else:
        document.update(change)

    code, summary, _ = run_trainer(document, tmp_path, monkeypatch, capsys)

    assert code == 2, (case, summary)
    assert (
        f"version 2 already exists at {version_path(root, 2)} with different inputs ({differ} differ)"
        in (summary["error"])
    ), case


def test_a_version_published_before_the_recipe_matches_a_retry_of_its_own_job(
    published_v2, tmp_path, monkeypatch, capsys
):
    """Older trainers hashed the whole document (`config`, `now` included): the same Job still matches."""
    root, _ = published_v2
    document = config(root, version=2, parentVersion=1, **FAST)
    path = version_path(root, 2) / "metadata.json"
    metadata = json.loads(path.read_text())
    hashes = metadata["contentHashes"]
    legacy = identity.legacy_config_hash(config_module.parse_config(document, env={}))
    metadata["contentHashes"] = {"config": legacy, **{k: v for k, v in hashes.items() if k != "recipe"}}
    path.write_text(json.dumps(metadata))

    assert run_trainer(document, tmp_path, monkeypatch, capsys)[1]["existing"] is True
    code, summary, _ = run_trainer({**document, "now": NOW + DAY}, tmp_path, monkeypatch, capsys)
    assert code == 2 and "(config differ)" in summary["error"]


def _recipe(document: dict[str, Any]) -> dict[str, Any]:
    return identity.recipe(config_module.parse_config(document, env={}, clock=NOW))


def test_the_recipe_is_the_training_settings_with_defaults_filled_in():
    document = {"model": "churn", "version": 2, "target": "label", "parentVersion": 1}
    explicit = {**document, "seed": 0, "holdoutFraction": 0.25, "estimator": "hist_gradient_boosting"}
    assert _recipe(document) == _recipe(explicit)
    volatile = {
        "now": NOW + 5,
        "storageRoot": "/elsewhere",
        "trainerImage": "x:2",
        "namespace": "b",
        "retainVersions": 4,
        "protectedVersions": [1, 3],
        "jobName": "a-job",
        "jobUid": "u",
    }
    assert _recipe({**document, **volatile}) == _recipe(document)
    for key, value in {
        "hyperparameters": {"max_depth": 3},
        "features": ["a"],
        "estimator": "random_forest",
        "parentVersion": 3,
        "dataWindowSeconds": 3600,
        "minRows": 10,
        "recentWeight": 2.0,
        "changePoint": False,
        "labelNoise": 0.1,
        "seed": 1,
    }.items():
        assert _recipe({**document, key: value}) != _recipe(document), key
    assert set(identity.RECIPE_KEYS) <= set(config_module.FIELD_ATTRIBUTES)


def test_a_published_window_pins_only_a_finite_end():
    parsed = config_module.parse_config({"model": "m", "version": 1, "target": "y", "now": NOW}, env={})
    notes: list[str] = []
    assert identity.pinned(parsed, {"dataWindow": {"end": NOW - 60}}, notes.append).now == NOW - 60
    for published in (None, {}, {"dataWindow": None}, {"dataWindow": {"end": "x"}}, {"dataWindow": {"end": True}}):
        assert identity.pinned(parsed, published, notes.append) is parsed
    assert len(notes) == 1
