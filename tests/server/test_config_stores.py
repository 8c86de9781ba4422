"""The object store, database and log settings of the server's environment (mfl_server.config)."""

from __future__ import annotations

import pytest

from mfl_server.config import DEFAULT_LOG_FLUSH_BYTES, ConfigError, from_env

BASE = {"MFL_MODEL_NAME": "churn", "MFL_MODEL_VERSION": "3", "MFL_SIGNING_KEY": "k"}
S3 = {
    "MFL_S3_ENDPOINT": "http://seaweedfs.storage:8333",
    "MFL_S3_BUCKET": "churn-models",
    "MFL_S3_PREFIX": "team-a",
    "MFL_S3_ACCESS_KEY_ID": "id",
    "MFL_S3_SECRET_ACCESS_KEY": "secret",
}
URL = "postgresql://churn:pw@db.example:5432/churn"


def test_volume_mode_is_the_default_and_keeps_logs():
    config = from_env(BASE)
    assert config.s3 is None and config.database_url == ""
    assert (config.log_flush_seconds, config.log_flush_bytes, config.retention_log_seconds) == (
        5.0,
        DEFAULT_LOG_FLUSH_BYTES,
        0.0,
    )


def test_s3_with_a_database_and_the_log_settings():
    env = {**BASE, **S3, "MFL_DATABASE_URL": URL, "MFL_LOG_FLUSH_SECONDS": "2", "MFL_LOG_FLUSH_BYTES": "65536"}
    config = from_env({**env, "MFL_RETENTION_LOG_SECONDS": "3024000"})
    assert (config.s3.bucket, config.s3.prefix, config.s3.endpoint) == ("churn-models", "team-a", S3["MFL_S3_ENDPOINT"])
    assert config.database_url == URL and "pw" not in repr(config)
    assert (config.log_flush_seconds, config.log_flush_bytes, config.retention_log_seconds) == (2.0, 65536, 3024000.0)


def test_a_database_with_a_volume_is_allowed():
    config = from_env({**BASE, "MFL_DATABASE_URL": URL})
    assert config.s3 is None and config.database_url == URL


@pytest.mark.parametrize(
    "override, words",
    [
        ({**S3}, "MFL_S3_BUCKET is set but MFL_DATABASE_URL is empty"),
        ({**S3, "MFL_DATABASE_URL": URL, "MFL_S3_ENDPOINT": "ftp://x"}, "MFL_S3_ENDPOINT"),
        ({**S3, "MFL_DATABASE_URL": URL, "MFL_S3_SECRET_ACCESS_KEY": ""}, "MFL_S3_SECRET_ACCESS_KEY"),
        ({"MFL_DATABASE_URL": "mysql://db/x"}, "MFL_DATABASE_URL must be a libpq URI"),
        ({"MFL_LOG_FLUSH_SECONDS": "0"}, "MFL_LOG_FLUSH_SECONDS must be > 0"),
        ({"MFL_LOG_FLUSH_BYTES": "10"}, "MFL_LOG_FLUSH_BYTES out of range"),
        ({"MFL_RETENTION_LOG_SECONDS": "-1"}, "MFL_RETENTION_LOG_SECONDS must be >= 0"),
    ],
)
def test_bad_store_settings_are_named(override, words):
    with pytest.raises(ConfigError, match=words):
        from_env({**BASE, **override})
