"""The seed's Keras network as a scikit-learn classifier: Input -> Normalization -> Dense(units, relu) ->
Dropout(dropout) -> Dense(1, sigmoid) for two classes, Dense(k, softmax) for k.

It fits, predicts and pickles like any scikit-learn estimator, so a trainer `Pipeline` holds it and every
part of the loop that loads `model.joblib` (the trainer's champion evaluation, the reference server) uses it
unchanged. Its pickle stores the network as the bytes of a `.keras` archive, Keras' own format, which is also
published beside it as `model.keras` (`save_keras`). The network standardises its input itself (a
Normalization layer adapted on the training rows), so `model.keras` takes the rows the pipeline hands it: the
numeric features with missing values imputed, categorical ones one-hot encoded (all-numeric, complete rows: the
request's features as they are, in metadata `features` order).

Deterministic for a `random_state`: the weights' initialisers and the dropout are seeded from it and the rows
are shuffled per epoch by a NumPy generator of it; no global random state is touched.
"""

from __future__ import annotations

import importlib
import os
import tempfile
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_array, check_is_fitted

try:
    from sklearn.utils._param_validation import Interval
except ImportError:  # pragma: no cover - private module moved: parameters are then checked when fitting
    Interval = None  # type: ignore[assignment,misc]

BACKEND = "jax"  # the backend the images install (requirements/keras.txt); KERAS_BACKEND overrides it
ARCHIVE_SUFFIX = ".keras"
# Prediction batches are padded to a power of two (at most this many rows per call): a JAX function is
# compiled once per input shape, so a server sees at most a dozen shapes instead of one per request size.
PREDICT_CHUNK = 1024


# XLA's CPU client runs on one thread unless XLA_FLAGS says otherwise: the network is small, so one thread
# trains it faster than a pool that shares two cores (docs/contracts.md, "Keras models"), and a Pod stays
# inside its CPU limit.
XLA_FLAGS = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def keras_module() -> Any:
    """Keras, on the JAX backend unless KERAS_BACKEND names another; a clear error where it is not installed."""
    os.environ.setdefault("KERAS_BACKEND", BACKEND)
    os.environ.setdefault("XLA_FLAGS", XLA_FLAGS)
    try:
        import keras
    except ImportError as error:
        raise ImportError(
            f"Keras is not installed ({error}): the estimator keras_dense needs the `keras` extra "
            "(requirements/keras.txt), which the mfl-trainer-keras and mfl-server-keras images carry"
        ) from error
    return keras


def library_versions() -> dict[str, str]:
    """Keras' version and its backend's, for a version's metadata."""
    keras = keras_module()
    backend = keras.backend.backend()
    module = importlib.import_module({"tensorflow": "tensorflow", "torch": "torch"}.get(backend, backend))
    return {"keras": keras.__version__, backend: str(getattr(module, "__version__", "unknown"))}


