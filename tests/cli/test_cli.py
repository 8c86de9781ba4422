import json

from mfl_cli import cli


def loop_with(status, host_path=None):
    storage = {"hostPath": {"path": str(host_path)}} if host_path else {"persistentVolumeClaim": {"claimName": "c"}}
    return {
        "metadata": {"name": "churn", "namespace": "prod", "generation": 2},
        "spec": {"model": {"name": "churn", "storage": storage}},
        "status": status,
    }


STATUS = {
    "phase": "Canary",
    "currentVersion": 1,
    "observedGeneration": 2,
    "conditions": [{"type": "Ready", "status": "True", "reason": "Canary", "lastTransitionTime": "t", "message": "ok"}],
    "metrics": [{"name": "accuracy", "state": "Healthy", "value": 0.91, "sampleTime": "t"}],
    "rollout": {
        "version": 2,
        "step": 1,
        "weight": 50,
        "analysisPhase": "Running",
        "startedAt": "t",
        "evidence": [{"name": "accuracy", "decision": "Pending", "message": "canary - stable = -0.4 pts"}],
    },
    "history": [{"version": 1, "trigger": "Initial", "outcome": "Promoted", "at": "t", "message": "first"}],
}


def test_status_shows_phase_conditions_metrics_canary_evidence_and_history():
    text = cli.render_status(loop_with(STATUS))
    for expected in (
        "phase Canary",
        "Ready",
        "accuracy",
        "0.91",
        "step 2 at 50%",
        "canary - stable = -0.4 pts",
        "Initial",
        "Promoted",
    ):
        assert expected in text


def test_status_names_the_kind_of_the_training_run():
    run = {"version": 2, "trigger": "Manual", "jobName": "churn-train-v2", "startedAt": "t"}
    assert "Job churn-train-v2" in cli.render_status(loop_with({**STATUS, "retraining": run}))
    dask = cli.render_status(loop_with({**STATUS, "retraining": {**run, "engine": "Dask"}}))
    assert "DaskJob churn-train-v2" in dask


def test_versions_merge_history_and_registry(tmp_path):
    folder = tmp_path / "churn" / "versions" / "2"
    folder.mkdir(parents=True)
    (folder / "metadata.json").write_text(
        json.dumps({"parentVersion": 1, "rows": {"train": 900}, "metrics": {"challenger": {"accuracy": 0.93}}})
    )
    (tmp_path / "churn" / "versions" / ".tmp-3-x").mkdir()  # a trainer's staging folder is not a version
    text = cli.render_versions(loop_with(STATUS), tmp_path, "churn")
    lines = text.splitlines()
    assert lines[2].startswith("1 *") and "Promoted" in lines[2]
    assert lines[3].startswith("2") and "accuracy=0.9300" in lines[3] and "900" in lines[3]
    assert len([line for line in lines if line[:1].isdigit()]) == 2


def test_storage_root_uses_a_local_host_path(tmp_path):
    assert cli.storage_root(loop_with({}, tmp_path), None) == tmp_path
    assert cli.storage_root(loop_with({}), None) is None
    assert str(cli.storage_root(None, "/x")) == "/x"


def test_report_renders_confusion_per_class_and_slices(tmp_path):
    report = {
        "model": "churn",
        "version": 2,
        "parentVersion": 1,
        "task": "classification",
        "target": "label",
        "holdout": {"rows": 100, "strategy": "recent_feedback"},
        "challenger": {
            "metrics": {"accuracy": 0.9},
            "confusion": {"labels": [0, 1], "matrix": [[45, 5], [5, 45]]},
            "perClass": [{"label": 0, "precision": 0.9, "recall": 0.9, "f1": 0.9, "support": 50}],
        },
        "worstSlices": {"challenger": [{"feature": "x0", "bin": "[0, 0.2)", "accuracy": 0.7, "rows": 20}]},
    }
    (tmp_path / "confusion.png").write_bytes(b"png")
    text = cli.render_report(report, tmp_path)
    for expected in ("actual 0", "pred 1", "PRECISION", "[0, 0.2)", "0.700", "confusion.png"):
        assert expected in text
