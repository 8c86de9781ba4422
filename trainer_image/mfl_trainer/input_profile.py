"""A version's input profile (mfl_contracts.inputprofile, metadata.json ``inputProfile``) from the rows its model
was trained on: both engines pick the same evenly spaced rows and profile the same features.

The rows: at most ``ROWS`` (the contract's ``MAX_ROWS``) of the training rows in table order (base data in file
order, then feedback in time order), evenly spaced (`sample_positions`), so every part of the data window is
represented in proportion and a rerun profiles the same rows. Unweighted: ``recentWeight`` is an emphasis of
the fit, not a share of the inputs the model saw. The features: the numeric ones, in the published feature
order, the first ``MAX_FEATURES`` that have a value in those rows (as `make_profile` takes them; categorical
features have no deciles and are left out).

Cost (measured on the 2-core development machine, shared with other work): `make_profile` is pure Python (the
sidecar's image has no numpy); profiling 100,000 rows x 20 numeric features takes about 1.6 s of CPU, linear
in rows x features, so at most about 2.6 s (32 features) however large the training set.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from mfl_contracts.inputprofile import MAX_FEATURES, MAX_ROWS, MIN_ROWS, make_profile

from .tables import NUMERIC

ROWS = MAX_ROWS  # training rows profiled at most (the contract's bound; tests lower it)


def numeric_features(features: Sequence[str], feature_types: Mapping[str, str]) -> list[str]:
    """The features a profile can have, in the published order."""
    return [name for name in features if feature_types.get(name) == NUMERIC]


def sample_positions(n: int, limit: int | None = None) -> np.ndarray:
    """Positions 0..n-1 of at most ``limit`` (default ``ROWS``) rows, evenly spaced, first and last included (all
    when n <= limit); distinct and increasing, since their spacing is at least 1."""
    limit = ROWS if limit is None else limit
    if n <= limit:
        return np.arange(n, dtype=np.int64)
    return np.linspace(0, n - 1, limit).astype(np.int64)


def profiled(columns: Iterable[tuple[str, np.ndarray]]) -> dict[str, list[float]]:
    """The columns (float64, NaN missing) the profile takes, as lists: the first ``MAX_FEATURES`` with a
    value. ``columns`` may be lazy: nothing past the last one taken is read."""
    kept: dict[str, list[float]] = {}
    for name, values in columns:
        if len(kept) == MAX_FEATURES:
            break
        if np.isfinite(values).any():
            kept[name] = np.asarray(values, dtype=np.float64).tolist()  # plain floats: make_profile's fast path
    return kept


def make(columns: Mapping[str, list[float]]) -> dict[str, Any] | None:
    """The profile of ``columns`` (all of one length), or None when no numeric feature has a value: then
    metadata.json has no ``inputProfile`` and the operator judges no input drift for the version."""
    if not columns or max(len(values) for values in columns.values()) < MIN_ROWS:
        return None  # too few rows: the profile's own noise would read as drift (inputprofile.MIN_ROWS)
    profile = make_profile(columns)
    return profile if profile["features"] else None


def of_table(
    table_columns: Mapping[str, np.ndarray], features: Sequence[str], rows: np.ndarray
) -> dict[str, Any] | None:
    """The profile of a table's ``rows`` (table row indices, any order), ``features`` numeric ones."""
    picked = np.sort(np.asarray(rows, dtype=np.int64))
    picked = picked[sample_positions(len(picked))]
    return make(profiled((name, table_columns[name][picked]) for name in features))


def described(profile: dict[str, Any] | None, numeric: int, seconds: float) -> str:
    """The Job log's line about the profile."""
    if profile is None:
        return (
            f"no input profile: no numeric feature with a value, or fewer than {MIN_ROWS} training rows (input "
            "drift is not judged for this version)"
        )
    left_out = numeric - len(profile["features"])
    return (
        f"input profile: {len(profile['features'])} numeric features of {profile['rows']} training rows in "
        f"{seconds:.2f}s"
        + (f" ({left_out} more not profiled: over {MAX_FEATURES} or without a value)" if left_out else "")
    )
