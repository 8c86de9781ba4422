"""The trainer's pure parts: config, holdout, labels, slices, summary, threads, feedback join."""

from __future__ import annotations

import json
import os
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from mfl_trainer import config as config_module
from mfl_trainer import datasource, estimators, evaluation, split, summary, tables, threads
from mfl_trainer.errors import TrainerError

BASE = {"model": "churn", "version": 3, "target": "label"}


# --- config --------------------------------------------------------------------------------------


def test_config_defaults_and_unknown_keys():
    parsed = config_module.parse_config({**BASE, "futureField": 1}, env={}, clock=100.0)
    assert parsed.estimator == "hist_gradient_boosting" and parsed.now == 100.0
    assert str(parsed.storage_root) == "/var/lib/mfl/artifacts"
    assert parsed.window_start is None and parsed.ignored_keys == ["futureField"]
    regression = config_module.parse_config(
        {**BASE, "task": "regression", "dataWindowSeconds": 10, "now": 50}, env={"MFL_STORAGE_ROOT": "/data"}
    )
    assert regression.estimator == "hist_gradient_boosting_regressor"
    assert regression.window_start == 40 and str(regression.storage_root) == "/data"


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"model": "../etc"}, "model must be a plain name"),
        ({"version": True}, "version must be an integer"),
        ({"version": 0}, "version must be >= 1"),
        ({"parentVersion": 3}, "parentVersion must be >= 1 and differ from version"),
        ({"incremental": True}, "incremental training needs parentVersion"),
        ({"features": ["a", "a"]}, "features has duplicates"),
        ({"features": ["label"]}, "target 'label' is also listed in features"),
        ({"labelNoise": 1.0}, "labelNoise must be in [0, 1)"),
        ({"task": "ranking"}, "task must be one of"),
        ({"hyperparameters": []}, "hyperparameters must be an object"),
    ],
)
def test_config_rejects(overrides, message):
    with pytest.raises(TrainerError, match=None) as caught:
        config_module.parse_config({**BASE, **overrides}, env={})
    assert message in str(caught.value)


def test_config_document_sources(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps(BASE))
    assert config_module.load_config_document(str(path), env={}) == BASE
    assert config_module.load_config_document(None, env={"MFL_TRAINER_CONFIG": json.dumps(BASE)}) == BASE
    with pytest.raises(TrainerError, match="set MFL_TRAINER_CONFIG"):
        config_module.load_config_document(None, env={})
    with pytest.raises(TrainerError, match="cannot read"):
        config_module.load_config_document(str(tmp_path / "missing.json"), env={})


# --- holdout, noise, weights ---------------------------------------------------------------------


def test_holdout_is_the_newest_feedback():
    is_feedback = np.array([False] * 10 + [True] * 8)
    chosen = split.choose_holdout(is_feedback, np.zeros(18), 0.25, min_holdout_rows=2, stratify=True, seed=0)
    assert chosen.strategy == split.TIME_ORDERED
    assert chosen.holdout.tolist() == [16, 17]
    assert chosen.train.tolist() == list(range(16))


def test_too_little_feedback_falls_back_to_a_stratified_base_holdout():
    y = np.array([0] * 80 + [1] * 20 + [1] * 4)
    is_feedback = np.arange(104) >= 100
    chosen = split.choose_holdout(is_feedback, y, 0.25, min_holdout_rows=50, stratify=True, seed=0)
    assert chosen.strategy == split.STRATIFIED_BASE and "minHoldoutRows 50" in chosen.reason
    assert sorted(Counter(y[chosen.holdout].tolist()).items()) == [(0, 20), (1, 5)]
    assert not is_feedback[chosen.holdout].any()
    assert set(chosen.train) | set(chosen.holdout) == set(range(104))
    again = split.choose_holdout(is_feedback, y, 0.25, 50, True, seed=0)
    assert again.holdout.tolist() == chosen.holdout.tolist()


def test_feedback_only_uses_a_time_holdout_even_if_small():
    chosen = split.choose_holdout(np.ones(8, dtype=bool), np.zeros(8), 0.25, 50, True, 0)
    assert chosen.strategy == split.TIME_ORDERED and chosen.holdout.tolist() == [6, 7]


