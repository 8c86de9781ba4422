"""The estimators a loop may name (`retraining.estimator`); the trainer implements exactly these."""

from __future__ import annotations

CLASSIFIERS = ("hist_gradient_boosting", "logistic_regression", "random_forest", "sgd", "gradient_boosting")
REGRESSORS = ("ridge", "random_forest_regressor", "hist_gradient_boosting_regressor", "sgd_regressor")
ESTIMATORS = CLASSIFIERS + REGRESSORS
