"""Synthetic concept-drift streams for classification (numpy only).

Shared by the tests, the demo and the benchmarks: train version 1 on concept 0, then serve a stream
whose labels drift to later concepts.

Two generators, both with a binary label:
- ``hyperplane``: features ``x0..x{d-1}`` uniform in [0, 1]; concept ``c`` labels a row 1 when
  ``w_c . (x - 0.5) > 0`` with ``w_c`` a fixed random normal vector, so a new concept is a rotated
  decision boundary (two random directions are nearly orthogonal: a stale model drops towards 50 %).
- ``agrawal``: an Agrawal-like loan-application table (salary, commission, age, elevel, car,
  zipcode, hvalue, hyears, loan); concept ``c`` uses classification rule ``c`` of ``AGRAWAL_RULES``.

Drift: the concept of row ``t`` is the number of drift positions already passed. ``abrupt`` switches
at the position; ``gradual`` mixes old and new concept with probability
``sigmoid(4 (t - position) / width)``, as in river's ConceptDriftStream.

Concepts depend only on ``concept_seed``, the sampled rows only on ``seed``: a base CSV written with
one seed and a stream drawn with another agree on what concept 0 is.

    >>> X, y, names, concept = drift_stream(5000, drift_at=[2500], seed=1)
    >>> write_base_csv("data/base.csv", 2000, seed=2)   # concept 0 only
    >>> write_feedback_logs("churn", X, y, names, ts=now + np.arange(5000))  # as the server logs them
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np

Generator = Literal["hyperplane", "agrawal"]
DriftKind = Literal["abrupt", "gradual"]

AGRAWAL_FEATURES = ["salary", "commission", "age", "elevel", "car", "zipcode", "hvalue", "hyears", "loan"]


class Stream(NamedTuple):
    X: np.ndarray  # (n, n_features) float64
    y: np.ndarray  # (n,) int64, 0 or 1
    feature_names: list[str]
    concept: np.ndarray  # (n,) concept index of each row


def feature_names(generator: Generator = "hyperplane", n_features: int = 10) -> list[str]:
    if generator == "agrawal":
        return list(AGRAWAL_FEATURES)
    _check_generator(generator)
    return [f"x{i}" for i in range(n_features)]


def sample_features(n: int, seed: int = 0, generator: Generator = "hyperplane", n_features: int = 10) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if generator == "agrawal":
        return _sample_agrawal(n, rng)
    _check_generator(generator)
    return rng.random((n, n_features))


def concept_labels(
    X: np.ndarray, concept: int | np.ndarray, generator: Generator = "hyperplane", concept_seed: int = 0
) -> np.ndarray:
    """Labels of the rows of ``X`` under ``concept`` (one index, or one per row)."""
    concepts = np.broadcast_to(np.asarray(concept, dtype=np.int64), (len(X),))
    y = np.zeros(len(X), dtype=np.int64)
    for c in np.unique(concepts):
        rows = concepts == c
        y[rows] = _label_rule(generator, int(c), concept_seed)(X[rows])
    return y


def concept_index(
    n: int, drift_at: Sequence[int] = (), kind: DriftKind = "abrupt", width: int = 1000, seed: int = 0
) -> np.ndarray:
    """Concept of each of ``n`` rows: how many drift positions the row has passed."""
    t = np.arange(n)[:, None]
    positions = np.sort(np.asarray(drift_at, dtype=np.float64))[None, :]
    if kind == "abrupt":
        return (t >= positions).sum(axis=1).astype(np.int64)
    if kind != "gradual":
        raise ValueError(f"kind must be 'abrupt' or 'gradual', got {kind!r}")
    if width <= 0:
        raise ValueError(f"width must be positive, got {width}")
    share_new = 1.0 / (1.0 + np.exp(-4.0 * (t - positions) / width))
    # One uniform draw per row keeps the concept index monotone across chained drifts.
    u = np.random.default_rng([seed, 1]).random((n, 1))
    return (u < share_new).sum(axis=1).astype(np.int64)


def drift_stream(
    n: int,
    drift_at: Sequence[int] = (),
    kind: DriftKind = "abrupt",
    width: int = 1000,
    seed: int = 0,
    generator: Generator = "hyperplane",
    n_features: int = 10,
    noise: float = 0.05,
    concept_seed: int = 0,
) -> Stream:
    """``n`` rows whose labelling concept changes at the ``drift_at`` positions.

    ``noise`` flips that fraction of labels at random (label noise, independent of the concept).
    """
    X = sample_features(n, seed, generator, n_features)
    concept = concept_index(n, drift_at, kind, width, seed)
    return _labelled(X, concept, generator, n_features, noise, seed, concept_seed)


def covariate_shift_stream(
    n: int,
    shift_at: int,
    seed: int = 0,
    generator: Generator = "hyperplane",
    n_features: int = 10,
    noise: float = 0.05,
    concept_seed: int = 0,
    squeeze: float = 0.3,
) -> Stream:
    """Covariate shift: from row ``shift_at`` the inputs come from another distribution, labelled by the same
    concept 0. Hyperplane: every feature squeezed to ``squeeze`` of its range around the centre, where the
    boundary runs (more rows near it, so a model fitted on the old inputs errs more); agrawal: the
    applicants are 30 to 70 years old with a salary under 75,000."""
    X = sample_features(n, seed, generator, n_features)
    shifted = _shifted_features(n - shift_at, [seed, 3], generator, n_features, squeeze)
    X = np.vstack([X[:shift_at], shifted])
    return _labelled(X, np.zeros(n, np.int64), generator, n_features, noise, seed, concept_seed)


def recurring_stream(
    n: int,
    drift_at: Sequence[int],
    cycle: Sequence[int] = (0, 1),
    kind: DriftKind = "abrupt",
    width: int = 1000,
    seed: int = 0,
    generator: Generator = "hyperplane",
    n_features: int = 10,
    noise: float = 0.05,
    concept_seed: int = 0,
) -> Stream:
    """Recurring concepts: after the ``k``-th drift position rows follow concept ``cycle[k % len(cycle)]``
    (A, B, A, B, ... by default). The same rows as ``drift_stream``; only the concepts repeat."""
    X = sample_features(n, seed, generator, n_features)
    concept = np.asarray(cycle, dtype=np.int64)[concept_index(n, drift_at, kind, width, seed) % len(cycle)]
    return _labelled(X, concept, generator, n_features, noise, seed, concept_seed)


def prior_shift_stream(
    n: int,
    shift_at: int,
    positive_share: float = 0.85,
    seed: int = 0,
    generator: Generator = "hyperplane",
    n_features: int = 10,
    noise: float = 0.05,
    concept_seed: int = 0,
) -> Stream:
    """Prior (label) shift: from row ``shift_at`` a ``positive_share`` of the rows are of class 1 (before
    it, what concept 0 gives), each class's inputs drawn as before: p(x | y) and the concept stay."""
    if not 0.0 < positive_share < 1.0:
        raise ValueError(f"positive_share must be in (0, 1), got {positive_share}")
    X = sample_features(n, seed, generator, n_features)
    rng = np.random.default_rng([seed, 4])
    wanted = (rng.random(n - shift_at) < positive_share).astype(np.int64)
    pool = sample_features(4 * (n - shift_at) + 100, int(rng.integers(2**31)), generator, n_features)
    labels = concept_labels(pool, 0, generator, concept_seed)
    by_class = [pool[labels == c] for c in (0, 1)]
    shifted = np.empty((len(wanted), X.shape[1]))
    for c in (0, 1):
        rows = wanted == c
        shifted[rows] = by_class[c][: rows.sum()]  # short of a class: numpy refuses the shapes
    X = np.vstack([X[:shift_at], shifted])
    return _labelled(X, np.zeros(n, np.int64), generator, n_features, noise, seed, concept_seed)


