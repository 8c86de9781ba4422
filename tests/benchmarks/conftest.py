"""The benchmark scripts are scripts, not modules: the tests load them by path."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ML_EFFICACY = Path(__file__).resolve().parents[2] / "benchmarks" / "ml_efficacy.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    """benchmarks/ml_efficacy.py as a module."""
    spec = importlib.util.spec_from_file_location("ml_efficacy", ML_EFFICACY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["ml_efficacy"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module
