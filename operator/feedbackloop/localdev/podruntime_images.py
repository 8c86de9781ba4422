"""Which local program runs a container: there are no images here, only host entry points.

A container with `command` runs command + args as given (resolved on the host PATH). Without one,
the image repository picks the entry point from IMAGE_ENTRYPOINTS (args are appended, as they would
be to an image's ENTRYPOINT). Shell images (busybox, alpine, ...) have no entry point: their args run
as the command, or /bin/sh when there are none.
"""
from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

# Image repository (no tag or digest) -> argv of its local stand-in. Extend it to map more images.
IMAGE_ENTRYPOINTS: dict[str, list[str]] = {
    "ghcr.io/feedbackloop/mfl-server": [sys.executable, "-m", "mfl_server.app"],
    "ghcr.io/feedbackloop/mfl-trainer": [sys.executable, "-m", "mfl_trainer.main"],
}

# Images whose default command is a shell; their commands run on the host's /bin/sh and tools.
SHELL_IMAGES: set[str] = {"busybox", "alpine", "debian", "ubuntu", "bash"}

DEFAULT_SHELL = "/bin/sh"


class ImageNotMapped(Exception):
    """The container has no command and its image has no local entry point."""

    reason = "ImageNotMapped"


def image_repository(image: str) -> str:
    """`ghcr.io/x/y:1.2@sha256:..` -> `ghcr.io/x/y`; Docker Hub names lose `docker.io/library/`."""
    name = image.split("@", 1)[0]
    last_slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > last_slash:  # a colon before the last slash is a registry port, not a tag
        name = name[:colon]
    for prefix in ("docker.io/", "index.docker.io/", "library/"):
        name = name.removeprefix(prefix)
    return name


def entrypoint_for(image: str, table: Mapping[str, list[str]] | None = None) -> list[str] | None:
    return list((IMAGE_ENTRYPOINTS if table is None else table).get(image_repository(image)) or []) or None


def container_argv(container: Mapping[str, Any]) -> list[str]:
    """The argv a container runs (before $(VAR) expansion); raises ImageNotMapped."""
    command = list(container.get("command") or [])
    args = list(container.get("args") or [])
    if command:
        return command + args
    image = container.get("image") or ""
    entrypoint = entrypoint_for(image)
    if entrypoint:
        return entrypoint + args
    if image_repository(image) in SHELL_IMAGES:
        return args or [DEFAULT_SHELL]
    raise ImageNotMapped(
        f"image {image!r} has no local entry point and the container sets no command; "
        f"add its repository {image_repository(image)!r} to "
        f"feedbackloop.localdev.podruntime_images.IMAGE_ENTRYPOINTS or give the container a command")
