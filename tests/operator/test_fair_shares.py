"""Fair shares (issue 22, build 1): a hostile tenant's black-holed Prometheus and dead webhooks, served by real
local HTTP servers and sockets, must not delay another tenant's rules, canary looks or notifications.

Each scenario measures wall-clock time against generous bounds (a few seconds) that the code before fair
shares misses by far: there the victim waits for the hostile's timeouts (60 s for queries, 10 s for
notifications). The unit tests of the slots themselves are at the end. The servers listen on loopback, which
the egress policy refuses unless the admin allows it: these tests allow it (conftest.loopback_receivers).
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from feedbackloop.core.api import Webhook, validate_spec
from feedbackloop.core.phases import Event
from feedbackloop.core.tenancy import origin, tenant_of
from feedbackloop.runtime import canary_queries
from feedbackloop.runtime.engine import Engine, Settings
from feedbackloop.runtime.notify import Notifier
from feedbackloop.runtime.poller import EndpointKey, LoopQuery
from feedbackloop.runtime.slots import KeyedSlots, Lane

from .fake_kube import Harness
from .test_engine_cycle import T0, loop
from .test_notify import Receiver

ON_TIME_SECONDS = 3.0  # generous on a loaded 2-core machine; the hostile's timeouts are 10 s and 60 s
HOSTILE_TIMEOUT = "60s"  # the longest a spec may ask for
Answer = Callable[[str], list[dict[str, Any]]]


class PrometheusServer:
    """An HTTP server on 127.0.0.1 speaking /api/v1/query: it holds the requests `hangs(path, query)` says
    (reads them, never answers: a black hole) until closed, and answers the others with `answer(query)`."""

    def __init__(self, answer: Answer | None = None, hangs: Callable[[str, str], bool] = lambda _p, _q: False):
        self.release = threading.Event()
        self.hanging = 0
        self.answered: list[str] = []
        lock, server = threading.Lock(), self

        class Handler(BaseHTTPRequestHandler):
            def _query(self) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                form = parse_qs(parts.query) | parse_qs(self.rfile.read(length).decode() if length else "")
                query = form.get("query", [""])[0]
                if hangs(parts.path, query):
                    with lock:
                        server.hanging += 1
                    server.release.wait(120)
                    self.close_connection = True
                    return  # no answer at all: the client sees the connection closed at the end
                body = json.dumps(
                    {"status": "success", "data": {"resultType": "vector", "result": (answer or no_series)(query)}}
                ).encode()
                with lock:
                    server.answered.append(query)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _query  # noqa: N815 - the http.server API

            def log_message(self, *_: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def no_series(_query: str) -> list[dict[str, Any]]:
    return []


def one_series(value: float) -> Answer:
    return lambda _query: [{"metric": {}, "value": [T0, str(value)]}]


def hostile_loop(namespace: str, name: str, url: str, rules: int = 5) -> dict[str, Any]:
    """A loop whose Prometheus URL is the hostile's choice, with the longest timeout and `rules` distinct
    queries that cannot be batched (so each is a query of its own, holding a slot)."""
    body = loop()
    body["metadata"].update(namespace=namespace, name=name, uid=f"uid-{namespace}-{name}")
    body["spec"]["model"]["initialVersion"] = 1
    body["spec"]["monitoring"]["prometheus"] = {"url": url, "timeout": HOSTILE_TIMEOUT}
    body["spec"]["monitoring"]["metrics"] = [
        {"name": f"r{i}", "query": f'sum(hostile_{i}{{model="{{{{model}}}}"}})', "min": 0.5} for i in range(rules)
    ]
    return body


async def until(condition: Callable[[], bool], seconds: float) -> float:
    """Seconds until `condition` held (polled every 20 ms), or `seconds` if it never did."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        if condition():
            return time.monotonic() - started
        await asyncio.sleep(0.02)
    return seconds


@pytest.fixture
def servers() -> Iterator[list[PrometheusServer]]:
    made: list[PrometheusServer] = []
    yield made
    for server in made:
        server.close()


# --- (a) the victim's rules beside a hostile tenant ------------------------------------------------------


