"""Model formats: every version folder holds MLServer's runtime settings (model-settings.json) and the files
they name; LightGBM versions publish the booster (model.txt) that answers like model.joblib, and train through
the change-point plan, the gate and incremental runs like the scikit-learn estimators."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest

from feedbackloop.core import api
from feedbackloop.core.gate import offline_gate
from mfl_contracts import estimators as contract_estimators
from mfl_trainer import estimators, formats, plan

from .test_train import DAY, FEATURES, MODEL, NOW, config, model_dir, root, run_trainer, version_path, write_base
from .test_train_drift import DRIFT_TS, STEP, drifted, read, served_stream, train

__all__ = ["drifted", "root"]  # fixtures

LIGHT = {"n_estimators": 30}  # few boosting rounds: quick on shared cores, accurate enough here
SKLEARN_RUNTIME, LIGHTGBM_RUNTIME = "mlserver_sklearn.SKLearnModel", "mlserver_lightgbm.LightGBMModel"


def write_regression_base(root: Path, n: int = 600, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.random((n, 3))
    y = X @ np.array([3.0, -2.0, 1.0]) + rng.normal(0, 0.1, n)
    data = model_dir(root) / "data"
    data.mkdir(parents=True, exist_ok=True)
    lines = ["a,b,c,price"] + [f"{r[0]},{r[1]},{r[2]},{t}" for r, t in zip(X, y)]
    (data / "prices.csv").write_text("\n".join(lines) + "\n")
    return X, y


REGRESSION = {"task": "regression", "features": ["a", "b", "c"], "target": "price"}


def booster_labels(probabilities: np.ndarray, classes: list[Any]) -> np.ndarray:
    """What the feedback sidecar makes of a probabilities output (docs/contracts.md, "servingOutput")."""
    if probabilities.ndim == 1 or probabilities.shape[1] == 1:
        return np.where(probabilities.reshape(-1) >= 0.5, classes[1], classes[0])
    return np.asarray(classes)[np.argmax(probabilities, axis=1)]


@pytest.mark.parametrize(
    "estimator, task, model_format, output, uri, implementation",
    [
        (
            "hist_gradient_boosting",
            "classification",
            "sklearn",
            "labels",
            "model.joblib",
            "mlserver_sklearn.SKLearnModel",
        ),
        ("lightgbm", "classification", "lightgbm", "probabilities", "model.txt", LIGHTGBM_RUNTIME),
        ("ridge", "regression", "sklearn", "labels", "model.joblib", SKLEARN_RUNTIME),
        ("lightgbm_regressor", "regression", "lightgbm", "labels", "model.txt", LIGHTGBM_RUNTIME),
    ],
)
def test_each_format_writes_model_settings_naming_its_files(
    estimator, task, model_format, output, uri, implementation, root, tmp_path, monkeypatch, capsys
):
    if task == "regression":
        write_regression_base(root)
        overrides: dict[str, Any] = dict(REGRESSION)
    else:
        write_base(root)
        overrides = {}
    hyperparameters = LIGHT if model_format == "lightgbm" else {}
    document = config(root, version=3, estimator=estimator, hyperparameters=hyperparameters, **overrides)
    code, summary, _ = run_trainer(document, tmp_path, monkeypatch, capsys)
    assert code == 0, summary

    folder = version_path(root, 3)
    settings = json.loads((folder / formats.MODEL_SETTINGS_FILE).read_text())
    assert settings == {
        "name": MODEL,
        "implementation": implementation,
        "parameters": {"uri": f"./{uri}", "version": "3"},
    }
    assert (folder / settings["parameters"]["uri"]).is_file() and (folder / "model.joblib").is_file()
    metadata = json.loads((folder / "metadata.json").read_text())
    assert metadata["format"] == model_format == contract_estimators.model_format(estimator)
    assert metadata["servingOutput"] == output
    assert ("lightgbm" in metadata["libraries"]) == (model_format == "lightgbm")
    expected = {"model.joblib", "model-settings.json", "metadata.json", "report.json"}
    expected |= {"confusion.png"} if task == "classification" else {"residuals.png"}
    expected |= {"model.txt"} if model_format == "lightgbm" else set()
    assert {path.name for path in folder.iterdir()} == expected
    assert not list(folder.parent.glob(".tmp-*"))


def test_lightgbm_booster_answers_like_the_pipeline_binary(root, tmp_path, monkeypatch, capsys):
    lightgbm = pytest.importorskip("lightgbm")
    write_base(root)
    code, summary, _ = run_trainer(
        config(root, estimator="lightgbm", hyperparameters=LIGHT), tmp_path, monkeypatch, capsys
    )
    assert code == 0, summary
    folder = version_path(root, 1)
    metadata = json.loads((folder / "metadata.json").read_text())
    X = np.random.default_rng(9).random((400, len(FEATURES)))
    X[::17, 3] = np.nan  # missing values reach the booster as they are

    pipeline = joblib.load(folder / "model.joblib")
    probabilities = lightgbm.Booster(model_file=str(folder / "model.txt")).predict(X)
    assert probabilities.shape == (400,)
    assert metadata["classes"] == [0, 1]
    np.testing.assert_allclose(probabilities, pipeline.predict_proba(X)[:, 1], rtol=1e-9, atol=1e-12)
    assert booster_labels(probabilities, metadata["classes"]).tolist() == pipeline.predict(X).tolist()
    assert summary["challenger"]["accuracy"] > 0.8


def test_lightgbm_booster_answers_like_the_pipeline_multiclass_text_labels(root, tmp_path, monkeypatch, capsys):
    lightgbm = pytest.importorskip("lightgbm")
    rng = np.random.default_rng(6)
    X = rng.random((900, 2))
    score = X[:, 0] + 0.5 * X[:, 1]
    label = np.where(score < 0.5, "zeta", np.where(score < 0.9, "alpha", "mid"))  # sorted: alpha, mid, zeta
    data = model_dir(root) / "data"
    data.mkdir(parents=True)
    rows = ["x,w,grade"] + [f"{a:.5f},{b:.5f},{t}" for (a, b), t in zip(X, label)]
    (data / "grades.csv").write_text("\n".join(rows) + "\n")
    document = config(root, features=["x", "w"], target="grade", estimator="lightgbm", hyperparameters=LIGHT)
    code, summary, _ = run_trainer(document, tmp_path, monkeypatch, capsys)
    assert code == 0, summary

    folder = version_path(root, 1)
    metadata = json.loads((folder / "metadata.json").read_text())
    assert metadata["classes"] == ["alpha", "mid", "zeta"] and metadata["servingOutput"] == "probabilities"
    pipeline = joblib.load(folder / "model.joblib")
    probe = rng.random((300, 2))
    probabilities = lightgbm.Booster(model_file=str(folder / "model.txt")).predict(probe)
    assert probabilities.shape == (300, 3)
    np.testing.assert_allclose(probabilities, pipeline.predict_proba(probe), rtol=1e-9, atol=1e-12)
    assert booster_labels(probabilities, metadata["classes"]).tolist() == pipeline.predict(probe).tolist()
    assert summary["challenger"]["accuracy"] > 0.85


def test_lightgbm_regressor_booster_answers_like_the_pipeline(root, tmp_path, monkeypatch, capsys):
    lightgbm = pytest.importorskip("lightgbm")
    write_regression_base(root)
    document = config(root, estimator="lightgbm_regressor", hyperparameters={"n_estimators": 60}, **REGRESSION)
    code, summary, _ = run_trainer(document, tmp_path, monkeypatch, capsys)
    assert code == 0, summary
    folder = version_path(root, 1)
    metadata = json.loads((folder / "metadata.json").read_text())
    assert metadata["classes"] is None and metadata["servingOutput"] == "labels"
    probe = np.random.default_rng(10).random((200, 3))
    values = lightgbm.Booster(model_file=str(folder / "model.txt")).predict(probe)
    np.testing.assert_allclose(values, joblib.load(folder / "model.joblib").predict(probe), rtol=1e-9)
    assert summary["challenger"]["r2"] > 0.8


def gate_spec(estimator: str) -> api.ModelFeedbackLoopSpec:
    return api.validate_spec(
        {
            "model": {"name": MODEL, "task": "classification", "storage": {"hostPath": {"path": "/d"}}},
            "monitoring": {"prometheus": {"url": "http://p"}},
            "retraining": {"features": FEATURES, "target": "label", "estimator": estimator},
        }
    )


def test_lightgbm_after_a_drift_cuts_cross_fits_passes_the_gate_and_continues(drifted, tmp_path, monkeypatch, capsys):
    lightgbm = pytest.importorskip("lightgbm")
    root = drifted  # version 1 (logistic regression) served 1500 rows of the old concept, then 600 of the new
    summary, err = train(
        root, tmp_path, monkeypatch, capsys, version=2, parentVersion=1, estimator="lightgbm", hyperparameters=LIGHT
    )

    data = read(root, 2, "metadata.json")["trainingData"]
    assert data["cut"] is not None and abs(data["cut"]["ts"] - DRIFT_TS) <= 10 * STEP
    assert data["holdoutStrategy"] == plan.CROSS_FITTED and set(data["recipes"]) == {plan.SINCE_CUT, plan.WITH_HISTORY}
    assert "chose" in err and "training lightgbm" in err
    report = read(root, 2, "report.json")
    assert report["challenger"]["metrics"]["accuracy"] > report["champion"]["metrics"]["accuracy"] + 0.1
    assert report["worstSlices"]["challenger"] and (version_path(root, 2) / "confusion.png").is_file()
    verdict = offline_gate(gate_spec("lightgbm"), summary, first_version=False, breached=True)
    assert verdict.passed and verdict.superior, verdict.message

    # Version 2 serves 800 more rows of the new concept; version 3 boosts on from its booster.
    stream, _ = served_stream(root, 2, 800, [0], NOW + 3 * 3600, seed=5)
    summary, err = train(
        root,
        tmp_path,
        monkeypatch,
        capsys,
        version=3,
        parentVersion=2,
        estimator="lightgbm",
        hyperparameters=LIGHT,
        incremental=True,
        incrementalSteps=10,
        now=NOW + DAY,
        dataWindowSeconds=DAY - 2 * 3600,
    )
    assert "incrementally from version 2" in err
    incremental = read(root, 3, "metadata.json")["incremental"]
    assert incremental["mode"] == estimators.BOOST_MORE and incremental["added"] == 10
    assert incremental["after"] == incremental["before"] + 10 == 40
    booster = lightgbm.Booster(model_file=str(version_path(root, 3) / "model.txt"))
    assert booster.current_iteration() == 40
    pipeline = joblib.load(version_path(root, 3) / "model.joblib")
    assert booster_labels(booster.predict(stream.X), [0, 1]).tolist() == pipeline.predict(stream.X).tolist()
    assert summary["challenger"]["accuracy"] > 0.8
    assert offline_gate(gate_spec("lightgbm"), summary, first_version=False).passed


@pytest.mark.parametrize(
    "case, overrides, message",
    [
        ("bad value", {"hyperparameters": {"num_leaves": 1}}, "training failed:"),
        ("unknown name", {"hyperparameters": {"num_leafs": 8}}, "unknown hyperparameter(s) ['num_leafs']"),
        ("categorical feature", {"features": ["colour", "amount"], "target": "answer"}, "takes numeric features only"),
    ],
)
def test_lightgbm_bad_input_exits_2(case, overrides, message, root, tmp_path, monkeypatch, capsys):
    if case == "categorical feature":
        rng = np.random.default_rng(4)
        colours = rng.choice(["red", "green", "blue"], 400)
        data = model_dir(root) / "data"
        data.mkdir(parents=True)
        rows = ["colour,amount,answer"] + [f"{c},{a:.4f},{int(a > 0.5)}" for c, a in zip(colours, rng.random(400))]
        (data / "answers.csv").write_text("\n".join(rows) + "\n")
    else:
        write_base(root)
    code, summary, _ = run_trainer(config(root, estimator="lightgbm", **overrides), tmp_path, monkeypatch, capsys)
    assert code == 2 and message in summary["error"], summary
    assert not (model_dir(root) / "versions" / "1").exists()


def test_lightgbm_threads_follow_the_trainer_budget(monkeypatch):
    spec = estimators.estimator_spec("lightgbm", "classification")
    monkeypatch.setenv("MFL_TRAINER_THREADS", "3")
    assert estimators.make_estimator(spec, {}, seed=0).get_params()["n_jobs"] == 3
    assert estimators.make_estimator(spec, {"n_jobs": 1}, seed=0).get_params()["n_jobs"] == 1
    assert estimators.make_estimator(spec, {}, seed=0).get_params()["verbose"] == -1


def test_the_sklearn_version_loads_in_mlservers_own_runtime(root, tmp_path, monkeypatch, capsys):
    """An optional local cross-check (the e2e tier runs real MLServer): skipped without mlserver_sklearn."""
    pytest.importorskip("mlserver_sklearn")
    import asyncio

    from mlserver.codecs import NumpyCodec
    from mlserver.settings import ModelSettings
    from mlserver.types import InferenceRequest
    from mlserver_sklearn import SKLearnModel

    write_base(root)
    code, summary, _ = run_trainer(config(root), tmp_path, monkeypatch, capsys)
    assert code == 0, summary
    folder = version_path(root, 1)
    settings_path = folder / formats.MODEL_SETTINGS_FILE
    settings = ModelSettings.model_validate_json(settings_path.read_text())
    settings._source = str(settings_path)  # how MLServer resolves the relative uri
    X = np.random.default_rng(2).random((20, len(FEATURES)))

    async def infer() -> np.ndarray:
        model = SKLearnModel(settings)
        await model.load()
        request = InferenceRequest(inputs=[NumpyCodec.encode_input("input-0", X)])
        response = await model.predict(request)
        return NumpyCodec.decode_output(response.outputs[0])

    predicted = asyncio.run(infer())
    assert predicted.reshape(-1).tolist() == joblib.load(folder / "model.joblib").predict(X).tolist()
