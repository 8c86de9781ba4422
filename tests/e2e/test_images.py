"""Each image holds what its entry point imports, not the other components' dependencies, and runs as `mfl`.

No cluster: a throwaway container per image (`buildah from` + `buildah run --isolation chroot`), removed
afterwards. Needs root, buildah and the images: ensure_images() builds them when their inputs changed
(`make images`; seconds when they are current), and a machine that cannot build them makes these tests
skip, or fail under CI=true.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from mfl_testbed import TestbedUnavailable
from mfl_testbed.pytest_plugin import unavailable

# Per image: the modules its entry point needs, and what must not be in it.
IMPORTS = {
    "operator": ["feedbackloop.main", "feedbackloop.handlers"],
    "server": ["mfl_server.app"],
    "trainer": ["mfl_trainer.main"],
}
ABSENT = {
    # No image ships the test bed (mfl_testbed): it is a distribution of its own.
    "operator": ["sklearn", "matplotlib", "pandas", "mfl_testbed"],
    "server": ["kopf", "kubernetes", "matplotlib", "pandas", "prometheus_api_client", "mfl_testbed"],
    "trainer": ["kopf", "kubernetes", "aiohttp", "prometheus_api_client", "pandas", "mfl_testbed"],
}
# The real entry points, as far as they go without a cluster, a model or a config.
HELP = {
    "operator": [["mfl-operator", "--help"]],
    "server": [],  # no --help: see test_image_specifics
    "trainer": [["mfl-trainer", "--help"]],
}
UID = 65532


def buildah(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["buildah", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def image_refs() -> dict[str, str]:
    if shutil.which("buildah") is None:
        unavailable("buildah is missing: apt-get install buildah mmdebstrap")
    if os.geteuid() != 0:
        unavailable("the images are in root's buildah storage: run the tests as root")
    from mfl_testbed.images import ensure_images

    try:
        return ensure_images(progress=lambda line: None)
    except TestbedUnavailable as error:
        unavailable(f"the images could not be built: {error}")


class Container:
    def __init__(self, name: str, ref: str) -> None:
        self.name, self.ref = name, ref
        created = buildah("from", "--pull=never", "--name", f"mfl-test-images-{name}-{os.getpid()}", ref)
        if created.returncode != 0:
            unavailable(f"buildah from {ref} failed: {created.stderr.strip()}")
        self.id = created.stdout.strip().splitlines()[-1]

    def run(self, *command: str) -> subprocess.CompletedProcess[str]:
        """`command` in the container, as the image's own user (USER), with the image's environment."""
        return buildah("run", "--isolation", "chroot", self.id, "--", *command)

    def check(self, *command: str) -> str:
        result = self.run(*command)
        assert result.returncode == 0, (
            f"{self.ref}: {' '.join(command)} -> {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
        )
        return result.stdout

    def remove(self) -> None:
        buildah("rm", self.id)


@pytest.fixture(scope="module", params=sorted(IMPORTS))
def container(request: pytest.FixtureRequest, image_refs: dict[str, str]) -> Iterator[Container]:
    box = Container(request.param, image_refs[request.param])
    try:
        yield box
    finally:
        box.remove()


def test_the_entry_point_imports_with_only_its_own_dependencies(container: Container) -> None:
    modules = IMPORTS[container.name]
    container.check("python", "-c", f"import {', '.join(modules)}")
    for command in HELP[container.name]:
        container.check(*command)
    assert (
        container.check("sh", "-c", f"command -v mfl-{container.name}").strip() == f"/opt/mfl/bin/mfl-{container.name}"
    )


def test_the_other_components_dependencies_are_absent(container: Container) -> None:
    probe = (
        "import importlib.util, json, sys; "
        "print(json.dumps({m: importlib.util.find_spec(m) is not None for m in sys.argv[1:]}))"
    )
    present = json.loads(container.check("python", "-c", probe, *ABSENT[container.name]))
    assert not [module for module, found in present.items() if found], f"{container.ref} carries {present}"


def test_runs_as_mfl_with_a_passwd_entry(container: Container) -> None:
    """kopf asks getpass.getuser(), which raises KeyError for a uid /etc/passwd does not know."""
    config = json.loads(buildah("inspect", "--type", "image", container.ref).stdout)["OCIv1"]["config"]
    assert config["User"] == f"{UID}:{UID}"  # numeric, so runAsNonRoot can check it
    assert config["Entrypoint"] == [f"mfl-{container.name}"]
    assert container.check("id", "-un").strip() == "mfl"
    assert container.check("id", "-u").strip() == str(UID)
    assert container.check("python", "-c", "import getpass; print(getpass.getuser())").strip() == "mfl"


def test_image_specifics(container: Container) -> None:
    if container.name == "server":
        # Without its environment the server gets as far as validating it: everything imported.
        result = container.run("mfl-server")
        assert result.returncode == 2 and "MFL_MODEL_NAME" in result.stdout + result.stderr, result.stderr
        assert "Traceback" not in result.stdout + result.stderr
        assert container.check("sh", "-c", "test -w /var/lib/mfl/artifacts && echo writable").strip() == "writable"
        assert container.check("python", "-c", "import orjson, uvloop; print('fast')").strip() == "fast"
    if container.name == "trainer":
        # The font cache was built at build time: nothing to write on a read-only root filesystem.
        result = container.run("python", "-c", "import matplotlib.pyplot")
        assert result.returncode == 0, result.stderr
        assert "font cache" not in result.stderr
        tag = container.ref.rsplit(":", 1)[1]
        assert container.check("sh", "-c", "echo $MPLBACKEND $MFL_CODE_VERSION").split() == ["Agg", tag]
        assert container.check("pwd").strip() == "/tmp"
