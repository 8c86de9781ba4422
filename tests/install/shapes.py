"""The install shapes (README, docs/install.md) as users write them: an overlay of manifests/ with the
shape's components, rendered by a kubectl whose kustomize knows Components. The e2e tests apply the same
renders on the test bed (its kubectl 1.20 cannot render manifests/), adapted by mfl_testbed.render."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from mfl_testbed.cluster import SETTINGS_CONFIGMAP, settings_patch
from mfl_testbed.render import for_kubernetes_1_20
from tests.monitoring.tools import kustomize_kubectl

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"
# Shape name -> the components its overlay lists (the default is manifests/ alone: cluster-wide).
SHAPES: dict[str, tuple[str, ...]] = {
    "cluster-wide": (),
    "namespaced": ("namespaced",),
    "ha": ("ha",),
    "namespaced-ha": ("namespaced", "ha"),
    "ha-monitoring": ("ha", "monitoring"),
    "sharded": ("sharded",),
    "ha-sharded": ("ha", "sharded"),
    "namespaced-sharded": ("namespaced", "sharded"),
}


def overlay(
    workdir: Path,
    components: Sequence[str],
    namespace: str | None = None,
    images: Sequence[Mapping[str, str]] = (),
    patches: Sequence[Mapping[str, Any]] = (),
) -> Path:
    """A user's kustomization: manifests/ plus `components`, optionally moved to `namespace`."""
    workdir.mkdir(parents=True, exist_ok=True)
    kustomization: dict[str, Any] = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(MANIFESTS, workdir)],  # kustomize refuses absolute paths
    }
    if components:
        kustomization["components"] = [os.path.relpath(MANIFESTS / c, workdir) for c in components]
    if namespace:
        kustomization["namespace"] = namespace
    if images:
        kustomization["images"] = [dict(image) for image in images]
    if patches:
        kustomization["patches"] = [dict(patch) for patch in patches]
    (workdir / "kustomization.yaml").write_text(yaml.safe_dump(kustomization, sort_keys=False))
    return workdir


def render(path: Path, kubectl: str | None = None) -> list[dict[str, Any]]:
    done = subprocess.run(
        [kubectl or kustomize_kubectl(), "kustomize", str(path)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def render_shape(workdir: Path, shape: str, namespace: str | None = None) -> list[dict[str, Any]]:
    return render(overlay(workdir / shape, SHAPES[shape], namespace))


def by_kind(objects: Sequence[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in objects if doc["kind"] == kind]


def one(objects: Sequence[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    [found] = [doc for doc in by_kind(objects, kind) if name is None or doc["metadata"]["name"] == name]
    return found


def operator_container(objects: Sequence[dict[str, Any]]) -> dict[str, Any]:
    [container] = one(objects, "Deployment", "feedbackloop-operator")["spec"]["template"]["spec"]["containers"]
    return container


def env_of(container: Mapping[str, Any]) -> dict[str, Any]:
    return {entry["name"]: entry.get("value", entry.get("valueFrom")) for entry in container.get("env", [])}


# --- on the test bed (tests/e2e) -------------------------------------------------------------------------
def image_overrides(image_refs: Mapping[str, str], repository: str = "ghcr.io/feedbackloop") -> list[dict[str, str]]:
    """kustomize `images:` pointing the shipped image names at this tree's build (as Cluster.install_operator)."""
    return [
        {"name": f"{repository}/mfl-{component}", "newName": ref.rsplit(":", 1)[0], "newTag": ref.rsplit(":", 1)[1]}
        for component, ref in image_refs.items()
    ]


def bed_settings_patch() -> dict[str, Any]:
    """A kustomize patch setting the test bed's admin settings (mfl_testbed.cluster.OPERATOR_SETTINGS) in the
    operator's settings ConfigMap, wherever the shape puts it."""
    return {
        "patch": yaml.safe_dump(settings_patch(namespace=None), sort_keys=False),
        "target": {"kind": "ConfigMap", "name": SETTINGS_CONFIGMAP},
    }


def apply_shape(
    cluster: Any,
    workdir: Path,
    components: Sequence[str],
    image_refs: Mapping[str, str],
    namespace: str | None = None,
    timeout: float = 240.0,
) -> list[dict[str, Any]]:
    """Render the shape with this tree's operator image and the test bed's admin settings (as
    Cluster.install_operator), apply it with the test bed's kubectl and wait for the operator's rollout;
    returns what was applied."""
    path = overlay(workdir, components, namespace, images=image_overrides(image_refs), patches=[bed_settings_patch()])
    objects = for_kubernetes_1_20(render(path))
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(objects))
    deployment = one(objects, "Deployment", "feedbackloop-operator")["metadata"]
    cluster.kubectl(
        "rollout", "status", "deployment/feedbackloop-operator", "-n", deployment["namespace"],
        f"--timeout={timeout:.0f}s", timeout=timeout + 10,
    )  # fmt: skip
    return objects