def test_a_hostile_tenant_with_black_holed_prometheus_urls_does_not_starve_another_tenants_rules(
    servers: list[PrometheusServer], loopback_receivers: None
) -> None:
    """Four hostile loops whose URLs differ only in their path, all black-holed, five rules each, the longest
    timeout: once they hold every slot they can, the victim's rule is still evaluated at once (before fair
    shares: after the hostile's 60 s timeout, as the URL-string limit let them hold every slot)."""
    black_hole = PrometheusServer(hangs=lambda _p, _q: True)
    victim_prometheus = PrometheusServer(one_series(0.95))
    servers += [black_hole, victim_prometheus]
    bed = Harness()
    engine = bed.engine = Engine(bed.kube, Settings(active_reconcile_seconds=5.0))  # the real Prometheus client
    for i in range(4):
        bed.apply(hostile_loop("hostile", f"h{i}", f"{black_hole.url}/path-{i}"))
    victim = loop()
    victim["spec"]["model"]["initialVersion"] = 1
    victim["spec"]["monitoring"]["prometheus"]["url"] = victim_prometheus.url
    bed.apply(victim)

    def evaluated() -> bool:
        metrics = (bed.kube.loops["team-a/churn"].get("status") or {}).get("metrics") or []
        return any(m.get("value") == 0.95 for m in metrics)

    async def scenario() -> float:
        stop = asyncio.Event()

        async def run_cycles() -> None:  # the engine's run loop: a cycle per wake-up or 50 ms tick
            tick = 0
            while not stop.is_set():
                await engine.cycle(T0 + tick * 0.05)
                tick += 1
                try:
                    await asyncio.wait_for(engine.wake.wait(), 0.05)
                except TimeoutError:
                    pass
                engine.wake.clear()

        cycles = asyncio.create_task(run_cycles())
        try:
            delay = await until(evaluated, ON_TIME_SECONDS)
        finally:
            stop.set()
            await cycles
            black_hole.close()  # the hostile's queries end (connection closed): the engine settles
            await asyncio.wait_for(engine.settle(), 30)
        return delay

    delay = bed.runner.run(scenario())
    assert black_hole.hanging >= 1, "the hostile's queries never reached its black hole"
    assert delay < ON_TIME_SECONDS, f"the victim's rule was not evaluated within {ON_TIME_SECONDS}s"


# --- (b) a canary look beside other tenants' polls -------------------------------------------------------


def arms(_query: str) -> list[dict[str, Any]]:
    return [
        {"metric": {"track": "canary", "version": "2"}, "value": [T0, "100"]},
        {"metric": {"track": "stable", "version": "1"}, "value": [T0, "100"]},
    ]


def test_a_canary_look_is_not_queued_behind_other_tenants_polls(
    servers: list[PrometheusServer], loopback_receivers: None
) -> None:
    """Four hostile tenants fill every poll slot there is: two of them with queries that never finish on the
    victim's own Prometheus host (every poll slot of that host), two on a black hole. The victim's canary
    look, on that same host, is answered at once: looks have a lane of their own."""
    shared = PrometheusServer(arms, hangs=lambda _p, query: "hostile_" in query)
    black_hole = PrometheusServer(hangs=lambda _p, _q: True)
    servers += [shared, black_hole]
    engine = Engine(Harness().kube, Settings())
    poller = engine.observer.poller
    hostile = [
        LoopQuery(
            f"hostile-{tenant}/l{n}",
            EndpointKey(f"{(shared if tenant < 2 else black_hole).url}/t{tenant}/p{n}", None, None, False, 60.0),
            {"model": f"l{n}", "namespace": f"hostile-{tenant}", "version": "1", "track": "stable"},
            validate_spec(hostile_loop(f"hostile-{tenant}", f"l{n}", "http://x")["spec"]).monitoring.metrics,
        )
        for tenant in range(4)
        for n in range(4)
    ]
    victim = loop()
    spec = validate_spec(victim["spec"])
    endpoint = EndpointKey(shared.url, None, None, False, 10.0)
    status = {"currentVersion": 1}
    rollout = {"version": 2, "startedAt": "2027-01-15T08:00:00Z"}

    async def scenario() -> Any:
        polls = asyncio.create_task(poller.poll(hostile, T0))
        await until(lambda: shared.hanging + black_hole.hanging >= 8, ON_TIME_SECONDS)  # every poll slot held
        try:
            the_look = canary_queries.observe(poller.run, endpoint, spec, "team-a", status, rollout, T0 + 600)
            return await asyncio.wait_for(the_look, ON_TIME_SECONDS)
        except TimeoutError:
            return None
        finally:
            shared.close()
            black_hole.close()
            await asyncio.wait_for(polls, 30)

    look = asyncio.run(scenario())
    assert look is not None, f"the canary look waited over {ON_TIME_SECONDS}s behind other tenants' polls"
    assert shared.hanging + black_hole.hanging >= 8, "the hostile polls did not hold every poll slot"
    assert not look.outage and not look.error
    assert look.availability is not None and look.availability[0].total == 100


# --- (c) the victim's notification beside 150 dead receivers --------------------------------------------


