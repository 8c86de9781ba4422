"""A status write carries the loop's resourceVersion as a precondition without reading the loop first: the version
is the watch's, or our own last write's until the watch shows anything after it. A 409 falls back to a read."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from feedbackloop.core.fleet import LoopMemory
from feedbackloop.runtime import kube


def test_the_watch_version_until_a_write_then_ours_until_the_watch_moves_on() -> None:
    memory = LoopMemory()
    assert memory.version_to_write_on("") is None  # nothing known: read first
    assert memory.version_to_write_on("10") == "10"
    memory.note_write(seen="10", written="11")
    assert memory.version_to_write_on("10") == "11"  # the watch has not delivered our write yet
    assert memory.version_to_write_on("11") == "11"  # it has
    assert memory.version_to_write_on("15") == "15"  # and someone else's change after it
    memory.note_write(seen="15", written="")  # a write that returned no version (a fake, or a gone loop)
    assert memory.version_to_write_on("15") == "15"


class CustomObjects:
    """The custom objects API as patch_status uses it: reads and precondition checks against `current`."""

    def __init__(self, current: str) -> None:
        self.current, self.calls = current, []  # type: ignore[var-annotated]

    def get_namespaced_custom_object(self, *args: Any) -> dict[str, Any]:
        self.calls.append("get")
        return {"metadata": {"resourceVersion": self.current}}

    def patch_namespaced_custom_object_status(self, *args: Any) -> dict[str, Any]:
        sent = args[-1]["metadata"]["resourceVersion"]
        self.calls.append(f"patch@{sent}")
        if sent != self.current:
            raise ApiException(status=409, reason="Conflict")
        self.current = str(int(self.current) + 1)
        return {"metadata": {"resourceVersion": self.current}}


def fake_kube(current: str) -> tuple[kube.Kube, CustomObjects]:
    k = kube.Kube.__new__(kube.Kube)
    custom = CustomObjects(current)
    k.custom = custom  # type: ignore[assignment]
    return k, custom


def test_a_known_version_is_sent_without_a_read() -> None:
    k, custom = fake_kube("7")
    written = k.patch_status("ns", "loop", {"phase": "Monitoring"}, known_version="7")
    assert custom.calls == ["patch@7"] and written["metadata"]["resourceVersion"] == "8"


def test_a_stale_version_is_refused_then_read_and_written() -> None:
    k, custom = fake_kube("9")
    k.patch_status("ns", "loop", {"phase": "Monitoring"}, known_version="7")
    assert custom.calls == ["patch@7", "get", "patch@9"]


def test_without_a_version_the_loop_is_read_first() -> None:
    k, custom = fake_kube("3")
    k.patch_status("ns", "loop", {})
    assert custom.calls == ["get", "patch@3"]


def test_a_conflict_every_time_is_raised() -> None:
    k, custom = fake_kube("1")
    custom.patch_namespaced_custom_object_status = lambda *a: (_ for _ in ()).throw(ApiException(status=409))  # type: ignore[method-assign]
    with pytest.raises(ApiException):
        k.patch_status("ns", "loop", {}, known_version="1")
