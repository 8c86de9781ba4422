"""Loading a model version from the artifact store and predicting with it."""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
import numpy as np
from sklearn.base import is_classifier

from mfl_contracts.inputprofile import PROFILE_KEY, valid_profile

from .errors import ModelLoadError, unprocessable
from .inputs import CATEGORICAL, NUMERIC, InputSchema

TASKS = ("classification", "regression")
log = logging.getLogger("mfl_server.model")


@dataclass
class LoadedModel:
    version: int
    task: str
    schema: InputSchema
    classes: list[Any] | None
    metadata: dict[str, Any]
    predict_fn: Callable[[np.ndarray], np.ndarray]

    @property
    def features(self) -> list[str]:
        return self.schema.features

    @property
    def input_profile(self) -> dict[str, Any] | None:
        return valid_profile(self.metadata.get(PROFILE_KEY))

    def predict(self, matrix: np.ndarray) -> list[Any]:
        """Native Python labels (int, float, str, bool) for the rows of ``matrix``."""
        try:
            predicted = self.predict_fn(matrix)
        except (ValueError, TypeError) as error:  # sklearn's input validation (NaN, unknown category)
            raise unprocessable(f"the model cannot predict these rows: {_first_line(error)}") from None
        return np.asarray(predicted).ravel().tolist()


def load_model(version_dir: Path, expected_version: int) -> LoadedModel:
    estimator = _read_estimator(version_dir / "model.joblib")
    metadata = _read_metadata(version_dir / "metadata.json")
    _check_version(metadata, expected_version)
    task = _task(metadata, estimator)
    schema = _schema(metadata, estimator)
    classes = _classes(metadata, estimator) if task == "classification" else None
    predict_fn = _predictor(estimator, schema)
    return LoadedModel(
        version=expected_version, task=task, schema=schema, classes=classes, metadata=metadata, predict_fn=predict_fn
    )


def _read_metadata(path: Path) -> dict[str, Any]:
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelLoadError(f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ModelLoadError(f"{path} is unreadable: {_first_line(error)}") from None
    if not isinstance(metadata, dict):
        raise ModelLoadError(f"{path} is not a JSON object")
    return metadata


def _read_estimator(path: Path) -> Any:
    if not path.is_file():
        raise ModelLoadError(f"{path} does not exist")
    try:
        estimator = joblib.load(path)
    except Exception as error:  # unpickling can raise anything: truncated file, missing class, ...
        raise ModelLoadError(f"{path} is unreadable: {type(error).__name__}: {_first_line(error)}") from None
    if not callable(getattr(estimator, "predict", None)):
        raise ModelLoadError(f"{path} holds a {type(estimator).__name__}, which has no predict()")
    return estimator


def _check_version(metadata: dict[str, Any], expected: int) -> None:
    version = metadata.get("version")
    if version is not None and version != expected:
        raise ModelLoadError(f"metadata.json says version {version!r}, expected {expected}")


def _task(metadata: dict[str, Any], estimator: Any) -> str:
    task = metadata.get("task") or ("classification" if is_classifier(estimator) else "regression")
    if task not in TASKS:
        raise ModelLoadError(f"metadata.json task must be one of {list(TASKS)}, got {task!r}")
    return task


def _schema(metadata: dict[str, Any], estimator: Any) -> InputSchema:
    fitted_names = getattr(estimator, "feature_names_in_", None)
    fitted = [str(name) for name in fitted_names] if fitted_names is not None else None
    features = metadata.get("features") or fitted
    if not isinstance(features, list) or not features or not all(isinstance(f, str) for f in features):
        raise ModelLoadError("metadata.json has no 'features' list (and the estimator has no feature names)")
    if len(set(features)) != len(features):
        raise ModelLoadError(f"metadata.json lists a feature twice: {features}")
    if fitted is not None and sorted(fitted) != sorted(features):
        raise ModelLoadError(f"the estimator was fitted on {fitted}, metadata.json lists {features}")
    expected = getattr(estimator, "n_features_in_", None)
    if expected is not None and expected != len(features):
        raise ModelLoadError(f"the estimator takes {expected} features, metadata.json lists {len(features)}")
    return InputSchema(features=features, columns=fitted or features, feature_types=_feature_types(metadata))


def _feature_types(metadata: dict[str, Any]) -> dict[str, str]:
    """Optional ``featureTypes`` {name: numeric|categorical}; features default to numeric."""
    types = metadata.get("featureTypes") or {}
    if not isinstance(types, dict) or not set(types.values()) <= {NUMERIC, CATEGORICAL}:
        raise ModelLoadError(f"metadata.json featureTypes must map names to {NUMERIC!r} or {CATEGORICAL!r}")
    return dict(types)


def _classes(metadata: dict[str, Any], estimator: Any) -> list[Any] | None:
    classes = metadata.get("classes")
    if classes is None and getattr(estimator, "classes_", None) is not None:
        classes = np.asarray(estimator.classes_).tolist()
    return list(classes) if isinstance(classes, list) else None


def _predictor(estimator: Any, schema: InputSchema) -> Callable[[np.ndarray], np.ndarray]:
    """``estimator.predict`` on an ndarray, or through a DataFrame when only that works.

    A pipeline whose ColumnTransformer selects columns by name needs a DataFrame; that costs
    ~0.2 ms per request, so it is used only when a warm-up prediction on an ndarray fails.
    """
    probe = _probe_row(schema)
    ndarray_predict = _quiet_predictor(estimator)
    try:
        ndarray_predict(probe)
        return ndarray_predict
    except Exception as ndarray_error:
        frame_predict = _frame_predictor(estimator, schema.columns)
        if frame_predict is not None:
            try:
                frame_predict(probe)
                log.info("the estimator needs a DataFrame; predicting through pandas")
                return frame_predict
            except Exception:
                pass
        log.warning("warm-up prediction on one all-zero row failed (serving anyway): %s", _first_line(ndarray_error))
        return ndarray_predict


def _quiet_predictor(estimator: Any) -> Callable[[np.ndarray], np.ndarray]:
    """An estimator fitted on a DataFrame warns on every ndarray call; our columns are in its order."""
    if getattr(estimator, "feature_names_in_", None) is None:
        return estimator.predict

    def predict(matrix: np.ndarray) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="X does not have valid feature names")
            return estimator.predict(matrix)

    return predict


def _frame_predictor(estimator: Any, columns: list[str]) -> Callable[[np.ndarray], np.ndarray] | None:
    if getattr(estimator, "feature_names_in_", None) is None:
        return None
    try:
        import pandas as pd
    except ImportError:
        return None
    return lambda matrix: estimator.predict(pd.DataFrame(matrix, columns=columns))


def _probe_row(schema: InputSchema) -> np.ndarray:
    if schema.all_numeric:
        return np.zeros((1, len(schema.columns)), dtype=np.float64)
    return np.array(
        [["" if schema.feature_types.get(name) == CATEGORICAL else 0.0 for name in schema.columns]], dtype=object
    )


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:300]
