"""The release process: one version (pyproject.toml's), everything that names it checked, then the git tag.

    python -m tests.release.release check    # what `make release` runs first; exit 1 and a list when anything drifts
    python -m tests.release.release tag      # check, then `git tag -a v<version>` with the CHANGELOG entry

The tag is what docs/install.md's remote bases name (`?ref=v<version>`). Nothing is pushed: pushing the tag and
the images (`ghcr.io/feedbackloop/<image>:<version>`) is the releaser's next step (docs/install.md, Releases).
tests/release/test_version.py runs the same checks on every test run, so drift fails CI before a release does.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DISTRIBUTION = "model-feedback-loop"
SEMVER = r"\d+\.\d+\.\d+(?:[-+][0-9A-Za-z.-]+)?"
# Files whose text names the project's images or release tag: each such mention must name the version.
TEXT_FILES = ("README.md", "Dockerfile", "docs/*.md", "docs/**/*.md", "manifests/**/*.yaml", "crds/*.yaml")
IMAGE_TAG = re.compile(rf"ghcr\.io/feedbackloop/(mfl-[a-z-]+):({SEMVER})\b")
REMOTE_REF = re.compile(rf"model-feedback-loop//manifests[^\s?]*\?ref=v({SEMVER})\b")
OPERATOR_NEW_TAG = re.compile(rf"mfl-operator[^\n]*newTag: ({SEMVER})\b")


def version(root: Path = ROOT) -> str:
    found: str = tomllib.loads((root / "pyproject.toml").read_text())["project"]["version"]
    return found


def changelog_entry(root: Path, wanted: str) -> str | None:
    """The CHANGELOG.md section `## [wanted] - YYYY-MM-DD` (Keep a Changelog), heading included; None: missing."""
    path = root / "CHANGELOG.md"
    if not path.is_file():
        return None
    text = path.read_text()
    heading = re.search(rf"^## \[{re.escape(wanted)}\] - \d{{4}}-\d{{2}}-\d{{2}}$", text, re.MULTILINE)
    if heading is None:
        return None
    rest = text[heading.end() :]
    following = re.search(r"^(## \[|\[[^\]]+\]: )", rest, re.MULTILINE)  # the next entry, or the link list
    return (text[heading.start() : heading.end()] + rest[: following.start() if following else len(rest)]).strip()


def _kustomizations(root: Path) -> list[Path]:
    return sorted((root / "manifests").rglob("kustomization.yaml"))


def _dask_kubernetes(root: Path) -> str:
    for line in (root / "requirements" / "dask-operator.txt").read_text().splitlines():
        if line.startswith("dask-kubernetes=="):
            return line.split("==", 1)[1].strip()
    raise ValueError("requirements/dask-operator.txt pins no dask-kubernetes")


def _labels_versions(kustomization: dict) -> list[str]:
    found = []
    for entry in kustomization.get("labels", []):
        if "app.kubernetes.io/version" in entry.get("pairs", {}):
            found.append(str(entry["pairs"]["app.kubernetes.io/version"]))
    for generator in kustomization.get("configMapGenerator", []):
        labels = generator.get("options", {}).get("labels", {})
        if "app.kubernetes.io/version" in labels:
            found.append(str(labels["app.kubernetes.io/version"]))
    return found


def problems(root: Path = ROOT, installed: str | None = None) -> list[str]:
    """Every place naming the release's version that does not name pyproject.toml's; [] when they all agree.
    `installed`: the version the running code reads (importlib.metadata); None: the installed distribution's."""
    wanted = version(root)
    found: list[str] = []
    installed = installed if installed is not None else metadata.version(DISTRIBUTION)
    if installed != wanted:
        found.append(f"the installed package says {installed} (reinstall: make python-deps)")
    if changelog_entry(root, wanted) is None:
        found.append(f"CHANGELOG.md: no entry '## [{wanted}] - YYYY-MM-DD'")
    dask = _dask_kubernetes(root)
    for path in _kustomizations(root):
        kustomization = yaml.safe_load(path.read_text()) or {}
        expected = dask if path.parent.name == "dask" else wanted
        name = path.relative_to(root)
        owns = [r for r in kustomization.get("resources", []) if str(r).endswith(".yaml")]
        if (owns or kustomization.get("configMapGenerator")) and not _labels_versions(kustomization):
            found.append(f"{name}: no app.kubernetes.io/version label on the objects it adds")
        for label in _labels_versions(kustomization):
            if label != expected:
                found.append(f"{name}: app.kubernetes.io/version {label}, not {expected}")
        for image in kustomization.get("images", []):
            if str(image.get("newTag")) != expected:
                found.append(f"{name}: {image['name']} newTag {image.get('newTag')}, not {expected}")
    dockerfile = (root / "Dockerfile").read_text()
    label = re.search(r'org\.opencontainers\.image\.version="([^"]+)"', dockerfile)
    if label is None or label.group(1) != wanted:
        found.append(f"Dockerfile: org.opencontainers.image.version {label and label.group(1)}, not {wanted}")
    builder = (root / "testbed" / "mfl_testbed" / "build-images.sh").read_text()
    if "VERSION=$(awk -F'\"' '/^version *=/ {print $2; exit}' \"$REPO/pyproject.toml\")" not in builder:
        found.append("testbed/mfl_testbed/build-images.sh: no longer tags the images with pyproject.toml's version")
    server = (root / "server_image" / "mfl_server" / "base.py").read_text()
    for said in re.findall(r'"version": "([^"]+)", "extensions"', server):
        if said != wanted:
            found.append(f"server_image/mfl_server/base.py: the V2 server metadata says {said}, not {wanted}")
    paths = sorted({path for pattern in TEXT_FILES for path in root.glob(pattern) if path.is_file()})
    for path in paths:
        text = path.read_text()
        name = path.relative_to(root)
        for image, tag in IMAGE_TAG.findall(text):
            if tag != wanted:
                found.append(f"{name}: ghcr.io/feedbackloop/{image}:{tag}, not :{wanted}")
        for tag in REMOTE_REF.findall(text):
            if tag != wanted:
                found.append(f"{name}: a remote base at ?ref=v{tag}, not v{wanted}")
        for tag in OPERATOR_NEW_TAG.findall(text):
            if tag != wanted:
                found.append(f"{name}: mfl-operator newTag {tag}, not {wanted}")
    return found


