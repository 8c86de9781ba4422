"""Request parsing for /predict (mfl_server.inputs) and feedback review (mfl_server.feedback)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mfl_server import feedback as fb
from mfl_server.errors import RequestError
from mfl_server.ids import IdSigner
from mfl_server.inputs import InputSchema, build_batch, instances_of

SCHEMA = InputSchema(features=["a", "b", "c"], columns=["a", "b", "c"])


def test_named_rows_build_a_float_matrix_and_keep_the_record():
    batch = build_batch([{"a": 1, "b": 2.5, "c": None, "extra": "kept"}], SCHEMA)
    assert batch.matrix.dtype == np.float64
    assert batch.matrix[0, :2].tolist() == [1.0, 2.5] and math.isnan(batch.matrix[0, 2])
    assert batch.records == [{"a": 1, "b": 2.5, "c": None, "extra": "kept"}]


def test_positional_rows_follow_metadata_order_and_are_logged_by_name():
    batch = build_batch([[1, 2, 3], [4, 5, 6]], SCHEMA)
    assert batch.matrix.tolist() == [[1, 2, 3], [4, 5, 6]]
    assert batch.records[1] == {"a": 4, "b": 5, "c": 6}


def test_columns_follow_the_estimator_order_when_it_differs():
    schema = InputSchema(features=["a", "b", "c"], columns=["c", "a", "b"])
    assert build_batch([{"a": 1, "b": 2, "c": 3}], schema).matrix.tolist() == [[3, 1, 2]]
    assert build_batch([[1, 2, 3]], schema).matrix.tolist() == [[3, 1, 2]]


def test_categorical_features_make_an_object_matrix():
    schema = InputSchema(features=["a", "city"], columns=["a", "city"], feature_types={"city": "categorical"})
    matrix = build_batch([{"a": 1, "city": "Oslo"}, {"a": None, "city": None}], schema).matrix
    assert matrix.dtype == object
    assert matrix[0].tolist() == [1.0, "Oslo"] and math.isnan(matrix[1, 0]) and matrix[1, 1] == ""


@pytest.mark.parametrize(
    "instances, status, words",
    [
        ([{"a": 1, "b": 2}], 422, "row 0: missing feature 'c'"),
        ([{"a": 1, "b": 2, "c": 3}, {"a": 1, "c": 3}], 422, "row 1: missing feature 'b'"),
        ([{"a": 1, "b": "x", "c": 3}], 422, "feature 'b' has the wrong type"),
        ([{"a": 1, "b": [1], "c": 3}], 422, "feature 'b' has the wrong type"),
        ([{"a": 1, "b": {"x": 1}, "c": 3}], 422, "got an object"),
        ([[1, 2]], 422, "row 0 has 2 values, expected 3"),
        ([{"a": 1, "b": 2, "c": 3}, [1, 2, 3]], 422, "row 1 must be an object"),
        (["abc"], 422, "row 0 must be an object of feature values or a list"),
    ],
)
def test_bad_rows_name_the_problem(instances, status, words):
    with pytest.raises(RequestError) as caught:
        build_batch(instances, SCHEMA)
    assert caught.value.status == status and words in caught.value.message


@pytest.mark.parametrize(
    "body, status, words",
    [
        ([1, 2], 400, "JSON object"),
        ({}, 422, 'missing "instances"'),
        ({"instances": {"a": 1}}, 422, "must be a list"),
        ({"instances": []}, 422, "empty batch"),
        ({"instances": [[1, 2, 3]] * 5}, 413, "batch too large: 5 rows, at most 4"),
    ],
)
def test_bad_bodies_name_the_problem(body, status, words):
    with pytest.raises(RequestError) as caught:
        instances_of(body, max_batch=4)
    assert caught.value.status == status and words in caught.value.message


@pytest.mark.parametrize(
    "predicted, actual, same",
    [
        (1, 1, True),
        (1, "1", True),
        (1, 1.0, True),
        (1, " 1 ", True),
        (True, 1, True),
        ("yes", "yes", True),
        ("yes", "no", False),
        (0, 1, False),
        (0.5, "0.5", True),
    ],
)
def test_labels_compare_as_the_trainer_compares_them(predicted, actual, same):
    assert fb.is_correct(predicted, actual) is same


@pytest.mark.parametrize(
    "label, task, ok",
    [
        (1, "classification", True),
        ("yes", "classification", True),
        (None, "classification", False),
        ("", "classification", False),
        ("n/a", "classification", False),
        ([1], "classification", False),
        (2.5, "regression", True),
        ("2.5", "regression", True),
        ("x", "regression", False),
        (float("nan"), "regression", False),
        (None, "regression", False),
    ],
)
def test_label_validation(label, task, ok):
    assert (fb.label_problem(label, task) is None) is ok


def test_review_splits_entries_and_counts_duplicates_once():
    signer = IdSigner(b"k", "m")
    first, second = signer.sign_batch(1, "stable", [1, 0], 1.0)
    forged = first[:-1] + ("Q" if first.endswith("A") else "A")  # canonical spelling, wrong tag
    seen = fb.SeenIds(10)
    seen.add(second)
    accepted, rejected = fb.review(
        [
            {"id": first, "label": 1},
            {"id": first, "label": 0},
            {"id": second, "label": 0},
            {"id": "junk", "label": 1},
            {"label": 1},
            "text",
            {"id": forged, "label": 1},
        ],
        signer.verify,
        "classification",
        seen.__contains__,
    )
    assert [item.id for item in accepted] == [first]
    assert [(item.index, item.reason) for item in rejected] == [
        (1, "duplicate"),
        (2, "duplicate"),
        (3, "malformed"),
        (4, "malformed"),
        (5, "malformed"),
        (6, "bad_signature"),
    ]


def test_seen_ids_is_a_bounded_lru():
    seen = fb.SeenIds(2)
    for key in ("a", "b"):
        seen.add(key)
    assert "a" in seen  # touch: "b" is now the oldest
    seen.add("c")
    assert "b" not in seen and "a" in seen and "c" in seen and len(seen) == 2


def test_confusion_labels_stay_bounded():
    known = fb.ConfusionLabels([0, 1])
    assert [known.actual(v) for v in (1, "0", 7, "spam")] == ["1", "0", fb.OTHER_LABEL, fb.OTHER_LABEL]
    open_ended = fb.ConfusionLabels(None)
    labels = {open_ended.actual(f"c{i}") for i in range(fb.MAX_CONFUSION_LABELS + 50)}
    assert len(labels) == fb.MAX_CONFUSION_LABELS + 1
