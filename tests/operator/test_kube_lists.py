"""The coordinator's list of the fleet asks for metadata only, in pages; a client too old to set headers lists whole
objects instead (and stops trying)."""

from __future__ import annotations

from typing import Any

from feedbackloop.runtime import kube


class Custom:
    def __init__(self, headers: bool) -> None:
        self.headers, self.calls = headers, []  # type: ignore[var-annotated]

    def list_cluster_custom_object(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        if "_headers" in kwargs and not self.headers:
            raise TypeError("got an unexpected keyword argument '_headers'")
        self.calls.append((args, kwargs))
        token = kwargs.get("_continue")
        item = {"metadata": {"namespace": "ns", "name": f"loop-{token or 0}", "resourceVersion": "7", "labels": {}}}
        return {"items": [item], "metadata": {"continue": None if token else "page-2"}}


def kube_with(custom: Custom) -> kube.Kube:
    k = kube.Kube.__new__(kube.Kube)
    k.custom, k._metadata_lists = custom, True  # type: ignore[assignment]
    return k


def test_metadata_only_in_pages() -> None:
    custom = Custom(headers=True)
    found = kube_with(custom).list_loop_labels([])
    assert [name for _, name, _, _ in found] == ["loop-0", "loop-page-2"]
    assert all(kwargs["_headers"] == {"Accept": kube.METADATA_ONLY} for _, kwargs in custom.calls)
    assert [kwargs.get("_continue") for _, kwargs in custom.calls] == [None, "page-2"]


def test_an_old_client_lists_whole_objects() -> None:
    custom = Custom(headers=False)
    k = kube_with(custom)
    assert len(k.list_loop_labels([])) == 2 and not k._metadata_lists
    assert not any("_headers" in kwargs for _, kwargs in custom.calls)
