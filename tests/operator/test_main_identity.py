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


def test_log_lines_quoting_a_tenants_text_are_inert() -> None:
    import logging

    from feedbackloop.main import InertFormatter

    record = logging.LogRecord("x", logging.WARNING, "f", 1, "webhook said %s", ("\x1b]52;c;cm0gLXJmIC8=\x07ok",), None)
    line = InertFormatter("%(levelname)s %(message)s").format(record)
    assert "\x1b" not in line and "\x07" not in line and "\\x1b]52" in line
