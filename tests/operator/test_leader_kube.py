"""KubeLease, the election's edge, through the real kubernetes client against a local HTTP server that
answers like kube-apiserver for one Lease: 404 for a missing one, 409 for a stale resourceVersion or a
create of an existing one, and MicroTime parsed as strictly as Go's RFC3339Micro layout (six digits)."""

from __future__ import annotations

import asyncio
import copy
import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from kubernetes import client

from feedbackloop.runtime import leader

PATH = re.compile(r"^/apis/coordination\.k8s\.io/v1/namespaces/(?P<ns>[^/]+)/leases(?:/(?P<name>[^/?]+))?")
MICRO_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}(Z|[+-]\d\d:\d\d)$")


class LeaseServer:
    def __init__(self) -> None:
        self.leases: dict[tuple[str, str], dict[str, Any]] = {}
        self.requests: list[tuple[str, str, dict[str, Any] | None]] = []
        self.version = 40
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self.handler())
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                server.answer(self, "GET")

            def do_POST(self) -> None:
                server.answer(self, "POST")

            def do_PUT(self) -> None:
                server.answer(self, "PUT")

        return Handler

    def answer(self, http: BaseHTTPRequestHandler, method: str) -> None:
        match = PATH.match(http.path)
        assert match, http.path
        length = int(http.headers.get("Content-Length") or 0)
        body = json.loads(http.rfile.read(length)) if length else None
        self.requests.append((method, http.path, body))
        namespace = match["ns"]
        with self.lock:
            if method == "GET":
                found = self.leases.get((namespace, match["name"]))
                code, value = (200, found) if found else (404, status(404, "NotFound"))
            else:
                code, value = self.write(method, namespace, match["name"], body or {})
        data = json.dumps(value).encode()
        http.send_response(code)
        http.send_header("Content-Type", "application/json")
        http.send_header("Content-Length", str(len(data)))
        http.end_headers()
        http.wfile.write(data)

    def write(self, method: str, namespace: str, name: str | None, body: dict[str, Any]) -> tuple[int, dict]:
        spec = body.get("spec") or {}
        for field in ("acquireTime", "renewTime"):
            if field in spec and not MICRO_TIME.match(spec[field]):
                return 400, status(400, "BadRequest", f"{field}: cannot parse {spec[field]!r} as MicroTime")
        key = (namespace, name or body["metadata"]["name"])
        current = self.leases.get(key)
        if method == "POST" and current is not None:
            return 409, status(409, "AlreadyExists")
        if method == "PUT" and (
            current is None or body["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]
        ):
            return 409, status(409, "Conflict")  # fmt: skip
        self.version += 1
        stored = copy.deepcopy(body)
        stored["metadata"].update(namespace=namespace, resourceVersion=str(self.version))
        self.leases[key] = stored
        return (201 if method == "POST" else 200), stored


def status(code: int, reason: str, message: str = "") -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "code": code,
            "message": message or reason}  # fmt: skip


@pytest.fixture
def server() -> Iterator[LeaseServer]:
    lease_server = LeaseServer()
    threading.Thread(target=lease_server.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    previous = client.Configuration.get_default_copy()
    configuration = client.Configuration(host=lease_server.url)
    client.Configuration.set_default(configuration)
    try:
        yield lease_server
    finally:
        client.Configuration.set_default(previous)
        lease_server.httpd.shutdown()
        lease_server.httpd.server_close()


TIMING = leader.Timing(lease_seconds=1, renew_deadline_seconds=0.5, retry_seconds=0.1)


def test_kube_lease_reads_creates_and_conflicts_as_the_api_server_answers(server: LeaseServer) -> None:
    lease = leader.KubeLease("feedbackloop-operator", "ops", request_timeout=2)
    assert lease.read() is None  # 404
    body = leader.lease_body(leader.Step.CREATE, None, "op-1", leader.Timing(), "feedbackloop-operator", "ops",
                             leader.datetime(2026, 12, 2, 4, 0, 0, tzinfo=leader.UTC))  # fmt: skip
    written = lease.create(body)
    assert written["spec"]["renewTime"] == "2026-12-02T04:00:00.000000Z"  # six digits even at .0
    assert lease.read() == written
    with pytest.raises(leader.Conflict):
        lease.create(body)
    stale = copy.deepcopy(written)
    stale["metadata"]["resourceVersion"] = "1"
    with pytest.raises(leader.Conflict):
        lease.replace(stale)
    assert lease.replace(written)["metadata"]["resourceVersion"] != written["metadata"]["resourceVersion"]


def test_two_candidates_through_the_real_client_hand_over_on_release(server: LeaseServer) -> None:
    def candidate(identity: str) -> leader.Elector:
        election = leader.Election(True, identity, "feedbackloop-operator", "ops", TIMING)
        return leader.Elector(leader.KubeLease(election.name, election.namespace, 1.0), election)

    async def scenario() -> None:
        first, second = candidate("op-1"), candidate("op-2")
        await first.acquire()
        standby = asyncio.create_task(second.acquire())
        renewing = asyncio.create_task(first.keep())
        await asyncio.sleep(1.5)  # longer than the lease: renewals keep the standby out
        assert not standby.done()
        renewing.cancel()
        await first.release()
        await asyncio.wait_for(standby, timeout=2)

    asyncio.run(scenario())
    lease = server.leases[("ops", "feedbackloop-operator")]
    assert lease["spec"]["holderIdentity"] == "op-2" and lease["spec"]["leaseTransitions"] == 1
    writes = [(method, body) for method, _, body in server.requests if method != "GET"]
    assert writes[0][0] == "POST" and all(method == "PUT" for method, _ in writes[1:])
    assert all(body["metadata"].get("resourceVersion") for _, body in writes[1:])  # every update optimistic
    renewals = [body for _, body in writes if body["spec"].get("holderIdentity") == "op-1"]
    assert len(renewals) >= 8  # every retry period (0.1 s) for 1.5 s
    assert {body["spec"]["acquireTime"] for body in renewals} == {renewals[0]["spec"]["acquireTime"]}
