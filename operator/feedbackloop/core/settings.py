"""The operator admin's settings: what tenants' loops may reach and use, decided by whoever installs the operator.

They come from the operator's environment (the `mfl-operator-settings` ConfigMap of `manifests/`), never from a
loop's spec: a tenant cannot grant itself what the admin has not. Parsed once at start; a bad value stops the
operator with a message naming the variable (a typo must not silently widen or narrow the policy).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class SettingsError(ValueError):
    """A setting the operator cannot start with; the message names the variable and the value."""


@dataclass(frozen=True)
class EgressAllowance:
    """Destinations the admin allows beyond the default egress policy (docs/security.md)."""

    networks: tuple[Network, ...] = ()
    hosts: tuple[str, ...] = ()  # exact names, or "*.suffix" for every name under a domain

    def allows_host(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        return any(host == h or (h.startswith("*.") and host.endswith(h[1:])) for h in self.hosts)

    def allows_address(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return any(address in network for network in self.networks)


@dataclass(frozen=True)
class AdminSettings:
    egress_allow: EgressAllowance = field(default_factory=EgressAllowance)
    allow_host_path: bool = False  # spec.model.storage.hostPath (a node's disk) is refused unless the admin allows it
    prometheus_concurrency: int = 8  # queries in flight in all
    prometheus_per_tenant: int = 2  # queries in flight for one namespace's loops
    prometheus_per_host: int = 4  # queries in flight to one Prometheus host (whatever its URL's path)
    api_qps: int = 50  # the engine's Kubernetes API requests a second after the burst (runtime/budget.py)
    api_burst: int = 100  # requests sent at once before the budget waits


def admin_settings_from_env(env: Mapping[str, str]) -> AdminSettings:
    return AdminSettings(
        egress_allow=egress_allowance(env.get("MFL_EGRESS_ALLOW", ""), "MFL_EGRESS_ALLOW"),
        allow_host_path=_flag(env, "MFL_ALLOW_HOST_PATH"),
        prometheus_concurrency=_count(env, "MFL_PROMETHEUS_CONCURRENCY", 8),
        prometheus_per_tenant=_count(env, "MFL_PROMETHEUS_PER_TENANT", 2),
        prometheus_per_host=_count(env, "MFL_PROMETHEUS_PER_HOST", 4),
        api_qps=_count(env, "MFL_API_QPS", 50),
        api_burst=_count(env, "MFL_API_BURST", 100),
    )


def egress_allowance(text: str, variable: str) -> EgressAllowance:
    """Comma or space separated CIDRs (10.96.0.0/12), addresses, host names and *.domain patterns."""
    networks: list[Network] = []
    hosts: list[str] = []
    for item in text.replace(",", " ").split():
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
            continue
        except ValueError:
            pass
        name = item.lower().rstrip(".")
        label = name[2:] if name.startswith("*.") else name
        if not label or not all(part and all(c.isalnum() or c == "-" for c in part) for part in label.split(".")):
            raise SettingsError(f"{variable}: {item!r} is neither a CIDR, an address, a host name nor *.domain")
        hosts.append(name)
    return EgressAllowance(tuple(networks), tuple(hosts))


def _flag(env: Mapping[str, str], variable: str) -> bool:
    value = env.get(variable, "").strip().lower()
    if value in ("", "0", "false", "no"):
        return False
    if value in ("1", "true", "yes"):
        return True
    raise SettingsError(f"{variable}: {value!r} is not true or false")


def _count(env: Mapping[str, str], variable: str, default: int) -> int:
    value = env.get(variable, "").strip()
    if not value:
        return default
    if not value.isdigit() or not 1 <= int(value) <= 1000:
        raise SettingsError(f"{variable}: {value!r} is not a whole number from 1 to 1000")
    return int(value)
