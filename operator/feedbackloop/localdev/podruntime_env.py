"""A container's environment, as the kubelet builds it (envFrom, env, downward API, $(VAR) refs).

Secrets and ConfigMaps come through an ObjectReader, so the rules here are tested without an API.
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, Protocol

from kubernetes.utils.quantity import parse_quantity

# Host variables a container inherits: the host PATH keeps local entry points (mfl-server...) found.
HOST_ENV_PASSTHROUGH = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "PYTHONPATH", "VIRTUAL_ENV")
# What a resourceFieldRef reports for a resource without a limit (the node's allocatable).
NODE_ALLOCATABLE = {"cpu": "2", "memory": "24Gi", "ephemeral-storage": "100Gi"}

_REFERENCE = re.compile(r"\$\$|\$\(([^)]*)\)")
_SUBSCRIPT = re.compile(r"^metadata\.(labels|annotations)\['(.*)'\]$")


class ConfigError(Exception):
    """A referenced Secret, ConfigMap or key is missing: the kubelet retries until it appears."""

    reason = "CreateContainerConfigError"


class ObjectReader(Protocol):
    def secret(self, namespace: str, name: str) -> dict[str, bytes] | None: ...

    def config_map(self, namespace: str, name: str) -> dict[str, bytes] | None: ...


def expand(value: str, variables: Mapping[str, str]) -> str:
    """Kubernetes $(VAR) expansion: known names are replaced, unknown stay literal, $$ escapes."""
    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return variables.get(match.group(1), match.group(0))

    return _REFERENCE.sub(replace, value)


def base_env(host_env: Mapping[str, str], hostname: str) -> dict[str, str]:
    env = {key: host_env[key] for key in HOST_ENV_PASSTHROUGH if key in host_env}
    env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    env.setdefault("HOME", "/root")
    env["HOSTNAME"] = hostname
    env["PYTHONUNBUFFERED"] = "1"
    return env


def field_value(pod: Mapping[str, Any], path: str, pod_ip: str, host_ip: str) -> str:
    metadata, spec = pod.get("metadata", {}), pod.get("spec", {})
    simple = {
        "metadata.name": metadata.get("name"),
        "metadata.namespace": metadata.get("namespace"),
        "metadata.uid": metadata.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.podIP": pod_ip,
        "status.podIPs": pod_ip,
        "status.hostIP": host_ip,
    }
    if path in simple:
        return simple[path] or ""
    subscript = _SUBSCRIPT.match(path)
    if subscript:
        return (metadata.get(subscript.group(1)) or {}).get(subscript.group(2), "")
    if path in ("metadata.labels", "metadata.annotations"):
        items = metadata.get(path.split(".")[1]) or {}
        return "\n".join(f'{key}="{value}"' for key, value in sorted(items.items()))
    raise ConfigError(f"unsupported fieldRef fieldPath {path!r}")


def resource_value(container: Mapping[str, Any], resource: str, divisor: str | None) -> str:
    """`limits.cpu` etc.; without a limit the node's allocatable, as the kubelet does."""
    kind, _, name = resource.partition(".")
    resources = container.get("resources") or {}
    quantity = (resources.get(kind) or {}).get(name) or (resources.get("limits") or {}).get(name) \
        or NODE_ALLOCATABLE.get(name)
    if quantity is None:
        raise ConfigError(f"unsupported resourceFieldRef resource {resource!r}")
    value = parse_quantity(quantity) / parse_quantity(divisor or "1")
    return str(math.ceil(value))


def _decoded(data: Mapping[str, bytes], key: str, what: str, optional: bool) -> str | None:
    if key not in data:
        if optional:
            return None
        raise ConfigError(f"couldn't find key {key} in {what}")
    return data[key].decode(errors="replace")


def _key_ref(kind: str, ref: Mapping[str, Any], namespace: str, reader: ObjectReader) -> str | None:
    read = reader.secret if kind == "Secret" else reader.config_map
    optional = bool(ref.get("optional"))
    data = read(namespace, ref["name"])
    if data is None:
        if optional:
            return None
        raise ConfigError(f'{kind.lower()} "{ref["name"]}" not found')
    return _decoded(data, ref["key"], f'{kind} {namespace}/{ref["name"]}', optional)


def _value_from(pod: Mapping[str, Any], container: Mapping[str, Any], source: Mapping[str, Any],
                pod_ip: str, host_ip: str, reader: ObjectReader) -> str | None:
    namespace = pod["metadata"]["namespace"]
    if "fieldRef" in source:
        return field_value(pod, source["fieldRef"]["fieldPath"], pod_ip, host_ip)
    if "resourceFieldRef" in source:
        ref = source["resourceFieldRef"]
        return resource_value(container, ref["resource"], ref.get("divisor"))
    if "secretKeyRef" in source:
        return _key_ref("Secret", source["secretKeyRef"], namespace, reader)
    if "configMapKeyRef" in source:
        return _key_ref("ConfigMap", source["configMapKeyRef"], namespace, reader)
    raise ConfigError(f"unsupported valueFrom {sorted(source)}")


def _env_from(source: Mapping[str, Any], namespace: str, reader: ObjectReader) -> dict[str, str]:
    kind, ref = ("Secret", source["secretRef"]) if "secretRef" in source else ("ConfigMap", source["configMapRef"])
    data = (reader.secret if kind == "Secret" else reader.config_map)(namespace, ref["name"])
    if data is None:
        if ref.get("optional"):
            return {}
        raise ConfigError(f'{kind.lower()} "{ref["name"]}" not found')
    prefix = source.get("prefix", "")
    return {prefix + key: value.decode(errors="replace") for key, value in data.items()}


def container_env(pod: Mapping[str, Any], container: Mapping[str, Any], *, pod_ip: str, host_ip: str,
                  reader: ObjectReader, host_env: Mapping[str, str], hostname: str) -> dict[str, str]:
    """The full environment of one container; raises ConfigError for missing references."""
    namespace = pod["metadata"]["namespace"]
    declared: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        declared.update(_env_from(source, namespace, reader))
    for variable in container.get("env") or []:
        if "valueFrom" in variable:
            value = _value_from(pod, container, variable["valueFrom"], pod_ip, host_ip, reader)
            if value is None:  # an optional reference that is missing: no variable at all
                continue
        else:
            value = expand(variable.get("value", ""), declared)
        declared[variable["name"]] = value
    return {**base_env(host_env, hostname), **declared}


def expand_argv(argv: list[str], env: Mapping[str, str]) -> list[str]:
    return [expand(arg, env) for arg in argv]
