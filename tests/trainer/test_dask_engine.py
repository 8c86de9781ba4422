"""The Dask engine (config ``"engine": "dask"``) on a local two-worker cluster: the same contract outputs as the
Job engine on the same data, the holdout placed from partition facts exactly where the Job engine puts it, the
rows staying on the workers, and the clear errors."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest

pytest.importorskip("distributed")
pytest.importorskip("lightgbm.dask")

import distributed  # noqa: E402

from mfl_contracts import inputprofile  # noqa: E402
from mfl_testbed import datasets  # noqa: E402
from mfl_trainer import dask_engine, input_profile  # noqa: E402
from mfl_trainer.dask_engine import find_cut  # noqa: E402
from tests.trainer.test_storage_modes import (  # noqa: E402,F401 - fixtures: bucket, scratch, s3_mode
    bucket,
    gzip_segments,
    move_feedback_to_ledger,
    s3_mode,
    scratch,
)
from tests.trainer.test_train import (  # noqa: E402
    DAY,
    MODEL,
    NOW,
    config,
    model_dir,
    run_trainer,
    version_path,
    write_base,
    write_feedback,
)

EXTRA_SUMMARY_KEYS = {"engine", "workers", "daskNotes"}


@pytest.fixture(scope="module")
def cluster() -> Iterator[distributed.LocalCluster]:
    with distributed.LocalCluster(
        n_workers=2, processes=False, threads_per_worker=1, dashboard_address=None, memory_limit="1GiB"
    ) as local:
        yield local


@pytest.fixture
def dask_env(cluster: distributed.LocalCluster, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", cluster.scheduler_address)
    monkeypatch.setattr(dask_engine, "PARTITION_BYTES", 1)  # one partition per log file: several partitions
    return cluster.scheduler_address


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "artifacts"
    path.mkdir()
    return path


def dask_config(root: Path, **overrides: Any) -> dict[str, Any]:
    document = config(root, estimator="lightgbm", engine="dask", dask={"workers": 2, "waitSeconds": 30})
    document.update(overrides)
    return document


def drifted_store(root: Path) -> None:
    """Base data of concept 0 and six days of feedback (one log file a day) drifting to concept 1 half way."""
    write_base(root, n=2000)
    write_feedback(root, n=3000, drift_at=(1500,), start=NOW - 6 * DAY, step=150.0)


def write_logs(folder: Path, X: np.ndarray, labels: list[Any], names: list[str], ts: np.ndarray) -> None:
    """Prediction and feedback lines (any label value) in day partitions, as the server writes them."""
    for kind in ("predictions", "feedback"):
        for i, (row, label, t) in enumerate(zip(X, labels, ts)):
            when = float(t) + (60.0 if kind == "feedback" else 0.0)
            day = datetime.fromtimestamp(when, tz=UTC).date()
            path = folder / kind / f"date={day}" / "synthetic.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            if kind == "predictions":
                line = {"id": f"r{i}", "ts": float(t), "features": dict(zip(names, map(float, row)))}
            else:
                line = {"id": f"r{i}", "ts": when, "label": label, "predictionTs": float(t)}
            with path.open("a") as handle:
                handle.write(json.dumps(line) + "\n")


def metadata(root: Path, version: int) -> dict[str, Any]:
    return json.loads((version_path(root, version) / "metadata.json").read_text())


def report(root: Path, version: int) -> dict[str, Any]:
    return json.loads((version_path(root, version) / "report.json").read_text())


# --- the same outputs as the Job engine ----------------------------------------------------------


def test_publishes_what_the_job_engine_publishes(root, dask_env, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(input_profile, "ROWS", 1000)  # fewer than the training rows: both engines sample
    drifted_store(root)
    code, job, _ = run_trainer(config(root, estimator="lightgbm", version=1), tmp_path, monkeypatch, capsys)
    assert code == 0, job
    code, summary, err = run_trainer(dask_config(root, version=2), tmp_path, monkeypatch, capsys)
    assert code == 0, summary
    assert "lightgbm.dask" in err

    assert set(summary) == set(job) | EXTRA_SUMMARY_KEYS
    assert summary["engine"] == "dask" and summary["workers"] == 2
    assert summary["daskNotes"] == {"changePoint": "not on the Dask engine"}
    assert summary["rows"] == job["rows"]
    assert summary["holdout"] == job["holdout"] == "time_ordered_feedback"
    assert summary["challenger"]["accuracy"] == pytest.approx(job["challenger"]["accuracy"], abs=0.03)

    job_files = {path.name for path in version_path(root, 1).iterdir()}
    assert {path.name for path in version_path(root, 2).iterdir()} == job_files
    job_meta, meta = metadata(root, 1), metadata(root, 2)
    assert set(meta) == set(job_meta) | {"engine", "dask"}
    assert meta["engine"] == "dask" and meta["dask"]["workers"] == 2 and meta["dask"]["partitions"] > 2
    for key in ("features", "featureTypes", "classes", "format", "servingOutput", "rows", "estimator", "task"):
        assert meta[key] == job_meta[key], key
    assert meta["holdout"]["timeRange"] == job_meta["holdout"]["timeRange"]  # the same newest rows held out
    # The same evenly spaced training rows, gathered from the partitions in order: the same input profile.
    profile = meta[inputprofile.PROFILE_KEY]
    assert profile == job_meta[inputprofile.PROFILE_KEY] and profile["rows"] == 1000
    assert list(profile["features"]) == meta["features"] and inputprofile.valid_profile(profile) == profile
    assert set(report(root, 2)) >= set(report(root, 1))

    # The published pipeline is the Job engine's kind: the server's predict works unchanged.
    job_model, model = (
        joblib.load(version_path(root, 1) / "model.joblib"),
        joblib.load(version_path(root, 2) / "model.joblib"),
    )
    assert [type(step).__name__ for _, step in model.steps] == [type(step).__name__ for _, step in job_model.steps]
    assert type(model[-1]) is type(job_model[-1])
    X = np.random.default_rng(0).random((50, len(meta["features"])))
    assert set(np.asarray(model.predict(X)).tolist()) <= set(meta["classes"])
    assert model.predict_proba(X).shape == (50, 2)
    assert not hasattr(model[-1], "feature_names_in_")  # fitted on a matrix, as the Job engine's
    booster = (version_path(root, 2) / "model.txt").read_text()
    assert "feature_names=Column_0" in booster


def test_champion_is_scored_on_the_same_rows_as_the_job_engine(root, dask_env, tmp_path, monkeypatch, capsys):
    """Both engines hold out the same newest rows and score version 1 on them: the champion's metrics agree
    exactly, which checks the holdout cut placed from partition facts."""
    write_base(root, n=1500)
    write_feedback(root, n=2400, drift_at=(1200,), start=NOW - 6 * DAY, step=200.0)
    first = dask_config(root, now=NOW - 3 * DAY)
    code, summary, _ = run_trainer(first, tmp_path, monkeypatch, capsys)
    assert code == 0, summary
    common = {"parentVersion": 1, "changePoint": False}
    code, job, _ = run_trainer(config(root, estimator="lightgbm", version=2, **common), tmp_path, monkeypatch, capsys)
    assert code == 0, job
    code, dask, _ = run_trainer(dask_config(root, version=3, **common), tmp_path, monkeypatch, capsys)
    assert code == 0, dask
    assert "daskNotes" not in dask  # change points off: nothing the Dask engine leaves out
    assert dask["champion"] == job["champion"]
    assert dask["rows"] == job["rows"]
    assert dask["paired"] is not None and set(dask["paired"]) == set(job["paired"])
    assert report(root, 3)["holdout"]["rows"] == report(root, 2)["holdout"]["rows"]
    assert dask["challenger"]["accuracy"] == pytest.approx(job["challenger"]["accuracy"], abs=0.03)


def test_a_rerun_reports_the_existing_version(root, dask_env, tmp_path, monkeypatch, capsys):
    drifted_store(root)
    code, first, _ = run_trainer(dask_config(root), tmp_path, monkeypatch, capsys)
    assert code == 0 and first["existing"] is False
    code, again, _ = run_trainer(dask_config(root), tmp_path, monkeypatch, capsys)
    assert code == 0, again
    assert again["existing"] is True and again["engine"] == "dask"
    assert again["challenger"] == first["challenger"]


def test_text_labels_and_unknown_classes(root, dask_env, tmp_path, monkeypatch, capsys):
    """Labels as text; a feedback label that is not a class of the base data is left out and counted."""
    stream = datasets.drift_stream(1600, seed=5)
    features = stream.feature_names
    base = model_dir(root) / "data" / "base.csv"
    base.parent.mkdir(parents=True)
    rows = [",".join([*features, "label"])]
    rng = np.random.default_rng(1)
    for x, y in zip(rng.random((600, len(features))), (rng.random(600) > 0.5)):
        rows.append(",".join([*(f"{v:.5f}" for v in x), "yes" if y else "no"]))
    base.write_text("\n".join(rows) + "\n")
    labels = np.where(stream.y == 1, "yes", "no").astype(object)
    labels[:40] = "maybe"
    ts = NOW - 4 * DAY + np.arange(len(labels)) * 200.0
    write_logs(model_dir(root), stream.X, labels.tolist(), features, ts)
    code, summary, _ = run_trainer(dask_config(root, features=features), tmp_path, monkeypatch, capsys)
    assert code == 0, summary
    assert summary["skipped"]["feedbackRowsWithUnknownClass"] == 40
    assert metadata(root, 1)["classes"] == ["no", "yes"]
    model = joblib.load(version_path(root, 1) / "model.joblib")
    assert set(model.predict(stream.X[:20]).tolist()) <= {"no", "yes"}


def test_regression(root, dask_env, tmp_path, monkeypatch, capsys):
    rng = np.random.default_rng(3)
    X = rng.random((2400, 4))
    y = X @ np.array([3.0, -2.0, 1.0, 0.5]) + rng.normal(0, 0.05, len(X))
    names = ["a", "b", "c", "d"]
    datasets.write_feedback_logs(model_dir(root), X, y, names, NOW - 5 * DAY + np.arange(len(X)) * 150.0)
    common = {"task": "regression", "features": names, "changePoint": False}
    code, job, _ = run_trainer(
        config(root, estimator="lightgbm_regressor", version=1, **common), tmp_path, monkeypatch, capsys
    )
    assert code == 0, job
    code, dask, _ = run_trainer(
        dask_config(root, estimator="lightgbm_regressor", version=2, **common), tmp_path, monkeypatch, capsys
    )
    assert code == 0, dask
    assert dask["metric"] == job["metric"] and dask["rows"] == job["rows"]
    assert dask["challenger"]["r2"] == pytest.approx(job["challenger"]["r2"], abs=0.02)
    assert dask["challenger"]["r2"] > 0.9


def test_s3_mode_workers_read_the_store_and_the_ledger(s3_mode, bucket, dask_env, tmp_path, monkeypatch, capsys):  # noqa: F811
    drifted_store(bucket)
    gzip_segments(bucket / MODEL)
    move_feedback_to_ledger(bucket / MODEL, monkeypatch)
    code, summary, err = run_trainer(dask_config(tmp_path / "not-used"), tmp_path, monkeypatch, capsys)
    assert code == 0, summary
    assert summary["rows"]["feedback"] == 3000
    keys = s3_mode.writes
    assert keys[-1] == f"{MODEL}/versions/1/metadata.json"  # published with metadata.json last
    assert "the workers read the logs" in err


# --- the rows stay on the workers ----------------------------------------------------------------


def test_the_runner_never_gathers_the_rows(root, dask_env, tmp_path, monkeypatch, capsys):
    """Everything the runner receives from the workers is counted: only partition facts, the holdout's
    vectors, the times of the partitions the cut falls in and small samples; never the window's rows."""
    drifted_store(root)
    largest: list[int] = [0]

    def size(value: Any) -> int:
        if isinstance(value, dict):
            return max((size(v) for v in value.values()), default=0)
        if isinstance(value, (list, tuple)):
            lengths = [size(v) for v in value]
            return max([*lengths, sum(lengths) if all(hasattr(v, "__len__") for v in value) else 0], default=0)
        if hasattr(value, "shape") and getattr(value, "ndim", 0) >= 1:
            return int(value.shape[0])
        return 0

    gather, result = distributed.Client.gather, distributed.Future.result

    def counted_gather(self, futures, *args, **kwargs):
        value = gather(self, futures, *args, **kwargs)
        largest[0] = max(largest[0], size(value))
        return value

    def counted_result(self, *args, **kwargs):
        value = result(self, *args, **kwargs)
        largest[0] = max(largest[0], size(value))
        return value

    monkeypatch.setattr(distributed.Client, "gather", counted_gather)
    monkeypatch.setattr(distributed.Future, "result", counted_result)
    monkeypatch.setattr(input_profile, "ROWS", 1000)  # the profile's sample, bounded as the holdout's
    code, summary, _ = run_trainer(dask_config(root), tmp_path, monkeypatch, capsys)
    assert code == 0, summary
    total = summary["rows"]["base"] + summary["rows"]["feedback"]
    assert metadata(root, 1)["dask"]["partitions"] >= 6
    assert metadata(root, 1)[inputprofile.PROFILE_KEY]["rows"] == 1000
    assert 0 < largest[0] <= summary["rows"]["holdout"] + 1000 < total / 2, largest[0]


