"""Server configuration from the environment (mfl_server.config)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mfl_server.config import DEFAULT_STORAGE_ROOT, ConfigError, from_env

BASE = {"MFL_MODEL_NAME": "churn", "MFL_MODEL_VERSION": "3", "MFL_SIGNING_KEY": "k"}


def test_contract_defaults():
    config = from_env(BASE)
    assert (config.model, config.version, config.track, config.port) == ("churn", 3, "stable", 8080)
    assert config.storage_root == Path(DEFAULT_STORAGE_ROOT)
    assert config.version_dir == Path(DEFAULT_STORAGE_ROOT) / "churn" / "versions" / "3"
    assert config.signing_key == b"k" and config.host == "0.0.0.0"


def test_input_bounds_have_defaults_and_can_be_set():
    config = from_env(BASE)
    assert (config.max_batch, config.max_body_bytes, config.feedback_max_age) == (1024, 16 << 20, 30 * 86400.0)
    config = from_env(
        {**BASE, "MFL_MAX_BATCH": "64", "MFL_MAX_BODY_BYTES": "65536", "MFL_FEEDBACK_MAX_AGE_SECONDS": "3600"}
    )
    assert (config.max_batch, config.max_body_bytes, config.feedback_max_age) == (64, 65536, 3600.0)


def test_every_contract_variable_is_read():
    config = from_env({**BASE, "MFL_TRACK": "canary", "MFL_STORAGE_ROOT": "/data", "MFL_PORT": "9000"})
    assert (config.track, config.storage_root, config.port) == ("canary", Path("/data"), 9000)


@pytest.mark.parametrize(
    "override, words",
    [
        ({"MFL_MODEL_NAME": ""}, "MFL_MODEL_NAME"),
        ({"MFL_MODEL_NAME": "../etc"}, "MFL_MODEL_NAME"),
        ({"MFL_MODEL_VERSION": ""}, "MFL_MODEL_VERSION is required"),
        ({"MFL_MODEL_VERSION": "v2"}, "MFL_MODEL_VERSION must be an integer"),
        ({"MFL_TRACK": "beta"}, "MFL_TRACK must be one of"),
        ({"MFL_SIGNING_KEY": ""}, "MFL_SIGNING_KEY is empty"),
        ({"MFL_PORT": "70000"}, "MFL_PORT out of range"),
        ({"MFL_SHUTDOWN_DELAY_SECONDS": "-1"}, "must be >= 0"),
        ({"MFL_MAX_BODY_BYTES": "100"}, "MFL_MAX_BODY_BYTES out of range"),
        ({"MFL_FEEDBACK_MAX_AGE_SECONDS": "0"}, "MFL_FEEDBACK_MAX_AGE_SECONDS must be > 0"),
        ({"MFL_FEEDBACK_MAX_AGE_SECONDS": "inf"}, "at most 31622400"),
        ({"MFL_FEEDBACK_MAX_AGE_SECONDS": "nan"}, "MFL_FEEDBACK_MAX_AGE_SECONDS must be"),
    ],
)
def test_bad_environment_is_named(override, words):
    with pytest.raises(ConfigError, match=words):
        from_env({**BASE, **override})
