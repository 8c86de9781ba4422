"""The coordinator's list of the fleet asks for metadata only, in pages; a client too old to set headers lists whole
objects instead (and stops trying)."""

from __future__ import annotations

from typing import Any

import pytest

from feedbackloop.core import sharding
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
    # The first page from the watch cache, not a quorum read from etcd; a continued one names no version.
    assert [kwargs.get("resource_version") for _, kwargs in custom.calls] == ["0", None]


def test_an_old_client_lists_whole_objects() -> None:
    custom = Custom(headers=False)
    k = kube_with(custom)
    assert len(k.list_loop_labels([])) == 2 and not k._metadata_lists
    assert not any("_headers" in kwargs for _, kwargs in custom.calls)


class Patching:
    def __init__(self, content_type: bool) -> None:
        self.content_type, self.calls = content_type, []  # type: ignore[var-annotated]

    def patch_namespaced_custom_object(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        if "_content_type" in kwargs and not self.content_type:
            raise TypeError("got an unexpected keyword argument '_content_type'")
        self.calls.append((args, kwargs))
        return {"metadata": {"resourceVersion": "8"}}


def test_a_move_tests_the_labels_it_listed() -> None:
    listed = {"app": "churn", "feedbackloop.dev/shard": "a"}
    patch = sharding.label_patch(listed, {"feedbackloop.dev/shard-drain": "b", "gone": None})
    assert patch == [
        {"op": "test", "path": "/metadata/labels", "value": listed},
        {"op": "add", "path": "/metadata/labels/feedbackloop.dev~1shard-drain", "value": "b"},
    ]  # a label absent from the list is not removed (a JSON patch's remove of nothing fails)
    ack = sharding.label_patch({**listed, "feedbackloop.dev/shard-drain": "b"}, sharding.ACK_LABELS)
    assert [op["op"] for op in ack] == ["test", "remove", "remove"]


@pytest.mark.parametrize("content_type", [True, False])
def test_label_loop_sends_a_json_patch_or_a_merge_patch_on_the_version(content_type: bool) -> None:
    custom = Patching(content_type)
    k = kube_with(custom)  # type: ignore[arg-type]
    assert k.label_loop("ns", "a", "7", {"feedbackloop.dev/shard": "r1"}, {"app": "churn"}) == "8"
    assert k.label_loop("ns", "b", "7", {"feedbackloop.dev/shard": "r1"}, {}) == "8"
    (json_args, json_kwargs), (merge_args, merge_kwargs) = custom.calls
    assert json_args[-1][0] == {"op": "test", "path": "/metadata/labels", "value": {"app": "churn"}}
    assert json_kwargs == ({"_content_type": kube.JSON_PATCH} if content_type else {})
    assert merge_args[-1] == {"metadata": {"resourceVersion": "7", "labels": {"feedbackloop.dev/shard": "r1"}}}
    assert merge_kwargs == {}
