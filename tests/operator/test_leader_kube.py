"""KubeLease, the election's edge, and Kube's fenced writes, through the real kubernetes client against a local
HTTP server that answers like kube-apiserver: one Lease (404 for a missing one, 409 for a stale resourceVersion
or a create of an existing one, MicroTime parsed as strictly as Go's RFC3339Micro layout: six digits) and
custom objects (a merge patch of status or of the object, a resourceVersion in the patch as a precondition).

Fault injection: a leader paused after its fence admitted a write, and a write in flight (held by the server)
when the leader's term ends, each while the standby takes over and writes: the standby's write stands."""

from __future__ import annotations

import asyncio
import copy
import json
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from kubernetes import client

from feedbackloop.core import election
from feedbackloop.runtime import kube, leader

PATH = re.compile(r"^/apis/coordination\.k8s\.io/v1/namespaces/(?P<ns>[^/]+)/leases(?:/(?P<name>[^/?]+))?")
OBJECT = re.compile(r"^(?P<path>/apis/[^?]+?)(?P<status>/status)?(?:\?.*)?$")
MICRO_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}(Z|[+-]\d\d:\d\d)$")


class LeaseServer:
    def __init__(self) -> None:
        self.leases: dict[tuple[str, str], dict[str, Any]] = {}
        self.objects: dict[str, dict[str, Any]] = {}  # other objects by path (custom objects)
        self.requests: list[tuple[str, str, dict[str, Any] | None]] = []
        self.answers: list[tuple[str, str, int]] = []  # (method, path, code) of each object request
        self.version = 40
        self.lock = threading.Lock()
        self.hold: threading.Event | None = None  # the next PATCH waits for it (a request in flight)
        self.held = threading.Event()
        self.edit_after_get = False  # the next GET of an object is followed by someone else's edit
        self.lease_delay = 0.0  # seconds every Lease request takes (a loaded API server)
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

            def do_PATCH(self) -> None:
                server.answer(self, "PATCH")

            def do_DELETE(self) -> None:
                server.answer(self, "DELETE")

        return Handler

    def answer(self, http: BaseHTTPRequestHandler, method: str) -> None:
        length = int(http.headers.get("Content-Length") or 0)
        body = json.loads(http.rfile.read(length)) if length else None
        self.requests.append((method, http.path, body))
        match = PATH.match(http.path)
        if match:
            time.sleep(self.lease_delay)
            code, value = self.lease_request(method, match, body)
        else:
            code, value = self.object_request(method, http.path, body)
        data = json.dumps(value).encode()
        try:
            http.send_response(code)
            http.send_header("Content-Type", "application/json")
            http.send_header("Content-Length", str(len(data)))
            http.end_headers()
            http.wfile.write(data)
        except OSError:  # the client gave up waiting (its request timeout)
            pass

    def lease_request(self, method: str, match: re.Match[str], body: dict[str, Any] | None) -> tuple[int, dict]:
        namespace = match["ns"]
        with self.lock:
            if method == "GET":
                found = self.leases.get((namespace, match["name"]))
                return (200, found) if found else (404, status(404, "NotFound"))
            if method == "DELETE":
                return (
                    (200, {}) if self.leases.pop((namespace, match["name"]), None) else (404, status(404, "NotFound"))
                )
            return self.write(method, namespace, match["name"], body or {})

    def object_request(self, method: str, path: str, body: dict[str, Any] | None) -> tuple[int, dict]:
        match = OBJECT.match(path)
        assert match, path
        if method == "PATCH" and self.hold is not None:  # in flight: the server has it, not yet applied
            hold, self.hold = self.hold, None
            self.held.set()
            hold.wait(10)
        with self.lock:
            code, value = self.apply(method, match["path"], bool(match["status"]), body or {})
            self.answers.append((method, path, code))
            if method == "GET" and self.edit_after_get and code == 200:
                self.edit_after_get = False
                self.bump(match["path"])  # e.g. a user's `kubectl edit` between our read and our write
        return code, value

    def apply(self, method: str, path: str, subresource: bool, body: dict[str, Any]) -> tuple[int, dict]:
        current = self.objects.get(path)
        if current is None:
            return 404, status(404, "NotFound")
        if method == "GET":
            return 200, copy.deepcopy(current)
        expected = (body.get("metadata") or {}).get("resourceVersion")
        if method == "DELETE":
            expected = ((body.get("preconditions") or {}).get("resourceVersion")) or None
        if expected is not None and expected != current["metadata"]["resourceVersion"]:
            return 409, status(409, "Conflict", "the object has been modified; please apply your changes to the "
                                                "latest version and try again")  # fmt: skip
        if method == "DELETE":
            del self.objects[path]
            return 200, status(200, "Success")
        patch = {"status": body.get("status")} if subresource else {k: v for k, v in body.items() if k != "metadata"}
        merged = merge_patch(current, patch)
        merged["metadata"] = current["metadata"]
        self.objects[path] = merged
        self.bump(path)
        return 200, copy.deepcopy(self.objects[path])

    def bump(self, path: str) -> None:
        self.version += 1
        self.objects[path]["metadata"]["resourceVersion"] = str(self.version)

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


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386, as the API server applies `application/merge-patch+json`."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


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