def rotating_stream(
    n: int,
    start: int,
    turn: float = np.pi,
    seed: int = 0,
    n_features: int = 10,
    noise: float = 0.05,
    concept_seed: int = 0,
) -> Stream:
    """Slow continuous drift (hyperplane only): concept 0 until row ``start``, then the boundary's normal
    turns a little every row, from concept 0's towards concept 1's, by ``turn`` radians over the rows left.
    ``concept`` is 0 before ``start`` and 1 from it (no two rows after it share a concept)."""
    X = sample_features(n, seed, "hyperplane", n_features)
    first, second = (_hyperplane_weights(c, concept_seed, n_features) for c in (0, 1))
    second = second - (second @ first) / (first @ first) * first  # orthogonal to the first, same length
    second *= np.linalg.norm(first) / np.linalg.norm(second)
    angle = turn * np.clip(np.arange(n) - start, 0, None) / max(1, n - start)
    normals = np.cos(angle)[:, None] * first + np.sin(angle)[:, None] * second
    y = flip_labels((np.einsum("ij,ij->i", X - 0.5, normals) > 0).astype(np.int64), noise, seed)
    return Stream(X, y, feature_names("hyperplane", n_features), (np.arange(n) >= start).astype(np.int64))


def noise_burst_stream(
    n: int,
    burst: tuple[int, int],
    burst_noise: float = 0.3,
    seed: int = 0,
    generator: Generator = "hyperplane",
    n_features: int = 10,
    noise: float = 0.05,
    concept_seed: int = 0,
) -> Stream:
    """No drift, but rows ``burst[0]`` to ``burst[1]`` have a further ``burst_noise`` of their labels
    flipped (a labelling outage); outside the burst the labels are ``drift_stream(n, ...)``'s exactly."""
    stream = drift_stream(
        n, (), seed=seed, generator=generator, n_features=n_features, noise=noise, concept_seed=concept_seed
    )
    start, stop = burst
    y = stream.y.copy()
    y[start:stop] = flip_labels(y[start:stop], burst_noise, seed + 1)
    return stream._replace(y=y)


