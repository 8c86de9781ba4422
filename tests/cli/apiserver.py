"""A local HTTP server that answers like kube-apiserver for ModelFeedbackLoops: get, list (one namespace or
all; label and field selectors), watch (a chunked stream of events, the same selectors), JSON merge patch
(RFC 7386), and the error bodies the real one sends (404 for a missing object or a missing resource type,
403); for a loop's Secrets (get) and its Services' proxy (`POST .../services/<name>:<port>/proxy/<path>`,
forwarded to a server the test runs); for the operator's Deployments (list, with a label selector: `mfl
version`). The CLI talks to it through the real kubernetes client, so everything from the kubeconfig to the
error messages is exercised."""

from __future__ import annotations

import base64
import copy
import json
import queue
import re
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

from tests.operator.fake_kube import merge_patch  # the API server's merge-patch, one copy for both fakes

GROUP, VERSION, PLURAL = "feedbackloop.dev", "v1alpha1", "modelfeedbackloops"
PATH = re.compile(rf"^/apis/{GROUP}/{VERSION}(?:/namespaces/(?P<ns>[^/]+))?/{PLURAL}(?:/(?P<name>[^/]+))?$")
SECRET_PATH = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/secrets/(?P<name>[^/]+)$")
DEPLOYMENTS_PATH = re.compile(r"^/apis/apps/v1/namespaces/(?P<ns>[^/]+)/deployments$")
PROXY_PATH = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/services/(?P<service>[^/]+)/proxy/(?P<rest>.*)$")
END = object()  # put on `events` to end the watch stream


def selected(obj: dict[str, Any], labels: str | None, fields: str | None) -> bool:
    """Whether `obj` matches a label selector (k=v, k==v, k!=v, k, !k, k in (a,b), k notin (a,b); comma: and)
    and a field selector (metadata.name, metadata.namespace; = == !=), as the API server decides it."""
    meta = obj.get("metadata") or {}
    have = meta.get("labels") or {}
    for term in re.split(r",(?![^(]*\))", labels or ""):
        term = term.strip()
        if not term:
            continue
        sets = re.fullmatch(r"(\S+)\s+(in|notin)\s+\((.*)\)", term)
        if sets:
            key, op, values = sets[1], sets[2], {v.strip() for v in sets[3].split(",")}
            if (op == "in") != (key in have and have[key] in values):
                return False
        elif "!=" in term:
            key, value = term.split("!=", 1)
            if have.get(key.strip()) == value.strip():
                return False
        elif "=" in term:
            key, value = re.split("==?", term, maxsplit=1)
            if have.get(key.strip()) != value.strip():
                return False
        elif term.startswith("!"):
            if term[1:] in have:
                return False
        elif term not in have:
            return False
    for term in (fields or "").split(","):
        if not term:
            continue
        negate = "!=" in term
        key, value = re.split("!=|==?", term, maxsplit=1)
        actual = {"metadata.name": meta.get("name"), "metadata.namespace": meta.get("namespace")}[key.strip()]
        if (actual == value.strip()) == negate:
            return False
    return True


def status_body(code: int, reason: str, message: str, details: dict[str, Any]) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": details,
        "code": code,
    }