def _git(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=60)


def release_problems(root: Path = ROOT, installed: str | None = None) -> list[str]:
    """problems() plus what a tag needs: a clean tree and no tag of this version yet."""
    found = problems(root, installed)
    dirty = _git(root, "status", "--porcelain", "--untracked-files=no").stdout.strip()
    if dirty:
        found.append(f"uncommitted changes: {len(dirty.splitlines())} file(s)")
    tag = f"v{version(root)}"
    if _git(root, "rev-parse", "-q", "--verify", f"refs/tags/{tag}").returncode == 0:
        found.append(f"the tag {tag} exists already")
    return found


def tag(root: Path = ROOT, installed: str | None = None) -> str:
    """Create the annotated tag v<version> on HEAD, the CHANGELOG entry as its message; returns its name."""
    found = release_problems(root, installed)
    if found:
        raise SystemExit("release: not tagged:\n  " + "\n  ".join(found))
    name = f"v{version(root)}"
    message = changelog_entry(root, version(root)) or name
    done = _git(root, "tag", "-a", "--cleanup=verbatim", name, "-m", message)  # verbatim: keep the '## [' heading
    if done.returncode != 0:
        raise SystemExit(f"release: git tag failed: {done.stderr.strip()}")
    return name


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args == ["check"]:
        found = release_problems()
        for problem in found:
            print(f"release: {problem}", file=sys.stderr)
        if not found:
            print(f"release {version()}: everything names it; tag v{version()} not created yet")
        return 1 if found else 0
    if args == ["tag"]:
        print(f"tagged {tag()} (push it: git push origin v{version()})")
        return 0
    print("usage: python -m tests.release.release check|tag", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