class DeadReceivers:
    """`count` TCP ports on 127.0.0.1 that take connections and never read or answer (never accepted: the
    kernel completes each handshake into a long backlog, where the request sits unread)."""

    def __init__(self, count: int) -> None:
        self.sockets = [socket.create_server(("127.0.0.1", 0), backlog=512) for _ in range(count)]
        self.ports = [s.getsockname()[1] for s in self.sockets]

    def close(self) -> None:
        for s in self.sockets:
            s.close()


@pytest.mark.parametrize("hosts", [1, 150], ids=["150 paths on one host", "150 hosts"])
def test_the_victims_notification_is_on_time_beside_150_dead_receivers_of_another_tenant(
    hosts: int, loopback_receivers: None
) -> None:
    """A hostile tenant's 150 webhooks (30 loops x 5, the most a loop may have) never answer; the victim's
    notification, published once those tries are in flight, is delivered at once (before: ~10 s, the pool
    wait in its timeout)."""
    dead, receiver = DeadReceivers(hosts), Receiver()
    urls = [f"http://127.0.0.1:{dead.ports[n % hosts]}/hook-{n}" for n in range(150)]
    event = Event("Warning", "BreachStarted", "accuracy 0.61 < 0.8 for 5m")

    async def scenario() -> float:
        notifier = Notifier()  # the real aiohttp sender, 10 s per try
        run = asyncio.create_task(notifier.run())
        try:
            for n in range(30):
                hostile = {"metadata": {"namespace": "hostile", "name": f"l{n}", "uid": f"u{n}"}}
                notifier.publish(hostile, [Webhook.model_construct(url=u) for u in urls[5 * n : 5 * n + 5]], event, {})
            await asyncio.sleep(0.5)  # the hostile's tries are in flight, their connections open
            victim = {"metadata": {"namespace": "team-a", "name": "churn", "uid": "uid-1"}}
            notifier.publish(victim, [Webhook.model_construct(url=receiver.url)], event, {})
            return await until(lambda: bool(receiver.requests), ON_TIME_SECONDS)
        finally:
            run.cancel()
            await asyncio.gather(run, return_exceptions=True)

    try:
        seconds = asyncio.run(scenario())
    finally:
        dead.close()
        receiver.close()
    assert receiver.requests and receiver.requests[0]["loop"]["namespace"] == "team-a"
    assert seconds < ON_TIME_SECONDS, f"the victim's notification took {seconds:.1f}s"


# --- the slots ----------------------------------------------------------------------------------------


def test_the_keys_of_the_shares() -> None:
    assert tenant_of("team-a/churn") == "team-a"
    same = [
        "http://prometheus:9090",
        "http://Prometheus:9090/a/b",
        "HTTP://prometheus.:9090/?x=1",
        "http://u@prometheus:9090",
    ]
    assert {origin(url) for url in same} == {"http://prometheus:9090"}
    assert origin("https://p.example") == "https://p.example:443" != origin("http://p.example")
    assert origin("http://[::1]:9090/x") == "http://[::1]:9090"
    assert origin("http://p:99999") == "http://p:99999"  # does not parse: its own key


def test_slots_are_handed_over_in_order_and_forgotten_when_free() -> None:
    async def scenario() -> list[str]:
        slots, order = KeyedSlots(1), []
        await slots.acquire("a")

        async def waiter(name: str) -> None:
            await slots.acquire("a")
            order.append(name)
            slots.release("a")

        tasks = [asyncio.create_task(waiter(name)) for name in "xyz"]
        await asyncio.sleep(0)
        tasks[1].cancel()  # a waiter that gives up leaves the queue
        await asyncio.sleep(0)
        assert slots.waiting("a") == 2
        slots.release("a")
        await asyncio.gather(*tasks, return_exceptions=True)
        assert slots.held("a") == 0 and slots.waiting("a") == 0 and not slots._held and not slots._waiting
        return order

    assert asyncio.run(scenario()) == ["x", "z"]


def test_a_tenant_waiting_for_its_own_slots_holds_no_shared_slot() -> None:
    """Tenant A asks for ten slots of a lane of 4 in all, 2 per tenant: it holds 2, its other eight wait
    holding nothing, and tenant B gets its 2 at once."""

    async def scenario() -> None:
        lane, release = Lane("test", total=4, per_tenant=2, per_host=4), asyncio.Event()
        held: list[str] = []

        async def work(tenant: str, host: str) -> None:
            async with lane.slot(tenant, host):
                held.append(tenant)
                await release.wait()

        a = [asyncio.create_task(work("a", "h")) for _ in range(10)]
        await asyncio.sleep(0.01)
        b = [asyncio.create_task(work("b", "h")) for _ in range(2)]
        await asyncio.sleep(0.01)
        assert held.count("a") == 2 and held.count("b") == 2
        assert lane.all.held("") == 4 and lane.hosts.held("h") == 4 and lane.tenants.waiting("a") == 8
        release.set()
        await asyncio.gather(*a, *b)
        assert not lane.all._held and not lane.hosts._held and not lane.tenants._held

    asyncio.run(scenario())


