"""Pod volumes as host directories, and the bind mounts that put them at each container's mountPath.

- emptyDir, secret, configMap, downwardAPI, projected: a folder of the pod (deleted with the pod)
- hostPath: the host path itself
- persistentVolumeClaim: `<workdir>/volumes/<namespace>/<claim>`, stable for the claim's life
"""
from __future__ import annotations

import json
import os
import posixpath
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .podruntime_env import ConfigError, ObjectReader, field_value, resource_value

MATERIALIZED = ("emptyDir", "secret", "configMap", "downwardAPI", "projected")


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    read_only: bool = False
    is_file: bool = False


def claim_dir(workdir: Path, namespace: str, claim: str) -> Path:
    return workdir / "volumes" / namespace / claim


def prepare_volumes(pod: Mapping[str, Any], pod_dir: Path, workdir: Path, reader: ObjectReader,
                    pod_ip: str = "", host_ip: str = "") -> dict[str, Path]:
    """Create every volume of the pod on the host; volume name -> host path. Raises ConfigError."""
    return {volume["name"]: _prepare(pod, volume, pod_dir, workdir, reader, pod_ip, host_ip)
            for volume in pod["spec"].get("volumes") or []}


def _prepare(pod: Mapping[str, Any], volume: Mapping[str, Any], pod_dir: Path, workdir: Path,
             reader: ObjectReader, pod_ip: str, host_ip: str) -> Path:
    namespace = pod["metadata"]["namespace"]
    if "hostPath" in volume:
        return _host_path(volume["hostPath"])
    if "persistentVolumeClaim" in volume:
        path = claim_dir(workdir, namespace, volume["persistentVolumeClaim"]["claimName"])
        path.mkdir(parents=True, exist_ok=True)
        return path
    kind = next((kind for kind in MATERIALIZED if kind in volume), None)
    if kind is None:
        types = sorted(set(volume) - {"name"})
        raise ConfigError(f"volume {volume['name']!r}: type {types} is not supported by the local pod runtime")
    path = pod_dir / "volumes" / volume["name"]
    path.mkdir(parents=True, exist_ok=True)
    if kind != "emptyDir":
        sources = (volume["projected"].get("sources") or []) if kind == "projected" else [{kind: volume[kind]}]
        default_mode = (volume[kind] or {}).get("defaultMode", 0o644)
        for source in sources:
            _write_source(pod, source, path, reader, default_mode, pod_ip, host_ip)
    return path


def _host_path(spec: Mapping[str, Any]) -> Path:
    path, kind = Path(spec["path"]), spec.get("type") or ""
    if kind in ("", "DirectoryOrCreate"):
        if not path.exists():  # "" means no checks; Docker creates a missing source, so do we
            path.mkdir(parents=True, exist_ok=True)
    elif kind == "FileOrCreate":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(exist_ok=True)
    elif not path.exists():
        raise ConfigError(f"hostPath {path} ({kind}) does not exist")
    return path


def _write_source(pod: Mapping[str, Any], source: Mapping[str, Any], folder: Path, reader: ObjectReader,
                  default_mode: int, pod_ip: str, host_ip: str) -> None:
    namespace = pod["metadata"]["namespace"]
    if "secret" in source or "configMap" in source:
        kind = "secret" if "secret" in source else "configMap"
        spec = source[kind]
        name = spec.get("secretName") or spec.get("name")
        data = (reader.secret if kind == "secret" else reader.config_map)(namespace, name)
        if data is None:
            if spec.get("optional"):
                return
            raise ConfigError(f'{kind} "{name}" not found')
        _write_items(folder, data, spec.get("items"), spec.get("defaultMode", default_mode),
                     f"{kind} {namespace}/{name}", bool(spec.get("optional")))
    elif "downwardAPI" in source:
        for item in source["downwardAPI"].get("items") or []:
            _write_file(folder, item["path"], _downward_value(pod, item, pod_ip, host_ip).encode(),
                        item.get("mode", default_mode))
    # serviceAccountToken sources are skipped: pods here cannot reach the API server anyway.


