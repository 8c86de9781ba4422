"""Fair shares, before and after (issue 22): what a hostile tenant costs another tenant, measured on real local
servers against the operator's code as a git revision had it (before) and as the working tree has it (after).

    python benchmarks/fair_shares.py [--before HEAD] [--timeout 60]

Three scenarios, each timed from when the victim's work is due to when it is done:

- rules: four hostile loops whose Prometheus URLs differ only in their path, all black-holed (the server
  reads each query and never answers), five rules each, `timeout` as given (60 s: the longest a spec may
  ask). The victim's one rule, on its own Prometheus: how long until its value is in the victim's status.
- look: four hostile tenants whose polls never finish hold every poll slot (two of them on the victim's own
  Prometheus host). The victim's canary look (canary_queries.observe, as the observer calls it).
- notify: one tenant's 150 webhooks (on one host, or on 150) take connections and never answer. The victim's
  notification, published once those tries are in flight: how long until its receiver has it.

Each scenario runs in a process of its own, with the revision's `operator/` and `tests/` on its path (the
engine runs over tests/operator/fake_kube.py's in-memory API; Prometheus and the receivers are real HTTP).
A wait is cut at a cap and shown as "> cap".
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

ROOT = Path(__file__).resolve().parent.parent
T0 = 1_800_000_000.0


# --- the servers ---------------------------------------------------------------------------------------


class PrometheusServer:
    """/api/v1/query on 127.0.0.1: holds what `hangs(query)` says until closed, answers the rest with `answer`."""

    def __init__(self, answer: list[dict[str, Any]], hangs: Callable[[str], bool] = lambda _q: False) -> None:
        self.release = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _query(self) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                form = parse_qs(parts.query) | parse_qs(self.rfile.read(length).decode() if length else "")
                if hangs(form.get("query", [""])[0]):
                    server.release.wait(300)
                    self.close_connection = True
                    return
                body = json.dumps({"status": "success", "data": {"resultType": "vector", "result": answer}}).encode()
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


class Receiver:
    """A webhook receiver on 127.0.0.1 answering 200; `got` is set at the first POST."""

    def __init__(self) -> None:
        self.got = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server API
                self.rfile.read(int(self.headers["Content-Length"]))
                receiver.got.set()
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


async def until(condition: Callable[[], bool], cap: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < cap:
        if condition():
            return time.monotonic() - started
        await asyncio.sleep(0.01)
    return float("inf")


# --- the scenarios (in the worker process) ---------------------------------------------------------------


def allow_loopback() -> None:
    """The egress policy (where the revision has one) refuses loopback by default; this process's admin allows it."""
    try:
        from feedbackloop.core.egress import EgressPolicy
        from feedbackloop.core.settings import egress_allowance
        from feedbackloop.runtime import egress_net
    except ImportError:
        return
    egress_net.install(EgressPolicy(allow=egress_allowance("127.0.0.0/8", "MFL_EGRESS_ALLOW")))


def webhook(url: str) -> Any:
    from feedbackloop.core.api import Webhook

    return Webhook.model_construct(url=url)  # loopback stands for a receiver's name: the spec would refuse it


def hostile_loop(namespace: str, name: str, url: str, timeout: int) -> dict[str, Any]:
    from tests.operator.test_engine_cycle import loop

    body = loop()
    body["metadata"].update(namespace=namespace, name=name, uid=f"uid-{namespace}-{name}")
    body["spec"]["model"]["initialVersion"] = 1
    body["spec"]["monitoring"]["prometheus"] = {"url": url, "timeout": f"{timeout}s"}
    body["spec"]["monitoring"]["metrics"] = [
        {"name": f"r{i}", "query": f'sum(hostile_{i}{{model="{{{{model}}}}"}})', "min": 0.5} for i in range(5)
    ]
    return body


def rules(timeout: int, hostile: bool, cap: float) -> float:
    from feedbackloop.runtime.engine import Engine, Settings
    from tests.operator.fake_kube import Harness
    from tests.operator.test_engine_cycle import loop

    black_hole = PrometheusServer([], hangs=lambda _q: True)
    victim_prometheus = PrometheusServer([{"metric": {}, "value": [T0, "0.95"]}])
    bed = Harness()
    engine = bed.engine = Engine(bed.kube, Settings(active_reconcile_seconds=5.0))
    for i in range(4 if hostile else 0):
        bed.apply(hostile_loop("hostile", f"h{i}", f"{black_hole.url}/path-{i}", timeout))
    victim = loop()
    victim["spec"]["model"]["initialVersion"] = 1
    victim["spec"]["monitoring"]["prometheus"]["url"] = victim_prometheus.url
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
            return await until(evaluated, cap)
        finally:
            stop.set()
            await cycles
            black_hole.close()
            victim_prometheus.close()
            await asyncio.wait_for(engine.settle(), 60)

    return bed.runner.run(scenario())


