"""The installed `kubectl-mfl` script as kubectl runs a plugin: its own name in messages, one-line errors,
and Ctrl-C ending a --watch with 0 (a watch's normal end, issue 23) and no traceback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .apiserver import FakeApiServer
from .test_commands import loop

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def script() -> Path:
    path = Path(sys.executable).parent / "kubectl-mfl"
    assert path.exists(), "kubectl-mfl is not installed: pip install -e '.[test]' (pyproject [project.scripts])"
    return path


def environment(kubeconfig: Path) -> dict[str, str]:
    return {**os.environ, "KUBECONFIG": str(kubeconfig)}


def test_help_and_errors_name_the_plugin(script, tmp_path):
    result = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.startswith("usage: kubectl mfl")
    with FakeApiServer() as fake:
        env = environment(fake.kubeconfig(tmp_path / "k"))
        result = subprocess.run([script, "status", "churn"], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr == "kubectl mfl: modelfeedbackloop 'churn' not found in namespace 'prod'\n"


def test_ctrl_c_ends_a_watch_with_0_and_no_traceback(script, tmp_path):
    with FakeApiServer() as fake:
        fake.add(loop("churn"))
        watch = subprocess.Popen(
            [script, "status", "churn", "--watch"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environment(fake.kubeconfig(tmp_path / "k")),
            # A child of a non-interactive shell may inherit SIGINT ignored; a terminal's Ctrl-C is not.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        deadline = time.monotonic() + 30
        while watch.poll() is None and time.monotonic() < deadline:
            if any(r["query"].get("watch") for r in fake.requests):
                break
            time.sleep(0.05)
        assert watch.poll() is None, watch.communicate()  # still watching: its output says why not
        watch.send_signal(signal.SIGINT)
        out, err = watch.communicate(timeout=30)
    assert watch.returncode == 0, err
    assert "Traceback" not in err and "phase Monitoring" in out