def test_label_noise_is_deterministic():
    y = np.array([0, 1, 2] * 100)
    noisy, count = split.flip_labels(y, 0.2, [0, 1, 2], seed=4)
    assert count == 60 and int(np.sum(noisy != y)) == 60
    assert split.flip_labels(y, 0.2, [0, 1, 2], seed=4)[0].tolist() == noisy.tolist()
    values = np.arange(50, dtype=float)
    shuffled, count = split.flip_labels(values, 0.5, [], seed=1, regression=True)
    assert count == 25 and sorted(shuffled) == sorted(values)


def test_sample_weights_favour_feedback():
    assert split.sample_weights(np.array([False, True]), 3.0).tolist() == [1.0, 3.0]


# --- labels and table ----------------------------------------------------------------------------


def test_labels_from_csv_and_json_agree():
    y, keep = tables.label_column(np.array([0.0, 1.0, np.nan]), [1, "0", 1.0, None], "classification")
    assert y[keep].tolist() == [0, 1, 1, 0, 1] and keep.tolist() == [True, True, False, True, True, True, False]
    assert y.dtype == np.int64
    text, keep = tables.label_column(np.array(["yes", "no", ""], dtype=object), [1, "yes"], "classification")
    assert text[keep].tolist() == ["yes", "no", "1", "yes"]
    numbers, keep = tables.label_column(np.array([1.5]), ["2.5", "x"], "regression")
    assert numbers[keep].tolist() == [1.5, 2.5] and keep.tolist() == [True, True, False]


def test_table_types_from_base_and_unusable_feedback_counted():
    base = datasource.BaseData(
        columns={"a": np.array([1.0, 2.0]), "c": np.array(["x", "y"], dtype=object), "label": np.array([0.0, 1.0])},
        rows=2,
        file_hashes={},
    )
    feedback = datasource.feedback_from_records(
        [
            {"id": "1", "ts": 10.0, "features": {"a": "oops", "c": 7}, "label": 1},
            {"id": "2", "ts": 11.0, "features": {"a": 3}, "label": 0},  # no "c": skipped
        ]
    )
    stats: Counter = Counter()
    table = tables.build_table(["a", "c"], "label", "classification", base, feedback, stats)
    assert table.feature_types == {"a": "numeric", "c": "categorical"}
    assert len(table) == 3 and table.is_feedback.tolist() == [False, False, True]
    assert np.isnan(table.columns["a"][2]) and table.columns["c"][2] == "7"
    assert stats == Counter(feedbackRowsMissingFeatures=1, nonNumericFeatureValues=1)
    matrix = table.matrix()
    assert matrix.dtype == object and matrix.shape == (3, 2)


# --- slices and metrics --------------------------------------------------------------------------


def test_numeric_slices_are_quantile_intervals():
    values = np.array([*range(100), np.nan], dtype=float)
    names = evaluation.slice_bins(values, "numeric", 4)
    assert names[0] == "[0, 24.75)" and names[99] == "[74.25, 99]" and names[100] == "missing"
    assert len(set(names.tolist())) == 5
    assert set(evaluation.slice_bins(np.array([0.0, 1.0, 1.0]), "numeric", 4)) == {"= 0", "= 1"}
    assert evaluation.slice_bins(np.array(["a", ""], dtype=object), "categorical", 4).tolist() == ["a", "missing"]


def test_worst_slices_rank_by_accuracy_and_skip_small_slices():
    colour = np.array(["red"] * 30 + ["blue"] * 30 + ["green"] * 5, dtype=object)
    y_true = np.zeros(65, dtype=int)
    challenger = np.concatenate([np.ones(10), np.zeros(50), np.ones(5)]).astype(int)
    champion = np.zeros(65, dtype=int)
    table = evaluation.slice_table(
        "classification",
        {"colour": colour},
        {"colour": "categorical"},
        y_true,
        {"challenger": challenger, "champion": champion},
        5,
        min_rows=20,
    )
    worst = evaluation.worst_slices(table, "challenger", "classification")
    assert worst == [
        {
            "feature": "colour",
            "bin": "red",
            "accuracy": pytest.approx(2 / 3, abs=1e-6),
            "rows": 30,
            "championAccuracy": 1.0,
        },
        {"feature": "colour", "bin": "blue", "accuracy": 1.0, "rows": 30, "championAccuracy": 1.0},
    ]


