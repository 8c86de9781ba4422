"""The model server's metric names and labels: the operator's queries select on these."""

from __future__ import annotations

# Labels the server sets on every series; Prometheus adds `namespace` and `pod` when it scrapes.
BASE_LABELS = ("model", "version", "track")

PREDICTIONS = "mfl_predictions_total"
PREDICTION_LATENCY = "mfl_prediction_latency_seconds"
FEEDBACK = "mfl_feedback_total"
FEEDBACK_CORRECT = "mfl_feedback_correct_total"
FEEDBACK_INCORRECT = "mfl_feedback_incorrect_total"
FEEDBACK_REJECTED = "mfl_feedback_rejected_total"
FEEDBACK_ABS_ERROR = "mfl_feedback_abs_error"
CONFUSION = "mfl_confusion_total"
HTTP_REQUESTS = "mfl_http_requests_total"
# Input drift (mfl_contracts.inputprofile): served values per feature and bin of the version's training deciles,
# and the share of training rows in each bin; both with the extra labels `feature` and `bin`.
FEATURE_BINS = "mfl_feature_bin_total"
FEATURE_BIN_EXPECTED = "mfl_feature_bin_expected"
