"""`mfl demo --fast` runs the whole story on this machine and writes its plot (issue: one command shows
the whole loop). It brings up its own cluster (control plane, a real kubelet, containerd), Prometheus, and
the operator in-cluster from its image, and leaves nothing behind."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from mfl_testbed.pytest_plugin import require_root


@pytest.mark.timeout(1000)  # the demo brings up its own test bed: longer than the suite's 600 s default
def test_demo_runs_drift_breach_retraining_canary_promotion(tmp_path):
    require_root("mfl demo")
    result = subprocess.run(
        [sys.executable, "-m", "mfl_cli.cli", "demo", "--fast", "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    for step in ("abrupt drift", "BreachStarted", "RetrainingStarted", "CanaryStarted", "Promoted"):
        assert step in output, f"{step} missing:\n{output[-4000:]}"
    assert (tmp_path / "demo.png").stat().st_size > 10_000
    assert "versions:" in output and "plot:" in output
    # `kubectl get pods` as the demo printed it: the training Job's and the servers' Pods, from our images.
    assert "churn-train-v" in output and "ghcr.io/feedbackloop/mfl-trainer:dev-" in output
    assert "churn-canary-" in output and "ghcr.io/feedbackloop/mfl-server:" in output
    assert "feedbackloop-operator-" in output and "ghcr.io/feedbackloop/mfl-operator:dev-" in output
    from mfl_testbed import node

    assert node.read_state() == {} and node.running_components() == []  # torn down, machine restored
    assert node.our_shims() == []  # no container outlives it