def test_cut_from_partition_facts_matches_a_full_sort():
    rng = np.random.default_rng(4)
    for trial in range(50):
        parts = []
        start = 0.0
        for _ in range(rng.integers(1, 7)):
            n = int(rng.integers(0, 40))
            # overlapping ranges and tied times, as segments of several servers would have
            times = np.sort(np.round(start + rng.random(n) * 30, 0))
            start += rng.random() * 20
            parts.append(times)
        facts = [
            {
                "feedback": len(t),
                "tsMin": float(t.min()) if len(t) else None,
                "tsMax": float(t.max()) if len(t) else None,
            }
            for t in parts
        ]
        total = sum(len(t) for t in parts)
        if not total:
            continue
        n_recent = int(rng.integers(1, total + 1))
        asked: list[int] = []

        def times(indices: list[int], parts=parts, asked=asked) -> list[np.ndarray]:
            asked.extend(indices)
            return [parts[i] for i in indices]

        rule = find_cut(facts, n_recent, times)
        keys = sorted(((t, i, p) for i, ts in enumerate(parts) for p, t in enumerate(ts.tolist())), reverse=True)
        assert (rule.ts, rule.part, rule.position) == keys[n_recent - 1], trial


# --- errors --------------------------------------------------------------------------------------


def test_too_few_workers_is_said_plainly(root, dask_env, tmp_path, monkeypatch, capsys):
    write_base(root)
    document = dask_config(root, dask={"workers": 3, "waitSeconds": 1})
    code, summary, _ = run_trainer(document, tmp_path, monkeypatch, capsys)
    assert code == 2
    assert summary["error"].startswith(f"3 Dask workers expected, 2 joined within 1 s at {dask_env}")


