"""Prometheus http_sd for the runtime's Pods (Debian's Prometheus has no kubernetes_sd), and /healthz.

`GET /sd` lists one target group per Running Pod annotated `prometheus.io/scrape: "true"`:
`<podIP>:<prometheus.io/port or first containerPort>` with labels namespace, pod and
`pod_label_<name>`; `prometheus.io/path` and `prometheus.io/scheme` become `__metrics_path__`/`__scheme__`.
"""
from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger(__name__)

SCRAPE, PORT, PATH, SCHEME = (f"prometheus.io/{key}" for key in ("scrape", "port", "path", "scheme"))


def sanitize_label(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def first_container_port(pod: Mapping[str, Any]) -> int | None:
    for container in pod.get("spec", {}).get("containers") or []:
        for port in container.get("ports") or []:
            return int(port["containerPort"])
    return None


def sd_target(pod: Mapping[str, Any]) -> dict[str, Any] | None:
    metadata, status = pod.get("metadata", {}), pod.get("status") or {}
    annotations = metadata.get("annotations") or {}
    if annotations.get(SCRAPE) != "true" or status.get("phase") != "Running" or not status.get("podIP"):
        return None
    port = annotations.get(PORT) or first_container_port(pod)
    if not port:
        return None
    labels = {"namespace": metadata.get("namespace", ""), "pod": metadata.get("name", "")}
    for key, value in (metadata.get("labels") or {}).items():
        labels[f"pod_label_{sanitize_label(key)}"] = str(value)
    if annotations.get(PATH):
        labels["__metrics_path__"] = annotations[PATH]
    if annotations.get(SCHEME):
        labels["__scheme__"] = annotations[SCHEME]
    return {"targets": [f"{status['podIP']}:{port}"], "labels": labels}


def sd_targets(pods: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    targets = [target for target in map(sd_target, pods) if target is not None]
    return sorted(targets, key=lambda t: (t["labels"]["namespace"], t["labels"]["pod"]))


class SdServer:
    """A tiny HTTP server on loopback: /sd, /healthz, /info (where logs and volumes are), /pods (debugging)."""

    def __init__(self, port: int, pods: Callable[[], list[dict[str, Any]]], healthy: Callable[[], bool],
                 info: Callable[[], dict[str, Any]] = dict, host: str = "127.0.0.1") -> None:
        self._pods, self._healthy, self._info = pods, healthy, info
        self._server = ThreadingHTTPServer((host, port), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="podruntime-sd", daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _routes(self) -> dict[str, Callable[[], tuple[int, Any]]]:
        return {
            "/sd": lambda: (200, sd_targets(self._pods())),
            "/healthz": lambda: (200, "ok") if self._healthy() else (503, "watch is not healthy"),
            "/pods": lambda: (200, [_summary(pod) for pod in self._pods()]),
            "/info": lambda: (200, self._info()),
        }

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        routes = self._routes

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                route = routes().get(self.path.split("?", 1)[0])
                code, body = route() if route else (404, "not found")
                payload = (body if isinstance(body, str) else json.dumps(body)).encode()
                self.send_response(code)
                self.send_header("Content-Type", "text/plain" if isinstance(body, str) else "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("sd: " + format, *args)

        return Handler


def _summary(pod: Mapping[str, Any]) -> dict[str, Any]:
    metadata, status = pod.get("metadata", {}), pod.get("status") or {}
    return {"namespace": metadata.get("namespace"), "name": metadata.get("name"), "uid": metadata.get("uid"),
            "phase": status.get("phase"), "podIP": status.get("podIP"),
            "containers": {c["name"]: next(iter(c.get("state") or {}), "") for c in status.get("containerStatuses") or []}}
