"""The release this code is: one version, pyproject.toml's `version`, read from the installed distribution's
metadata (never written twice), and the names of the images it ships under.

The default images of a loop (`api.py`), the CRD generated from it, the manifests' image tags and
`app.kubernetes.io/version` labels, the Dockerfile's version label, the image builder's tags and CHANGELOG.md
all name this version; tests/release/test_version.py fails when any of them drifts from pyproject.toml.
"""

from __future__ import annotations

from importlib import metadata

DISTRIBUTION = "model-feedback-loop"
# Where the release publishes its images (and the names the test bed loads them under, tagged :VERSION too).
IMAGE_REPOSITORY = "ghcr.io/feedbackloop"


def _installed_version() -> str:
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:  # a source tree on sys.path without the project installed
        return "0.0.0+unknown"


VERSION = _installed_version()


def image(name: str) -> str:
    """The reference of one of the project's images at this release, e.g. ghcr.io/feedbackloop/mfl-trainer:0.1.0."""
    return f"{IMAGE_REPOSITORY}/{name}:{VERSION}"
