"""Server configuration from the environment (docs/contracts.md, "Model server")."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mfl_contracts import storage
from mfl_contracts.objectstore import S3Settings, s3_settings_from_env

from .claims import CLOCK_MARGIN
from .feedback import DEFAULT_FUTURE_MARGIN

DEFAULT_STORAGE_ROOT = "/var/lib/mfl/artifacts"
DEFAULT_PORT = 8080
TRACKS = ("stable", "canary")
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
# Labels may arrive a month after their prediction: longer than the default data window (7 days), so
# the trainer never misses one the server could take; it also bounds how long claims are kept.
DEFAULT_FEEDBACK_MAX_AGE = 30 * 86400.0
MAX_FEEDBACK_MAX_AGE = 366 * 86400.0  # claims are kept this long at most
# A prediction dated ahead of this replica's clock by more than the margin is refused (`future`). The margin is
# at most the clock skew the claims' and the ledger's retention tolerate, so a sweep never deletes a day whose
# labels a replica may still take (claims.expired_days).
DEFAULT_FEEDBACK_CLOCK_MARGIN = DEFAULT_FUTURE_MARGIN
MAX_FEEDBACK_CLOCK_MARGIN = CLOCK_MARGIN
DEFAULT_LOG_FLUSH_SECONDS = 5.0  # s3 mode: what a crash can lose of the prediction log
DEFAULT_LOG_FLUSH_BYTES = 4 * 1024 * 1024
DATABASE_SCHEMES = ("postgresql://", "postgres://")


class ConfigError(ValueError):
    """The environment cannot describe a working server; the process exits non-zero."""


@dataclass(frozen=True)
class ServerConfig:
    model: str
    version: int
    track: str
    storage_root: Path
    signing_key: bytes
    port: int = DEFAULT_PORT
    host: str = "0.0.0.0"
    max_batch: int = 1024  # rows per /predict request
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    feedback_max_age: float = DEFAULT_FEEDBACK_MAX_AGE  # seconds after a prediction its label is taken
    feedback_clock_margin: float = DEFAULT_FEEDBACK_CLOCK_MARGIN  # seconds a prediction may be dated ahead of now
    shutdown_delay: float = 0.0  # seconds to keep serving (not ready) after SIGTERM
    reload_interval: float = 5.0  # seconds between attempts to load a missing artifact
    store_check_interval: float = 5.0  # seconds between writes that probe the artifact store
    inference_threads: int = 1  # OpenMP/BLAS threads; 0 leaves the libraries' default
    # Object store + database mode (docs/contracts.md): s3 is an mfl_contracts.objectstore.S3Settings.
    s3: S3Settings | None = None  # None: the prediction log is on the volume at storage_root
    database_url: str = field(default="", repr=False)  # "": labels are claim files + the feedback log
    log_flush_seconds: float = DEFAULT_LOG_FLUSH_SECONDS
    log_flush_bytes: int = DEFAULT_LOG_FLUSH_BYTES
    retention_log_seconds: float = 0.0  # 0: logs are kept (the hourly sweep deletes nothing past claims)
    input_drift: bool = False  # count served values into the version's input-profile bins (monitoring.inputDrift)

    @property
    def model_dir(self) -> Path:
        return storage.model_dir(self.storage_root, self.model)

    @property
    def version_dir(self) -> Path:
        return storage.version_dir(self.storage_root, self.model, self.version)


def from_env(env: Mapping[str, str] = os.environ) -> ServerConfig:
    """Contract variables, plus optional MFL_HOST, MFL_MAX_BATCH, MFL_MAX_BODY_BYTES,
    MFL_FEEDBACK_MAX_AGE_SECONDS, MFL_FEEDBACK_CLOCK_MARGIN_SECONDS (300), MFL_SHUTDOWN_DELAY_SECONDS,
    MFL_INFERENCE_THREADS, MFL_INPUT_DRIFT (true: count inputs into the profile's bins), the object
    store's MFL_S3_*, MFL_DATABASE_URL, MFL_LOG_FLUSH_SECONDS/_BYTES and
    MFL_RETENTION_LOG_SECONDS."""
    model = env.get("MFL_MODEL_NAME", "").strip()
    if not storage.valid_model_name(model):
        raise ConfigError(f"MFL_MODEL_NAME must be a model name like 'churn', got {model!r}")
    track = env.get("MFL_TRACK", "stable").strip()
    if track not in TRACKS:
        raise ConfigError(f"MFL_TRACK must be one of {list(TRACKS)}, got {track!r}")
    key = env.get("MFL_SIGNING_KEY", "")
    if not key:
        raise ConfigError("MFL_SIGNING_KEY is empty: prediction ids cannot be signed")
    max_age = _float(env, "MFL_FEEDBACK_MAX_AGE_SECONDS", DEFAULT_FEEDBACK_MAX_AGE)
    if not 0 < max_age <= MAX_FEEDBACK_MAX_AGE:
        raise ConfigError(f"MFL_FEEDBACK_MAX_AGE_SECONDS must be > 0 and at most {MAX_FEEDBACK_MAX_AGE:.0f} (a year)")
    margin = _float(env, "MFL_FEEDBACK_CLOCK_MARGIN_SECONDS", DEFAULT_FEEDBACK_CLOCK_MARGIN)
    if not 0 < margin <= MAX_FEEDBACK_CLOCK_MARGIN:
        raise ConfigError(
            f"MFL_FEEDBACK_CLOCK_MARGIN_SECONDS must be > 0 and at most {MAX_FEEDBACK_CLOCK_MARGIN:.0f} (the clock "
            f"skew the retention of claims tolerates), got {margin:g}"
        )
    return ServerConfig(
        model=model,
        version=_int(env, "MFL_MODEL_VERSION", None, minimum=0),
        track=track,
        storage_root=Path(env.get("MFL_STORAGE_ROOT") or DEFAULT_STORAGE_ROOT),
        signing_key=key.encode(),
        port=_int(env, "MFL_PORT", DEFAULT_PORT, minimum=0, maximum=65535),
        host=env.get("MFL_HOST") or "0.0.0.0",
        max_batch=_int(env, "MFL_MAX_BATCH", 1024, minimum=1),
        max_body_bytes=_int(env, "MFL_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES, minimum=1024),
        feedback_max_age=max_age,
        feedback_clock_margin=margin,
        shutdown_delay=_float(env, "MFL_SHUTDOWN_DELAY_SECONDS", 0.0),
        inference_threads=_int(env, "MFL_INFERENCE_THREADS", 1, minimum=0),
        input_drift=env.get("MFL_INPUT_DRIFT", "").strip().lower() == "true",
        **_stores(env),
    )


def _stores(env: Mapping[str, str]) -> dict[str, Any]:
    """The object store, the label database and the logs' settings; s3 needs the database."""
    try:
        s3 = s3_settings_from_env(env)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    url = env.get("MFL_DATABASE_URL", "").strip()
    if url and not url.startswith(DATABASE_SCHEMES):
        raise ConfigError("MFL_DATABASE_URL must be a libpq URI like postgresql://user:password@host:5432/db")
    if s3 is not None and not url:
        raise ConfigError(
            "MFL_S3_BUCKET is set but MFL_DATABASE_URL is empty: with an object store, labels are recorded "
            "exactly once in PostgreSQL (spec.model.storage.database), not as a file per label"
        )
    flush_seconds = _float(env, "MFL_LOG_FLUSH_SECONDS", DEFAULT_LOG_FLUSH_SECONDS)
    if not 0 < flush_seconds <= 300:
        raise ConfigError("MFL_LOG_FLUSH_SECONDS must be > 0 and at most 300")
    return {
        "s3": s3,
        "database_url": url,
        "log_flush_seconds": flush_seconds,
        "log_flush_bytes": _int(env, "MFL_LOG_FLUSH_BYTES", DEFAULT_LOG_FLUSH_BYTES, minimum=1024),
        "retention_log_seconds": _float(env, "MFL_RETENTION_LOG_SECONDS", 0.0),
    }


def _int(
    env: Mapping[str, str], name: str, default: int | None, minimum: int | None = None, maximum: int | None = None
) -> int:
    text = env.get(name, "").strip()
    if not text:
        if default is None:
            raise ConfigError(f"{name} is required")
        return default
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {text!r}") from None
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ConfigError(f"{name} out of range: {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {text!r}") from None
    if not value >= 0:
        raise ConfigError(f"{name} must be >= 0, got {text!r}")
    return value