@pytest.mark.parametrize(("request_timeout", "kept"), [(0.3, False), (1.5, True)])
def test_a_slow_api_server_does_not_cost_the_lease_while_a_renewal_fits_its_deadline(
    server: LeaseServer, request_timeout: float, kept: bool
) -> None:
    """Each Lease request answered in 0.5 s: a renewal (read + write) takes 1 s of its 1.5 s deadline. A request
    timeout of one retry period (0.3 s: what the operator used to give it) failed every renewal and the leader let
    go; one of the renew deadline keeps it (in a fleet benchmark, every replica exited together this way)."""
    timing = leader.Timing(lease_seconds=2, renew_deadline_seconds=1.5, retry_seconds=0.3)
    election = leader.Election(True, "op-1", "feedbackloop-operator", "ops", timing)
    elector = leader.Elector(leader.KubeLease(election.name, election.namespace, request_timeout), election)

    async def scenario() -> bool:
        await elector.acquire()  # quickly, before the server slows down
        server.lease_delay = 0.5
        before = len(server.requests)
        keeping = asyncio.create_task(elector.keep())
        await asyncio.sleep(3.0)
        still = not keeping.done()
        if kept:  # each renewal one write on the version it last wrote: no read first
            assert [method for method, _, _ in server.requests[before:]] == ["PUT"] * (len(server.requests) - before)
        keeping.cancel()
        await asyncio.gather(keeping, return_exceptions=True)
        return still

    assert asyncio.run(scenario()) is kept
    assert elector.leases.api.api_client.configuration.retries is False  # type: ignore[attr-defined]


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


# --- fenced writes: a paused leader's write, a write in flight at the end of the term -------------------------
LOOP_PATH = "/apis/feedbackloop.dev/v1alpha1/namespaces/team/modelfeedbackloops/churn"


def with_loop(server: LeaseServer) -> None:
    server.objects[LOOP_PATH] = {
        "apiVersion": "feedbackloop.dev/v1alpha1",
        "kind": "ModelFeedbackLoop",
        "metadata": {"name": "churn", "namespace": "team", "resourceVersion": "7"},
        "spec": {},
        "status": {"phase": "Monitoring"},
    }
    released = election.released_body(election.Holding("operator-before", 1, "", 0, None), LEASE, "ops", WALL)
    server.write("POST", "ops", None, released)  # a rolling update: the first candidate takes it at once


LEASE = "feedbackloop-operator"
WALL = leader.datetime(2026, 12, 2, 4, 0, 0, tzinfo=leader.UTC)


class ReachableLease(leader.KubeLease):
    """This replica's Lease calls; `broken` cuts them (its network to the API server, for the Lease only)."""

    broken = False

    def read(self) -> dict[str, Any] | None:
        self._check()
        return super().read()

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        self._check()
        return super().create(body)

    def replace(self, body: dict[str, Any]) -> dict[str, Any]:
        self._check()
        return super().replace(body)

    def _check(self) -> None:
        if self.broken:
            raise ConnectionError("unreachable")


class PausedKube(kube.Kube):
    """The engine's Kube with a pause injected between the fence's admission and the call's first request
    (SIGSTOP, a frozen VM, a long GC)."""

    def __init__(self) -> None:
        super().__init__()
        self.paused, self.resume = threading.Event(), threading.Event()

    def patch_status(
        self, namespace: str, name: str, status: dict[str, Any], known_version: str | None = None
    ) -> dict[str, Any]:
        self.paused.set()
        self.resume.wait(10)
        return super().patch_status(namespace, name, status, known_version)


class Replica:
    """One operator replica: its elector on the Lease, its fenced Kube, its engine (one status write)."""

    def __init__(self, identity: str, api: kube.Kube) -> None:
        self.lease = ReachableLease(LEASE, "ops", 1.0)
        self.elector = leader.Elector(self.lease, leader.Election(True, identity, LEASE, "ops", TIMING))
        self.fence = leader.Fence(api)
        self.lost = threading.Event()
        self.outcome: list[Any] = []  # what its write returned or raised, and when
        self.wrote = threading.Event()

    def write(self, phase: str) -> None:
        try:
            self.outcome.append(self.fence.patch_status("team", "churn", {"phase": phase}))
        except Exception as error:
            self.outcome.append(error)
        self.outcome.append(time.monotonic())
        self.wrote.set()

    def lead(self, phase: str) -> asyncio.Task[None]:
        async def engine() -> None:
            threading.Thread(target=self.write, args=(phase,), daemon=True).start()  # outlives a cancel
            await asyncio.Event().wait()

        return asyncio.create_task(leader.lead(self.elector, engine, self.fence, self.lost.set))


async def until(condition: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout}s"
        await asyncio.sleep(0.01)


