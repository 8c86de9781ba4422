"""The operator admin's settings (manifests/settings.yaml): one ConfigMap, loaded whole with envFrom by the
operator in every install shape, every key documented and empty by default (the built-in defaults, which
refuse what a tenant should not reach), and the test bed's own settings applied the same way."""

from __future__ import annotations

from ipaddress import ip_address
from pathlib import Path

import pytest

from feedbackloop.core.settings import AdminSettings, admin_settings_from_env
from mfl_testbed.cluster import NODE_IP, OPERATOR_SETTINGS

from .shapes import MANIFESTS, SHAPES, bed_settings_patch, one, operator_container, overlay, render, render_shape

KEYS = {
    "MFL_EGRESS_ALLOW",
    "MFL_ALLOW_HOST_PATH",
    "MFL_PROMETHEUS_CONCURRENCY",
    "MFL_PROMETHEUS_PER_TENANT",
    "MFL_PROMETHEUS_PER_HOST",
    "MFL_API_QPS",
    "MFL_API_BURST",
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_every_shape_loads_the_admin_settings_into_the_operator(tmp_path: Path, shape: str) -> None:
    objects = render_shape(tmp_path, shape)
    deployment = one(objects, "Deployment", "feedbackloop-operator")
    settings = one(objects, "ConfigMap", "mfl-operator-settings")
    assert settings["metadata"]["namespace"] == deployment["metadata"]["namespace"]
    assert operator_container(objects)["envFrom"] == [{"configMapRef": {"name": "mfl-operator-settings"}}]
    assert set(settings["data"]) == KEYS and all(value == "" for value in settings["data"].values())
    assert admin_settings_from_env(settings["data"]) == AdminSettings()  # empty: the built-in defaults


def test_every_setting_is_documented_where_it_is_set() -> None:
    text = (MANIFESTS / "settings.yaml").read_text()
    for key in KEYS:
        before = text.split(f"  {key}:")[0].rstrip().splitlines()
        assert before[-1].lstrip().startswith("#"), f"{key} has no comment above it"


def test_a_namespaced_install_moves_the_settings_with_the_operator(tmp_path: Path) -> None:
    objects = render_shape(tmp_path, "namespaced", namespace="team-a")
    assert one(objects, "ConfigMap", "mfl-operator-settings")["metadata"]["namespace"] == "team-a"


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_the_test_bed_sets_its_own_settings_in_every_shape(tmp_path: Path, shape: str) -> None:
    """The test bed is its cluster's admin: its receivers and services on the node's address are allowed, and
    its loops' hostPath storage."""
    objects = render(overlay(tmp_path / shape, SHAPES[shape], patches=[bed_settings_patch()]))
    data = one(objects, "ConfigMap", "mfl-operator-settings")["data"]
    assert data["MFL_EGRESS_ALLOW"] == NODE_IP == OPERATOR_SETTINGS["MFL_EGRESS_ALLOW"]
    admin = admin_settings_from_env(data)
    assert admin.allow_host_path and admin.egress_allow.allows_address(ip_address(NODE_IP))
    assert data["MFL_PROMETHEUS_PER_TENANT"] == ""  # the rest left as shipped
