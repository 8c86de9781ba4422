"""`mfl demo --fast` runs the whole story on this machine and writes its plot (issue: one command shows
the whole loop). It brings up its own control plane, pod runtime, Prometheus and operator."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import require_root


@pytest.mark.timeout(1000)  # the demo brings up its own test bed: longer than the suite's 600 s default
def test_demo_runs_drift_breach_retraining_canary_promotion(tmp_path):
    require_root("mfl demo")
    result = subprocess.run([sys.executable, "-m", "feedbackloop.cli", "demo", "--fast", "--workdir", str(tmp_path)],
                            capture_output=True, text=True, timeout=900, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    for step in ("abrupt drift", "BreachStarted", "RetrainingStarted", "CanaryStarted", "Promoted"):
        assert step in output, f"{step} missing:\n{output[-4000:]}"
    assert (tmp_path / "demo.png").stat().st_size > 10_000
    assert "versions:" in output and "plot:" in output
