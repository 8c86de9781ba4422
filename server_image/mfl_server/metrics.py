"""Prometheus metrics with the contract's names and labels (docs/contracts.md, "Model server").

Every metric carries model, version, track. For feedback metrics those are the PREDICTION's version
and track (decoded from its id), so a label given to any replica scores the model that made it.
Label children are cached: ``labels()`` takes a lock and hashes the label tuple on every call.
"""

from __future__ import annotations

from typing import Any

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

from mfl_contracts import metrics as names
from mfl_contracts.inputprofile import bin_names, count_bins
from mfl_contracts.metrics import BASE_LABELS

# Per-request latency of ms-scale inference; 0.5 s is the operator's default p99 ceiling.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)
ABS_ERROR_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 1000.0, 10000.0)
ENDPOINTS = ("predict", "infer", "feedback")  # "infer": the Open Inference Protocol route
# The classic text format: every Prometheus version parses it, and our names need nothing newer.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class ServerMetrics:
    def __init__(self, model: str, version: int, track: str) -> None:
        prometheus_client.disable_created_metrics()  # only the contract's series, no *_created
        self.registry = CollectorRegistry(auto_describe=True)
        self._model, self._own = model, (str(version), track)
        families = _families(self.registry)
        self._predictions, self._latency = families["predictions"], families["latency"]
        self._feedback, self._correct = families["feedback"], families["correct"]
        self._incorrect, self._confusion = families["incorrect"], families["confusion"]
        self._abs_error, self._http, self._rejected = families["abs_error"], families["http"], families["rejected"]
        self._bins, self._expected = families["bins"], families["expected"]
        self._children: dict[tuple[Any, ...], Any] = {}
        self._profile: dict[str, Any] = {}  # feature -> its inputprofile entry, when inputs are counted
        self._initialise_own_series()

    def watch_inputs(self, profile: dict[str, Any] | None) -> None:
        """Count served values into the profile's bins from now on: every bin's series from zero, beside the
        training shares (the operator's PSI needs both, per feature and bin)."""
        self._profile = dict(profile["features"]) if profile else {}
        for feature, entry in self._profile.items():
            for bin_ in bin_names(entry["edges"]):
                self._child(self._bins, *self._own, feature, bin_)
                self._child(self._expected, *self._own, feature, bin_).set(float(entry["expected"].get(bin_, 0.0)))

    def count_inputs(self, records: list[dict[str, Any]]) -> None:
        """One pass over the batch per feature, one counter update per bin that moved."""
        for feature, entry in self._profile.items():
            for bin_, count in count_bins(entry, (record.get(feature) for record in records)).items():
                self._child(self._bins, *self._own, feature, bin_).inc(count)

    def count_predictions(self, rows: int) -> None:
        self._child(self._predictions, *self._own).inc(rows)

    def observe_latency(self, seconds: float) -> None:
        self._child(self._latency, *self._own).observe(seconds)

    def count_request(self, endpoint: str, code: int) -> None:
        self._child(self._http, *self._own, endpoint, str(code)).inc()

    def count_rejected(self, reason: str) -> None:
        self._child(self._rejected, *self._own, reason).inc()

    def count_classification(self, version: int, track: str, correct: bool, actual: str, predicted: str) -> None:
        labels = (str(version), track)
        self._child(self._feedback, *labels).inc()
        self._child(self._correct if correct else self._incorrect, *labels).inc()
        self._child(self._confusion, *labels, actual, predicted).inc()

    def count_regression(self, version: int, track: str, abs_error: float) -> None:
        labels = (str(version), track)
        self._child(self._feedback, *labels).inc()
        self._child(self._abs_error, *labels).observe(abs_error)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def _child(self, family: Any, *labels: str) -> Any:
        key = (id(family), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = family.labels(self._model, *labels)
        return child

    def _initialise_own_series(self) -> None:
        """Zero-valued series from the start, so rate()/increase() see the first events."""
        for family in (self._predictions, self._latency, self._feedback, self._correct, self._incorrect):
            self._child(family, *self._own)
        for endpoint in ENDPOINTS:
            self._child(self._http, *self._own, endpoint, "200")


def _families(registry: CollectorRegistry) -> dict[str, Any]:
    def counter(name: str, doc: str, extra: tuple[str, ...] = ()) -> Counter:
        return Counter(name, doc, (*BASE_LABELS, *extra), registry=registry)

    return {
        "predictions": counter(names.PREDICTIONS, "Rows predicted"),
        "latency": Histogram(
            names.PREDICTION_LATENCY,
            "Time to serve one /predict request",
            BASE_LABELS,
            registry=registry,
            buckets=LATENCY_BUCKETS,
        ),
        "feedback": counter(names.FEEDBACK, "Labels accepted, by the prediction's version and track"),
        "correct": counter(names.FEEDBACK_CORRECT, "Labels equal to the predicted class"),
        "incorrect": counter(names.FEEDBACK_INCORRECT, "Labels different from the predicted class"),
        "confusion": counter(names.CONFUSION, "Labels by actual and predicted class", ("actual", "predicted")),
        "abs_error": Histogram(
            names.FEEDBACK_ABS_ERROR,
            "Absolute error of regression predictions",
            BASE_LABELS,
            registry=registry,
            buckets=ABS_ERROR_BUCKETS,
        ),
        "http": counter(names.HTTP_REQUESTS, "API requests by endpoint and status code", ("endpoint", "code")),
        "rejected": counter(names.FEEDBACK_REJECTED, "Feedback entries rejected, by reason", ("reason",)),
        "bins": counter(names.FEATURE_BINS, "Served values by feature and training-decile bin", ("feature", "bin")),
        "expected": Gauge(
            names.FEATURE_BIN_EXPECTED,
            "Share of the version's training rows in each bin",
            (*BASE_LABELS, "feature", "bin"),
            registry=registry,
        ),
    }
