"""The versioned model registry: ``<root>/<model>/versions/<n>/``, written atomically.

A version folder appears complete or not at all: files are written into a hidden temporary folder
beside it (``versions/.tmp-<n>-<random>``), flushed to disk, then the folder is renamed. Readers
list only integer folder names; staging folders left by a killed trainer are removed after an hour.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import joblib

from mfl_contracts.storage import METADATA_FILE, MODEL_FILE, version_dir

from .errors import TrainerError

STAGING_PREFIX = ".tmp-"
# A staging folder lives only while files are written (seconds); an older one is a killed trainer's.
STALE_STAGING_SECONDS = 3600


class VersionExists(Exception):
    """The final folder appeared while this trainer was writing (a concurrent retry won)."""


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise TrainerError(f"cannot read {path}: {error}") from error


def existing_metadata(root: Path, model: str, version: int) -> dict[str, Any] | None:
    folder = version_dir(root, model, version)
    return read_json(folder / METADATA_FILE) if folder.exists() else None


def load_champion(root: Path, model: str, version: int) -> tuple[Any, dict[str, Any]]:
    """The champion's fitted model and metadata; a missing or unreadable champion is bad input."""
    folder = version_dir(root, model, version)
    if not (folder / MODEL_FILE).is_file():
        raise TrainerError(f"champion version {version} has no model: {folder / MODEL_FILE} not found")
    metadata = read_json(folder / METADATA_FILE) if (folder / METADATA_FILE).is_file() else {}
    try:
        return joblib.load(folder / MODEL_FILE), metadata
    except Exception as error:  # unpickling can raise almost anything
        raise TrainerError(
            f"champion version {version}: cannot load {MODEL_FILE}: {type(error).__name__}: {error}"
        ) from error


def require_writable(root: Path, model: str) -> None:
    """Fail before training, with what to fix, when the store's versions folder is not writable.

    Found on a real kubelet: a hostPath folder the kubelet creates (`DirectoryOrCreate`) belongs to root,
    fsGroup does not apply to hostPath, and the images run as uid 65532.
    """
    versions = version_dir(root, model, 0).parent
    try:
        versions.mkdir(parents=True, exist_ok=True)
        probe = versions / f".write-check-{uuid.uuid4().hex[:8]}"
        probe.touch()
        probe.unlink()
    except OSError as error:
        owner = _owner_of_nearest(versions)
        raise TrainerError(
            f"artifact store not writable: {error.strerror} on {versions} (running as uid {os.getuid()}, "
            f"{owner}); give the folder to this uid (a hostPath must be created owned by it) or use a "
            f"PersistentVolumeClaim whose volume honours fsGroup"
        ) from error


def _owner_of_nearest(path: Path) -> str:
    for candidate in [path, *path.parents]:
        if candidate.exists():
            info = candidate.stat()
            return f"{candidate} is owned by uid {info.st_uid} with mode {info.st_mode & 0o7777:o}"
    return "no folder of it exists"


def write_version(root: Path, model: str, version: int, write_files: Callable[[Path], None]) -> Path:
    """Let ``write_files`` fill a temporary folder, then publish it as ``versions/<version>``."""
    final = version_dir(root, model, version)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(final.parent)
    staging = final.parent / f"{STAGING_PREFIX}{version}-{uuid.uuid4().hex[:12]}"
    staging.mkdir()
    try:
        write_files(staging)
        _fsync_tree(staging)
        try:
            os.rename(staging, final)  # atomic; fails if a non-empty final folder exists
        except OSError as error:
            if final.exists():
                raise VersionExists(str(final)) from error
            raise
        _fsync_dir(final.parent)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return final


def remove_stale_staging(versions: Path, now: float | None = None) -> list[Path]:
    now = time.time() if now is None else now
    stale = [
        path
        for path in versions.glob(f"{STAGING_PREFIX}*")
        if path.is_dir() and now - path.stat().st_mtime > STALE_STAGING_SECONDS
    ]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


def save_model(folder: Path, model: Any) -> None:
    joblib.dump(model, folder / MODEL_FILE)


def save_json(path: Path, document: dict[str, Any]) -> None:
    path.write_text(json.dumps(document, indent=2, sort_keys=False, allow_nan=False) + "\n")


def _fsync_tree(folder: Path) -> None:
    for path in folder.iterdir():
        with path.open("rb") as handle:
            os.fsync(handle.fileno())
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