class KerasDenseClassifier(ClassifierMixin, BaseEstimator):
    """Binary or multiclass classifier: one hidden dense layer with dropout, trained with Adam.

    units: hidden units; dropout: rate of the dropout layer after it; epochs and batch_size of the training;
    learning_rate: Adam's; random_state: the seed of the initial weights, the dropout and the shuffling;
    warm_start: a fitted network trains on (`epochs` more, on the new rows; the trainer's incremental mode
    `warm_refit`) instead of starting anew, keeping its standardisation and classes.
    """

    if Interval is not None:
        _parameter_constraints: dict[str, list[Any]] = {
            "units": [Interval(Integral, 1, 4096, closed="both")],
            "dropout": [Interval(Real, 0.0, 1.0, closed="left")],
            "epochs": [Interval(Integral, 1, 10_000, closed="both")],
            "batch_size": [Interval(Integral, 1, None, closed="left")],
            "learning_rate": [Interval(Real, 0.0, None, closed="neither")],
            "random_state": [Interval(Integral, 0, 2**31 - 1, closed="both")],
            "warm_start": ["boolean"],
        }

    def __init__(
        self,
        units: int = 32,
        dropout: float = 0.2,
        epochs: int = 20,
        batch_size: int = 32,
        learning_rate: float = 0.003,
        random_state: int = 0,
        warm_start: bool = False,
    ) -> None:
        self.units = units
        self.dropout = dropout
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.random_state = random_state
        self.warm_start = warm_start

    # --- training ------------------------------------------------------------------------------------

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> KerasDenseClassifier:
        if hasattr(self, "_validate_params") and hasattr(self, "_parameter_constraints"):
            self._validate_params()
        keras = keras_module()
        y = np.asarray(y).ravel()
        if self.warm_start and hasattr(self, "model_"):
            X = self._rows(X, reset=False)
            encoded = self._known_labels(y)
            self.model_.compile(optimizer=keras.optimizers.Adam(learning_rate=self.learning_rate), loss=self._loss())
        else:
            X = self._rows(X, reset=True)
            self.classes_, encoded = np.unique(y, return_inverse=True)
            if len(self.classes_) < 2:
                raise ValueError(
                    f"a classifier needs two classes or more; the labels hold only {self.classes_.tolist()}"
                )
            self.model_ = self._network(keras, X)
        if len(y) != len(X):
            raise ValueError(f"X has {len(X)} rows but y has {len(y)} labels")
        weights = _weights(sample_weight, len(y))
        binary = len(self.classes_) == 2
        targets = encoded.astype("float32" if binary else "int32")
        rng = np.random.default_rng(self.random_state)
        for _ in range(self.epochs):
            order = rng.permutation(len(y))
            self.model_.fit(
                X[order],
                targets[order],
                sample_weight=None if weights is None else weights[order],
                batch_size=self.batch_size,
                epochs=1,
                shuffle=False,
                verbose=0,
            )
        return self

    def _network(self, keras: Any, X: np.ndarray) -> Any:
        seed = int(self.random_state)
        classes = len(self.classes_)
        normalize = keras.layers.Normalization(name="standardize")
        normalize.adapt(X)
        inputs = keras.Input(shape=(X.shape[1],), name="features")
        hidden = keras.layers.Dense(
            self.units,
            activation="relu",
            kernel_initializer=keras.initializers.GlorotUniform(seed=seed),
            name="dense",
        )(normalize(inputs))
        hidden = keras.layers.Dropout(self.dropout, seed=seed + 1, name="dropout")(hidden)
        binary = classes == 2
        outputs = keras.layers.Dense(
            1 if binary else classes,
            activation="sigmoid" if binary else "softmax",
            kernel_initializer=keras.initializers.GlorotUniform(seed=seed + 2),
            name="output",
        )(hidden)
        model = keras.Model(inputs, outputs, name="dense_dropout")
        model.compile(optimizer=keras.optimizers.Adam(learning_rate=self.learning_rate), loss=self._loss())
        return model

    def _loss(self) -> str:
        return "binary_crossentropy" if len(self.classes_) == 2 else "sparse_categorical_crossentropy"

    def _known_labels(self, y: np.ndarray) -> np.ndarray:
        """The labels as indices into the fitted classes_ (warm start: no class can be added)."""
        index = np.clip(np.searchsorted(self.classes_, y), 0, len(self.classes_) - 1)
        unknown = self.classes_[index] != y
        if unknown.any():
            raise ValueError(
                f"warm start cannot add classes: {sorted(set(y[unknown].tolist()))} are not in {self.classes_.tolist()}"
            )
        return index

    # --- prediction ----------------------------------------------------------------------------------

    def predict_proba(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "model_")
        X = self._rows(X, reset=False)
        scores = np.concatenate(
            [self._forward(X[start : start + PREDICT_CHUNK]) for start in range(0, len(X), PREDICT_CHUNK)]
            or [np.empty((0, self.model_.output_shape[-1]))]
        ).astype(np.float64)
        if scores.shape[1] == 1:
            return np.hstack([1.0 - scores, scores])
        return scores

    def predict(self, X: Any) -> np.ndarray:
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]

    def _forward(self, X: np.ndarray) -> np.ndarray:
        rows = len(X)
        padded = 1 << max(0, (rows - 1).bit_length())
        if padded != rows:
            X = np.vstack([X, np.zeros((padded - rows, X.shape[1]), dtype=X.dtype)])
        return np.asarray(self.model_.predict_on_batch(X))[:rows]

    def _rows(self, X: Any, reset: bool) -> np.ndarray:
        X = check_array(X, dtype=np.float64)  # finite: rejects NaN and inf
        if reset:
            self.n_features_in_ = X.shape[1]
        elif X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} features, but {type(self).__name__} expects {self.n_features_in_}")
        return X.astype(np.float32)

    # --- the network as a .keras archive -------------------------------------------------------------

    def save_keras(self, path: Path | str) -> None:
        """The fitted network in Keras' own format (a `.keras` zip archive)."""
        check_is_fitted(self, "model_")
        self.model_.save(str(path))

    def __getstate__(self) -> dict[str, Any]:
        state = dict(super().__getstate__())
        model = state.pop("model_", None)
        if model is not None:
            state["keras_archive_"] = _archive(model)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        archive = state.pop("keras_archive_", None)
        super().__setstate__(state)
        if archive is not None:
            self.model_ = _load_archive(archive)


def _weights(sample_weight: Any, rows: int) -> np.ndarray | None:
    """Weights scaled to mean 1: Keras averages the weighted loss over the batch, so their scale would act
    as a learning rate."""
    if sample_weight is None:
        return None
    weights = np.asarray(sample_weight, dtype=np.float64).ravel()
    if len(weights) != rows or not np.isfinite(weights).all() or (weights < 0).any() or weights.sum() <= 0:
        raise ValueError("sample_weight must hold one finite, non-negative weight per row, not all zero")
    return (weights * (rows / weights.sum())).astype(np.float32)


def _archive(model: Any) -> bytes:
    with tempfile.TemporaryDirectory(prefix="mfl-keras-") as folder:
        path = Path(folder) / f"model{ARCHIVE_SUFFIX}"
        model.save(str(path))
        return path.read_bytes()


def _load_archive(archive: bytes) -> Any:
    keras = keras_module()
    with tempfile.TemporaryDirectory(prefix="mfl-keras-") as folder:
        path = Path(folder) / f"model{ARCHIVE_SUFFIX}"
        path.write_bytes(archive)
        return keras.saving.load_model(str(path), compile=False)
