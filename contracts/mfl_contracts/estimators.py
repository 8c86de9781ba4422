"""The estimators a loop may name (`retraining.estimator`); the trainer implements exactly these.

Each estimator's version is published in one model format (metadata.json `format`): its V2 runtime's files
and `model-settings.json` (docs/contracts.md, "Artifact store layout").
"""

from __future__ import annotations

CLASSIFIERS = (
    "hist_gradient_boosting",
    "logistic_regression",
    "random_forest",
    "sgd",
    "gradient_boosting",
    "lightgbm",
    "keras_dense",
)
REGRESSORS = (
    "ridge",
    "random_forest_regressor",
    "hist_gradient_boosting_regressor",
    "sgd_regressor",
    "lightgbm_regressor",
)
ESTIMATORS = CLASSIFIERS + REGRESSORS

SKLEARN, LIGHTGBM, KERAS = "sklearn", "lightgbm", "keras"
# Estimators not listed publish a scikit-learn pipeline (format "sklearn").
FORMATS = {"lightgbm": LIGHTGBM, "lightgbm_regressor": LIGHTGBM, "keras_dense": KERAS}


def model_format(estimator: str) -> str:
    return FORMATS.get(estimator, SKLEARN)
