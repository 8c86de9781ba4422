import sys

import pytest
from feedbackloop.localdev.podruntime_images import IMAGE_ENTRYPOINTS, ImageNotMapped, container_argv, image_repository


@pytest.mark.parametrize("image, repository", [
    ("ghcr.io/feedbackloop/mfl-server:1.2.0", "ghcr.io/feedbackloop/mfl-server"),
    ("ghcr.io/feedbackloop/mfl-trainer@sha256:abc", "ghcr.io/feedbackloop/mfl-trainer"),
    ("ghcr.io/feedbackloop/mfl-trainer:1@sha256:abc", "ghcr.io/feedbackloop/mfl-trainer"),
    ("localhost:5000/team/app:dev", "localhost:5000/team/app"),
    ("localhost:5000/team/app", "localhost:5000/team/app"),
    ("busybox", "busybox"),
    ("busybox:1.36", "busybox"),
    ("docker.io/library/alpine:3.19", "alpine"),
    ("library/alpine", "alpine"),
])
def test_image_repository_drops_tag_digest_and_docker_hub_prefix(image, repository):
    assert image_repository(image) == repository


def test_command_and_args_run_as_given_whatever_the_image():
    container = {"image": "ghcr.io/feedbackloop/mfl-server:1", "command": ["python", "-c"], "args": ["print(1)"]}
    assert container_argv(container) == ["python", "-c", "print(1)"]


def test_mapped_images_use_the_local_entry_point_with_sys_executable():
    assert container_argv({"image": "ghcr.io/feedbackloop/mfl-server:0.1"}) == [
        sys.executable, "-m", "mfl_server.app"]
    assert container_argv({"image": "ghcr.io/feedbackloop/mfl-trainer:0.1", "args": ["--config", "c.json"]}) == [
        sys.executable, "-m", "mfl_trainer.main", "--config", "c.json"]


def test_shell_images_run_their_args_or_a_shell():
    assert container_argv({"image": "busybox:1.36", "args": ["sh", "-c", "true"]}) == ["sh", "-c", "true"]
    assert container_argv({"image": "alpine"}) == ["/bin/sh"]


def test_unknown_image_without_command_is_not_mapped_with_a_clear_message():
    with pytest.raises(ImageNotMapped) as raised:
        container_argv({"image": "example.com/team/model:3"})
    assert raised.value.reason == "ImageNotMapped"
    assert "example.com/team/model" in str(raised.value)
    assert "IMAGE_ENTRYPOINTS" in str(raised.value)


def test_the_mapping_is_extensible(monkeypatch):
    monkeypatch.setitem(IMAGE_ENTRYPOINTS, "example.com/team/model", ["model-serve"])
    assert container_argv({"image": "example.com/team/model:3", "args": ["-v"]}) == ["model-serve", "-v"]
