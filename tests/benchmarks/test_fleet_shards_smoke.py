"""The fleet-sharding benchmark at a tiny size on its own control plane (no kubelet): two sharded replicas
assign and balance every loop, the engines know each loop once, and after a replica's SIGKILL and a join the
loops end with live replicas within the cap. Its tables print; no replica outlives the run."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from mfl_testbed.controlplane import missing_binaries
from mfl_testbed.process import TestbedError
from mfl_testbed.pytest_plugin import unavailable

pytestmark = pytest.mark.integration
SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "fleet_shards.py"
LOOPS = 40


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fleet_shards", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["fleet_shards"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def outcome(bench: ModuleType) -> Any:
    if missing_binaries():
        unavailable(f"the control plane's binaries are missing: {missing_binaries()}")
    argv = ["--loops", str(LOOPS), "--replicas", "2", "--window", "10", "--settle", "2", "--quiet", "5"]
    argv += ["--timeout", "300"]
    try:
        return bench.main(argv)
    except TestbedError as error:
        unavailable(f"the fleet benchmark's services cannot start: {error}")


def test_every_loop_is_assigned_once_and_balanced(outcome: Any) -> None:
    rows, _ = outcome
    [row] = rows
    assert row["loops"] == LOOPS and row["replicas"] == 2
    assert 0 < row["assigned_s"] <= row["balanced_s"]
    assert row["known"] == LOOPS  # no engine keeps a loop it does not own
    assert row["max_loops"] <= -(-LOOPS * 5 // 8)  # ceil(1.25 * 40 / 2)
    assert row["rss"] > 0


def test_a_killed_replica_loses_its_loops_and_a_joined_one_gets_some(outcome: Any) -> None:
    _, [moves] = outcome
    assert moves["failover_s"] > 0
    assert moves["joined_loops"] > 0
    assert sum(moves["final"].values()) == LOOPS
    assert max(moves["final"].values()) <= moves["cap"]
    assert moves["victim"] not in moves["final"]
    assert moves["known"] == LOOPS


def test_no_replica_outlives_the_run(bench: ModuleType, outcome: Any) -> None:
    assert len(bench.STARTED_PIDS) == 3  # two, then one joined
    for pid in bench.STARTED_PIDS:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