def _labelled(
    X: np.ndarray,
    concept: np.ndarray,
    generator: Generator,
    n_features: int,
    noise: float,
    seed: int,
    concept_seed: int,
) -> Stream:
    """The rows ``X`` labelled by each row's ``concept``, ``noise`` of the labels flipped: every stream's last step."""
    y = flip_labels(concept_labels(X, concept, generator, concept_seed), noise, seed)
    return Stream(X, y, feature_names(generator, n_features), concept)


def flip_labels(y: np.ndarray, noise: float, seed: int = 0) -> np.ndarray:
    if not 0.0 <= noise < 1.0:
        raise ValueError(f"noise must be in [0, 1), got {noise}")
    flip = np.random.default_rng([seed, 2]).random(len(y)) < noise
    return np.where(flip, 1 - y, y)


def to_records(X: np.ndarray, names: Sequence[str]) -> list[dict[str, float]]:
    """Rows as ``{feature: value}`` dicts, the model server's ``instances`` format."""
    return [dict(zip(names, map(float, row))) for row in X]


def write_base_csv(
    path: str | Path,
    n: int,
    seed: int = 0,
    generator: Generator = "hyperplane",
    n_features: int = 10,
    target: str = "label",
    noise: float = 0.05,
    concept: int = 0,
    concept_seed: int = 0,
) -> list[str]:
    """Write ``n`` rows of one concept as CSV (features + ``target``); returns the feature names."""
    X = sample_features(n, seed, generator, n_features)
    y = flip_labels(concept_labels(X, concept, generator, concept_seed), noise, seed)
    names = feature_names(generator, n_features)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow([*names, target])
        for row, label in zip(X, y):
            writer.writerow([*(f"{v:.6g}" for v in row), int(label)])
    return names


def write_feedback_logs(
    model_dir: str | Path,
    X: np.ndarray,
    y: np.ndarray,
    names: Sequence[str],
    ts: Sequence[float],
    version: int = 1,
    track: str = "stable",
    predictions: Sequence[object] | None = None,
    label_delay: float = 60.0,
    host: str = "synthetic",
) -> list[str]:
    """Append rows as the model server logs them: a prediction line and, ``label_delay`` seconds
    later, a feedback line, in UTC day partitions (docs/contracts.md). Returns the prediction ids."""
    model_dir = Path(model_dir)
    ids = [f"{host}-{int(t * 1000)}-{i}" for i, t in enumerate(ts)]
    predicted = np.asarray(predictions).tolist() if predictions is not None else [None] * len(ids)
    lines: dict[Path, list[str]] = {}
    for row_id, row, label, t, guess in zip(ids, X, y, ts, predicted):
        t, label_ts = float(t), float(t) + label_delay
        _add_line(
            lines,
            model_dir / "predictions",
            t,
            host,
            {
                "id": row_id,
                "ts": t,
                "version": version,
                "track": track,
                "features": dict(zip(names, map(float, row))),
                "prediction": guess,
            },
        )
        _add_line(
            lines,
            model_dir / "feedback",
            label_ts,
            host,
            {
                "id": row_id,
                "ts": label_ts,
                "label": int(label),
                "version": version,
                "track": track,
                "prediction": guess,
                "predictionTs": t,
            },
        )
    for path, content in lines.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as out:
            out.writelines(content)
    return ids


def _add_line(lines: dict[Path, list[str]], folder: Path, ts: float, host: str, record: dict) -> None:
    day = datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%d")
    lines.setdefault(folder / f"date={day}" / f"{host}-0.jsonl", []).append(json.dumps(record) + "\n")


# --- generators ----------------------------------------------------------------------------------


def _check_generator(generator: str) -> None:
    if generator not in ("hyperplane", "agrawal"):
        raise ValueError(f"generator must be 'hyperplane' or 'agrawal', got {generator!r}")


