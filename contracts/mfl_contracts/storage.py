"""The artifact store's layout, shared by the server (reads versions, appends logs) and the trainer
(reads data and logs, writes versions):

    <root>/<model>/data/*.csv                                  base data (the user's)
    <root>/<model>/predictions/date=YYYY-MM-DD/<writer>.jsonl  the server's prediction log
    <root>/<model>/feedback/date=YYYY-MM-DD/<writer>.jsonl     the server's feedback log
    <root>/<model>/feedback-claims/date=YYYY-MM-DD/<xx>/<hash> one empty file per labelled prediction id
    <root>/<model>/versions/<n>/model.joblib, metadata.json    one trained version
"""

from __future__ import annotations

import re
from pathlib import Path

# A model's folder name: no separators, no leading dot, so it can never leave <root>.
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
MODEL_FILE, METADATA_FILE, REPORT_FILE = "model.joblib", "metadata.json", "report.json"


def valid_model_name(name: str) -> bool:
    return bool(MODEL_NAME.match(name)) and ".." not in name


def model_dir(root: Path, model: str) -> Path:
    return root / model


def data_dir(root: Path, model: str) -> Path:
    return root / model / "data"


def predictions_dir(root: Path, model: str) -> Path:
    return root / model / "predictions"


def feedback_dir(root: Path, model: str) -> Path:
    return root / model / "feedback"


def feedback_claims_dir(root: Path, model: str) -> Path:
    """The server's exactly-once record of labelled prediction ids (docs/contracts.md, "Feedback")."""
    return root / model / "feedback-claims"


def version_dir(root: Path, model: str, version: int) -> Path:
    return root / model / "versions" / str(version)