def look(timeout: int, hostile: bool, cap: float) -> float:
    from feedbackloop.core.api import validate_spec
    from feedbackloop.runtime import canary_queries
    from feedbackloop.runtime.engine import Engine, Settings
    from feedbackloop.runtime.poller import EndpointKey, LoopQuery
    from tests.operator.fake_kube import Harness
    from tests.operator.test_engine_cycle import loop

    arms = [
        {"metric": {"track": "canary", "version": "2"}, "value": [T0, "100"]},
        {"metric": {"track": "stable", "version": "1"}, "value": [T0, "100"]},
    ]
    shared = PrometheusServer(arms, hangs=lambda query: "hostile_" in query)
    black_hole = PrometheusServer([], hangs=lambda _q: True)
    poller = Engine(Harness().kube, Settings()).observer.poller
    polls = [
        LoopQuery(
            f"hostile-{tenant}/l{n}",
            EndpointKey(f"{(shared if tenant < 2 else black_hole).url}/t{tenant}/p{n}", None, None, False, timeout),
            {"model": f"l{n}", "namespace": f"hostile-{tenant}", "version": "1", "track": "stable"},
            validate_spec(hostile_loop(f"hostile-{tenant}", f"l{n}", "http://x", timeout)["spec"]).monitoring.metrics,
        )
        for tenant in range(4 if hostile else 0)
        for n in range(4)
    ]
    spec = validate_spec(loop()["spec"])
    endpoint = EndpointKey(shared.url, None, None, False, 10.0)

    async def scenario() -> float:
        background = asyncio.create_task(poller.poll(polls, T0))
        await asyncio.sleep(1.0 if hostile else 0)  # the hostile polls hold their slots
        started = time.monotonic()
        try:
            the_look = canary_queries.observe(
                poller.run, endpoint, spec, "team-a", {"currentVersion": 1}, {"version": 2}, T0 + 600
            )
            await asyncio.wait_for(the_look, cap)
            return time.monotonic() - started
        except TimeoutError:
            return float("inf")
        finally:
            shared.close()
            black_hole.close()
            await asyncio.wait_for(background, 60)

    return asyncio.run(scenario())


def notify(hosts: int, dead: bool, cap: float) -> float:
    from feedbackloop.core.phases import Event
    from feedbackloop.runtime.notify import Notifier

    sockets = [socket.create_server(("127.0.0.1", 0), backlog=512) for _ in range(hosts)]
    ports = [s.getsockname()[1] for s in sockets]
    urls = [f"http://127.0.0.1:{ports[n % hosts]}/hook-{n}" for n in range(150)]
    receiver = Receiver()
    event = Event("Warning", "BreachStarted", "accuracy 0.61 < 0.8 for 5m")

    async def scenario() -> float:
        notifier = Notifier()
        run = asyncio.create_task(notifier.run())
        try:
            for n in range(30 if dead else 0):
                loop = {"metadata": {"namespace": "hostile", "name": f"l{n}", "uid": f"u{n}"}}
                notifier.publish(loop, [webhook(u) for u in urls[5 * n : 5 * n + 5]], event, {})
            await asyncio.sleep(0.5)
            victim = {"metadata": {"namespace": "team-a", "name": "churn", "uid": "uid-1"}}
            notifier.publish(victim, [webhook(receiver.url)], event, {})
            return await until(receiver.got.is_set, cap)
        finally:
            run.cancel()
            await asyncio.gather(run, return_exceptions=True)

    try:
        return asyncio.run(scenario())
    finally:
        for s in sockets:
            s.close()
        receiver.close()


def worker(name: str, timeout: int) -> None:
    allow_loopback()
    cap = timeout + 15.0
    runs: dict[str, Callable[[], float]] = {
        "rules alone": lambda: rules(timeout, False, cap),
        "rules": lambda: rules(timeout, True, cap),
        "look alone": lambda: look(timeout, False, cap),
        "look": lambda: look(timeout, True, cap),
        "notify alone": lambda: notify(1, False, 30.0),
        "notify, one host": lambda: notify(1, True, 30.0),
        "notify, 150 hosts": lambda: notify(150, True, 30.0),
    }
    seconds = runs[name]()
    print(json.dumps({"seconds": seconds if seconds != float("inf") else None, "cap": cap}))


# --- the driver ----------------------------------------------------------------------------------------

SCENARIOS = {
    "rules alone": "victim's rule evaluated, no hostile tenant",
    "rules": "victim's rule evaluated, beside 4 black-holed loops (URLs differ in path)",
    "look alone": "victim's canary look, no hostile tenant",
    "look": "victim's canary look, beside 4 tenants' stuck polls",
    "notify alone": "victim's notification delivered, no dead receivers",
    "notify, one host": "victim's notification, beside 150 dead webhooks on one host",
    "notify, 150 hosts": "victim's notification, beside 150 dead webhooks on 150 hosts",
}


def measure(tree: Path, name: str, timeout: int) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree / "operator"), str(tree)])}
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--timeout", str(timeout)]
    done = subprocess.run(command, env=env, cwd=tree, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        return "error: " + (done.stderr.strip().splitlines() or ["?"])[-1][:60]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return f"> {result['cap']:.0f} s" if result["seconds"] is None else f"{result['seconds']:.2f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", default="HEAD", help="the git revision measured as before (default HEAD)")
    parser.add_argument("--timeout", type=int, default=60, help="the hostile's Prometheus timeout, seconds")
    parser.add_argument("--only", nargs="*", choices=list(SCENARIOS), help="these scenarios only")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.timeout)
        return
    with tempfile.TemporaryDirectory(prefix="mfl-fair-before-") as before:
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", args.before, "operator", "tests"], check=True, capture_output=True
        )
        subprocess.run(["tar", "-x", "-C", before], input=archive.stdout, check=True)
        print(f"hostile Prometheus timeout {args.timeout} s; before = {args.before}, after = the working tree\n")
        print(f"{'scenario':<78} {'before':>10} {'after':>10}")
        for name in args.only or SCENARIOS:
            old, new = measure(Path(before), name, args.timeout), measure(ROOT, name, args.timeout)
            print(f"{SCENARIOS[name]:<78} {old:>10} {new:>10}", flush=True)


if __name__ == "__main__":
    main()