def test_regression_metrics_and_worst_slices_by_mae():
    result = evaluation.metrics("regression", np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 5.0]))
    assert result["mae"] == pytest.approx(2 / 3, abs=1e-6) and result["rmse"] == pytest.approx(np.sqrt(4 / 3), abs=1e-6)
    x = np.arange(40, dtype=float)
    table = evaluation.slice_table(
        "regression", {"x": x}, {"x": "numeric"}, np.zeros(40), {"challenger": np.where(x < 20, 0.0, 3.0)}, 2, 10
    )
    assert [s["mae"] for s in evaluation.worst_slices(table, "challenger", "regression")] == [3.0, 0.0]


def test_confusion_and_per_class_keep_label_order():
    y_true, y_pred = np.array(["a", "b", "b"], dtype=object), np.array(["a", "a", "b"], dtype=object)
    labels = evaluation.labels_of(y_true, y_pred)
    assert evaluation.confusion(y_true, y_pred, labels) == {"labels": ["a", "b"], "matrix": [[1, 0], [1, 1]]}
    assert [c["support"] for c in evaluation.per_class(y_true, y_pred, labels)] == [1, 2]


# --- summary -------------------------------------------------------------------------------------


def test_summary_line_drops_slices_then_cuts_the_error():
    slices = [{"feature": "f" * 300, "bin": "[0, 1)", "accuracy": 0.5, "rows": 40} for _ in range(20)]
    line = summary.to_json_line({"ok": True, "worstSlices": slices})
    parsed = json.loads(line)
    assert len(line.encode()) <= summary.SUMMARY_LIMIT_BYTES
    assert 0 < len(parsed["worstSlices"]) < 20 and parsed["worstSlicesTruncated"] is True
    error = json.loads(summary.to_json_line({"ok": False, "error": "x" * 10_000}))
    assert error["error"].endswith("[truncated]") and len(json.dumps(error)) <= summary.SUMMARY_LIMIT_BYTES


def test_emit_survives_an_unwritable_termination_log(tmp_path, capsys):
    summary.emit('{"ok": true}', env={"MFL_TERMINATION_LOG": str(tmp_path / "no" / "such" / "dir")})
    out, err = capsys.readouterr()
    assert out == '{"ok": true}\n' and "cannot write the termination message" in err
    target = tmp_path / "log"
    summary.emit('{"ok": false}', env={"MFL_TERMINATION_LOG": str(target)})
    assert target.read_text() == '{"ok": false}'


# --- threads -------------------------------------------------------------------------------------


def test_thread_budget_follows_env_then_cgroup_quota(tmp_path):
    cpu_max = tmp_path / "cpu.max"
    assert threads.thread_budget({"MFL_TRAINER_THREADS": "3"}, cpu_max) == 3
    cpu_max.write_text("50000 100000\n")
    assert threads.thread_budget({}, cpu_max) == 1
    cpu_max.write_text("max 100000\n")
    assert threads.thread_budget({}, cpu_max) >= 1


# --- feedback join -------------------------------------------------------------------------------


