"""The two tiers `make test` runs side by side (mfl_testbed/tiers.py): each selects its own tests, the exit code
fails when either fails, and the second tier's report reaches the log."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mfl_testbed import tiers


def test_each_tier_selects_its_own_tests_with_its_own_temp_root(tmp_path: Path) -> None:
    cluster, rest = tiers.tier_commands(["-ra"], tmp_path, python="py")
    assert cluster[:4] == ["py", "-m", "pytest", "-p"] and "-ra" in cluster and "-ra" in rest
    assert cluster[cluster.index("-m", 3) + 1] == "e2e" and rest[rest.index("-m", 3) + 1] == "not e2e"
    roots = {a for a in cluster + rest if a.startswith("--basetemp")}
    assert len(roots) == 2 and all(str(tmp_path) in a for a in roots)  # this run's own: pytest wipes a basetemp


@pytest.mark.parametrize(
    ("cluster", "rest", "code"),
    [(0, 0, 0), (1, 0, 1), (0, 1, 1), (2, 1, 2), (5, 0, 0), (0, 5, 0), (5, 5, 5), (5, 1, 1)],
)
def test_the_run_fails_when_either_tier_fails(cluster: int, rest: int, code: int) -> None:
    assert tiers.combined(cluster, rest) == code


@pytest.mark.integration
def test_a_failure_in_the_second_tier_fails_the_run_and_its_report_is_printed(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text(
        "import pytest\ndef pytest_configure(config):\n    config.addinivalue_line('markers', 'e2e: cluster')\n"
    )
    (tmp_path / "test_both.py").write_text(
        "import pytest\n"
        "@pytest.mark.e2e\n"
        "def test_cluster():\n    pass\n"
        "def test_other_fails():\n    assert 1 == 2, 'the second tier failed'\n"
    )
    run = subprocess.run(
        [sys.executable, "-m", "mfl_testbed.tiers", "-q", "-ra", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert run.returncode == 1, run.stdout + run.stderr
    assert "1 passed" in run.stdout and "the non-cluster tier's report" in run.stdout
    assert "FAILED" in run.stdout and "the second tier failed" in run.stdout
