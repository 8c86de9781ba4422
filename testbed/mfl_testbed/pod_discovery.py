"""Prometheus discovery of Pods for the test bed (Debian's Prometheus has no kubernetes_sd).

A small separate process: it lists the cluster's Pods every second and serves them as an http_sd
endpoint, as kubernetes_sd with the usual relabelling would. `GET /sd` lists one target group per
Running Pod annotated `prometheus.io/scrape: "true"`: `<podIP>:<prometheus.io/port or first
containerPort>` with labels namespace, pod and `pod_label_<name>`; `prometheus.io/path` and
`prometheus.io/scheme` become `__metrics_path__`/`__scheme__`.

    python -m mfl_testbed.pod_discovery --kubectl K --kubeconfig C --port P
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import subprocess
import threading
import time
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


class PodLister:
    """The cluster's Pods, refreshed every `interval` seconds by `kubectl get pods -A` in a thread."""

    def __init__(self, kubectl: str, kubeconfig: str, interval: float = 1.0) -> None:
        self.command = [kubectl, f"--kubeconfig={kubeconfig}", "get", "pods", "--all-namespaces", "-o", "json"]
        self.interval = interval
        self.pods: list[dict[str, Any]] = []
        self.healthy = False
        threading.Thread(target=self._run, name="pod-lister", daemon=True).start()

    def _run(self) -> None:
        while True:
            result = subprocess.run(self.command, capture_output=True, text=True, timeout=30, check=False)
            self.healthy = result.returncode == 0
            if self.healthy:
                self.pods = json.loads(result.stdout)["items"]
            else:
                log.warning("listing pods failed: %s", result.stderr.strip())
            time.sleep(self.interval)


def serve(lister: PodLister, host: str, port: int) -> ThreadingHTTPServer:
    routes: dict[str, Callable[[], tuple[int, Any]]] = {
        "/sd": lambda: (200, sd_targets(lister.pods)),
        "/healthz": lambda: (200, "ok") if lister.healthy else (503, "cannot list pods"),
        "/pods": lambda: (200, [_summary(pod) for pod in lister.pods]),
    }

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            route = routes.get(self.path.split("?", 1)[0])
            code, body = route() if route else (404, "not found")
            payload = (body if isinstance(body, str) else json.dumps(body)).encode()
            self.send_response(code)
            self.send_header("Content-Type", "text/plain" if isinstance(body, str) else "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            log.debug("sd: " + format, *args)

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server


def _summary(pod: Mapping[str, Any]) -> dict[str, Any]:
    metadata, status = pod.get("metadata", {}), pod.get("status") or {}
    return {
        "namespace": metadata.get("namespace"),
        "name": metadata.get("name"),
        "uid": metadata.get("uid"),
        "phase": status.get("phase"),
        "podIP": status.get("podIP"),
        "containers": {c["name"]: next(iter(c.get("state") or {}), "") for c in status.get("containerStatuses") or []},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="pod_discovery", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kubectl", required=True)
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    serve(PodLister(args.kubectl, args.kubeconfig), args.host, args.port).serve_forever()


if __name__ == "__main__":
    main()
