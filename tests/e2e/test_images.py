"""Each image holds what its entry point imports, not the other components' dependencies, and runs as `mfl`.

The project's images (operator, server, trainer, sidecar; the trainer and server with Keras on JAX for
estimator keras_dense, which alone carry Keras) and the MLServer image the test bed builds from PyPI (which
serves a scikit-learn model here, writing nothing outside its scratch folder). No cluster: a throwaway container
per image (`buildah from` + `buildah run --isolation chroot`, the host's network), removed afterwards.
Needs root, buildah and the images: ensure_images() builds them when their inputs changed (`make images`;
seconds when they are current), and a machine that cannot build them makes these tests skip, or fail
under CI=true.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import textwrap
from collections.abc import Iterator

import pytest

from mfl_testbed import TestbedUnavailable
from mfl_testbed.pytest_plugin import unavailable

# Per image: the modules its entry point needs, and what must not be in it.
IMPORTS = {
    "operator": ["feedbackloop.main", "feedbackloop.runtime.handlers"],
    # psycopg (the label ledger), minio (the object store), mfl_server.fetch (an s3 Pod's init container).
    "server": ["mfl_server.app", "lightgbm", "mfl_server.fetch", "psycopg", "psycopg_pool", "minio"],
    # lightgbm: estimator lightgbm; its wheel loads the system's OpenMP runtime (libgomp1).
    "trainer": ["mfl_trainer.main", "lightgbm", "psycopg", "minio", "orjson"],
    "sidecar": [
        "mfl_server.sidecar",
        "mfl_server.fetch",
        "aiohttp",
        "prometheus_client",
        "orjson",
        "uvloop",
        "psycopg",
        "minio",
    ],
    "mlserver": ["mlserver", "mlserver_sklearn", "mlserver_lightgbm", "mlserver_xgboost", "xgboost", "lightgbm"],
    # The default trainer and server plus Keras on JAX (requirements/keras.txt), for estimator keras_dense.
    "trainer-keras": ["mfl_trainer.main", "lightgbm", "mfl_keras.classifier", "keras", "jax", "jaxlib"],
    "server-keras": ["mfl_server.app", "lightgbm", "mfl_keras.classifier", "keras", "jax", "jaxlib"],
    # The trainer plus Dask (requirements/dask.txt): the DaskJob's runner, scheduler and workers.
    "trainer-dask": ["mfl_trainer.main", "mfl_trainer.dask_engine", "lightgbm.dask", "distributed", "dask.dataframe"],
    # Upstream's dask-kubernetes controller from PyPI, no code of ours.
    "dask-operator": ["dask_kubernetes.operator.controller", "kopf", "kr8s"],
}
# The Keras images and the default image each one extends (its entry point, its checks).
KERAS_IMAGES = {"trainer-keras": "trainer", "server-keras": "server"}
# The images that extend a default one in other ways than Keras, and that image.
EXTENDED_IMAGES = {**KERAS_IMAGES, "trainer-dask": "trainer"}
# What the images are started as: ENTRYPOINT, or for MLServer (no entry point: the operator runs
# `mlserver start <version folder>` as the container's args) the CMD.
ENTRYPOINT = {name: [f"mfl-{name}"] for name in ("operator", "server", "trainer", "sidecar")}
ENTRYPOINT |= {name: [f"mfl-{base}"] for name, base in EXTENDED_IMAGES.items()}
ENTRYPOINT |= {"dask-operator": ["kopf", "run", "-m", "dask_kubernetes.operator.controller"]}
# Never in a final image (the runtime stage removes them): what builds the venvs, perl and apt.
BUILD_TOOLS = ["pip", "setuptools", "wheel"]
# Keras and its backends: only in the Keras images, and those only with JAX.
OTHER_BACKENDS = ["tensorflow", "torch"]
KERAS = ["keras", "jax", "jaxlib", *OTHER_BACKENDS]
ABSENT = {
    # No image ships the test bed (mfl_testbed): it is a distribution of its own.
    # No scipy: the latency check's log Phi is pure Python (feedbackloop.core.analysis.normal).
    "operator": ["sklearn", "scipy", "matplotlib", "pandas", "mfl_testbed", *KERAS, *BUILD_TOOLS],
    "server": ["kopf", "kubernetes", "matplotlib", "pandas", "prometheus_api_client", "mfl_testbed"]
    + KERAS
    + BUILD_TOOLS,
    "trainer": ["kopf", "kubernetes", "aiohttp", "prometheus_api_client", "pandas", "mfl_testbed"]
    + KERAS
    + BUILD_TOOLS,
    # The sidecar passes rows through as JSON: nothing numeric.
    "sidecar": ["numpy", "scipy", "sklearn", "joblib", "pandas", "kopf", "kubernetes", "matplotlib", "mfl_testbed"]
    + KERAS
    + BUILD_TOOLS,
    "trainer-keras": ["kopf", "kubernetes", "aiohttp", "prometheus_api_client", "pandas", "mfl_testbed"]
    + OTHER_BACKENDS
    + BUILD_TOOLS,
    "server-keras": ["kopf", "kubernetes", "matplotlib", "pandas", "prometheus_api_client", "mfl_testbed"]
    + OTHER_BACKENDS
    + BUILD_TOOLS,
    # MLServer alone, and xgboost without CUDA (xgboost-cpu: no nvidia-nccl). Its dependencies may
    # require setuptools at run time: only pip is checked.
    "mlserver": ["mfl_server", "feedbackloop", "mfl_trainer", "mfl_testbed", "nvidia", "pip"],
    "trainer-dask": ["kopf", "kubernetes", "prometheus_api_client", "mfl_testbed"] + KERAS + BUILD_TOOLS,
    "dask-operator": ["feedbackloop", "mfl_trainer", "mfl_server", "mfl_testbed", "sklearn", *BUILD_TOOLS],
}
# The real entry points, as far as they go without a cluster, a model or a config.
HELP = {
    "operator": [["mfl-operator", "--help"]],
    "server": [],  # no --help: see test_image_specifics
    "trainer": [["mfl-trainer", "--help"]],
    "sidecar": [],  # like the server's
    "mlserver": [["mlserver", "--version"], ["mlserver", "start", "--help"]],
    "trainer-keras": [["mfl-trainer", "--help"]],
    "server-keras": [],
    "trainer-dask": [["mfl-trainer", "--help"], ["dask", "worker", "--help"], ["dask", "scheduler", "--help"]],
    "dask-operator": [["kopf", "run", "--help"]],
}
COMMAND = {name: f"/opt/mfl/bin/{entry[0]}" for name, entry in ENTRYPOINT.items()}
COMMAND |= {"mlserver": "/opt/mlserver/bin/mlserver"}
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
        for _ in range(3):
            result = buildah("run", "--isolation", "chroot", self.id, "--", *command)
            # buildah 1.28 re-executes itself from a sealed in-memory copy; sealing it fails now and then with
            # EBUSY (seen on this machine for one `id -un` in a few: the next run succeeds). Not the image's fault.
            if "sealing memfd copy" not in result.stderr:
                break
        return result

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
    executable = COMMAND[container.name].rsplit("/", 1)[1]
    assert container.check("sh", "-c", f"command -v {executable}").strip() == COMMAND[container.name]


def test_the_other_components_dependencies_are_absent(container: Container) -> None:
    probe = (
        "import importlib.util, json, sys; "
        "print(json.dumps({m: importlib.util.find_spec(m) is not None for m in sys.argv[1:]}))"
    )
    present = json.loads(container.check("python", "-c", probe, *ABSENT[container.name]))
    assert not [module for module, found in present.items() if found], f"{container.ref} carries {present}"
    tools = container.check("sh", "-c", "for t in pip pip3 perl apt-get gcc; do command -v $t || true; done")
    assert not tools.split(), f"{container.ref} carries {tools.split()}"


def test_runs_as_mfl_with_a_passwd_entry(container: Container) -> None:
    """kopf asks getpass.getuser(), which raises KeyError for a uid /etc/passwd does not know."""
    config = json.loads(buildah("inspect", "--type", "image", container.ref).stdout)["OCIv1"]["config"]
    assert config["User"] == f"{UID}:{UID}"  # numeric, so runAsNonRoot can check it
    if container.name == "mlserver":
        assert not config.get("Entrypoint") and config["Cmd"][:2] == ["mlserver", "start"]
    else:
        assert config["Entrypoint"] == ENTRYPOINT[container.name]
    assert container.check("id", "-un").strip() == "mfl"
    assert container.check("id", "-u").strip() == str(UID)
    assert container.check("python", "-c", "import getpass; print(getpass.getuser())").strip() == "mfl"


def test_image_specifics(container: Container) -> None:
    kind = EXTENDED_IMAGES.get(container.name, container.name)
    if kind in ("server", "sidecar"):
        # Without its environment the server gets as far as validating it: everything imported.
        result = container.run(f"mfl-{kind}")
        assert result.returncode == 2 and "MFL_MODEL_NAME" in result.stdout + result.stderr, result.stderr
        assert "Traceback" not in result.stdout + result.stderr
        assert container.check("sh", "-c", "test -w /var/lib/mfl/artifacts && echo writable").strip() == "writable"
        assert container.check("python", "-c", "import orjson, uvloop; print('fast')").strip() == "fast"
    if container.name == "mlserver":
        check_mlserver_serves_a_scikit_learn_model(container)
    if kind == "trainer":
        # The font cache was built at build time: nothing to write on a read-only root filesystem.
        result = container.run("python", "-c", "import matplotlib.pyplot")
        assert result.returncode == 0, result.stderr
        assert "font cache" not in result.stderr
        tag = container.ref.rsplit(":", 1)[1]
        assert container.check("sh", "-c", "echo $MPLBACKEND $MFL_CODE_VERSION").split() == ["Agg", tag]
        assert container.check("pwd").strip() == "/tmp"
    if container.name in KERAS_IMAGES:
        check_keras_on_a_read_only_root(container)


# As the operator's Pods run the images (readOnlyRootFilesystem, uid 65532, HOME /nonexistent, TMPDIR the
# scratch emptyDir: here a tmpfs on /tmp): Keras imports on JAX with its KERAS_HOME, the image's /opt/keras,
# read-only (it holds keras.json already), then keras_dense trains and goes through the pickle a version's
# model.joblib holds (a temporary .keras archive in TMPDIR).
KERAS_IMPORT = textwrap.dedent(
    """
    import errno, json, os
    import jax, keras
    from mfl_keras.classifier import keras_module
    try:
        open("/opt/keras/probe", "w")
        writable = True
    except OSError as error:
        writable = error.errno != errno.EROFS
    print(json.dumps({"backend": keras.backend.backend(), "module": keras_module().__name__, "uid": os.getuid(),
                      "keras_home": os.environ.get("KERAS_HOME"), "writable": writable, "jax": jax.__version__,
                      "devices": [d.platform for d in jax.devices()]}))
    """
)
KERAS_FIT = textwrap.dedent(
    """
    import io, json, joblib, numpy as np
    from mfl_keras.classifier import KerasDenseClassifier
    X = np.random.default_rng(0).normal(size=(400, 3))
    y = (X[:, 0] > 0).astype(int)
    model = KerasDenseClassifier(units=8, epochs=10, batch_size=32, learning_rate=0.01).fit(X, y)
    buffer = io.BytesIO()
    joblib.dump(model, buffer)
    buffer.seek(0)
    loaded = joblib.load(buffer)
    print(json.dumps({"same": bool((loaded.predict(X) == model.predict(X)).all()),
                      "accuracy": float((loaded.predict(X) == y).mean())}))
    """
)


def run_read_only(container: Container, *command: str, scratch: bool = False) -> subprocess.CompletedProcess[str]:
    """`command` as uid 65532 with the image's environment, in the container's root filesystem mounted
    read-only (a private mount namespace: /proc of its own, the host's /dev; with `scratch`, a tmpfs on /tmp,
    named by TMPDIR as the operator names the Pod's scratch emptyDir)."""
    root = buildah("mount", container.id)
    assert root.returncode == 0, root.stderr
    config = json.loads(buildah("inspect", "--type", "container", container.id).stdout)["OCIv1"]["config"]
    env = [*config.get("Env", []), "HOME=/nonexistent", *(["TMPDIR=/tmp"] if scratch else [])]
    script = textwrap.dedent(
        f"""
        set -e
        mount --bind "$0" "$0"
        mount -o remount,bind,ro "$0"
        mount -t proc proc "$0/proc"
        mount --rbind /dev "$0/dev"
        {'mount -t tmpfs -o mode=1777,size=64m tmpfs "$0/tmp"' if scratch else ""}
        cd "$0"
        exec chroot --userspec={UID}:{UID} "$0" /usr/bin/env -i "$@"
        """
    )
    try:
        return subprocess.run(
            ["unshare", "--mount", "--pid", "--fork", "sh", "-c", script, root.stdout.strip(), *env, *command],
            capture_output=True,
            text=True,
            timeout=180,
        )
    finally:
        buildah("umount", container.id)


def check_keras_on_a_read_only_root(container: Container) -> None:
    imported = run_read_only(container, "python", "-c", KERAS_IMPORT, scratch=True)
    assert imported.returncode == 0, imported.stderr
    facts = json.loads(imported.stdout.strip().splitlines()[-1])
    assert facts["backend"] == "jax" and facts["module"] == "keras" and facts["devices"] == ["cpu"], facts
    assert facts["uid"] == UID and facts["keras_home"] == "/opt/keras" and not facts["writable"], facts
    assert "Traceback" not in imported.stderr, imported.stderr
    fitted = run_read_only(container, "python", "-c", KERAS_FIT, scratch=True)
    assert fitted.returncode == 0, fitted.stderr
    answer = json.loads(fitted.stdout.strip().splitlines()[-1])
    assert answer["same"] and answer["accuracy"] > 0.8, answer


def free_port_block(size: int = 3) -> int:
    """A port p with p .. p + size - 1 free (MLServer's HTTP, gRPC and metrics ports)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base: int = probe.getsockname()[1]
        if base + size > 65535:
            continue
        held: list[socket.socket] = []
        try:
            for port in range(base, base + size):
                held.append(socket.socket())
                held[-1].bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in held:
                sock.close()
    raise RuntimeError("no block of free ports")


# In the MLServer container, as uid 65532: fit a pipeline with the image's scikit-learn, write the
# version folder the trainer writes (model.joblib + model-settings.json), run `mlserver start` with the
# environment the operator gives it (scratch folder for metrics and temporary files, no worker
# processes) and ask it over the V2 protocol. Prints the answers as JSON, then what the server wrote
# outside the scratch folder.
MLSERVER_PROBE = textwrap.dedent(
    """
    import json, os, subprocess, sys, time, urllib.request
    import joblib, numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    port, work = int(sys.argv[1]), sys.argv[2]
    folder, scratch = f"{work}/versions/3", f"{work}/scratch"
    os.makedirs(folder), os.makedirs(scratch)
    X = np.random.default_rng(0).normal(size=(200, 3))
    joblib.dump(make_pipeline(StandardScaler(), LogisticRegression()).fit(X, (X[:, 0] > 0).astype(int)),
                f"{folder}/model.joblib")
    settings = {"name": "churn", "implementation": "mlserver_sklearn.SKLearnModel",
                "parameters": {"uri": "./model.joblib", "version": "3"}}
    json.dump(settings, open(f"{folder}/model-settings.json", "w"))
    marker = f"{work}/marker"
    open(marker, "w").close()
    env = dict(os.environ, MLSERVER_HTTP_PORT=str(port), MLSERVER_GRPC_PORT=str(port + 1),
               MLSERVER_METRICS_PORT=str(port + 2), MLSERVER_METRICS_DIR=scratch, TMPDIR=scratch,
               MLSERVER_PARALLEL_WORKERS="0", MLSERVER_LOAD_MODELS_AT_STARTUP="true")
    server = subprocess.Popen(["mlserver", "start", folder], env=env, cwd="/",
                              stdout=subprocess.DEVNULL, stderr=open(f"{work}/log", "w"))
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                if urllib.request.urlopen(f"{url}/v2/models/churn/ready", timeout=2).status == 200:
                    break
            except OSError:
                time.sleep(0.5)
        else:
            sys.exit("not ready in 120 s: " + open(f"{work}/log").read()[-2000:])
        body = {"inputs": [{"name": "input-0", "datatype": "FP64", "shape": [2, 3], "data": [1, 0, 0, -1, 0, 0]}]}
        request = urllib.request.Request(f"{url}/v2/models/churn/infer", json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})
        answer = json.load(urllib.request.urlopen(request, timeout=10))
        print(json.dumps(answer))
    finally:
        server.terminate()
        server.wait(30)
    found = subprocess.run(["find", "/", "-xdev", "-newer", marker, "-user", "65532", "-not", "-path", f"{work}*"],
                           capture_output=True, text=True).stdout.split()
    print(json.dumps(found))
    """
)


def check_mlserver_serves_a_scikit_learn_model(container: Container) -> None:
    port = free_port_block()
    work = f"/tmp/mlserver-probe-{os.getpid()}"
    lines = container.check("python", "-c", MLSERVER_PROBE, str(port), work).strip().splitlines()
    answer, written = json.loads(lines[-2]), json.loads(lines[-1])
    assert answer["model_name"] == "churn" and answer["model_version"] == "3", answer
    # What the sidecar reads: a scikit-learn classifier answers its labels as `predict`, INT64, [n, 1].
    [output] = answer["outputs"]
    assert (output["name"], output["datatype"], output["shape"], output["data"]) == ("predict", "INT64", [2, 1], [1, 0])
    # Metrics and temporary files went to the scratch folder (the Pod's emptyDir): nothing else.
    assert not written, f"MLServer wrote outside its scratch folder: {written}"


def test_image_sizes_are_reported(image_refs: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    """The size of each image (unpacked, as containerd stores it), printed; the figures the docs state."""
    rows = []
    for name, ref in sorted(image_refs.items()):
        listed = buildah("images", "--noheading", "--format", "{{.Size}}", ref)
        assert listed.returncode == 0, listed.stderr
        rows.append(f"  {name:<14} {listed.stdout.strip().splitlines()[0]:>10}  {ref}")
    with capsys.disabled():
        print("\nimage sizes:\n" + "\n".join(rows))
