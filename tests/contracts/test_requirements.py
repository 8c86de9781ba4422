"""requirements/*.txt: each image's dependencies, the single source of truth that pyproject's extras read.

Guards the split without building an image (tests/e2e/test_images.py checks the built images):
every third-party module an entry point imports, directly or lazily, is in that component's file unless
the import is optional (inside `try: ... except ImportError`), and a package listed in several files
carries the same specifier in each. The Keras estimator's package (mfl_keras) is in every image's wheel and
imported lazily by the trainer, but Keras itself only optionally: the default images carry neither Keras nor
its backend, and only the trainer-keras and server-keras images add requirements/keras.txt.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
REQUIREMENTS = ROOT / "requirements"
PACKAGES = {
    "feedbackloop": ROOT / "operator",
    "mfl_server": ROOT / "server_image",
    "mfl_trainer": ROOT / "trainer_image",
    "mfl_contracts": ROOT / "contracts",
    "mfl_keras": ROOT / "keras_model",
}
# What each image runs, and the requirement files its venv installs (Dockerfile).
ENTRY_MODULES = {
    "operator": ["feedbackloop.main", "feedbackloop.runtime.handlers"],
    "server": ["mfl_server.app"],
    # `mfl demo --kubeconfig` runs the demo's traffic in the trainer image (its code from a ConfigMap).
    "trainer": ["mfl_trainer.main", "mfl_testbed.traffic"],
    "sidecar": ["mfl_server.sidecar"],
    # The default trainer and server plus Keras: what a keras_dense version needs to be trained and served.
    "trainer-keras": ["mfl_trainer.main", "mfl_testbed.traffic", "mfl_keras.classifier"],
    "server-keras": ["mfl_server.app", "mfl_keras.classifier"],
    # The trainer plus Dask: the DaskJob's runner, scheduler and workers (retraining.engine Dask).
    "trainer-dask": ["mfl_trainer.main", "mfl_trainer.dask_engine"],
}
# The Keras images and the default image each one extends (its Dockerfile stage, entry point and file).
KERAS_IMAGES = {"trainer-keras": "trainer", "server-keras": "server"}
# Every image that extends a default one (its entry point; no extra of its own in pyproject).
EXTENDED_IMAGES = {**KERAS_IMAGES, "trainer-dask": "trainer"}
# The Dask engine's modules run only in the trainer-dask image (the operator's DaskJob names it); another trainer
# image reaches them only through main.py's guarded import, which names the image to use instead.
DASK_MODULES = {"mfl_trainer.dask_engine", "mfl_trainer.dask_data"}
SKIPPED_MODULES = {component: DASK_MODULES for component in ("trainer", "trainer-keras")}
IMAGE_FILES = {
    "operator": ["operator.txt"],
    "server": ["server.txt", "fast.txt"],
    "trainer": ["trainer.txt"],
    "sidecar": ["sidecar.txt", "fast.txt"],
    "trainer-keras": ["trainer.txt", "keras.txt"],
    "server-keras": ["server.txt", "fast.txt", "keras.txt"],
    "trainer-dask": ["trainer.txt", "dask.txt"],
}
# Keras and the deep-learning backends: in no default image (mfl_keras imports Keras only optionally).
OTHER_BACKENDS = {"tensorflow", "tensorflow-cpu", "torch"}
KERAS = {"keras", "jax", "jaxlib"} | OTHER_BACKENDS
# Heavy packages an image must not pull in through its requirements (directly or as a dependency).
FORBIDDEN = {
    # scipy: the latency check's log Phi is feedbackloop.core.analysis.normal (112 MB less in the image).
    "operator": {"scikit-learn", "scipy", "matplotlib", "pandas"} | KERAS,
    "server": {"kopf", "kubernetes", "matplotlib", "pandas"} | KERAS,
    "trainer": {"kopf", "kubernetes", "aiohttp", "prometheus-api-client"} | KERAS,
    "sidecar": {"numpy", "scipy", "scikit-learn", "joblib", "pandas", "kopf", "kubernetes", "matplotlib"} | KERAS,
    # Keras on JAX only: not TensorFlow's or PyTorch's gigabytes.
    "trainer-keras": {"kopf", "kubernetes", "aiohttp", "prometheus-api-client"} | OTHER_BACKENDS,
    "server-keras": {"kopf", "kubernetes", "matplotlib", "pandas"} | OTHER_BACKENDS,
    "trainer-dask": {"kopf", "kubernetes", "prometheus-api-client"} | KERAS,
}
# What the Keras images must list although mfl_keras imports it optionally (a clear error where it is absent).
REQUIRED = {
    "trainer-keras": {"keras", "jax"},
    "server-keras": {"keras", "jax"},
    "trainer-dask": {"dask", "distributed"},
}
# The MLServer image's file: pinned, read by no extra (so nothing combines it with another file).
PINNED = {"mlserver.txt"}


def requirements(name: str) -> list[Requirement]:
    lines = (line.split("#", 1)[0].strip() for line in (REQUIREMENTS / name).read_text().splitlines())
    return [Requirement(line) for line in lines if line]


def names(files: list[str]) -> set[str]:
    return {canonicalize_name(req.name) for name in files for req in requirements(name)}


def test_requirement_files_hold_plain_requirements_only() -> None:
    """setuptools reads them too: no pip options (-r, -c, -e, --hash), which it cannot parse."""
    for path in sorted(REQUIREMENTS.glob("*.txt")):
        for line in path.read_text().splitlines():
            assert not line.strip().startswith("-"), f"{path.name}: {line!r}"
        assert requirements(path.name), f"{path.name} is empty"


def test_a_package_in_several_files_has_one_specifier() -> None:
    seen: dict[str, tuple[str, str]] = {}
    for path in sorted(REQUIREMENTS.glob("*.txt")):
        if path.name in PINNED:
            continue
        for req in requirements(path.name):
            key = canonicalize_name(req.name)
            spec = str(req.specifier) + (f"; {req.marker}" if req.marker else "")
            if key in seen:
                assert seen[key][1] == spec, f"{req.name}: {seen[key][0]} says {seen[key][1]!r}, {path.name} {spec!r}"
            seen[key] = (path.name, spec)


def test_pyproject_reads_its_extras_from_the_files() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "optional-dependencies" in project["project"]["dynamic"]
    assert not project["project"].get("dependencies")  # each image installs the wheel --no-deps
    extras = {
        extra: table["file"]
        for extra, table in project["tool"]["setuptools"]["dynamic"]["optional-dependencies"].items()
    }
    for files in extras.values():
        for file in files:
            assert (ROOT / file).is_file(), file
    defaults = [component for component in ENTRY_MODULES if component not in EXTENDED_IMAGES]
    for component in defaults:
        assert extras[component] == [f"requirements/{component}.txt"]
    components = {f"requirements/{c}.txt" for c in defaults}
    # `mfl` (demo: all three run locally) and the tests need everything; Keras only the tests (its own extra).
    assert components <= set(extras["cli"]) and set(extras["cli"]) <= set(extras["test"])
    assert extras["keras"] == ["requirements/keras.txt"] and "requirements/keras.txt" in extras["test"]
    assert not {"requirements/keras.txt"} & {file for extra in (*defaults, "cli") for file in extras[extra]}
    assert {"fast", "bench", "demo", "test", "cli"} <= set(extras)
    assert not {f"requirements/{name}" for name in PINNED} & {file for files in extras.values() for file in files}


def test_the_mlserver_image_is_pinned_and_loads_the_trainers_models() -> None:
    """Its tag is mlserver's version; its scikit-learn resolves like the trainer's, which pickles the models."""
    pinned = {str(canonicalize_name(req.name)): req for req in requirements("mlserver.txt")}
    for name in ("mlserver", "mlserver-sklearn", "mlserver-lightgbm", "mlserver-xgboost", "xgboost-cpu"):
        assert str(pinned[name].specifier).startswith("=="), name
    assert "xgboost" not in pinned  # its Linux wheel pulls CUDA (nvidia-nccl-cu12): xgboost-cpu instead
    trainer = {str(canonicalize_name(req.name)): str(req.specifier) for req in requirements("trainer.txt")}
    for name in ("scikit-learn", "joblib", "threadpoolctl", "numpy", "lightgbm"):
        assert str(pinned[name].specifier) == trainer[name], name


def test_the_dockerfile_installs_each_components_file() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    for component, files in IMAGE_FILES.items():
        stage = dockerfile.split(f"AS {component}-deps", 1)[1].split("\nFROM ", 1)[0]
        for file in files:
            assert f"-r /tmp/requirements/{file}" in stage, (component, file)
        if component not in KERAS_IMAGES:
            assert "keras" not in _code(stage), component  # Keras only in the Keras images' own stages
        final = dockerfile.split(f"AS {component}\n", 1)[1].split("\nFROM ", 1)[0]
        assert f"FROM runtime AS {component}\n" in dockerfile  # the slim base, not the build one
        entry_point = f"mfl-{EXTENDED_IMAGES.get(component, component)}"
        assert "USER 65532:65532" in final and f'ENTRYPOINT ["{entry_point}"]' in final
        assert ("keras" in _code(final)) == (component in KERAS_IMAGES), component
    # buildah 1.28 reuses a cached RUN --mount=type=bind,from=... layer after its source changed.
    assert not re.search(r"--mount=type=bind,[^\n]*from=", dockerfile)


def _code(stage: str) -> str:
    """A Dockerfile stage's instructions without its comment lines."""
    return "\n".join(line for line in stage.splitlines() if not line.lstrip().startswith("#"))


