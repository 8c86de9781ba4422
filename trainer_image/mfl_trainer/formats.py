"""What a version folder holds for its model format, and MLServer's runtime settings for it.

Every version has ``model.joblib`` (the fitted scikit-learn pipeline: the reference server and the trainer's
champion evaluation load it) and ``model-settings.json``, the settings MLServer's runtime for the format
loads (``mlserver start versions/<n>``):

- ``sklearn``: ``mlserver_sklearn.SKLearnModel`` on ``./model.joblib``; it returns labels.
- ``lightgbm``: the booster as ``model.txt`` (LightGBM's text format) and ``mlserver_lightgbm.LightGBMModel``
  on it. Its ``predict`` returns, for a classifier, P(class 1) (binary, shape [n]) or a row of class
  probabilities ([n, k]), classes numbered 0..k-1 in metadata ``classes`` order; for a regressor the value.
- ``keras``: the network as ``model.keras`` (Keras' own archive; its input is the pipeline's prepared rows,
  mfl_keras.classifier) beside ``model.joblib``. MLServer has no Keras runtime: model-settings.json names
  ``SKLearnModel`` on ``model.joblib``, which serves labels where Keras and mfl_keras are installed (the
  mfl-server-keras image serves it the same way, with its own routes and the V2 ones).

metadata.json's ``format`` names the format and ``servingOutput`` says what the V2 runtime's output is:
"labels" or "probabilities" (the feedback sidecar turns those into labels with metadata ``classes``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mfl_contracts.estimators import KERAS, LIGHTGBM, SKLEARN
from mfl_contracts.storage import MODEL_FILE

from . import registry

MODEL_SETTINGS_FILE = "model-settings.json"
BOOSTER_FILE = "model.txt"
KERAS_FILE = "model.keras"
LABELS, PROBABILITIES = "labels", "probabilities"
# format -> (MLServer implementation, the file it loads)
RUNTIMES = {
    SKLEARN: ("mlserver_sklearn.SKLearnModel", MODEL_FILE),
    LIGHTGBM: ("mlserver_lightgbm.LightGBMModel", BOOSTER_FILE),
    KERAS: ("mlserver_sklearn.SKLearnModel", MODEL_FILE),
}


def serving_output(model_format: str, task: str) -> str:
    """What the format's V2 runtime answers for this task."""
    return PROBABILITIES if model_format == LIGHTGBM and task == "classification" else LABELS


def model_settings(model_format: str, model: str, version: int) -> dict[str, Any]:
    implementation, uri = RUNTIMES[model_format]
    return {
        "name": model,
        "implementation": implementation,
        "parameters": {"uri": f"./{uri}", "version": str(version)},
    }


def libraries(model_format: str) -> dict[str, str]:
    """Versions of the format's own libraries, for metadata (scikit-learn and numpy are always there)."""
    if model_format == KERAS:
        from mfl_keras.classifier import library_versions

        return library_versions()
    if model_format != LIGHTGBM:
        return {}
    import lightgbm

    return {"lightgbm": lightgbm.__version__}


def save(folder: Path, model_format: str, fitted: Any, model: str, version: int) -> None:
    """The model files of the format and model-settings.json (not metadata.json: the caller writes it last)."""
    registry.save_model(folder, fitted)
    if model_format == LIGHTGBM:
        fitted[-1].booster_.save_model(str(folder / BOOSTER_FILE))
    if model_format == KERAS:
        fitted[-1].save_keras(folder / KERAS_FILE)
    registry.save_json(folder / MODEL_SETTINGS_FILE, model_settings(model_format, model, version))