def _lines(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def _day(ts: float) -> str:
    return "date=" + datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%d")


def test_feedback_join_window_and_first_label(tmp_path):
    day = 86_400.0
    now = 20_000 * day + 3_600  # 2024-10-04 01:00 UTC
    predictions = [
        {"id": "early", "ts": now - 3 * day, "features": {"a": 1}},  # before the 2-day window
        {"id": "p1", "ts": now - day, "features": {"a": 1}},
        {"id": "p2", "ts": now - day + 5, "features": {"a": 2}},
        {"id": "p3", "ts": now - 10, "features": {"a": 3}},
    ]
    feedback = [
        {"id": "p1", "ts": now - day + 90, "label": 1},  # a second label, listed first: the earlier one wins
        {"id": "p1", "ts": now - day + 60, "label": 0},
        {"id": "p1", "ts": now - day + 60, "label": 1},  # same time: the first line read wins
        {"id": "p2", "ts": now + 60, "label": 1},  # given after `now`
        {"id": "p3", "ts": now - 5, "label": 0},
        {"id": "ghost", "ts": now - 5, "label": 0},
    ]
    for folder, records in (("predictions", predictions), ("feedback", feedback)):
        for record in records:
            path = tmp_path / folder / _day(record["ts"]) / "h-1.jsonl"
            _lines(
                path, [*(json.loads(line) for line in (path.read_text().splitlines() if path.exists() else [])), record]
            )
    data = datasource.read_feedback(tmp_path, now - 2 * day, now)
    assert list(zip(data.ids, data.labels)) == [("p1", 0), ("p3", 0)]
    assert data.stats == Counter(duplicateFeedback=2, feedbackAfterNow=1, feedbackWithoutPrediction=1)
    assert data.files_read == 4  # 10-03 and 10-04 for both; the 10-01 partition lies before the window


def test_partition_files_ignore_odd_folder_names(tmp_path):
    (tmp_path / "date=garbage").mkdir()
    (tmp_path / "date=2024-01-02" / "sub").mkdir(parents=True)
    (tmp_path / "date=2024-01-02" / "sub" / "x.jsonl").write_text("")
    found = datasource.partition_files(tmp_path, None, 1_704_200_000.0)
    assert [p.name for p in found] == ["x.jsonl"]


def test_csv_with_missing_cells_and_text(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('\ufeffa,b,label\r\n1,x,0\r\n,"y, z",1\r\nshort\r\n', encoding="utf-8")  # BOM, CRLF
    base = datasource.read_base_data([path], ["a", "b", "label"])
    assert base.rows == 2 and base.malformed_rows == 1
    assert np.isnan(base.columns["a"][1]) and base.columns["b"].tolist() == ["x", "y, z"]


# --- estimators ----------------------------------------------------------------------------------


def test_estimator_gets_a_fixed_random_state_and_checked_names():
    spec = estimators.estimator_spec("random_forest", "classification")
    model = estimators.make_estimator(spec, {"n_estimators": 7}, seed=11)
    assert model.get_params()["random_state"] == 11 and model.get_params()["n_estimators"] == 7
    with pytest.raises(TrainerError, match=r"unknown hyperparameter\(s\) \['trees'\]"):
        estimators.make_estimator(spec, {"trees": 7}, seed=0)


def test_incremental_rejects_new_classes():
    spec = estimators.estimator_spec("sgd", "classification")
    pipeline = estimators.make_pipeline(spec, estimators.make_estimator(spec, {}, 0), ["a"], {"a": "numeric"})
    X = np.arange(20, dtype=float).reshape(-1, 1)
    pipeline.fit(X, np.array([0, 1] * 10))
    with pytest.raises(TrainerError, match=r"cannot add classes: feedback has \[2\]"):
        estimators.continue_training(pipeline, spec, {}, X, np.array([2] * 20), np.ones(20), None, 0)
    other = estimators.estimator_spec("random_forest", "classification")
    with pytest.raises(TrainerError, match="needs a champion of the same kind"):
        estimators.continue_training(pipeline, other, {}, X, np.array([0, 1] * 10), np.ones(20), None, 0)


def test_stale_staging_folders_are_removed(tmp_path):
    from mfl_trainer import registry

    old, fresh = tmp_path / ".tmp-2-aaa", tmp_path / ".tmp-3-bbb"
    old.mkdir()
    fresh.mkdir()
    (tmp_path / "1").mkdir()
    os.utime(old, (0, 0))
    assert registry.remove_stale_staging(tmp_path) == [old]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tmp-3-bbb", "1"]


def test_unwritable_store_fails_before_training_with_what_to_fix(tmp_path, monkeypatch):
    """A root-owned hostPath on a real kubelet: the trainer (uid 65532) must say so, not crash mid-way."""
    from pathlib import Path

    import pytest

    from mfl_trainer import registry
    from mfl_trainer.errors import TrainerError

    def denied(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", denied)
    with pytest.raises(TrainerError) as error:
        registry.require_writable(tmp_path, "churn")
    message = str(error.value)
    assert "not writable" in message and "uid" in message and "hostPath" in message
    assert f"{tmp_path} is owned by uid" in message


def test_writable_store_passes_and_leaves_nothing(tmp_path):
    from mfl_trainer import registry

    registry.require_writable(tmp_path, "churn")
    assert [p.name for p in (tmp_path / "churn" / "versions").iterdir()] == []