def _downward_value(pod: Mapping[str, Any], item: Mapping[str, Any], pod_ip: str, host_ip: str) -> str:
    if "fieldRef" in item:
        return field_value(pod, item["fieldRef"]["fieldPath"], pod_ip, host_ip)
    ref = item["resourceFieldRef"]
    container = next((c for c in pod["spec"]["containers"] if c["name"] == ref.get("containerName")),
                     pod["spec"]["containers"][0])
    return resource_value(container, ref["resource"], ref.get("divisor"))


def _write_items(folder: Path, data: Mapping[str, bytes], items: list[Mapping[str, Any]] | None,
                 mode: int, what: str, optional: bool) -> None:
    selected = items if items is not None else [{"key": key, "path": key} for key in data]
    for item in selected:
        if item["key"] not in data:
            if optional:
                continue
            raise ConfigError(f"couldn't find key {item['key']} in {what}")
        _write_file(folder, item["path"], data[item["key"]], item.get("mode", mode))


def _write_file(folder: Path, relative: str, content: bytes, mode: int) -> None:
    target = folder / posixpath.normpath(relative).lstrip("/")
    if folder.resolve() not in target.resolve().parents:
        raise ConfigError(f"volume item path {relative!r} leaves the volume")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(content)
    os.chmod(target, mode)


def container_mounts(container: Mapping[str, Any], volumes: Mapping[str, Path]) -> list[Mount]:
    """Bind mounts for the container's volumeMounts, parents before children (like the kubelet)."""
    mounts = []
    for volume_mount in container.get("volumeMounts") or []:
        name = volume_mount["name"]
        if name not in volumes:
            raise ConfigError(f"volumeMount {name!r} refers to no volume of the pod")
        source = volumes[name]
        if volume_mount.get("subPath"):
            source = source / posixpath.normpath(volume_mount["subPath"]).lstrip("/")
            if not source.exists():
                source.mkdir(parents=True, exist_ok=True)
        mounts.append(Mount(str(source), posixpath.normpath(volume_mount["mountPath"]),
                            bool(volume_mount.get("readOnly")), source.is_file()))
    return sorted(mounts, key=lambda mount: mount.target.count("/"))


def missing_path_chain(target: str) -> list[str]:
    """The components of `target` that do not exist yet, outermost first."""
    chain = []
    path = Path(target)
    while not os.path.lexists(path) and path != path.parent:
        chain.append(str(path))
        path = path.parent
    return list(reversed(chain))


class MountpointRegistry:
    """Mount points the runtime had to create on the host (e.g. /dev/termination-log), to remove later.

    Containers share the host's file system, so a mountPath that does not exist on the host must be
    created there before the bind mount. The list survives a crash in `<workdir>/mountpoints.json`.
    """

    def __init__(self, state_file: Path) -> None:
        self.state_file = state_file
        self._lock = threading.Lock()
        self._created: list[str] = self._load()

    def ensure(self, target: str, is_file: bool) -> None:
        with self._lock:
            chain = missing_path_chain(target)
            for index, path in enumerate(chain):
                if is_file and index == len(chain) - 1:
                    Path(path).touch(exist_ok=True)
                else:
                    os.makedirs(path, exist_ok=True)
                self._created.append(path)
            if chain:
                self._save()

    def remove_all(self) -> None:
        """Remove what we created, innermost first, and only while still empty."""
        with self._lock:
            for path in sorted(set(self._created), key=len, reverse=True):
                try:
                    if os.path.isdir(path) and not os.path.islink(path):
                        os.rmdir(path)
                    elif os.path.isfile(path) and os.path.getsize(path) == 0:
                        os.unlink(path)
                except OSError:
                    pass  # not empty any more (someone else uses it): leave it
            self._created = []
            self.state_file.unlink(missing_ok=True)

    def _load(self) -> list[str]:
        try:
            return list(json.loads(self.state_file.read_text()))
        except (OSError, ValueError):
            return []

    def _save(self) -> None:
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        self.state_file.write_text(json.dumps(self._created))
