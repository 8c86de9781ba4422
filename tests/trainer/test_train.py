"""End-to-end runs of ``mfl-trainer`` on a temporary artifact store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest

from mfl_contracts import storage
from mfl_testbed import datasets
from mfl_trainer import main as trainer_main
from mfl_trainer import registry

NOW = 1_764_340_000.0
DAY = 86_400.0
MODEL = "churn"
FEATURES = datasets.feature_names("hyperplane", 10)


# --- helpers -------------------------------------------------------------------------------------


def model_dir(root: Path) -> Path:
    return root / MODEL


def write_base(root: Path, n: int = 2000, seed: int = 1) -> None:
    datasets.write_base_csv(model_dir(root) / "data" / "base.csv", n, seed=seed)


def write_feedback(
    root: Path,
    n: int = 2000,
    drift_at: tuple[int, ...] = (0,),
    start: float = NOW - 2 * DAY,
    step: float = 60.0,
    seed: int = 2,
) -> datasets.Stream:
    """``n`` labelled predictions, one every ``step`` seconds from ``start`` (concept 1 after drift)."""
    stream = datasets.drift_stream(n, drift_at=list(drift_at), seed=seed)
    ts = start + np.arange(n) * step
    datasets.write_feedback_logs(model_dir(root), stream.X, stream.y, stream.feature_names, ts)
    return stream


def config(root: Path, **overrides: Any) -> dict[str, Any]:
    document = {
        "model": MODEL,
        "namespace": "default",
        "storageRoot": str(root),
        "version": 1,
        "task": "classification",
        "features": FEATURES,
        "target": "label",
        "dataWindowSeconds": 7 * DAY,
        "now": NOW,
        "holdoutFraction": 0.25,
        "minRows": 200,
        "trainerImage": "ghcr.io/feedbackloop/mfl-trainer:test",
    }
    document.update(overrides)
    return document


def run_trainer(
    document: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> tuple[int, dict[str, Any], str]:
    """Run in-process; returns the exit code, the summary (last stdout line) and stderr."""
    path = tmp_path / f"config-{document['version']}.json"
    path.write_text(json.dumps(document))
    termination = tmp_path / "termination-log"
    monkeypatch.setenv("MFL_TERMINATION_LOG", str(termination))
    monkeypatch.setenv("MFL_TRAINER_THREADS", "1")  # spinning OpenMP threads slow a shared CI box down
    code = trainer_main.main(["--config", str(path)])
    out, err = capsys.readouterr()
    summary = json.loads(out.strip().splitlines()[-1])
    assert json.loads(termination.read_text()) == summary
    return code, summary, err


def version_path(root: Path, version: int) -> Path:
    return model_dir(root) / "versions" / str(version)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "artifacts"
    path.mkdir()
    return path


@pytest.fixture
def trained_v1(root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> Path:
    """Version 1 trained three days ago, on base data only."""
    write_base(root)
    code, summary, _ = run_trainer(config(root, now=NOW - 3 * DAY), tmp_path, monkeypatch, capsys)
    assert code == 0, summary
    return root


# --- the normal path -----------------------------------------------------------------------------


def test_version_1_from_base_data_only(root, tmp_path, monkeypatch, capsys):
    write_base(root)
    code, summary, err = run_trainer(config(root), tmp_path, monkeypatch, capsys)

    assert code == 0 and summary["ok"] is True
    assert summary["version"] == 1 and summary["parentVersion"] is None and summary["champion"] is None
    assert summary["metric"] == "accuracy" and summary["challenger"]["accuracy"] > 0.8
    assert summary["rows"] == {"base": 2000, "feedback": 0, "train": 1500, "holdout": 500}
    assert summary["holdout"] == "stratified_random_base"
    for stage in ("loading", "rows:", "training", "evaluating", "writing"):
        assert stage in err
    folder = version_path(root, 1)
    assert sorted(p.name for p in folder.iterdir()) == [
        "confusion.png",
        "metadata.json",
        "model-settings.json",
        "model.joblib",
        "report.json",
    ]
    metadata = json.loads((folder / "metadata.json").read_text())
    assert metadata["holdout"]["reason"].startswith("only 0 labelled feedback rows")
    for key in (
        "version",
        "parentVersion",
        "task",
        "estimator",
        "format",
        "servingOutput",
        "features",
        "target",
        "classes",
        "dataWindow",
        "rows",
        "metrics",
        "contentHashes",
        "trainerImage",
        "codeVersion",
    ):
        assert key in metadata
    assert metadata["classes"] == [0, 1] and metadata["features"] == FEATURES
    assert metadata["trainerImage"] == "ghcr.io/feedbackloop/mfl-trainer:test"
    model = joblib.load(folder / "model.joblib")
    assert model.predict(np.random.default_rng(0).random((3, 10))).shape == (3,)


def test_version_2_joins_feedback_and_scores_champion_on_the_same_recent_holdout(
    trained_v1, tmp_path, monkeypatch, capsys
):
    root = trained_v1
    stream = write_feedback(root, n=2000, drift_at=(0,))  # every feedback row follows concept 1
    code, summary, _ = run_trainer(
        config(root, version=2, parentVersion=1, recentWeight=5.0), tmp_path, monkeypatch, capsys
    )

    assert code == 0, summary
    assert summary["rows"] == {"base": 2000, "feedback": 2000, "train": 3500, "holdout": 500}
    assert summary["holdout"] == "time_ordered_feedback"
    # The champion learnt concept 0 and scores near chance on the drifted holdout; recomputed here.
    champion = joblib.load(version_path(root, 1) / "model.joblib")
    recent_X, recent_y = stream.X[-500:], stream.y[-500:]
    assert summary["champion"]["accuracy"] == pytest.approx(np.mean(champion.predict(recent_X) == recent_y), abs=1e-6)
    challenger = joblib.load(version_path(root, 2) / "model.joblib")
    assert summary["challenger"]["accuracy"] == pytest.approx(
        np.mean(challenger.predict(recent_X) == recent_y), abs=1e-6
    )
    assert summary["challenger"]["accuracy"] > summary["champion"]["accuracy"] + 0.1


def test_holdout_is_the_most_recent_feedback(trained_v1, tmp_path, monkeypatch, capsys):
    root = trained_v1
    start = NOW - 2 * DAY
    stream = write_feedback(root, n=1000, drift_at=(0,), start=start, step=60.0)
    code, summary, _ = run_trainer(config(root, version=2, parentVersion=1), tmp_path, monkeypatch, capsys)

    assert code == 0, summary
    report = json.loads((version_path(root, 2) / "report.json").read_text())
    assert report["holdout"]["strategy"] == "time_ordered_feedback"
    assert report["holdout"]["timeRange"] == [start + 750 * 60.0, start + 999 * 60.0]
    support = {c["label"]: c["support"] for c in report["challenger"]["perClass"]}
    expected = {label: int(np.sum(stream.y[750:] == label)) for label in (0, 1)}
    assert support == expected
    metadata = json.loads((version_path(root, 2) / "metadata.json").read_text())
    assert metadata["rows"]["trainFeedback"] == 750


def test_report_structure_and_png(trained_v1, tmp_path, monkeypatch, capsys):
    root = trained_v1
    write_feedback(root, n=1200)
    code, summary, _ = run_trainer(
        config(root, version=2, parentVersion=1, sliceMinRows=30), tmp_path, monkeypatch, capsys
    )
    assert code == 0, summary
    folder = version_path(root, 2)
    report = json.loads((folder / "report.json").read_text())

    for model in ("challenger", "champion"):
        part = report[model]
        assert set(part["metrics"]) == {"accuracy", "f1_macro"}
        assert part["confusion"]["labels"] == [0, 1]
        matrix = np.array(part["confusion"]["matrix"])
        assert matrix.shape == (2, 2) and matrix.sum() == report["holdout"]["rows"] == 300
        assert [c["label"] for c in part["perClass"]] == [0, 1]
        assert set(part["perClass"][0]) == {"label", "precision", "recall", "f1", "support"}
        slices = report["worstSlices"][model]
        assert 1 <= len(slices) <= 10
        assert all(s["rows"] >= 30 for s in slices)
        assert [s["accuracy"] for s in slices] == sorted(s["accuracy"] for s in slices)
    assert "championAccuracy" in report["worstSlices"]["challenger"][0]
    assert summary["worstSlices"] == report["worstSlices"]["challenger"]
    assert (folder / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rerun_with_same_inputs_is_idempotent_even_as_logs_grow(trained_v1, tmp_path, monkeypatch, capsys):
    root = trained_v1
    write_feedback(root, n=1000)
    document = config(root, version=2, parentVersion=1)
    code, first, _ = run_trainer(document, tmp_path, monkeypatch, capsys)
    assert code == 0, first
    model_bytes = (version_path(root, 2) / "model.joblib").read_bytes()
    # The server keeps logging after `now`; a retried Job with the same config sees the same rows.
    write_feedback(root, n=100, start=NOW + 10, seed=7)

    code, again, err = run_trainer(document, tmp_path, monkeypatch, capsys)

    assert code == 0 and again["existing"] is True and first["existing"] is False
    assert {k: v for k, v in again.items() if k != "existing"} == {k: v for k, v in first.items() if k != "existing"}
    assert "already exists with the same inputs" in err
    assert (version_path(root, 2) / "model.joblib").read_bytes() == model_bytes


def test_existing_version_with_different_inputs_fails_clearly(trained_v1, tmp_path, monkeypatch, capsys):
    root = trained_v1
    write_base(root, n=1500, seed=9)  # the base data changed
    code, summary, _ = run_trainer(config(root, now=NOW - 3 * DAY), tmp_path, monkeypatch, capsys)
    assert code == 2 and summary["ok"] is False
    assert "version 1 already exists" in summary["error"] and "(baseData differ)" in summary["error"]


def test_training_is_deterministic(root, tmp_path, monkeypatch, capsys):
    write_base(root)
    write_feedback(root, n=800)
    hashes = []
    for version in (1, 2):
        code, summary, _ = run_trainer(
            config(root, version=version, estimator="random_forest", hyperparameters={"n_estimators": 20}),
            tmp_path,
            monkeypatch,
            capsys,
        )
        assert code == 0, summary
        hashes.append(json.loads((version_path(root, version) / "metadata.json").read_text())["contentHashes"])
        model = joblib.load(version_path(root, version) / "model.joblib")
        hashes.append(model.predict_proba(np.linspace(0, 1, 50).reshape(5, 10)).round(12).tolist())
    assert hashes[0]["baseData"] == hashes[2]["baseData"] and hashes[0]["feedback"] == hashes[2]["feedback"]
    assert hashes[1] == hashes[3]


def test_only_partitions_in_the_window_are_read_and_malformed_lines_are_counted(
    trained_v1, tmp_path, monkeypatch, capsys
):
    root = trained_v1
    write_feedback(root, n=800)
    old = model_dir(root) / "predictions" / "date=2020-01-01" / "broken.jsonl"
    old.mkdir(parents=True)  # unreadable as a file: must not be opened
    day = min((model_dir(root) / "feedback").glob("date=*"))
    with (day / "synthetic-0.jsonl").open("a") as handle:
        handle.write('not json\n["a list"]\n{"id": "x", "ts": 1, "label": 1}\n{"id": "torn", "ts": ')
    code, summary, _ = run_trainer(config(root, version=2, parentVersion=1), tmp_path, monkeypatch, capsys)

    assert code == 0, summary
    skipped = json.loads((version_path(root, 2) / "metadata.json").read_text())["skipped"]
    assert skipped["malformedFeedbackLines"] == 3
    assert skipped["feedbackWithoutPrediction"] == 1


def test_label_noise_makes_a_worse_challenger(root, tmp_path, monkeypatch, capsys):
    write_base(root)
    write_feedback(root, n=1200, drift_at=())  # no drift: the champion is right
    assert run_trainer(config(root), tmp_path, monkeypatch, capsys)[0] == 0
    code, summary, _ = run_trainer(
        config(root, version=2, parentVersion=1, labelNoise=0.45), tmp_path, monkeypatch, capsys
    )
    assert code == 0, summary
    assert summary["challenger"]["accuracy"] < summary["champion"]["accuracy"] - 0.15
    metadata = json.loads((version_path(root, 2) / "metadata.json").read_text())
    assert metadata["rows"]["labelNoiseFlipped"] == round(0.45 * metadata["rows"]["train"])


def test_incremental_sgd_continues_from_the_champion(root, tmp_path, monkeypatch, capsys):
    write_base(root)
    assert run_trainer(config(root, estimator="sgd", now=NOW - 3 * DAY), tmp_path, monkeypatch, capsys)[0] == 0
    write_feedback(root, n=2000, drift_at=(0,))
    code, summary, err = run_trainer(
        config(root, version=2, parentVersion=1, estimator="sgd", incremental=True, incrementalSteps=10),
        tmp_path,
        monkeypatch,
        capsys,
    )

    assert code == 0, summary
    assert "incrementally from version 1" in err
    metadata = json.loads((version_path(root, 2) / "metadata.json").read_text())
    assert metadata["incremental"] == {"mode": "partial_fit", "epochs": 10, "rows": 1500}
    assert metadata["rows"]["train"] == 1500  # only the new feedback, not the base data
    champion = joblib.load(version_path(root, 1) / "model.joblib")
    challenger = joblib.load(version_path(root, 2) / "model.joblib")
    # The champion's fitted scaler is kept; the linear model moved towards the new concept.
    assert np.array_equal(champion[0].transform(np.ones((1, 10))), challenger[0].transform(np.ones((1, 10))))
    assert not np.allclose(champion[-1].coef_, challenger[-1].coef_)
    assert summary["challenger"]["accuracy"] > summary["champion"]["accuracy"] + 0.1


def test_incremental_hist_gradient_boosting_adds_iterations(trained_v1, tmp_path, monkeypatch, capsys):
    root = trained_v1
    write_feedback(root, n=1000, drift_at=(0,))
    code, summary, _ = run_trainer(
        config(root, version=2, parentVersion=1, incremental=True, incrementalSteps=20), tmp_path, monkeypatch, capsys
    )
    assert code == 0, summary
    incremental = json.loads((version_path(root, 2) / "metadata.json").read_text())["incremental"]
    assert incremental["mode"] == "grow" and incremental["added"] == 20
    assert incremental["after"] == incremental["before"] + 20


def test_regression_task(root, tmp_path, monkeypatch, capsys):
    rng = np.random.default_rng(3)
    X = rng.random((600, 3))
    y = X @ np.array([3.0, -2.0, 1.0]) + rng.normal(0, 0.1, 600)
    data = model_dir(root) / "data"
    data.mkdir(parents=True)
    lines = ["a,b,c,price"] + [f"{r[0]},{r[1]},{r[2]},{t}" for r, t in zip(X, y)]
    (data / "prices.csv").write_text("\n".join(lines) + "\n")
    document = config(root, task="regression", features=["a", "b", "c"], target="price", estimator="ridge")
    code, summary, _ = run_trainer(document, tmp_path, monkeypatch, capsys)

    assert code == 0, summary
    assert summary["metric"] == "mae" and summary["greaterIsBetter"] is False
    assert set(summary["challenger"]) == {"mae", "rmse", "r2"} and summary["challenger"]["r2"] > 0.95
    assert "mae" in summary["worstSlices"][0]
    assert (version_path(root, 1) / "residuals.png").exists()


def test_categorical_features_and_text_labels(root, tmp_path, monkeypatch, capsys):
    rng = np.random.default_rng(4)
    colours = rng.choice(["red", "green", "blue"], 800)
    amount = rng.random(800)
    label = np.where((colours == "red") | (amount > 0.8), "yes", "no")
    data = model_dir(root) / "data"
    data.mkdir(parents=True)
    rows = ["colour,amount,answer"] + [f"{c},{a:.4f},{t}" for c, a, t in zip(colours, amount, label)]
    (data / "answers.csv").write_text("\n".join(rows) + "\n")
    for estimator in ("hist_gradient_boosting", "logistic_regression"):
        document = config(
            root,
            features=["colour", "amount"],
            target="answer",
            estimator=estimator,
            version=1 if estimator == "hist_gradient_boosting" else 2,
        )
        code, summary, _ = run_trainer(document, tmp_path, monkeypatch, capsys)
        assert code == 0, summary
    metadata = json.loads((version_path(root, 1) / "metadata.json").read_text())
    assert metadata["classes"] == ["no", "yes"]
    assert metadata["featureTypes"] == {"colour": "categorical", "amount": "numeric"}
    model = joblib.load(version_path(root, 1) / "model.joblib")
    unseen = np.array([["red", 0.1], ["purple", 0.9], [None, 0.1]], dtype=object)
    assert model.predict(unseen).tolist()[:2] == ["yes", "yes"]
    bins = {
        s["bin"]
        for s in json.loads((version_path(root, 1) / "report.json").read_text())["worstSlices"]["challenger"]
        if s["feature"] == "colour"
    }
    assert bins <= {"red", "green", "blue"} and bins


def test_summary_stays_under_4_kib(root, tmp_path, monkeypatch, capsys):
    names = [f"feature_{i:02d}_{'with_a_very_long_name_' * 20}" for i in range(12)]
    X = np.random.default_rng(5).random((1200, 12))
    data = model_dir(root) / "data"
    data.mkdir(parents=True)
    y = (X[:, 0] + X[:, 1] > 1).astype(int)
    lines = [",".join([*names, "label"])] + [",".join([*(f"{v:.5f}" for v in r), str(t)]) for r, t in zip(X, y)]
    (data / "wide.csv").write_text("\n".join(lines) + "\n")
    code, summary, _ = run_trainer(
        config(root, features=names, sliceMinRows=5, sliceBins=10, estimator="logistic_regression"),
        tmp_path,
        monkeypatch,
        capsys,
    )
    assert code == 0, summary
    line = (tmp_path / "termination-log").read_bytes()
    assert len(line) < 4096
    report = json.loads((version_path(root, 1) / "report.json").read_text())
    assert len(report["worstSlices"]["challenger"]) == 10
    assert summary.get("worstSlicesTruncated") is True and len(summary["worstSlices"]) < 10


def test_failed_write_leaves_no_partial_version(trained_v1, tmp_path, monkeypatch, capsys):
    root = trained_v1
    write_feedback(root, n=800)

    def crash(path: Path, document: dict) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(registry, "save_json", crash)
    code, summary, _ = run_trainer(config(root, version=2, parentVersion=1), tmp_path, monkeypatch, capsys)
    assert code == 1 and "disk full" in summary["error"]
    assert sorted(p.name for p in (model_dir(root) / "versions").iterdir()) == ["1"]


def test_version_folder_appearing_meanwhile_is_not_overwritten(tmp_path):
    final = storage.version_dir(tmp_path, MODEL, 3)
    final.mkdir(parents=True)
    (final / "metadata.json").write_text("{}")
    with pytest.raises(registry.VersionExists):
        registry.write_version(tmp_path, MODEL, 3, lambda folder: (folder / "model.joblib").write_text("x"))
    assert sorted(p.name for p in final.parent.iterdir()) == ["3"]
    assert (final / "metadata.json").read_text() == "{}"


# --- bad input -----------------------------------------------------------------------------------


def _bad_base(root: Path, text: bytes) -> None:
    data = model_dir(root) / "data"
    data.mkdir(parents=True, exist_ok=True)
    (data / "bad.csv").write_bytes(text)


@pytest.mark.parametrize(
    "case, overrides, prepare, message",
    [
        ("missing column", {"features": [*FEATURES, "tenure"]}, "base", "missing columns ['tenure']"),
        ("missing target", {"target": "churned"}, "base", "missing columns ['churned']"),
        ("too few rows", {"minRows": 5000}, "base", "too few rows: 2000 labelled rows"),
        ("one class", {}, "one-class", "only one class [0]"),
        ("unreadable file", {}, "not-utf8", "bad.csv: cannot read"),
        ("no data", {}, None, "no data: no base data"),
        ("unknown estimator", {"estimator": "xgboost"}, "base", "unknown estimator 'xgboost'"),
        (
            "unknown hyperparameter",
            {"hyperparameters": {"max_depht": 3}},
            "base",
            "unknown hyperparameter(s) ['max_depht'] for estimator 'hist_gradient_boosting'",
        ),
        ("invalid hyperparameter", {"hyperparameters": {"max_iter": -1}}, "base", "invalid hyperparameter"),
        (
            "task mismatch",
            {"task": "regression", "estimator": "random_forest"},
            "base",
            "estimator 'random_forest' is for classification but task is 'regression'",
        ),
        ("missing champion", {"version": 2, "parentVersion": 7}, "base", "champion version 7 has no model"),
        (
            "incremental without partial_fit",
            {"version": 2, "parentVersion": 1, "incremental": True, "estimator": "ridge", "task": "regression"},
            "base",
            "estimator 'ridge' supports neither partial_fit nor warm_start",
        ),
        ("bad config value", {"holdoutFraction": 1.5}, "base", "holdoutFraction must be in (0, 1)"),
        ("missing required", {"target": None}, "base", "config: target is required"),
        ("unknown slice feature", {"sliceFeatures": ["nope"]}, "base", "sliceFeatures ['nope']"),
    ],
)
def test_bad_input_exits_2_naming_the_problem(case, overrides, prepare, message, root, tmp_path, monkeypatch, capsys):
    if prepare == "base":
        write_base(root)
    elif prepare == "one-class":
        _bad_base(root, b"x0,label\n" + b"".join(b"%d,0\n" % i for i in range(300)))
        overrides = {**overrides, "features": ["x0"]}
    elif prepare == "not-utf8":
        _bad_base(root, b"x0,label\n1,\xff\xfe\n")
        overrides = {**overrides, "features": ["x0"]}
    if case == "incremental without partial_fit":
        (model_dir(root) / "versions" / "1").mkdir(parents=True)
        joblib.dump({"not": "a model"}, model_dir(root) / "versions" / "1" / "model.joblib")
    document = {k: v for k, v in config(root, **overrides).items() if v is not None}
    code, summary, err = run_trainer(document, tmp_path, monkeypatch, capsys)
    assert code == 2, (case, summary)
    assert summary["ok"] is False and message in summary["error"], (case, summary)
    assert "error:" in err


def test_unexpected_failure_exits_1(trained_v1, tmp_path, monkeypatch, capsys):
    from mfl_trainer import train

    def boom(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("kaboom")

    monkeypatch.setattr(train, "evaluate", boom)
    code, summary, _ = run_trainer(config(trained_v1, version=2), tmp_path, monkeypatch, capsys)
    assert code == 1 and summary == {
        "ok": False,
        "error": "unexpected RuntimeError: kaboom",
        "model": MODEL,
        "version": 2,
    }


@pytest.mark.integration
def test_console_entry_point_reads_env_config(root, tmp_path):
    write_base(root, n=400)
    env = {
        **os.environ,
        "MFL_TRAINER_CONFIG": json.dumps(config(root, hyperparameters={"max_iter": 20})),
        "MFL_TERMINATION_LOG": str(tmp_path / "term"),
    }
    done = subprocess.run(
        [sys.executable, "-m", "mfl_trainer.main"], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1])["ok"] is True
    assert "[mfl-trainer" in done.stderr

    env["MFL_TRAINER_CONFIG"] = "{not json"
    done = subprocess.run(
        [sys.executable, "-m", "mfl_trainer.main"], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 2
    assert "MFL_TRAINER_CONFIG is not valid JSON" in json.loads(done.stdout.strip())["error"]
