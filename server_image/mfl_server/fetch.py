"""`mfl-fetch`: the init container of s3-mode Pods (server and sidecar images).

Waits until ``<model>/versions/<MFL_MODEL_VERSION>/metadata.json`` exists in the bucket (the trainer writes
it last: a version exists iff it does), then downloads the version into
``<MFL_STORAGE_ROOT>/<model>/versions/<n>/`` (an emptyDir), so the server or MLServer loads it from a
folder exactly as in volume mode. Retries every ``RETRY_SECONDS``, logging each new reason once (a
missing version, AccessDenied, an unreachable endpoint), so the Pod's events and logs say what it waits for.

Environment: MFL_MODEL_NAME, MFL_MODEL_VERSION, MFL_STORAGE_ROOT and the MFL_S3_* variables.
Exit codes: 0 fetched, 2 configuration.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from mfl_contracts import storage
from mfl_contracts.objectstore import ArtifactStore, S3Store, StoreError, s3_settings_from_env

from .config import DEFAULT_STORAGE_ROOT, ConfigError

log = logging.getLogger("mfl_server.fetch")
RETRY_SECONDS = 5.0


def version_prefix(model: str, version: int) -> str:
    return f"{model}/versions/{version}/"


def wait_for_version(
    store: ArtifactStore, prefix: str, retry: float = RETRY_SECONDS, sleep: Callable[[float], None] = time.sleep
) -> None:
    """Returns once ``prefix`` + metadata.json is listed; logs each new reason to wait once."""
    key = prefix + storage.METADATA_FILE
    reason = None
    while True:
        try:
            if any(info.key == key for info in store.list(prefix)):
                return
            problem = f"{key} does not exist yet in {store.description}: waiting for the trainer"
        except StoreError as error:
            problem = str(error)
        if problem != reason:
            log.warning("%s (retrying every %.0f s)", problem, retry)
            reason = problem
        sleep(retry)


def fetch(store: ArtifactStore, model: str, version: int, root: Path, retry: float = RETRY_SECONDS) -> int:
    """Waits for the version, then downloads it under ``root``; returns the number of files."""
    prefix = version_prefix(model, version)
    wait_for_version(store, prefix, retry)
    dest = storage.version_dir(root, model, version)
    while True:
        try:
            return store.download(prefix, dest)
        except StoreError as error:  # e.g. the endpoint went away mid-download: again, whole
            log.warning("cannot download %s: %s (retrying in %.0f s)", prefix, error, retry)
            time.sleep(retry)


def settings(env: Mapping[str, str]) -> tuple[str, int, Path, S3Store]:
    model = env.get("MFL_MODEL_NAME", "").strip()
    if not storage.valid_model_name(model):
        raise ConfigError(f"MFL_MODEL_NAME must be a model name like 'churn', got {model!r}")
    text = env.get("MFL_MODEL_VERSION", "").strip()
    if not text.isdigit():
        raise ConfigError(f"MFL_MODEL_VERSION must be a version number, got {text!r}")
    try:
        s3 = s3_settings_from_env(env)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if s3 is None:
        raise ConfigError("MFL_S3_BUCKET is not set: mfl-fetch copies a version from an object store")
    return model, int(text), Path(env.get("MFL_STORAGE_ROOT") or DEFAULT_STORAGE_ROOT), S3Store(s3)


def main() -> int:
    logging.basicConfig(
        level=os.environ.get("MFL_LOG_LEVEL", "INFO").upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        model, version, root, store = settings(os.environ)
    except ConfigError as error:
        log.error("configuration: %s", error)
        return 2
    started = time.monotonic()
    count = fetch(store, model, version, root)
    log.info(
        "fetched version %d of %s (%d files) from %s into %s in %.1f s",
        version,
        model,
        count,
        store.description,
        storage.version_dir(root, model, version),
        time.monotonic() - started,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
