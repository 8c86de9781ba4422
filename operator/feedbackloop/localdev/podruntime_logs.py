"""The kubelet's log endpoint, so `kubectl logs [-f] [--tail N]` works against the local node.

The apiserver reaches a kubelet at the Node's InternalIP (the bridge address) on the port in
`status.daemonEndpoints.kubeletEndpoint` over HTTPS, without verifying its certificate unless told to
(the local control plane is not): a self-signed certificate from openssl is enough. Only
`/containerLogs/<namespace>/<pod>/<container>` is served (no exec, attach or port-forward).
"""
from __future__ import annotations

import logging
import re
import shutil
import ssl
import subprocess
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

log = logging.getLogger(__name__)

KUBELET_PORT = 10250
_PATH = re.compile(r"^/containerLogs/([^/]+)/([^/]+)/([^/]+)/?$")


def log_file(logs_dir: Path, namespace: str, pod: str, container: str) -> Path:
    return logs_dir / f"{namespace}_{pod}_{container}.log"


def tail_bytes(data: bytes, lines: int | None) -> bytes:
    """The last `lines` lines of `data` (all of it when None), as `kubectl logs --tail` means it."""
    if lines is None or lines < 0:
        return data
    if lines == 0:
        return b""
    parts = data.splitlines(keepends=True)
    return b"".join(parts[-lines:])


def self_signed_certificate(folder: Path, common_name: str, ip: str) -> tuple[Path, Path] | None:
    if shutil.which("openssl") is None:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / "kubelet.crt", folder / "kubelet.key"
    result = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30", "-subj", f"/CN={common_name}",
         "-addext", f"subjectAltName=IP:{ip},DNS:{common_name}", "-keyout", str(key), "-out", str(cert)],
        capture_output=True, text=True, check=False)
    return (cert, key) if result.returncode == 0 else None


class KubeletLogServer:
    def __init__(self, host: str, logs_dir: Path, cert_dir: Path, node_name: str,
                 pod_is_running: Callable[[str, str], bool], port: int = KUBELET_PORT) -> None:
        self.host, self.port, self.logs_dir = host, port, logs_dir
        self.pod_is_running = pod_is_running
        self._stopped = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._cert = self_signed_certificate(cert_dir, node_name, host)

    def start(self) -> bool:
        """Serve in a thread; False when it cannot (no openssl, port taken): kubectl logs then fails."""
        if self._cert is None:
            log.warning("no openssl: kubectl logs will not work (logs are in %s)", self.logs_dir)
            return False
        try:
            server = ThreadingHTTPServer((self.host, self.port), self._handler())
        except OSError as error:
            log.warning("kubelet log endpoint %s:%s unavailable (%s): kubectl logs will not work",
                        self.host, self.port, error)
            return False
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*self._cert)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        server.daemon_threads = True
        self._server = server
        threading.Thread(target=server.serve_forever, name="podruntime-kubelet-logs", daemon=True).start()
        return True

    def stop(self) -> None:
        self._stopped.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urlsplit(self.path)
                match = _PATH.match(url.path)
                if not match:
                    return self._reply(404, b"only /containerLogs is served by the local pod runtime\n")
                namespace, pod, container = match.groups()
                path = log_file(server.logs_dir, namespace, pod, container)
                if not path.exists():
                    return self._reply(404, f"no log for container {container} of {namespace}/{pod}\n".encode())
                query = {key: values[-1] for key, values in parse_qs(url.query).items()}
                server._send_log(self, path, namespace, pod, query)

            def _reply(self, code: int, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("kubelet logs: " + format, *args)

        return Handler

    def _send_log(self, handler: BaseHTTPRequestHandler, path: Path, namespace: str, pod: str,
                  query: dict[str, str]) -> None:
        lines = int(query["tailLines"]) if query.get("tailLines", "").lstrip("-").isdigit() else None
        limit = int(query["limitBytes"]) if query.get("limitBytes", "").isdigit() else None
        handler.send_response(200)
        handler.send_header("Content-Type", "text/plain")
        handler.send_header("Connection", "close")  # the body ends when the connection does
        handler.end_headers()
        with path.open("rb") as file:
            chunk = tail_bytes(file.read(), lines)
            handler.wfile.write(chunk[:limit] if limit is not None else chunk)
            if query.get("follow") != "true":
                return
            try:
                self._follow(handler, file, namespace, pod)
            except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
                pass  # the client went away

    def _follow(self, handler: BaseHTTPRequestHandler, file: Any, namespace: str, pod: str) -> None:
        while not self._stopped.is_set():
            data = file.read()
            if data:
                handler.wfile.write(data)
                handler.wfile.flush()
            elif not self.pod_is_running(namespace, pod):
                return
            else:
                time.sleep(0.2)
