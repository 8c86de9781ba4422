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
)
REGRESSORS = (
    "ridge",
    "random_forest_regressor",
    "hist_gradient_boosting_regressor",
    "sgd_regressor",
    "lightgbm_regressor",
)
ESTIMATORS = CLASSIFIERS + REGRESSORS

SKLEARN, LIGHTGBM = "sklearn", "lightgbm"
# Estimators not listed publish a scikit-learn pipeline (format "sklearn").
FORMATS = {"lightgbm": LIGHTGBM, "lightgbm_regressor": LIGHTGBM}


def model_format(estimator: str) -> str:
    return FORMATS.get(estimator, SKLEARN)