def _label_rule(generator: Generator, concept: int, concept_seed: int) -> Callable[[np.ndarray], np.ndarray]:
    if generator == "agrawal":
        return AGRAWAL_RULES[concept % len(AGRAWAL_RULES)]
    _check_generator(generator)
    return lambda X: _hyperplane_labels(X, concept, concept_seed)


def _hyperplane_labels(X: np.ndarray, concept: int, concept_seed: int) -> np.ndarray:
    return ((X - 0.5) @ _hyperplane_weights(concept, concept_seed, X.shape[1]) > 0).astype(np.int64)


def _hyperplane_weights(concept: int, concept_seed: int, n_features: int) -> np.ndarray:
    return np.random.default_rng([concept_seed, concept, 7919]).standard_normal(n_features)


def shifted_features(
    n: int, seed: int, generator: Generator = "hyperplane", n_features: int = 10, squeeze: float = 0.3
) -> np.ndarray:
    """``n`` rows of the covariate-shifted inputs of ``covariate_shift_stream`` (a client's traffic that moved)."""
    return _shifted_features(n, [seed, 3], generator, n_features, squeeze)


def _shifted_features(n: int, seed: list[int], generator: Generator, n_features: int, squeeze: float) -> np.ndarray:
    """``n`` rows of the covariate-shifted input distribution (see ``covariate_shift_stream``)."""
    rng = np.random.default_rng(seed)
    if generator != "agrawal":
        _check_generator(generator)
        return 0.5 + squeeze * (rng.random((n, n_features)) - 0.5)
    kept = np.empty((0, len(AGRAWAL_FEATURES)))
    while len(kept) < n:  # rejection sampling: about 1 row in 4 is 30 to 70 with a salary under 75,000
        rows = _sample_agrawal(4 * n + 100, rng)
        age, salary = _agrawal_columns(rows)["age"], _agrawal_columns(rows)["salary"]
        kept = np.vstack([kept, rows[(age >= 30) & (age < 70) & (salary < 75_000)]])
    return kept[:n]


def _sample_agrawal(n: int, rng: np.random.Generator) -> np.ndarray:
    salary = rng.uniform(20_000, 150_000, n)
    commission = np.where(salary >= 75_000, 0.0, rng.uniform(10_000, 75_000, n))
    age = rng.integers(20, 81, n).astype(np.float64)
    elevel = rng.integers(0, 5, n).astype(np.float64)
    car = rng.integers(1, 21, n).astype(np.float64)
    zipcode = rng.integers(0, 9, n).astype(np.float64)
    hvalue = (9 - zipcode) * 100_000 * rng.uniform(0.5, 1.5, n)
    hyears = rng.integers(1, 31, n).astype(np.float64)
    loan = rng.uniform(0, 500_000, n)
    return np.column_stack([salary, commission, age, elevel, car, zipcode, hvalue, hyears, loan])


def _agrawal_columns(X: np.ndarray) -> dict[str, np.ndarray]:
    return dict(zip(AGRAWAL_FEATURES, X.T))


def _rule_age(X: np.ndarray) -> np.ndarray:
    a = _agrawal_columns(X)["age"]
    return ((a < 40) | (a >= 60)).astype(np.int64)


def _rule_age_salary(X: np.ndarray) -> np.ndarray:
    c = _agrawal_columns(X)
    age, salary = c["age"], c["salary"]
    young = (age < 40) & (salary >= 50_000) & (salary <= 100_000)
    middle = (age >= 40) & (age < 60) & (salary >= 75_000) & (salary <= 125_000)
    old = (age >= 60) & (salary >= 25_000) & (salary <= 75_000)
    return (young | middle | old).astype(np.int64)


def _rule_age_education(X: np.ndarray) -> np.ndarray:
    c = _agrawal_columns(X)
    age, elevel = c["age"], c["elevel"]
    young = (age < 40) & (elevel <= 1)
    middle = (age >= 40) & (age < 60) & (elevel >= 1) & (elevel <= 3)
    old = (age >= 60) & (elevel >= 2)
    return (young | middle | old).astype(np.int64)


def _rule_disposable_income(X: np.ndarray) -> np.ndarray:
    c = _agrawal_columns(X)
    disposable = 0.67 * (c["salary"] + c["commission"]) - 0.2 * c["loan"] - 20_000
    return (disposable > 0).astype(np.int64)


AGRAWAL_RULES: list[Callable[[np.ndarray], np.ndarray]] = [
    _rule_age,
    _rule_age_salary,
    _rule_age_education,
    _rule_disposable_income,
]
