"""The ML-efficacy benchmark's strategies run and behave sanely on a small abrupt-drift stream."""
import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "ml_efficacy.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("ml_efficacy", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["ml_efficacy"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_loop_retrains_after_a_drift_and_the_oracle_bounds_everyone(bench):
    settings = bench.Settings(rows=8000, window=2000, every=2000)
    stream = bench.Stream("abrupt", settings)
    none = bench.run_simple("none", stream, settings, lambda t, c: False)
    loop = bench.run_loop(stream, settings)
    oracle = bench.run_oracle(stream, settings)
    assert loop.retrains >= 1 and sum(loop.notes.values()) >= 1
    span = 1500
    assert bench.post_drift_accuracy(oracle, stream, span) > bench.post_drift_accuracy(none, stream, span) + 0.2
    assert oracle.correct.mean() >= max(none.correct.mean(), loop.correct.mean())