def test_a_black_hole_host_holds_at_most_its_share_of_the_lane() -> None:
    """Three tenants point at one dead host: it holds `per_host` slots in all, the rest wait for the host
    holding no slot in all, and a fourth tenant's work on another host runs at once."""

    async def scenario() -> None:
        lane, release = Lane("test", total=6, per_tenant=2, per_host=3), asyncio.Event()
        running: list[str] = []

        async def work(tenant: str, host: str) -> None:
            async with lane.slot(tenant, host):
                running.append(host)
                await release.wait()

        stuck = [asyncio.create_task(work(t, "dead")) for t in "abc" for _ in range(2)]
        await asyncio.sleep(0.01)
        fine = [asyncio.create_task(work("d", "live")) for _ in range(2)]
        await asyncio.sleep(0.01)
        assert running.count("dead") == 3 and running.count("live") == 2 and lane.all.held("") == 5
        release.set()
        await asyncio.gather(*stuck, *fine)

    asyncio.run(scenario())


def test_a_batch_carries_one_tenants_loops_only() -> None:
    """Two tenants' loops with one template on one Prometheus: a query each, never one for both."""
    asked: list[str] = []

    def query(_endpoint: EndpointKey, text: str) -> list[tuple[dict[str, str], float]]:
        asked.append(text)
        labels = dict(re.findall(r'(\w+)=~"([^"]*)"', text))  # the batch's label matchers
        return [({**labels, "model": model}, 0.9) for model in labels.get("model", "").split("|")]

    engine = Engine(Harness().kube, Settings())
    engine.observer.poller._query = query
    rule = validate_spec(loop()["spec"]).monitoring.metrics
    endpoint = EndpointKey("http://p", None, None, False, 5.0)
    loops = [
        LoopQuery(f"{ns}/m{i}", endpoint, {"model": f"m{i}", "namespace": ns, "version": "1", "track": "stable"}, rule)
        for ns in ("team-a", "team-b")
        for i in range(3)
    ]
    samples, stats = asyncio.run(engine.observer.poller.poll(loops, T0))
    assert stats.queries == 2 and stats.batched_templates == 2
    assert sorted(asked) == [
        'accuracy_of{model=~"m0|m1|m2",namespace=~"team-a",version=~"1"}',
        'accuracy_of{model=~"m0|m1|m2",namespace=~"team-b",version=~"1"}',
    ]
    assert samples["team-b/m2"]["accuracy"].value == 0.9


def test_a_hostile_tenant_sharing_the_victims_prometheus_url_does_not_delay_its_rules(
    servers: list[PrometheusServer], loopback_receivers: None
) -> None:
    """The shared cluster Prometheus: the hostile's loops name the victim's very URL, and their queries (say,
    too expensive) never finish. The victim's rule is still evaluated at once."""
    shared = PrometheusServer(one_series(0.95), hangs=lambda _p, query: "hostile_" in query)
    servers.append(shared)
    bed = Harness()
    engine = bed.engine = Engine(bed.kube, Settings(active_reconcile_seconds=5.0))
    for i in range(4):
        bed.apply(hostile_loop("hostile", f"h{i}", shared.url))
    victim = loop()
    victim["spec"]["model"]["initialVersion"] = 1
    victim["spec"]["monitoring"]["prometheus"]["url"] = shared.url
    bed.apply(victim)

    def evaluated() -> bool:
        metrics = (bed.kube.loops["team-a/churn"].get("status") or {}).get("metrics") or []
        return any(m.get("value") == 0.95 for m in metrics)

    async def scenario() -> float:
        stop = asyncio.Event()

        async def run_cycles() -> None:
            tick = 0
            while not stop.is_set():
                await engine.cycle(T0 + tick * 0.05)
                tick += 1
                await asyncio.sleep(0.05)

        cycles = asyncio.create_task(run_cycles())
        try:
            return await until(evaluated, ON_TIME_SECONDS)
        finally:
            stop.set()
            await cycles
            shared.close()
            await asyncio.wait_for(engine.settle(), 30)

    delay = bed.runner.run(scenario())
    assert delay < ON_TIME_SECONDS, f"the victim's rule was not evaluated within {ON_TIME_SECONDS}s"
