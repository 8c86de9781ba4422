"""The project's images for a real node: built (or reused) by build-images.sh, handed over as OCI archives.

    refs = ensure_images(progress=print)   # {"operator": "ghcr.io/feedbackloop/mfl-operator:dev-<hash12>", ...}
    archives = image_archives()            # pause + the nine images, for `ctr images import`

There is no registry: build-images.sh builds the targets of the root Dockerfile with buildah (the
project's operator, server, trainer and feedback sidecar, MLServer from PyPI, the Keras estimator's trainer and
server: the default ones with Keras on JAX, and the Dask engine's: the trainer with Dask and the dask-kubernetes
operator from PyPI) and writes
`<cache>/images/<image>.tar` (an OCI archive holding both the `dev-<hash12>` content tag and the version
tag), `<image>.ref` (those references, the `dev-<hash12>` one first) and a hash stamp; <image> is
IMAGE_NAMES[component].
An image whose inputs did not change is not built again, so calling ensure_images() costs a second or
two once the images exist. The header of build-images.sh documents the layout.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from mfl_testbed.process import TestbedUnavailable, cache_dir, print_progress, run_script

# build-images.sh builds them in this order: the sidecar after the default images, the Keras ones (the heaviest,
# on the trainer's and the server's dependency layers), then the Dask engine's last.
COMPONENTS = (
    "operator",
    "server",
    "trainer",
    "mlserver",
    "sidecar",
    "trainer-keras",
    "server-keras",
    "trainer-dask",
    "dask-operator",
)
# ghcr.io/feedbackloop/<name>: the images' repositories, and their files' names in images_dir().
IMAGE_NAMES = {
    "operator": "mfl-operator",
    "server": "mfl-server",
    "trainer": "mfl-trainer",
    "mlserver": "mlserver",  # MLServer itself, tagged with its version (requirements/mlserver.txt)
    "sidecar": "mfl-sidecar",
    # The default trainer and server with Keras on JAX (requirements/keras.txt), for estimator keras_dense.
    "trainer-keras": "mfl-trainer-keras",
    "server-keras": "mfl-server-keras",
    # retraining.engine Dask: the trainer with Dask (requirements/dask.txt; also runs `dask scheduler`/`dask worker`)
    # and the dask-kubernetes operator itself, tagged with its version (requirements/dask-operator.txt).
    "trainer-dask": "mfl-trainer-dask",
    "dask-operator": "dask-kubernetes-operator",
}
BUILD_SCRIPT = Path(__file__).with_name("build-images.sh")
INSTALL_HINT = "apt-get install buildah mmdebstrap containerd runc containernetworking-plugins iptables"


def images_dir() -> Path:
    return cache_dir() / "images"


def ensure_images(progress: Callable[[str], None] = print_progress) -> dict[str, str]:
    """The content-tagged reference of each image, building those whose inputs changed first.

    Returns {component: ref} for COMPONENTS, each ref `ghcr.io/feedbackloop/<IMAGE_NAMES[component]>:dev-<hash12>`
    (`ghcr.io/feedbackloop/mlserver:dev-<hash12>` for MLServer: its hash covers only the Dockerfile and
    requirements/mlserver.txt, so a code change does not rebuild it; the same for
    `ghcr.io/feedbackloop/dask-kubernetes-operator:dev-<hash12>` and requirements/dask-operator.txt). The build
    script's output is streamed line by line to `progress`; a file lock keeps concurrent callers from building
    twice. A cold build (base image, dependencies from PyPI) takes a few minutes, a rebuild after a code change
    well under one; raises TestbedUnavailable when the images cannot be built on this machine.
    """
    if shutil.which("buildah") is None:
        raise TestbedUnavailable(f"buildah is missing, so the images cannot be built: {INSTALL_HINT}")
    if not BUILD_SCRIPT.exists():
        raise TestbedUnavailable(f"build script {BUILD_SCRIPT} is not installed with the package")
    images_dir().mkdir(parents=True, exist_ok=True)
    # Not the script's own build.lock (it takes that one too, for `make images`): a second flock on
    # the same file from the child would wait for this one forever.
    with (images_dir() / "ensure.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building right now
        _run_build_script(progress)
        return {name: _dev_ref(name) for name in COMPONENTS}


def image_archives() -> list[Path]:
    """The OCI archives containerd imports: pause (its sandbox image) and the images of COMPONENTS."""
    archives = [images_dir() / "pause.tar", *(images_dir() / f"{IMAGE_NAMES[name]}.tar" for name in COMPONENTS)]
    missing = [str(archive) for archive in archives if not archive.is_file()]
    if missing:
        raise TestbedUnavailable(
            f"image archives missing ({', '.join(missing)}): run `make images` or mfl_testbed.images.ensure_images()"
        )
    return archives


def _dev_ref(name: str) -> str:
    image = IMAGE_NAMES[name]
    ref_file = images_dir() / f"{image}.ref"
    refs = ref_file.read_text().split() if ref_file.is_file() else []
    if not refs or not (images_dir() / f"{image}.hash").is_file():
        raise TestbedUnavailable(f"{BUILD_SCRIPT.name} finished but {image} has no archive/ref in {images_dir()}")
    return refs[0]


def _run_build_script(progress: Callable[[str], None]) -> None:
    run_script(BUILD_SCRIPT, [*COMPONENTS], {**os.environ, "MFL_CACHE": str(cache_dir())}, progress)
