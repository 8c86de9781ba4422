"""The Keras estimator (`keras_dense`, mfl_keras): the seed's dense -> dropout -> sigmoid network as a scikit-learn
classifier that fits, predicts and pickles (the network as a `.keras` archive), trains through the trainer, the
change-point plan and incremental runs like the scikit-learn estimators, and is served by the reference server."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
import yaml

from feedbackloop.core import api
from mfl_keras.classifier import KerasDenseClassifier, keras_module
from mfl_server.model import ModelLoadError, load_model
from mfl_testbed import datasets
from mfl_trainer import estimators, plan
from tests.server.test_app import metrics_of, run, server_config, serving, value

from .test_train import DAY, FEATURES, MODEL, NOW, config, root, run_trainer, version_path, write_base, write_feedback
from .test_train_drift import DRIFT_TS, STEP, drifted, read, train

__all__ = ["drifted", "root"]  # fixtures
# Keras and JAX warn about NumPy 2's copy keyword inside their own code.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

# Few epochs of big batches: seconds on two shared cores, accurate enough on the hyperplane concepts.
QUICK = {"epochs": 8, "batch_size": 64, "learning_rate": 0.01}
KERAS = {"estimator": "keras_dense", "hyperparameters": QUICK}


def hyperplane(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    stream = datasets.drift_stream(n, drift_at=[], seed=seed)
    return stream.X, stream.y


# --- the estimator -------------------------------------------------------------------------------


def test_it_fits_predicts_and_keeps_its_predictions_through_a_pickle():
    X, y = hyperplane(1500, seed=1)
    model = KerasDenseClassifier(**QUICK).fit(X[:1000], y[:1000])
    assert model.n_features_in_ == X.shape[1] and model.classes_.tolist() == [0, 1]
    assert np.mean(model.predict(X[1000:]) == y[1000:]) > 0.85
    probabilities = model.predict_proba(X[1000:])
    assert probabilities.shape == (500, 2) and np.allclose(probabilities.sum(axis=1), 1.0)
    layers = [type(layer).__name__ for layer in model.model_.layers]
    assert layers == ["InputLayer", "Normalization", "Dense", "Dropout", "Dense"]
    assert model.model_.layers[-1].activation.__name__ == "sigmoid"

    again = pickle.loads(pickle.dumps(model))
    assert np.array_equal(again.predict_proba(X), model.predict_proba(X))
    assert again.get_params() == model.get_params()


def test_it_is_deterministic_under_a_seed_and_the_seed_matters():
    X, y = hyperplane(600, seed=4)
    weights = np.linspace(0.5, 2.0, len(y))
    first = KerasDenseClassifier(**QUICK, random_state=7).fit(X, y, sample_weight=weights).predict_proba(X)
    second = KerasDenseClassifier(**QUICK, random_state=7).fit(X, y, sample_weight=weights).predict_proba(X)
    other = KerasDenseClassifier(**QUICK, random_state=8).fit(X, y, sample_weight=weights).predict_proba(X)
    assert np.array_equal(first, second)
    assert not np.allclose(first, other)


def test_several_classes_get_a_softmax_and_text_labels_come_back():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(900, 2))
    y = np.array(["left", "middle", "right"])[np.digitize(X[:, 0], [-0.5, 0.5])]
    model = KerasDenseClassifier(**QUICK).fit(X, y)
    assert model.classes_.tolist() == ["left", "middle", "right"]
    assert model.model_.layers[-1].activation.__name__ == "softmax"
    assert model.predict_proba(X[:5]).shape == (5, 3)
    assert np.mean(model.predict(X) == y) > 0.9


def test_a_warm_start_trains_the_fitted_network_on_and_adds_no_class():
    X, y = hyperplane(800, seed=5)
    model = KerasDenseClassifier(**QUICK).fit(X[:400], y[:400])
    before = model.model_.get_layer("standardize").get_weights()
    model.set_params(warm_start=True).fit(X[400:], y[400:])
    after = model.model_.get_layer("standardize").get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(before, after))  # its standardisation stays
    with pytest.raises(ValueError, match="cannot add classes"):
        model.fit(X[:10], np.full(10, 2))


@pytest.mark.parametrize(
    "params, words",
    [({"units": 0}, "units"), ({"dropout": 1.0}, "dropout"), ({"learning_rate": -1}, "learning_rate")],
)
def test_bad_hyperparameters_are_refused_by_name(params, words):
    X, y = hyperplane(50, seed=6)
    with pytest.raises(ValueError, match=words):
        KerasDenseClassifier(**params).fit(X, y)


def test_rows_it_cannot_take_are_a_value_error():
    X, y = hyperplane(200, seed=7)
    model = KerasDenseClassifier(**QUICK).fit(X, y)
    with pytest.raises(ValueError, match="features"):
        model.predict(X[:, :3])
    with pytest.raises(ValueError, match="NaN|infinity"):
        model.predict(np.full((1, X.shape[1]), np.nan))


# --- through the trainer -------------------------------------------------------------------------


def test_the_trainer_publishes_a_keras_version(root, tmp_path, monkeypatch, capsys):
    write_base(root)
    code, summary, err = run_trainer(config(root, **KERAS), tmp_path, monkeypatch, capsys)
    assert code == 0, summary
    assert summary["challenger"]["accuracy"] > 0.85

    folder = version_path(root, 1)
    assert {"model.joblib", "model.keras", "model-settings.json", "metadata.json", "report.json"} <= {
        p.name for p in folder.iterdir()
    }
    metadata = read(root, 1, "metadata.json")
    assert metadata["estimator"] == "keras_dense" and metadata["format"] == "keras"
    assert metadata["servingOutput"] == "labels" and metadata["classes"] == [0, 1]
    assert metadata["hyperparameters"] == QUICK
    assert set(metadata["libraries"]) >= {"keras", keras_module().backend.backend()}
    settings = read(root, 1, "model-settings.json")
    assert settings["implementation"] == "mlserver_sklearn.SKLearnModel"
    assert settings["parameters"]["uri"] == "./model.joblib"
    report = read(root, 1, "report.json")
    assert report["challenger"]["metrics"]["accuracy"] == summary["challenger"]["accuracy"]

    # model.keras is the pipeline's network: Keras alone loads it and scores the prepared rows the same.
    pipeline = joblib.load(folder / "model.joblib")
    X, _ = hyperplane(64, seed=9)
    network = keras_module().saving.load_model(folder / "model.keras", compile=False)
    prepared = pipeline[:-1].transform(X).astype(np.float32)
    alone = np.asarray(network.predict_on_batch(prepared)).ravel()
    assert np.allclose(alone, pipeline.predict_proba(X)[:, 1], atol=1e-5)


def test_the_keras_trainer_is_deterministic(root, tmp_path, monkeypatch, capsys):
    write_base(root, n=800)
    for version in (1, 2):
        code, summary, _ = run_trainer(config(root, version=version, **KERAS), tmp_path, monkeypatch, capsys)
        assert code == 0, summary
    X, _ = hyperplane(100, seed=3)
    first, second = (joblib.load(version_path(root, v) / "model.joblib").predict_proba(X) for v in (1, 2))
    assert np.array_equal(first, second)


def test_after_a_drift_the_keras_trainer_cuts_and_beats_the_stale_champion(drifted, tmp_path, monkeypatch, capsys):
    summary, err = train(drifted, tmp_path, monkeypatch, capsys, version=2, parentVersion=1, **KERAS)

    data = read(drifted, 2, "metadata.json")["trainingData"]
    cut = data["cut"]
    assert cut is not None and abs(cut["ts"] - DRIFT_TS) <= 10 * STEP
    assert data["holdoutStrategy"] == plan.CROSS_FITTED
    assert set(data["recipes"]) == {plan.SINCE_CUT, plan.WITH_HISTORY}
    report = read(drifted, 2, "report.json")
    challenger, champion = report["challenger"]["metrics"]["accuracy"], report["champion"]["metrics"]["accuracy"]
    assert challenger > champion + 0.15, (challenger, champion)
    assert summary["paired"]["challengerOnly"] > summary["paired"]["championOnly"]
    assert read(drifted, 2, "metadata.json")["format"] == "keras"
    assert "chose" in err


def test_incremental_keras_trains_the_champion_on_towards_the_new_concept(root, tmp_path, monkeypatch, capsys):
    write_base(root, n=800)
    code, summary, _ = run_trainer(config(root, now=NOW - 3 * DAY, **KERAS), tmp_path, monkeypatch, capsys)
    assert code == 0, summary
    write_feedback(root, n=1200, drift_at=(0,))
    document = config(root, version=2, parentVersion=1, incremental=True, **KERAS)
    code, summary, err = run_trainer(document, tmp_path, monkeypatch, capsys)

    assert code == 0, summary
    assert "incrementally from version 1" in err
    metadata = read(root, 2, "metadata.json")
    assert metadata["incremental"] == {"mode": "warm_refit", "rows": 900} and metadata["format"] == "keras"
    assert metadata["rows"]["train"] == 900  # only the new feedback, not the base data
    champion = joblib.load(version_path(root, 1) / "model.joblib")[-1].model_
    challenger = joblib.load(version_path(root, 2) / "model.joblib")[-1].model_
    # The champion's standardisation is kept; its weights moved towards the new concept.
    assert all(
        np.array_equal(a, b)
        for a, b in zip(
            champion.get_layer("standardize").get_weights(), challenger.get_layer("standardize").get_weights()
        )
    )
    assert summary["challenger"]["accuracy"] > summary["champion"]["accuracy"] + 0.1


def test_without_keras_the_trainer_names_the_image_to_use(root, tmp_path, monkeypatch, capsys):
    import mfl_keras.classifier as classifier

    def missing() -> Any:
        raise ImportError("Keras is not installed (No module named 'keras')")

    monkeypatch.setattr(classifier, "keras_module", missing)
    write_base(root, n=300)
    code, summary, _ = run_trainer(config(root, **KERAS), tmp_path, monkeypatch, capsys)
    assert code == 2 and "mfl-trainer-keras" in summary["error"], summary
    assert not (root / MODEL / "versions" / "1").exists()


# --- served by the reference server --------------------------------------------------------------


@pytest.fixture
def keras_version(root, tmp_path, monkeypatch, capsys):
    """Version 1 of MODEL, a keras_dense network trained on base data."""
    write_base(root, n=800)
    code, summary, _ = run_trainer(config(root, **KERAS), tmp_path, monkeypatch, capsys)
    assert code == 0, summary
    return root


def test_the_reference_server_loads_and_serves_a_keras_version(keras_version):
    root = keras_version
    pipeline = joblib.load(version_path(root, 1) / "model.joblib")
    X, y = hyperplane(16, seed=12)
    loaded = load_model(version_path(root, 1), 1)
    assert loaded.task == "classification" and loaded.classes == [0, 1]
    assert loaded.predict(X) == pipeline.predict(X).tolist()

    async def scenario() -> None:
        async with serving(server_config(root)) as (_, client):
            rows = [dict(zip(FEATURES, row)) for row in X.tolist()]
            response = await client.post("/predict", json={"instances": rows})
            assert response.status == 200, await response.text()
            body = await response.json()
            assert body["predictions"] == pipeline.predict(X).tolist() and body["version"] == 1
            tensor = {"name": "input-0", "shape": list(X.shape), "datatype": "FP64", "data": X.tolist()}
            infer = await client.post(f"/v2/models/{MODEL}/infer", json={"inputs": [tensor]})
            assert infer.status == 200, await infer.text()
            predict, ids = (await infer.json())["outputs"]
            assert predict["data"] == body["predictions"]
            labels = [{"id": i, "label": int(t)} for i, t in zip(ids["data"], y)]
            answer = await client.post(f"/v2/models/{MODEL}/feedback", json={"feedback": labels})
            assert await answer.json() == {"accepted": 16, "rejected": []}
            metrics = await metrics_of(client)
            assert value(metrics, "mfl_feedback_total", model=MODEL, version="1", track="stable") == 16

    run(scenario())


def test_a_server_without_keras_names_what_to_serve_a_keras_version_with(keras_version, monkeypatch):
    import mfl_keras.classifier as classifier

    def missing() -> Any:
        raise ImportError("Keras is not installed (No module named 'keras'): the mfl-server-keras image carries it")

    monkeypatch.setattr(classifier, "keras_module", missing)
    with pytest.raises(ModelLoadError, match="mfl-server-keras"):
        load_model(version_path(keras_version, 1), 1)


def test_the_keras_loop_example_is_valid_and_runs_the_keras_images():
    path = Path(__file__).resolve().parents[2] / "manifests" / "examples" / "loop-keras.yaml"
    spec = yaml.safe_load(path.read_text())["spec"]
    api.validate_spec(spec)
    retraining = spec["retraining"]
    assert retraining["estimator"] == "keras_dense"
    assert "/mfl-trainer-keras:" in retraining["trainer"]["image"]
    assert "/mfl-server-keras:" in spec["model"]["serving"]["image"]
    spec_of = estimators.estimator_spec("keras_dense", "classification")
    model = estimators.make_estimator(spec_of, retraining["hyperparameters"], seed=0)
    assert model.get_params()["units"] == retraining["hyperparameters"]["units"]
