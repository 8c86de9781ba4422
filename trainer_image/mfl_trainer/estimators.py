"""Estimators by short name, the preprocessing pipeline around them, and incremental training.

The saved model is a scikit-learn ``Pipeline``: ``prepare`` (a ``ColumnTransformer``) then ``model``.
Its input is a 2-D array with one column per feature in ``metadata.features`` order: float64 when
every feature is numeric, object dtype when some feature is categorical (text).

LightGBM's estimators (``lightgbm``, ``lightgbm_regressor``) are its scikit-learn API classes, imported on
first use. Their features are numeric only and pass through unchanged (LightGBM handles missing values), so
the pipeline's input is the booster's input too: ``model.txt`` (formats.py) serves the same rows.

``keras_dense`` is ``mfl_keras.classifier.KerasDenseClassifier``, a Keras network with a scikit-learn face,
imported on first use (only the Keras images install Keras; docs/contracts.md, "Keras models").
"""

from __future__ import annotations

import copy
import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import (
    GradientBoostingClassifier,
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge, SGDClassifier, SGDRegressor
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from mfl_contracts.estimators import KERAS, LIGHTGBM, SKLEARN

from .errors import TrainerError
from .tables import NUMERIC
from .threads import thread_budget

try:
    from sklearn.utils._param_validation import InvalidParameterError
except ImportError:  # pragma: no cover - private module moved
    InvalidParameterError = ValueError  # type: ignore[misc,assignment]

MAX_CATEGORIES = 32  # per categorical feature; rarer values share one "infrequent" column
PARTIAL_FIT, GROW, WARM_REFIT, BOOST_MORE = "partial_fit", "grow", "warm_refit", "init_model"
DEFAULT_EPOCHS = 5


@dataclass(frozen=True)
class EstimatorSpec:
    name: str
    task: str
    factory: Callable[..., BaseEstimator]
    defaults: dict[str, Any] = field(default_factory=dict)
    linear: bool = False  # impute and standardise numeric features
    native_nan: bool = False  # handles missing values itself
    incremental: str | None = None  # PARTIAL_FIT, GROW (warm start adds trees), WARM_REFIT or BOOST_MORE
    growth_param: str | None = None  # GROW, BOOST_MORE: the parameter counting trees / iterations
    format: str = SKLEARN  # what a version publishes (formats.py)
    threads_param: str | None = None  # set to the trainer's thread budget unless a hyperparameter sets it
    numeric_only: bool = False  # categorical (text) features are refused


class _LightGBM:
    """A LightGBM scikit-learn API class, imported on first use: most runs never load LightGBM (and OpenMP)."""

    def __init__(self, name: str) -> None:
        self.__name__ = name

    @property
    def cls(self) -> type[BaseEstimator]:
        return getattr(importlib.import_module("lightgbm"), self.__name__)  # type: ignore[no-any-return]

    def __call__(self, **params: Any) -> BaseEstimator:
        return self.cls(**params)


def _lightgbm_spec(name: str, task: str, cls: str) -> EstimatorSpec:
    return EstimatorSpec(
        name,
        task,
        _LightGBM(cls),
        {"verbose": -1},
        native_nan=True,
        incremental=BOOST_MORE,
        growth_param="n_estimators",
        format=LIGHTGBM,
        threads_param="n_jobs",
        numeric_only=True,
    )


class _Keras:
    """mfl_keras's classifier (the seed's dense -> dropout -> sigmoid network), loaded on first use: only the
    mfl-trainer-keras image carries Keras and JAX, and building one checks they are there."""

    __name__ = "KerasDenseClassifier"

    @property
    def cls(self) -> type[BaseEstimator]:
        return importlib.import_module("mfl_keras.classifier").KerasDenseClassifier  # type: ignore[no-any-return]

    def __call__(self, **params: Any) -> BaseEstimator:
        module = importlib.import_module("mfl_keras.classifier")
        try:
            module.keras_module()
        except ImportError as error:
            raise TrainerError(f"{error}; set retraining's trainer image to mfl-trainer-keras") from None
        return module.KerasDenseClassifier(**params)  # type: ignore[no-any-return]


ESTIMATORS: dict[str, EstimatorSpec] = {
    spec.name: spec
    for spec in [
        EstimatorSpec(
            "logistic_regression",
            "classification",
            LogisticRegression,
            {"max_iter": 1000},
            linear=True,
            incremental=WARM_REFIT,
        ),
        EstimatorSpec(
            "random_forest", "classification", RandomForestClassifier, incremental=GROW, growth_param="n_estimators"
        ),
        EstimatorSpec(
            "hist_gradient_boosting",
            "classification",
            HistGradientBoostingClassifier,
            native_nan=True,
            incremental=GROW,
            growth_param="max_iter",
        ),
        EstimatorSpec(
            "sgd", "classification", SGDClassifier, {"loss": "log_loss"}, linear=True, incremental=PARTIAL_FIT
        ),
        EstimatorSpec(
            "gradient_boosting",
            "classification",
            GradientBoostingClassifier,
            incremental=GROW,
            growth_param="n_estimators",
        ),
        EstimatorSpec("ridge", "regression", Ridge, linear=True),
        EstimatorSpec(
            "random_forest_regressor",
            "regression",
            RandomForestRegressor,
            incremental=GROW,
            growth_param="n_estimators",
        ),
        EstimatorSpec(
            "hist_gradient_boosting_regressor",
            "regression",
            HistGradientBoostingRegressor,
            native_nan=True,
            incremental=GROW,
            growth_param="max_iter",
        ),
        EstimatorSpec("sgd_regressor", "regression", SGDRegressor, linear=True, incremental=PARTIAL_FIT),
        _lightgbm_spec("lightgbm", "classification", "LGBMClassifier"),
        _lightgbm_spec("lightgbm_regressor", "regression", "LGBMRegressor"),
        # Numeric features are imputed (medians) and passed on: the network standardises them itself.
        EstimatorSpec("keras_dense", "classification", _Keras(), format=KERAS, incremental=WARM_REFIT),
    ]
}


def estimator_spec(name: str, task: str) -> EstimatorSpec:
    spec = ESTIMATORS.get(name)
    if spec is None:
        raise TrainerError(f"unknown estimator {name!r}; known: {sorted(ESTIMATORS)}")
    if spec.task != task:
        fitting = sorted(n for n, s in ESTIMATORS.items() if s.task == task)
        raise TrainerError(f"estimator {name!r} is for {spec.task} but task is {task!r}; use one of {fitting}")
    return spec


def make_estimator(spec: EstimatorSpec, hyperparameters: dict[str, Any], seed: int) -> BaseEstimator:
    """A fresh estimator: defaults, a fixed random_state, the thread budget, then the hyperparameters (names
    checked)."""
    estimator = spec.factory(**spec.defaults)
    check_hyperparameter_names(spec, estimator, hyperparameters)
    if "random_state" in estimator.get_params(deep=False):
        estimator.set_params(random_state=seed)
    if spec.threads_param:
        estimator.set_params(**{spec.threads_param: thread_budget()})
    estimator.set_params(**hyperparameters)
    _validate_values(spec, estimator)
    return estimator


def check_hyperparameter_names(spec: EstimatorSpec, estimator: BaseEstimator, hyperparameters: dict[str, Any]) -> None:
    valid = estimator.get_params(deep=False)
    unknown = sorted(set(hyperparameters) - set(valid))
    if unknown:
        raise TrainerError(
            f"unknown hyperparameter(s) {unknown} for estimator {spec.name!r} "
            f"({type(estimator).__name__}); valid: {sorted(valid)}"
        )


def _validate_values(spec: EstimatorSpec, estimator: BaseEstimator) -> None:
    validate = getattr(estimator, "_validate_params", None)
    if validate is None or not hasattr(estimator, "_parameter_constraints"):  # LightGBM checks when it fits
        return
    try:
        validate()
    except InvalidParameterError as error:
        raise TrainerError(f"invalid hyperparameter for estimator {spec.name!r}: {error}") from error


def make_pipeline(
    spec: EstimatorSpec, estimator: BaseEstimator, features: list[str], feature_types: dict[str, str]
) -> Pipeline:
    numeric = [i for i, name in enumerate(features) if feature_types[name] == NUMERIC]
    categorical = [i for i, name in enumerate(features) if feature_types[name] != NUMERIC]
    parts = []
    if numeric:
        parts.append(("numeric", _numeric_steps(spec), numeric))
    if categorical:
        parts.append(("categorical", _categorical_steps(), categorical))
    # Dense output: histogram gradient boosting does not take sparse input.
    prepare = ColumnTransformer(parts, sparse_threshold=0.0)
    return Pipeline([("prepare", prepare), ("model", estimator)])


def _numeric_steps(spec: EstimatorSpec) -> Any:
    if spec.native_nan:
        return "passthrough"
    impute = SimpleImputer(strategy="median", keep_empty_features=True)
    return Pipeline([("impute", impute), ("scale", StandardScaler())]) if spec.linear else impute


def _categorical_steps() -> Pipeline:
    return Pipeline(
        [
            ("fill", SimpleImputer(missing_values=None, strategy="constant", fill_value="")),
            (
                "onehot",
                OneHotEncoder(handle_unknown="infrequent_if_exist", max_categories=MAX_CATEGORIES, sparse_output=False),
            ),
        ]
    )


def fit(pipeline: Pipeline, X: np.ndarray, y: np.ndarray, weights: np.ndarray) -> Pipeline:
    try:
        return pipeline.fit(X, y, model__sample_weight=weights)
    except _training_errors() as error:  # sklearn's way to reject a parameter combination or the data
        raise TrainerError(f"training failed: {error}") from error


def _training_errors() -> tuple[type[Exception], ...]:
    """ValueError, and LightGBMError once LightGBM is loaded (how it rejects a parameter value)."""
    basic = sys.modules.get("lightgbm.basic")
    error = getattr(basic, "LightGBMError", None)
    return (ValueError, error) if isinstance(error, type) else (ValueError,)


def check_features(spec: EstimatorSpec, feature_types: dict[str, str]) -> None:
    categorical = sorted(name for name, kind in feature_types.items() if kind != NUMERIC)
    if spec.numeric_only and categorical:
        numeric_only = sorted(n for n, s in ESTIMATORS.items() if s.numeric_only)
        raise TrainerError(
            f"estimator {spec.name!r} takes numeric features only (its {spec.format} model is served as is, "
            f"without the one-hot encoding of text): features {categorical} are categorical; drop them or use "
            f"an estimator other than {numeric_only}"
        )


# --- incremental ---------------------------------------------------------------------------------


def check_incremental(spec: EstimatorSpec) -> None:
    if spec.incremental is None:
        supported = sorted(n for n, s in ESTIMATORS.items() if s.incremental)
        raise TrainerError(
            f"estimator {spec.name!r} supports neither partial_fit nor warm_start, so it "
            f"cannot train incrementally; incremental estimators: {supported}"
        )


def continue_training(
    champion: Pipeline,
    spec: EstimatorSpec,
    hyperparameters: dict[str, Any],
    X: np.ndarray,
    y: np.ndarray,
    weights: np.ndarray,
    steps: int | None,
    seed: int,
) -> tuple[Pipeline, dict[str, Any]]:
    """The champion trained further on new rows; its fitted preprocessing stays as it is."""
    check_incremental(spec)
    model = copy.deepcopy(champion)
    final = _final_step(model, spec)
    check_hyperparameter_names(spec, final, hyperparameters)
    final.set_params(**hyperparameters)
    _check_new_classes(spec, final, y)
    X_prepared = model[:-1].transform(X)
    if spec.incremental == PARTIAL_FIT:
        detail = _partial_fit(final, X_prepared, y, weights, steps or DEFAULT_EPOCHS, seed)
    elif spec.incremental == BOOST_MORE:
        detail = _boost_more(final, spec, X_prepared, y, weights, steps)
    else:
        detail = _warm_start(final, spec, X_prepared, y, weights, steps)
    return model, detail


def _final_step(model: Any, spec: EstimatorSpec) -> BaseEstimator:
    final = model[-1] if isinstance(model, Pipeline) else None
    if final is None or type(final) is not getattr(spec.factory, "cls", spec.factory):
        kind = type(final).__name__ if final is not None else type(model).__name__
        raise TrainerError(
            f"incremental training with {spec.name!r} needs a champion of the same kind "
            f"({spec.factory.__name__} in a Pipeline); the champion is a {kind}"
        )
    return final


def _check_new_classes(spec: EstimatorSpec, final: BaseEstimator, y: np.ndarray) -> None:
    known = getattr(final, "classes_", None)
    if spec.task != "classification" or known is None:
        return
    known_set, new_set = set(known.tolist()), set(y.tolist())
    if not new_set <= known_set:
        raise TrainerError(
            f"incremental training cannot add classes: feedback has {sorted(new_set - known_set)} "
            f"unknown to the champion (classes {sorted(known_set)})"
        )
    if spec.incremental != PARTIAL_FIT and new_set != known_set:
        raise TrainerError(
            f"incremental warm start with {spec.name!r} needs every champion class in the new "
            f"feedback; missing {sorted(known_set - new_set)}"
        )


def _partial_fit(
    final: BaseEstimator, X: np.ndarray, y: np.ndarray, weights: np.ndarray, epochs: int, seed: int
) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        order = rng.permutation(len(y))
        final.partial_fit(X[order], y[order], sample_weight=weights[order])
    return {"mode": PARTIAL_FIT, "epochs": epochs, "rows": len(y)}


def _warm_start(
    final: BaseEstimator, spec: EstimatorSpec, X: np.ndarray, y: np.ndarray, weights: np.ndarray, steps: int | None
) -> dict[str, Any]:
    final.set_params(warm_start=True)
    detail: dict[str, Any] = {"mode": spec.incremental, "rows": len(y)}
    if spec.incremental == GROW:
        size = _fitted_size(final)
        added = steps or max(10, size // 2)
        final.set_params(**{spec.growth_param: size + added})
        detail.update(before=size, added=added)
    try:
        final.fit(X, y, sample_weight=weights)
    except ValueError as error:
        raise TrainerError(f"incremental training failed: {error}") from error
    if spec.incremental == GROW:
        detail["after"] = _fitted_size(final)
    return detail


def _boost_more(
    final: BaseEstimator, spec: EstimatorSpec, X: np.ndarray, y: np.ndarray, weights: np.ndarray, steps: int | None
) -> dict[str, Any]:
    """LightGBM: more boosting rounds on the new rows, starting from the champion's booster (init_model)."""
    assert spec.growth_param is not None
    size = _fitted_size(final)
    added = steps or max(10, size // 2)
    champion = final.booster_
    final.set_params(**{spec.growth_param: added})
    try:
        final.fit(X, y, sample_weight=weights, init_model=champion)
    except _training_errors() as error:
        raise TrainerError(f"incremental training failed: {error}") from error
    after = _fitted_size(final)
    final.set_params(**{spec.growth_param: after})  # the parameters describe the model: every round
    return {"mode": BOOST_MORE, "rows": len(y), "before": size, "added": added, "after": after}


def _fitted_size(final: BaseEstimator) -> int:
    """Trees or boosting iterations a fitted ensemble holds."""
    for attribute in ("n_iter_", "n_estimators_"):
        if hasattr(final, attribute):
            return int(getattr(final, attribute))
    return len(final.estimators_)
