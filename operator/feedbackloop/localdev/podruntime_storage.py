"""A local volume provisioner: every unbound PersistentVolumeClaim gets a hostPath PersistentVolume.

The scheduler will not place a Pod whose claim is unbound, and this test bed has no storage
provisioner, so the runtime plays one: the PV points at `<workdir>/volumes/<namespace>/<claim>` (the
directory the runtime mounts for the claim), is pre-bound to the claim (the PV controller then binds
both), and is deleted together with that directory once the claim is gone.
"""
from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .podruntime_api import KubeApi
from .podruntime_volumes import claim_dir

log = logging.getLogger(__name__)

PROVISIONED_BY = "feedbackloop.dev/provisioned-by"


def volume_name(claim: Mapping[str, Any]) -> str:
    return f"mfl-pv-{claim['metadata']['uid']}"


def needs_volume(claim: Mapping[str, Any]) -> bool:
    spec, status = claim.get("spec") or {}, claim.get("status") or {}
    return (not spec.get("volumeName") and status.get("phase", "Pending") == "Pending"
            and spec.get("volumeMode", "Filesystem") == "Filesystem" and not spec.get("selector")
            and not claim["metadata"].get("deletionTimestamp"))


def volume_for_claim(claim: Mapping[str, Any], path: Path, node_name: str) -> dict[str, Any]:
    """A hostPath PV pre-bound to `claim`, with the claim's size, access modes and class (pure)."""
    metadata, spec = claim["metadata"], claim.get("spec") or {}
    return {
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": volume_name(claim), "labels": {PROVISIONED_BY: node_name}},
        "spec": {
            "capacity": {"storage": ((spec.get("resources") or {}).get("requests") or {}).get("storage", "1Gi")},
            "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Retain",  # we delete it ourselves, with its directory
            "storageClassName": spec.get("storageClassName") or "",
            "volumeMode": "Filesystem",
            "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": metadata["namespace"],
                         "name": metadata["name"], "uid": metadata["uid"]},
            "hostPath": {"path": str(path), "type": "DirectoryOrCreate"},
        },
    }


class LocalProvisioner(threading.Thread):
    def __init__(self, api: KubeApi, workdir: Path, node_name: str, interval: float = 1.0) -> None:
        super().__init__(name="podruntime-provisioner", daemon=True)
        self.api, self.workdir, self.node_name, self.interval = api, workdir, node_name, interval
        self._stopped = threading.Event()

    def stop(self) -> None:
        self._stopped.set()

    def run(self) -> None:
        while not self._stopped.wait(self.interval):
            try:
                self.sync()
            except Exception as error:  # noqa: BLE001 - the API may be restarting; try again
                log.warning("volume provisioning failed: %r", error)

    def sync(self) -> None:
        claims = self.api.list_claims()
        volumes = self.api.list_volumes(f"{PROVISIONED_BY}={self.node_name}")
        known = {volume["metadata"]["name"] for volume in volumes}
        for claim in claims:
            if needs_volume(claim) and volume_name(claim) not in known:
                self._provision(claim)
        live = {claim["metadata"]["uid"] for claim in claims}
        names = {(claim["metadata"]["namespace"], claim["metadata"]["name"]) for claim in claims}
        for volume in volumes:
            ref = volume["spec"].get("claimRef") or {}
            if ref.get("uid") not in live:
                self._release(volume, ref, names)

    def _provision(self, claim: Mapping[str, Any]) -> None:
        metadata = claim["metadata"]
        path = claim_dir(self.workdir, metadata["namespace"], metadata["name"])
        path.mkdir(parents=True, exist_ok=True)
        self.api.create_volume(volume_for_claim(claim, path, self.node_name))
        log.info("provisioned %s for claim %s/%s at %s", volume_name(claim), metadata["namespace"],
                 metadata["name"], path)

    def _release(self, volume: Mapping[str, Any], ref: Mapping[str, Any], names: set[tuple[str, str]]) -> None:
        self.api.delete_volume(volume["metadata"]["name"])
        if ref and (ref.get("namespace"), ref.get("name")) not in names:  # no new claim of that name reuses it
            shutil.rmtree(claim_dir(self.workdir, ref["namespace"], ref["name"]), ignore_errors=True)
        log.info("deleted %s: its claim is gone", volume["metadata"]["name"])