# ---- what the entry points import --------------------------------------------------------------


def _module_files() -> dict[str, Path]:
    files = {}
    for package, folder in PACKAGES.items():
        for path in (folder / package).rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


def _optional(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """Inside `try:` whose handlers catch ImportError (or ModuleNotFoundError)."""
    child, parent = node, parents.get(node)
    while parent is not None:
        if isinstance(parent, ast.Try) and child in parent.body:
            for handler in parent.handlers:
                caught = handler.type
                names_ = [caught] if not isinstance(caught, ast.Tuple) else list(caught.elts)
                if any(isinstance(n, ast.Name) and n.id in {"ImportError", "ModuleNotFoundError"} for n in names_):
                    return True
        child, parent = parent, parents.get(parent)
    return False


def third_party_imports(entry_modules: list[str], skipped: set[str] | None = None) -> dict[str, str]:
    """{top-level module: the project module importing it} over everything `entry_modules` may import, but
    the modules `skipped` (those another image runs)."""
    files = _module_files()
    found: dict[str, str] = {}
    seen: set[str] = set(skipped or ())
    todo = list(entry_modules)
    while todo:
        module = todo.pop()
        if module in seen or module not in files:
            continue
        seen.add(module)
        parts = module.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # parent packages run first
        path = files[module]
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        tree = ast.parse(path.read_text())
        parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                    base = f"{base}.{node.module}" if node.module else base
                else:
                    base = node.module or ""
                targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
            else:
                continue
            for target in targets:
                top = target.split(".")[0]
                if top in PACKAGES:
                    todo.append(target)
                elif top not in sys.stdlib_module_names and top != "__future__" and not _optional(node, parents):
                    found.setdefault(top, module)
    return found


@pytest.mark.parametrize("component", sorted(ENTRY_MODULES))
def test_each_import_of_an_entry_point_is_in_its_components_file(component: str) -> None:
    listed = names(IMAGE_FILES[component])
    distributions = importlib.metadata.packages_distributions()
    missing = []
    imported = third_party_imports(ENTRY_MODULES[component], SKIPPED_MODULES.get(component))
    for module, importer in sorted(imported.items()):
        provided_by = {canonicalize_name(d) for d in distributions.get(module, [module])}
        if not provided_by & listed:
            missing.append(f"{module} (imported by {importer}; distribution {sorted(provided_by)})")
    assert not missing, f"requirements/{component}.txt lacks: {', '.join(missing)}"
    assert REQUIRED.get(component, set()) <= listed, (component, REQUIRED[component] - listed)


@pytest.mark.parametrize("component", sorted(ENTRY_MODULES))
def test_no_component_lists_what_its_image_must_not_carry(component: str) -> None:
    listed = names(IMAGE_FILES[component])
    assert not listed & FORBIDDEN[component]
    # Their dependencies as installed here (the test extra): none of them pulls a forbidden one in.
    todo, closure = list(listed), set()
    while todo:
        name = todo.pop()
        if name in closure:
            continue
        closure.add(name)
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(canonicalize_name(req.name))
    assert not closure & FORBIDDEN[component], sorted(closure & FORBIDDEN[component])


def test_the_operator_imports_no_scipy_at_run_time() -> None:
    """Nor does anything it imports (kopf, kubernetes, numpy, prometheus-api-client): its image has none."""
    probe = (
        "import sys, feedbackloop.main, feedbackloop.runtime.handlers; "
        "print(sorted({m.split('.')[0] for m in sys.modules} | {m for m in sys.modules if m.startswith('feedback')}))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    loaded = set(ast.literal_eval(result.stdout.strip()))
    assert "feedbackloop.core.analysis.latency" in loaded  # the one module that used scipy, loaded at start-up
    assert not loaded & {"scipy", "sklearn", "pandas", "matplotlib"}, sorted(loaded)