def test_a_write_admitted_before_a_long_pause_is_refused_after_the_standby_took_over(server: LeaseServer) -> None:
    """Fault injection: the fence admits the leader's status write, the process pauses, the leader's term ends
    and the standby takes over and writes; then the paused write resumes. Checked only when the call started
    (before), it lands over the new leader's status; checked before each request, it is never sent."""
    with_loop(server)

    async def scenario() -> tuple[Replica, Replica]:
        paused = PausedKube()
        first, second = Replica("op-1", paused), Replica("op-2", kube.Kube())
        tasks = [first.lead("Stale")]
        await until(paused.paused.is_set, 5)  # admitted: inside the fenced call, before its first request
        tasks.append(second.lead("Fresh"))
        first.lease.broken = True  # frozen: it renews no more
        await until(second.wrote.is_set, 5)
        paused.resume.set()
        await until(first.wrote.is_set, 5)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return first, second

    first, second = asyncio.run(scenario())
    assert isinstance(second.outcome[0], dict)
    assert server.objects[LOOP_PATH]["status"] == {"phase": "Fresh"}  # the new leader's status stands
    assert isinstance(first.outcome[0], leader.NotLeading), first.outcome
    patches = [(method, path) for method, path, _ in server.answers if method == "PATCH"]
    assert len(patches) == 1  # the paused one sent nothing


def test_a_write_in_flight_when_the_term_ends_does_not_land_over_the_new_leaders(server: LeaseServer) -> None:
    """Fault injection: the leader's status write is sent within its term but held in flight (a slow network,
    an overloaded API server) while its term ends and the standby takes over and writes. Without a
    precondition and a timeout (before), the old write lands last; with them, the leader stops waiting
    within its term, and the API server refuses the write (409: the object changed since it was read)."""
    with_loop(server)
    server.hold = threading.Event()

    async def scenario() -> tuple[Replica, Replica, float]:
        first, second = Replica("op-1", kube.Kube()), Replica("op-2", kube.Kube())
        tasks = [first.lead("Stale")]
        await until(server.held.is_set, 5)  # sent, read by the API server, not yet applied
        tasks.append(second.lead("Fresh"))
        first.lease.broken = True
        await until(second.wrote.is_set, 5)
        taken_over = time.monotonic()
        release.set()  # the held request reaches etcd at last
        await until(lambda: [m for m, _, _ in server.answers].count("PATCH") >= 2, 5)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return first, second, taken_over

    release = server.hold
    first, second, taken_over = asyncio.run(scenario())
    assert server.objects[LOOP_PATH]["status"] == {"phase": "Fresh"}
    assert isinstance(first.outcome[0], Exception), first.outcome  # it gave up waiting: a timeout
    assert first.outcome[1] < taken_over  # within its own term, before the standby acted
    codes = [code for method, _, code in server.answers if method == "PATCH"]
    assert codes == [200, 409]  # the new leader's, then the held one refused on its stale resourceVersion


def test_a_conflict_from_an_edit_between_read_and_write_is_retried_on_a_new_read(server: LeaseServer) -> None:
    with_loop(server)
    server.edit_after_get = True
    written = kube.Kube().patch_status("team", "churn", {"phase": "Retraining"})
    assert written["status"] == {"phase": "Retraining"}
    assert [(method, code) for method, _, code in server.answers] == [
        ("GET", 200), ("PATCH", 409), ("GET", 200), ("PATCH", 200)
    ]  # fmt: skip


def test_route_weights_are_written_on_the_version_read(server: LeaseServer) -> None:
    path = "/apis/gateway.networking.k8s.io/v1/namespaces/team/httproutes/churn"
    server.objects[path] = {"metadata": {"name": "churn", "resourceVersion": "3"}, "spec": {"rules": [{}]}}
    server.edit_after_get = True
    kube.Kube().set_route_weights({"metadata": {"name": "churn", "namespace": "team"}}, "churn", 20)
    patches = [body for method, _, body in server.requests if method == "PATCH"]
    assert [p["metadata"]["resourceVersion"] for p in patches] == ["3", "41"]  # the second after a new read
    weights = [b["weight"] for b in server.objects[path]["spec"]["rules"][0]["backendRefs"]]
    assert weights == [80, 20]


def test_no_request_is_sent_with_too_little_of_the_term_left(server: LeaseServer) -> None:
    with_loop(server)
    fence = leader.Fence(kube.Kube())
    fence.open(lambda: time.monotonic() + leader.MIN_REQUEST_SECONDS / 2)
    with pytest.raises(leader.NotLeading, match="not sent"):
        fence.patch_status("team", "churn", {"phase": "Stale"})
    assert server.answers == []
    fence.open(lambda: time.monotonic() + 5)
    timeouts: list[float] = []
    pool = fence._target.custom.api_client.rest_client.pool_manager
    send = pool.request

    def request(*args: Any, **kwargs: Any) -> Any:
        timeouts.append(kwargs["timeout"].total)
        return send(*args, **kwargs)

    pool.request = request
    fence.patch_status("team", "churn", {"phase": "Fresh"})
    assert len(timeouts) == 2 and all(0 < t <= 5 for t in timeouts), timeouts  # bounded by what is left
