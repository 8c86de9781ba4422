"""What ships: the project wheel (every image installs it) holds the product packages and nothing of the
test bed; the estimators the API accepts are the ones the trainer implements (mfl_contracts)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path
from typing import get_args

import pytest

from feedbackloop.core import api
from mfl_contracts.estimators import CLASSIFIERS, ESTIMATORS, REGRESSORS
from mfl_trainer import estimators

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = {"feedbackloop", "mfl_server", "mfl_trainer", "mfl_cli", "mfl_contracts", "mfl_keras"}


@pytest.mark.integration
def test_the_wheel_holds_the_product_and_no_test_bed(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), "."],
        cwd=ROOT,
        check=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("model_feedback_loop-*.whl")
    files = zipfile.ZipFile(wheel).namelist()
    packages = {name.split("/", 1)[0] for name in files if "/" in name and ".dist-info/" not in name}
    assert packages == PRODUCT, sorted(packages)
    assert not [name for name in files if "testbed" in name or "localdev" in name or name.endswith(".sh")]
    assert not [name for name in files if "/demo" in name or "/datasets" in name or "/traffic" in name]


def test_the_api_and_the_trainer_know_the_same_estimators() -> None:
    assert set(get_args(api.Estimator)) == set(ESTIMATORS)
    assert set(estimators.ESTIMATORS) == set(ESTIMATORS)
    for name in CLASSIFIERS:
        assert estimators.ESTIMATORS[name].task == "classification"
    for name in REGRESSORS:
        assert estimators.ESTIMATORS[name].task == "regression"