class FakeApiServer:
    def __init__(self) -> None:
        self.loops: dict[tuple[str, str], dict[str, Any]] = {}
        self.crd_installed = True
        self.forbidden: set[str] = set()  # HTTP methods refused with 403
        self.secrets: dict[tuple[str, str], dict[str, bytes]] = {}  # (namespace, name): data
        self.forbidden_secrets = False  # every Secret read refused with 403
        self.deployments: list[dict[str, Any]] = []  # apps/v1 Deployments, as the API returns them
        self.services: dict[tuple[str, str], str | None] = {}  # (namespace, "name:port"): base URL (None: no Pods)
        self.stall = threading.Event()  # set: requests get no answer until stop()
        self.events: queue.Queue[Any] = queue.Queue()  # (type, object) streamed to the next open watch
        self.requests: list[dict[str, Any]] = []
        self._version = 100
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    # --- the test's side ----------------------------------------------------------------------------------

    def __enter__(self) -> FakeApiServer:
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()
        self.events.put(END)
        self.httpd.shutdown()
        self.httpd.server_close()

    def add(self, loop: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            stored = self._stamp(copy.deepcopy(loop))
            meta = stored["metadata"]
            self.loops[(meta["namespace"], meta["name"])] = stored
        return stored

    def change(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        """A status update as the operator writes it, streamed to watches."""
        with self._lock:
            loop = self._stamp(merge_patch(self.loops[(namespace, name)], {"status": status}))
            self.loops[(namespace, name)] = loop
        self.events.put(("MODIFIED", copy.deepcopy(loop)))

    def delete(self, namespace: str, name: str) -> None:
        with self._lock:
            loop = self.loops.pop((namespace, name))
        self.events.put(("DELETED", loop))

    def kubeconfig(self, path: Path, namespace: str | None = "prod", server: str | None = None) -> Path:
        context = {"cluster": "fake", "user": "me", **({"namespace": namespace} if namespace else {})}
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": server or self.url}}],
            "users": [{"name": "me", "user": {"token": "t0ken"}}],
            "contexts": [
                {"name": "fake", "context": context},
                {"name": "other", "context": {"cluster": "fake", "user": "me", "namespace": "staging"}},
            ],
            "current-context": "fake",
        }
        path.write_text(yaml.safe_dump(config))
        return path

    def add_secret(self, namespace: str, name: str, data: dict[str, str | bytes]) -> None:
        self.secrets[(namespace, name)] = {k: v.encode() if isinstance(v, str) else v for k, v in data.items()}

    def _stamp(self, loop: dict[str, Any]) -> dict[str, Any]:
        self._version += 1
        loop["metadata"]["resourceVersion"] = str(self._version)
        return loop

    # --- the server's side --------------------------------------------------------------------------------

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                server._answer(self)

            def do_PATCH(self) -> None:
                server._answer(self)

            def do_POST(self) -> None:
                server._answer(self)

        return Handler

    def _answer(self, http: BaseHTTPRequestHandler) -> None:
        url = urlsplit(http.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        length = int(http.headers.get("Content-Length") or 0)
        body = json.loads(http.rfile.read(length)) if length else None
        self.requests.append(
            {
                "method": http.command,
                "path": url.path,
                "query": query,
                "content_type": http.headers.get("Content-Type"),
                "authorization": http.headers.get("Authorization"),
                "body": body,
            }
        )
        if self.stall.is_set():
            self._stopping.wait()
            return
        if SECRET_PATH.match(url.path):
            self._secret(http, SECRET_PATH.match(url.path))
            return
        if DEPLOYMENTS_PATH.match(url.path):
            namespace = DEPLOYMENTS_PATH.match(url.path)["ns"]  # type: ignore[index]
            items = [
                d
                for d in self.deployments
                if d["metadata"]["namespace"] == namespace and selected(d, query.get("labelSelector"), None)
            ]
            self._send(http, 200, {"apiVersion": "apps/v1", "kind": "DeploymentList", "metadata": {}, "items": items})
            return
        if PROXY_PATH.match(url.path):
            self._proxy(http, PROXY_PATH.match(url.path), body)
            return
        match = PATH.match(url.path)
        if not match or not self.crd_installed:
            self._send(http, 404, status_body(404, "NotFound", "the server could not find the requested resource", {}))
            return
        namespace, name = match["ns"], match["name"]
        details = {"name": name, "group": GROUP, "kind": PLURAL}
        if http.command in self.forbidden:
            verb = {"GET": "get", "PATCH": "patch"}[http.command]
            message = (
                f'{PLURAL}.{GROUP} "{name}" is forbidden: User "me" cannot {verb} resource "{PLURAL}" '
                f'in API group "{GROUP}" in the namespace "{namespace}"'
            )
            self._send(http, 403, status_body(403, "Forbidden", message, details))
        elif name is None and query.get("watch") in ("true", "True", "1"):
            self._watch(http, namespace, query.get("labelSelector"), query.get("fieldSelector"))
        elif name is None:
            labels, fields = query.get("labelSelector"), query.get("fieldSelector")
            items = [
                v
                for (ns, _), v in sorted(self.loops.items())
                if namespace in (None, ns) and selected(v, labels, fields)
            ]
            listed = {"resourceVersion": str(self._version)}
            body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelFeedbackLoopList", "metadata": listed}
            self._send(http, 200, {**body, "items": items})
        elif (namespace, name) not in self.loops:
            message = f'{PLURAL}.{GROUP} "{name}" not found'
            self._send(http, 404, status_body(404, "NotFound", message, details))
        elif http.command == "PATCH":
            with self._lock:
                loop = self._stamp(merge_patch(self.loops[(namespace, name)], body))
                self.loops[(namespace, name)] = loop
            self._send(http, 200, loop)
        else:
            self._send(http, 200, self.loops[(namespace, name)])

    def _secret(self, http: BaseHTTPRequestHandler, match: re.Match[str]) -> None:
        namespace, name = match["ns"], match["name"]
        details = {"name": name, "kind": "secrets"}
        if self.forbidden_secrets:
            message = (
                f'secrets "{name}" is forbidden: User "me" cannot get resource "secrets" in API group "" '
                f'in the namespace "{namespace}"'
            )
            self._send(http, 403, status_body(403, "Forbidden", message, details))
        elif (namespace, name) not in self.secrets:
            self._send(http, 404, status_body(404, "NotFound", f'secrets "{name}" not found', details))
        else:
            data = {k: base64.b64encode(v).decode() for k, v in self.secrets[(namespace, name)].items()}
            metadata = {"name": name, "namespace": namespace}
            self._send(http, 200, {"apiVersion": "v1", "kind": "Secret", "metadata": metadata, "data": data})

    def _proxy(self, http: BaseHTTPRequestHandler, match: re.Match[str], body: Any) -> None:
        """As the API server's service proxy: the Pod's answer as it is, or the proxy's own error."""
        namespace, service = match["ns"], match["service"]
        name = service.split(":")[0]
        if (namespace, service) not in self.services:
            self._send(http, 404, status_body(404, "NotFound", f'services "{name}" not found', {"name": name}))
            return
        base = self.services[(namespace, service)]
        if base is None:
            message = f'no endpoints available for service "{name}"'
            self._send(http, 503, status_body(503, "ServiceUnavailable", message, {}))
            return
        request = urllib.request.Request(
            f"{base}/{match['rest']}", json.dumps(body).encode(), {"Content-Type": "application/json"}, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                code, data = response.status, response.read()
        except urllib.error.HTTPError as error:
            code, data = error.code, error.read()
        self._send_bytes(http, code, data)

    def _send(self, http: BaseHTTPRequestHandler, code: int, value: dict[str, Any]) -> None:
        self._send_bytes(http, code, json.dumps(value).encode())

    def _send_bytes(self, http: BaseHTTPRequestHandler, code: int, data: bytes) -> None:
        http.send_response(code)
        http.send_header("Content-Type", "application/json")
        http.send_header("Content-Length", str(len(data)))
        http.end_headers()
        http.wfile.write(data)

    def _watch(
        self, http: BaseHTTPRequestHandler, namespace: str | None, labels: str | None, fields: str | None
    ) -> None:
        """The events put on `events` that the watch's namespace and selectors let through (ERROR always)."""
        http.send_response(200)
        http.send_header("Content-Type", "application/json")
        http.send_header("Transfer-Encoding", "chunked")
        http.end_headers()
        http.wfile.flush()
        while True:
            event = self.events.get()
            if event is END:
                break
            kind, obj = event
            if kind != "ERROR" and (
                namespace not in (None, obj["metadata"].get("namespace")) or not selected(obj, labels, fields)
            ):
                continue
            line = json.dumps({"type": kind, "object": obj}).encode() + b"\n"
            http.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
            http.wfile.flush()
            if kind == "ERROR":  # the apiserver ends a watch after an ERROR event (e.g. 410 Gone)
                break
        http.wfile.write(b"0\r\n\r\n")
        http.wfile.flush()
        http.close_connection = True
