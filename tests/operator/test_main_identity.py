"""The operator's identity never depends on a passwd entry for its uid (found on the first real kubelet:
`KeyError: 'getpwuid(): uid not found: 65532'` from kopf's default identity)."""

from __future__ import annotations

import getpass

import pytest

from feedbackloop import main


def test_identity_is_the_pod_name_and_pid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAME", "feedbackloop-operator-7d9f-abcde")
    assert main.operator_identity().startswith("feedbackloop-operator-7d9f-abcde/")


def test_identity_without_a_passwd_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_user() -> str:
        raise KeyError("getpwuid(): uid not found: 65532")

    monkeypatch.setattr(getpass, "getuser", no_user)
    monkeypatch.delenv("POD_NAME", raising=False)
    assert "/" in main.operator_identity()