def test_without_a_scheduler_address(root, tmp_path, monkeypatch, capsys):
    write_base(root)
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    code, summary, _ = run_trainer(dask_config(root), tmp_path, monkeypatch, capsys)
    assert code == 2 and "DASK_SCHEDULER_ADDRESS is not set" in summary["error"]


def test_only_lightgbm_estimators(root, dask_env, tmp_path, monkeypatch, capsys):
    write_base(root)
    code, summary, _ = run_trainer(dask_config(root, estimator="random_forest"), tmp_path, monkeypatch, capsys)
    assert code == 2 and "engine dask trains estimator lightgbm or lightgbm_regressor" in summary["error"]


def test_config_checks_the_engine(root, tmp_path, monkeypatch, capsys):
    code, summary, _ = run_trainer(config(root, engine="spark"), tmp_path, monkeypatch, capsys)
    assert code == 2 and "engine must be one of ['job', 'dask']" in summary["error"]
    code, summary, _ = run_trainer(dask_config(root, dask={"workers": 0}), tmp_path, monkeypatch, capsys)
    assert code == 2 and "dask.workers must be an integer >= 1" in summary["error"]


def test_a_trainer_image_without_dask_names_the_image_to_use(root, tmp_path, monkeypatch, capsys):
    """The default trainer image has no Dask (requirements/dask.txt is the trainer-dask image's): engine dask
    there is a plain error naming the image, not a traceback."""
    import sys

    monkeypatch.setitem(sys.modules, "mfl_trainer.dask_engine", None)  # as if its imports were missing
    code, summary, _ = run_trainer(dask_config(root), tmp_path, monkeypatch, capsys)
    assert code == 2 and "engine dask needs the mfl-trainer-dask image" in summary["error"], summary


