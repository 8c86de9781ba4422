"""One version, pyproject.toml's: the code reads it from the installed metadata, and every other place that names
it (the loops' default images and so the CRD, the manifests' image tags and labels, the Dockerfile's label, the
image builder's tags, the docs' image references and remote bases, CHANGELOG.md) agrees. The release process
(tests/release/release.py, `make release`) runs the same checks before it creates the tag `v<version>`."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from feedbackloop import crdgen
from feedbackloop.core import api, release

from . import release as process

ROOT = process.ROOT
VERSION = process.version()
# What a copy of the tree needs for the checks.
TREE = (
    "pyproject.toml",
    "CHANGELOG.md",
    "Dockerfile",
    "README.md",
    "docs",
    "manifests",
    "crds",
    "requirements",
    "testbed/mfl_testbed/build-images.sh",
    "server_image/mfl_server/base.py",
)


def test_the_code_reads_pyprojects_version_from_the_installed_metadata() -> None:
    assert release.VERSION == VERSION, "the installed metadata is stale: make python-deps"


def test_the_default_images_are_the_releases() -> None:
    assert api.Serving().image == f"ghcr.io/feedbackloop/mfl-server:{VERSION}"
    assert api.Trainer().image == f"ghcr.io/feedbackloop/mfl-trainer:{VERSION}"
    assert api.Sidecar().image == f"ghcr.io/feedbackloop/mfl-sidecar:{VERSION}"
    assert api.Dask().image == f"ghcr.io/feedbackloop/mfl-trainer-dask:{VERSION}"
    assert f"mfl-trainer:{VERSION}" in crdgen.render()


def test_everything_names_the_version() -> None:
    assert process.problems() == []


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for name in TREE:
        source, target = ROOT / name, tmp_path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target)
        else:
            shutil.copy2(source, target)
    assert process.problems(tmp_path, installed=VERSION) == []
    return tmp_path


def replace(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, (path, old)
    path.write_text(text.replace(old, new, 1))


@pytest.mark.parametrize(
    "path, old, new, expected",
    [
        ("manifests/kustomization.yaml", f"newTag: {VERSION}", "newTag: 9.9.9", "newTag 9.9.9"),
        (
            "manifests/kustomization.yaml",
            f"app.kubernetes.io/version: {VERSION}",
            "app.kubernetes.io/version: 9.9.9",
            "app.kubernetes.io/version 9.9.9",
        ),
        ("manifests/ha/kustomization.yaml", f"version: {VERSION}", "version: 9.9.9", "app.kubernetes.io/version 9.9.9"),
        ("manifests/dask/kustomization.yaml", "newTag: 2026.3.0", "newTag: 0.1.0", "newTag 0.1.0, not 2026.3.0"),
        ("Dockerfile", f'image.version="{VERSION}"', 'image.version="9.9.9"', "org.opencontainers.image.version 9.9.9"),
        (
            "crds/modelfeedbackloops.feedbackloop.dev.yaml",
            f"mfl-trainer:{VERSION}",
            "mfl-trainer:9.9.9",
            "ghcr.io/feedbackloop/mfl-trainer:9.9.9",
        ),
        ("docs/install.md", f"?ref=v{VERSION}", "?ref=v9.9.9", "a remote base at ?ref=v9.9.9"),
        ("CHANGELOG.md", f"## [{VERSION}] -", "## [9.9.9] -", "CHANGELOG.md: no entry"),
        ("server_image/mfl_server/base.py", f'"version": "{VERSION}"', '"version": "9.9.9"', "V2 server metadata"),
        ("testbed/mfl_testbed/build-images.sh", "/^version *=/", "/^nothing/", "build-images.sh"),
    ],
)
def test_drift_is_caught(tree: Path, path: str, old: str, new: str, expected: str) -> None:
    replace(tree / path, old, new)
    found = process.problems(tree, installed=VERSION)
    assert len(found) == 1 and expected in found[0], found


def test_a_new_version_is_caught_everywhere_until_it_is_everywhere(tree: Path) -> None:
    replace(tree / "pyproject.toml", f'version = "{VERSION}"', 'version = "0.2.0"')
    found = process.problems(tree, installed=VERSION)
    assert any("installed package says" in p for p in found) and any("CHANGELOG.md" in p for p in found)
    assert any("manifests/kustomization.yaml" in p for p in found) and any("Dockerfile" in p for p in found)
    assert any("crds/" in p for p in found) and any("docs/install.md" in p for p in found)


def git(root: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=60, check=True)
    return done.stdout


def test_the_release_tags_a_clean_tree_once(tree: Path) -> None:
    git(tree, "init", "-q")
    git(tree, "config", "user.name", "releaser")
    git(tree, "config", "user.email", "releaser@example.com")
    git(tree, "add", "-A")
    git(tree, "commit", "-q", "-m", "release")
    (tree / "CHANGELOG.md").write_text((tree / "CHANGELOG.md").read_text() + "\n")
    with pytest.raises(SystemExit, match="uncommitted changes"):
        process.tag(tree, installed=VERSION)
    git(tree, "checkout", "--", "CHANGELOG.md")
    assert process.tag(tree, installed=VERSION) == f"v{VERSION}"
    message = git(tree, "tag", "-l", "--format=%(contents)", f"v{VERSION}")
    assert message.startswith(f"## [{VERSION}] - ") and "### Added" in message and "]: https://" not in message
    with pytest.raises(SystemExit, match=f"the tag v{VERSION} exists already"):
        process.tag(tree, installed=VERSION)


def test_the_install_page_names_the_tag_the_release_creates() -> None:
    text = (ROOT / "docs" / "install.md").read_text()
    assert f"?ref=v{VERSION}" in text and "make release" in text
    [entry] = [k for k in yaml.safe_load((ROOT / "manifests" / "kustomization.yaml").read_text())["images"]]
    assert entry == {"name": "ghcr.io/feedbackloop/mfl-operator", "newTag": VERSION}
