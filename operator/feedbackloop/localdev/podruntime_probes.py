"""Readiness, liveness and startup probes: the verdict rules (pure) and the checks (HTTP, TCP, exec).

Checks always go to the Pod IP (never `httpGet.host`), which lives on the runtime's own bridge.
"""
from __future__ import annotations

import http.client
import socket
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

SUCCESS_CODES = range(200, 400)  # the kubelet counts redirects as success too


@dataclass(frozen=True)
class ProbeSettings:
    initial_delay: float = 0.0
    period: float = 10.0
    timeout: float = 1.0
    success_threshold: int = 1
    failure_threshold: int = 3

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> ProbeSettings:
        return cls(
            initial_delay=float(spec.get("initialDelaySeconds") or 0),
            period=float(spec.get("periodSeconds") or 10),
            timeout=float(spec.get("timeoutSeconds") or 1),
            success_threshold=int(spec.get("successThreshold") or 1),
            failure_threshold=int(spec.get("failureThreshold") or 3),
        )


class ProbeTracker:
    """Turns consecutive probe results into a verdict and schedules the next check (pure).

    A liveness probe starts passing (a container is alive until proven dead); readiness and startup
    probes start unknown, which counts as not passing.
    """

    def __init__(self, kind: str, spec: Mapping[str, Any], started: float) -> None:
        self.kind = kind
        self.spec = spec
        self.settings = ProbeSettings.from_spec(spec)
        self.result: bool | None = True if kind == "liveness" else None
        self.successes = 0
        self.failures = 0
        self.next_due = started + self.settings.initial_delay

    @property
    def passing(self) -> bool:
        return self.result is True

    @property
    def failed(self) -> bool:
        return self.result is False

    def due(self, now: float) -> bool:
        return now >= self.next_due

    def record(self, ok: bool, now: float) -> bool:
        """Count one result; True when the verdict changed."""
        self.next_due = now + self.settings.period
        before = self.result
        if ok:
            self.successes, self.failures = self.successes + 1, 0
            if self.successes >= self.settings.success_threshold:
                self.result = True
        else:
            self.failures, self.successes = self.failures + 1, 0
            if self.failures >= self.settings.failure_threshold:
                self.result = False
        return self.result != before


def container_ports(container: Mapping[str, Any]) -> dict[str, int]:
    return {port["name"]: int(port["containerPort"]) for port in container.get("ports") or [] if port.get("name")}


def resolve_port(port: int | str, named: Mapping[str, int]) -> int:
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    if port in named:
        return named[port]
    raise ValueError(f"port {port!r} is not a number nor a named containerPort")


def http_check(ip: str, port: int, path: str, timeout: float, scheme: str = "HTTP",
               headers: Mapping[str, str] | None = None) -> tuple[bool, str]:
    if scheme.upper() == "HTTPS":
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # the kubelet skips it too
        connection: http.client.HTTPConnection = http.client.HTTPSConnection(ip, port, timeout=timeout,
                                                                              context=context)
    else:
        connection = http.client.HTTPConnection(ip, port, timeout=timeout)
    try:
        connection.request("GET", path or "/", headers={"User-Agent": "kube-probe/1.20", **(headers or {})})
        code = connection.getresponse().status
    except (OSError, http.client.HTTPException) as error:
        return False, f'Get "{scheme.lower()}://{ip}:{port}{path}": {error}'
    finally:
        connection.close()
    if code in SUCCESS_CODES:
        return True, ""
    return False, f"HTTP probe failed with statuscode: {code}"


def tcp_check(ip: str, port: int, timeout: float) -> tuple[bool, str]:
    try:
        with socket.create_connection((ip, port), timeout=timeout):
            return True, ""
    except OSError as error:
        return False, f"dial tcp {ip}:{port}: {error}"


def run_probe(spec: Mapping[str, Any], ip: str, named_ports: Mapping[str, int], timeout: float,
              run_exec: Callable[[list[str], float], tuple[bool, str]]) -> tuple[bool, str]:
    """One check of a probe spec against the pod; (success, failure message)."""
    try:
        if "httpGet" in spec:
            action = spec["httpGet"]
            headers = {header["name"]: header["value"] for header in action.get("httpHeaders") or []}
            return http_check(ip, resolve_port(action["port"], named_ports), action.get("path", "/"),
                              timeout, action.get("scheme", "HTTP"), headers)
        if "tcpSocket" in spec:
            return tcp_check(ip, resolve_port(spec["tcpSocket"]["port"], named_ports), timeout)
        if "exec" in spec:
            return run_exec(list(spec["exec"].get("command") or []), timeout)
    except ValueError as error:
        return False, str(error)
    return False, f"unsupported probe handler {sorted(spec)}"