def test_too_little_feedback_holds_out_base_rows(root, dask_env, tmp_path, monkeypatch, capsys):
    """As the Job engine: with fewer recent feedback rows than minHoldoutRows, a stratified share of the
    base data is held out (per base-data file) and all feedback is trained on."""
    write_base(root, n=1200)
    write_feedback(root, n=120, start=NOW - 2 * DAY, step=600.0)
    code, job, _ = run_trainer(config(root, estimator="lightgbm", version=1), tmp_path, monkeypatch, capsys)
    assert code == 0, job
    code, dask, _ = run_trainer(dask_config(root, version=2), tmp_path, monkeypatch, capsys)
    assert code == 0, dask
    assert dask["holdout"] == job["holdout"] == "stratified_random_base"
    assert dask["rows"] == job["rows"]
    assert dask["challenger"]["accuracy"] == pytest.approx(job["challenger"]["accuracy"], abs=0.05)


def test_the_profile_skips_a_feature_without_values_as_the_job_engine(root, dask_env, tmp_path, monkeypatch, capsys):
    """Profiled: the first MAX_FEATURES numeric features with a value (here 2): the Dask runner gathers
    them a batch at a time, and asks for the next feature when one of the batch had none."""
    from mfl_contracts import inputprofile as contract
    from mfl_trainer import input_profile as profiling

    for module in (contract, profiling, dask_engine):
        monkeypatch.setattr(module, "MAX_FEATURES", 2)
    monkeypatch.setattr(profiling, "MIN_ROWS", 100)  # 900 rows: below the real floor of 1,000
    rng = np.random.default_rng(6)
    X = rng.random((900, 3))
    data = model_dir(root) / "data"
    data.mkdir(parents=True)
    lines = ["empty,a,b,c,label"] + [f",{r[0]:.4f},{r[1]:.4f},{r[2]:.4f},{int(r[0] > r[1])}" for r in X]
    (data / "gaps.csv").write_text("\n".join(lines) + "\n")
    features = ["empty", "a", "b", "c"]
    code, summary, _ = run_trainer(dask_config(root, features=features), tmp_path, monkeypatch, capsys)
    assert code == 0, summary
    profile = metadata(root, 1)[inputprofile.PROFILE_KEY]
    assert list(profile["features"]) == ["a", "b"] and profile["rows"] == summary["rows"]["train"]
    code, job, _ = run_trainer(
        config(root, estimator="lightgbm", features=features, version=2), tmp_path, monkeypatch, capsys
    )
    assert code == 0, job
    assert list(metadata(root, 2)[inputprofile.PROFILE_KEY]["features"]) == ["a", "b"]
