"""Request parsing for /predict (mfl_server.inputs) and feedback review (mfl_server.feedback)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mfl_server import feedback as fb
from mfl_server.errors import RequestError
from mfl_server.ids import IdSigner
from mfl_server.inputs import MAX_ABS_NUMBER, MAX_TEXT_CHARS, InputSchema, build_batch, instances_of

SCHEMA = InputSchema(features=["a", "b", "c"], columns=["a", "b", "c"])
MIXED = InputSchema(features=["a", "city"], columns=["a", "city"], feature_types={"city": "categorical"})
DAY = 86400.0


def test_named_rows_build_a_float_matrix_and_record_only_the_features():
    batch = build_batch([{"a": 1, "b": 2.5, "c": None, "extra": "x" * 10_000}, {"c": 3, "b": 2, "a": 1}], SCHEMA)
    assert batch.matrix.dtype == np.float64
    assert batch.matrix[0, :2].tolist() == [1.0, 2.5] and math.isnan(batch.matrix[0, 2])
    assert batch.records == [{"a": 1, "b": 2.5, "c": None}, {"c": 3, "b": 2, "a": 1}]


@pytest.mark.parametrize(
    "row, words",
    [
        ({"a": 1, "b": math.nan, "c": 3}, "feature 'b' must be a finite number"),
        ({"a": math.inf, "b": 2, "c": 3}, "feature 'a' must be a finite number"),
        ({"a": 1, "b": 2, "c": -math.inf}, "got -inf"),
        ({"a": 1, "b": 2, "c": 3.5e38}, "got 3.5e+38"),
        ({"a": 1, "b": 10**39, "c": 3}, "got an integer of 40 digits"),
        ({"a": 1, "b": 10**400, "c": 3}, "got an integer of 401 digits"),
        ([1, math.nan, 3], "feature 'b' must be a finite number"),
    ],
    ids=["nan", "inf", "-inf", "huge-float", "huge-int", "int-beyond-float64", "positional-nan"],
)
def test_non_finite_or_huge_feature_values_are_refused_by_name(row, words):
    with pytest.raises(RequestError) as caught:
        build_batch([{"a": 1, "b": 2, "c": 3} if isinstance(row, dict) else [1, 2, 3], row], SCHEMA)
    assert caught.value.status == 422 and caught.value.message.startswith("row 1: ") and words in caught.value.message
    assert "null for a missing value" in caught.value.message


def test_the_range_ends_at_float32s_largest_value_and_nulls_stay_missing():
    batch = build_batch([[MAX_ABS_NUMBER, -MAX_ABS_NUMBER, None]], SCHEMA)
    assert batch.matrix[0, :2].tolist() == [MAX_ABS_NUMBER, -MAX_ABS_NUMBER] and math.isnan(batch.matrix[0, 2])


@pytest.mark.parametrize(
    "row, words",
    [
        ({"a": math.nan, "city": "Oslo"}, "row 0: feature 'a' must be a finite number"),
        ({"a": 1, "city": math.inf}, "row 0: feature 'city' must be a finite number"),
        ({"a": 10**400, "city": "Oslo"}, "integer of 401 digits"),
        ({"a": 1, "city": "x" * (MAX_TEXT_CHARS + 1)}, f"'city' is {MAX_TEXT_CHARS + 1} characters long"),
    ],
    ids=["nan", "inf-category", "huge-int", "long-text"],
)
def test_categorical_models_bound_every_value(row, words):
    with pytest.raises(RequestError) as caught:
        build_batch([row], MIXED)
    assert caught.value.status == 422 and words in caught.value.message
    assert build_batch([{"a": 1, "city": "x" * MAX_TEXT_CHARS}], MIXED).matrix[0, 1] == "x" * MAX_TEXT_CHARS


def test_positional_rows_follow_metadata_order_and_are_logged_by_name():
    batch = build_batch([[1, 2, 3], [4, 5, 6]], SCHEMA)
    assert batch.matrix.tolist() == [[1, 2, 3], [4, 5, 6]]
    assert batch.records[1] == {"a": 4, "b": 5, "c": 6}


def test_columns_follow_the_estimator_order_when_it_differs():
    schema = InputSchema(features=["a", "b", "c"], columns=["c", "a", "b"])
    assert build_batch([{"a": 1, "b": 2, "c": 3}], schema).matrix.tolist() == [[3, 1, 2]]
    assert build_batch([[1, 2, 3]], schema).matrix.tolist() == [[3, 1, 2]]


def test_categorical_features_make_an_object_matrix():
    batch = build_batch([{"a": 1, "city": "Oslo"}, {"a": None, "city": None}, {"a": 2, "city": 7, "x": 1}], MIXED)
    matrix = batch.matrix
    assert matrix.dtype == object
    assert matrix[0].tolist() == [1.0, "Oslo"] and math.isnan(matrix[1, 0]) and matrix[1, 1] == ""
    assert matrix[2].tolist() == [2.0, "7"] and batch.records[2] == {"a": 2, "city": 7}


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


CLASSES = frozenset({"0", "1"})


@pytest.mark.parametrize(
    "label, task, classes, words",
    [
        (1, "classification", None, None),
        ("yes", "classification", None, None),
        (1, "classification", CLASSES, None),
        ("1", "classification", CLASSES, None),
        (1.0, "classification", CLASSES, None),
        (True, "classification", CLASSES, None),
        (2, "classification", CLASSES, "label 2 is not a class of this model; its classes are ['0', '1']"),
        ("spam", "classification", CLASSES, "label 'spam' is not a class"),
        (None, "classification", None, "must be a class"),
        ("", "classification", None, "must be a class"),
        ("n/a", "classification", None, "must be a class"),
        ([1], "classification", None, "must be a class"),
        (math.inf, "classification", None, "finite number"),
        (10**400, "classification", None, "finite number"),
        ("x" * (MAX_TEXT_CHARS + 1), "classification", None, f"{MAX_TEXT_CHARS + 1} characters long"),
        (2.5, "regression", None, None),
        ("2.5", "regression", None, None),
        (-MAX_ABS_NUMBER, "regression", None, None),
        ("x", "regression", None, "finite number"),
        (math.nan, "regression", None, "finite number"),
        (math.inf, "regression", None, "finite number"),
        ("-inf", "regression", None, "finite number"),
        ("1e39", "regression", None, "finite number"),
        (10**400, "regression", None, "finite number"),
        (True, "regression", None, "finite number"),
        (None, "regression", None, "finite number"),
        ("1" * (MAX_TEXT_CHARS + 1), "regression", None, "characters long"),
    ],
)
def test_label_validation(label, task, classes, words):
    problem = fb.label_problem(label, task, classes)
    assert problem is None if words is None else words in problem, problem


def test_the_message_lists_at_most_twenty_classes():
    problem = fb.label_problem("z", "classification", frozenset(f"c{i:02}" for i in range(30)))
    assert problem is not None and "'c19'] and 10 more" in problem and "c20" not in problem


def test_rules_know_the_classes_of_a_classifier_only():
    assert fb.LabelRules.for_model("classification", [0, 1.0, "a"], 5.0, 9.0).classes == {"0", "1", "a"}
    assert fb.LabelRules.for_model("classification", None, 5.0, 9.0).classes is None
    assert fb.LabelRules.for_model("regression", [0, 1], 5.0, 9.0).classes is None


@pytest.mark.parametrize(
    "age, words",
    [(0.0, None), (30 * DAY, None), (30 * DAY + 1, "is 30.0 days old"), (-60.0, None)],
)
def test_labels_are_taken_for_max_age_after_the_prediction(age, words):
    problem = fb.age_problem(1000 * DAY - age, 1000 * DAY, 30 * DAY)
    assert problem is None if words is None else words in problem and "30.0 days after" in problem


def test_review_splits_entries_and_counts_an_id_once_per_batch():
    signer = IdSigner(b"k", "m")
    now = 100 * DAY
    first, second = signer.sign_batch(1, "stable", [1, 0], now - 60)
    [old] = signer.sign_batch(1, "stable", [1], now - 8 * DAY)
    forged = first[:-1] + ("Q" if first.endswith("A") else "A")  # canonical spelling, wrong tag
    accepted, rejected = fb.review(
        [
            {"id": first, "label": 1},
            {"id": first, "label": 0},
            {"id": second, "label": 2},
            {"id": "junk", "label": 1},
            {"label": 1},
            "text",
            {"id": forged, "label": 1},
            {"id": old, "label": 1},
            {"id": second, "label": "0"},
        ],
        signer.verify,
        fb.LabelRules.for_model("classification", [0, 1], now, 7 * DAY),
    )
    assert [(item.index, item.id, item.label) for item in accepted] == [(0, first, 1), (8, second, "0")]
    assert [(item.index, item.reason) for item in rejected] == [
        (1, "duplicate"),
        (2, "bad_label"),
        (3, "malformed"),
        (4, "malformed"),
        (5, "malformed"),
        (6, "bad_signature"),
        (7, "expired"),
    ]


def test_a_request_is_refused_only_when_nothing_was_recorded_and_something_was_invalid():
    bad = fb.Rejected(3, "i", "bad_label", "label 2 is not a class of this model")
    again = fb.duplicate(0, "j")
    assert fb.refusal(0, [again, bad]) == "no label recorded: entry 3: label 2 is not a class of this model"
    assert fb.refusal(1, [bad]) is None  # partly recorded: the rejected list says which
    assert fb.refusal(0, [again]) is None  # a retry of labels already recorded
    assert again.as_json()["reason"] == "duplicate"


def test_confusion_labels_stay_bounded():
    known = fb.ConfusionLabels([0, 1])
    assert [known.actual(v) for v in (1, "0", 7, "spam")] == ["1", "0", fb.OTHER_LABEL, fb.OTHER_LABEL]
    open_ended = fb.ConfusionLabels(None)
    labels = {open_ended.actual(f"c{i}") for i in range(fb.MAX_CONFUSION_LABELS + 50)}
    assert len(labels) == fb.MAX_CONFUSION_LABELS + 1
