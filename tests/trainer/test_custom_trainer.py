"""A trainer that is not ours keeps the trainer contract: docs/examples/custom-trainer/train.py.

The script runs as its own process with the environment of the Job the operator builds (resources.training_job),
and what it writes is read by the operator's own parts: observe.parse_summary, the phases' decision and the
offline gate (gate.py), the reference server's load_model and the feedback sidecar's read_metadata.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from feedbackloop.core import api, phases, resources
from feedbackloop.core.gate import offline_gate
from feedbackloop.runtime.observe import parse_summary
from mfl_server.model import load_model
from mfl_server.sidecar import read_metadata
from mfl_testbed import datasets

pytestmark = pytest.mark.integration  # runs a script of its own

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "custom-trainer"
TRAIN_PY = EXAMPLE / "train.py"
MODEL = "churn"
FEATURES = datasets.feature_names("hyperplane", 10)
LOOP = {"metadata": {"name": "churn", "namespace": "team-a", "uid": "0000-1111"}}
IMAGE = "registry.example.com/acme/custom-trainer:1.0"


def loop_spec(root: Path) -> api.ModelFeedbackLoopSpec:
    return api.validate_spec(
        {
            "model": {"name": MODEL, "storage": {"hostPath": {"path": str(root)}, "mountPath": str(root)}},
            "monitoring": {"prometheus": {"url": "http://prometheus:9090"}},
            "retraining": {
                "features": FEATURES,
                "target": "label",
                "trainer": {
                    "image": IMAGE,
                    "env": [{"name": "ACME_TRACKING", "value": "off"}],
                    "imagePullSecrets": [{"name": "acme-registry"}],
                },
            },
        }
    )


def run_job(job: dict[str, Any], tmp_path: Path) -> tuple[int, str, str]:
    """Run the example as the Job's container would: its literal env, the termination file, a scratch TMPDIR."""
    [container] = job["spec"]["template"]["spec"]["containers"]
    assert container["image"] == IMAGE
    env = {var["name"]: var["value"] for var in container["env"] if "value" in var}
    termination = tmp_path / "termination-log"
    termination.unlink(missing_ok=True)
    env.update(PATH=os.environ["PATH"], TMPDIR=str(tmp_path), MFL_TERMINATION_LOG=str(termination))
    env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")  # 2 shared cores
    done = subprocess.run(
        [sys.executable, str(TRAIN_PY)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    message = termination.read_text() if termination.exists() else ""
    assert done.stdout.strip().splitlines()[-1] == message, done.stderr
    return done.returncode, message, done.stderr


def write_feedback(root: Path, now: float, n: int = 800) -> None:
    """Labelled predictions of the drifted concept over the last day, as the server logs them."""
    stream = datasets.drift_stream(n, drift_at=[0], seed=2)
    ts = now - 86_400 + np.arange(n) * 60.0
    datasets.write_feedback_logs(root / MODEL, stream.X, stream.y, stream.feature_names, ts)


def test_the_example_imports_nothing_of_the_project():
    allowed = set(sys.stdlib_module_names) | {"numpy", "sklearn", "joblib"}
    tree = ast.parse(TRAIN_PY.read_text())
    imported = {
        alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
    }
    imported |= {
        node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
    }
    assert imported <= allowed, imported - allowed
    dockerfile = (EXAMPLE / "Dockerfile").read_text()
    assert "FROM python:3.11-slim" in dockerfile and "USER 65532" in dockerfile and "ENTRYPOINT" in dockerfile


def test_the_readme_spec_is_valid_and_its_pod_settings_reach_the_job(tmp_path: Path):
    readme = (EXAMPLE / "README.md").read_text()
    snippet = yaml.safe_load(readme.split("```yaml\n", 1)[1].split("```", 1)[0])
    spec = api.validate_spec(
        {
            "model": {"name": MODEL, "storage": {"hostPath": {"path": str(tmp_path)}}},
            "monitoring": {"prometheus": {"url": "http://prometheus:9090"}},
            **snippet["spec"],
        }
    )
    job = resources.training_job(LOOP, spec, "churn-train-v1", 1, None, "Initial")
    pod = job["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["image"] == IMAGE and container["envFrom"][0]["secretRef"]["name"] == "acme-trainer"
    assert {"name": "ACME_TRACKING", "value": "off"} in container["env"]
    assert pod["imagePullSecrets"] == [{"name": "acme-registry"}]
    assert pod["nodeSelector"] and pod["tolerations"][0]["key"] == "dedicated"


def test_the_operator_promotes_and_gates_what_a_custom_trainer_writes(tmp_path: Path):
    root = tmp_path / "artifacts"
    datasets.write_base_csv(root / MODEL / "data" / "base.csv", 600, seed=1)
    spec = loop_spec(root)
    now = time.time()

    # Version 1: the operator starts the first training, the Job runs the example, the operator promotes it.
    decision = phases.decide(phases.World(now=now, name="churn", generation=1, spec=spec, status={}))
    [start] = [a for a in decision.actions if isinstance(a, phases.StartTraining)]
    assert (start.version, start.parent_version) == (1, None)
    job = resources.training_job(LOOP, spec, start.job_name, 1, None, start.trigger)
    assert job["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": "acme-registry"}]
    code, message, stderr = run_job(job, tmp_path)
    assert code == 0, stderr
    summary = parse_summary(message)
    assert summary is not None and summary["ok"] is True and summary["version"] == 1, summary
    assert summary["rows"]["feedback"] == 0 and summary["champion"] is None
    observed = phases.JobObservation(start.job_name, "Succeeded", message, summary)
    decision = phases.decide(
        phases.World(now=now, name="churn", generation=1, spec=spec, status=decision.status, job=observed)
    )
    assert decision.status["currentVersion"] == 1, decision.status
    assert decision.status["history"][-1]["outcome"] == "Promoted"
    assert phases.EnsureStable(1) in decision.actions

    # Version 2, after a drift: the champion is version 1, judged on the same newest feedback rows.
    write_feedback(root, now)
    serving = phases.ServingObservation(stable_version=1, stable_ready=1, stable_replicas=1)
    decision = phases.decide(
        phases.World(
            now=now + 1,
            name="churn",
            generation=1,
            spec=spec,
            status=decision.status,
            serving=serving,
            requests={"retrain": "1"},
        )
    )
    [start] = [a for a in decision.actions if isinstance(a, phases.StartTraining)]
    assert (start.version, start.parent_version) == (2, 1)
    code, message, stderr = run_job(resources.training_job(LOOP, spec, start.job_name, 2, 1, start.trigger), tmp_path)
    assert code == 0, stderr
    summary = parse_summary(message)
    assert summary is not None and summary["ok"] is True, summary
    assert summary["rows"] == {"base": 600, "feedback": 800, "train": 1200, "holdout": 200}
    assert summary["challenger"]["accuracy"] > summary["champion"]["accuracy"]
    observed = phases.JobObservation(start.job_name, "Succeeded", message, summary)
    decision = phases.decide(
        phases.World(
            now=now + 2, name="churn", generation=1, spec=spec, status=decision.status, job=observed, serving=serving
        )
    )
    assert "vs champion" in decision.status["candidate"]["gate"], decision.status
    [canary] = [a for a in decision.actions if isinstance(a, phases.EnsureCanary)]
    assert canary.version == 2
    # After a breach the gate also asks for superiority, from the summary's paired counts (a sign test).
    verdict = offline_gate(spec, summary, first_version=False, breached=True)
    assert verdict.passed and verdict.superior, verdict.message

    # The version folder: complete, loadable by the reference server, readable by the sidecar, MLServer's settings.
    folder = root / MODEL / "versions" / "2"
    assert sorted(p.name for p in folder.iterdir()) == ["metadata.json", "model-settings.json", "model.joblib"]
    assert not list(folder.parent.glob(".tmp-*"))
    settings = json.loads((folder / "model-settings.json").read_text())
    assert settings == {
        "name": MODEL,
        "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": "./model.joblib", "version": "2"},
    }
    loaded = load_model(folder, 2)
    assert loaded.task == "classification" and loaded.schema.features == FEATURES and loaded.classes == [0, 1]
    assert set(np.asarray(loaded.predict_fn(np.zeros((3, len(FEATURES))))).tolist()) <= {0, 1}
    upstream = read_metadata(folder, 2)
    assert (upstream.features, upstream.classes, upstream.serving_output) == (FEATURES, [0, 1], "labels")

    # A retried Job finds its version published and reports it again, unchanged.
    code, again, _ = run_job(resources.training_job(LOOP, spec, start.job_name, 2, 1, start.trigger), tmp_path)
    assert code == 0 and parse_summary(again) == {**summary, "existing": True}


@pytest.mark.parametrize(
    ("config", "error"),
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"model": MODEL, "version": 1, "features": FEATURES}), "lacks ['target']"),
    ],
)
def test_a_bad_config_exits_2_with_an_error_summary(tmp_path: Path, config: str, error: str):
    job = {"spec": {"template": {"spec": {"containers": [{"image": IMAGE, "env": []}]}}}}
    job["spec"]["template"]["spec"]["containers"][0]["env"] = [{"name": "MFL_TRAINER_CONFIG", "value": config}]
    code, message, _ = run_job(job, tmp_path)
    summary = parse_summary(message)
    assert code == 2 and summary is not None and summary["ok"] is False and error in summary["error"], summary


def test_too_few_rows_is_bad_data(tmp_path: Path):
    root = tmp_path / "artifacts"
    datasets.write_base_csv(root / MODEL / "data" / "base.csv", 50, seed=1)
    spec = loop_spec(root)
    code, message, _ = run_job(resources.training_job(LOOP, spec, "churn-train-v1", 1, None, "Initial"), tmp_path)
    summary = parse_summary(message)
    assert code == 2 and summary == {"ok": False, "error": "50 labelled rows (50 base, 0 feedback), minRows is 200"}
