"""Fleet sharding: N loops over R sharded operator replicas against a real control plane and a real Prometheus.

    python benchmarks/fleet_shards.py [--loops 2000] [--replicas 1 2 4] [--rebalance 4]
                                      [--interval 10] [--window 60]
    python benchmarks/fleet_shards.py --loops 20000 --replicas 10        # a big machine

Every replica is a host process (`mfl-operator`, MFL_SHARDING=true, its own POD_NAME and metrics port) on the
same control plane (etcd + kube-apiserver, no kubelet); the loops query a real Prometheus scraping a test
exporter, as benchmarks/operator_scale.py does. For each (N, R), from unlabelled loops and fresh replicas:

- assigned: seconds from launching the replicas until every loop carries the shard label of a live replica
  and no drain is in flight (read through the API);
- over a steady window: poll lag p99 (max over replicas), RSS (max), CPU (the coordinator's replica, and the
  busiest other one), status writes/s the API server answered, loops per replica (min/max of the labels),
  loops the engines know (sum over replicas: N when no replica keeps a loop it does not own), and the API
  server's LIST requests of the loops (the coordinator's round lists them all every 2 s) with their mean time.

Then, on R = --rebalance replicas: SIGKILL one replica that does not lead -> seconds until none of its loops is
labelled for it any more (all owned by live replicas); then launch one more replica -> seconds until every
replica is within the cap (ceil(1.25 N / R)) with no drain in flight, seconds until the moves stop, and how
many loops moved. Every process this script starts ends with it (on errors and on Ctrl-C too).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

from mfl_testbed.controlplane import ControlPlane, ensure_binaries
from mfl_testbed.exporter import TestExporter
from mfl_testbed.fleet import histogram, monitoring_loop, quantile, stop_on_signals
from mfl_testbed.netutil import http_request
from mfl_testbed.operatorproc import OperatorProcess, install_crd, sharded_env
from mfl_testbed.prometheus import Prometheus

NAMESPACE = "bench"
CLAIM = "mfl-bench"
OPERATOR_NAMESPACE = "mfl-system"  # the replicas' Leases and the leader's
SHARD_LABEL = "feedbackloop.dev/shard"
DRAIN_LABEL = "feedbackloop.dev/shard-drain"
LEADER_LEASE = "feedbackloop-operator"
LOAD_FACTOR = 1.25  # core/sharding.py's cap: ceil(1.25 * loops / replicas)
QUERY = 'sum by (model, namespace) (bench_model_accuracy{model="{{model}}",namespace="{{namespace}}"})'
LOOPS_PATH = f"/apis/feedbackloop.dev/v1alpha1/namespaces/{NAMESPACE}/modelfeedbackloops"
METADATA_ONLY = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
STARTED_PIDS: list[int] = []  # every replica process this module started (the smoke test checks they ended)


def progress(line: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)


# ---- Prometheus text ------------------------------------------------------------------------------------


def samples(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if not (line.startswith(name + "{") or line.startswith(name + " ")):
            continue
        head = line.rsplit(" ", 1)[0]
        if all(f'{key}="{value}"' in head for key, value in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def cpu_seconds(pid: int | None) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


# ---- the fleet ------------------------------------------------------------------------------------------


class Fleet:
    """The replicas, the control plane's API as the benchmark reads it, and clean-up."""

    def __init__(self, cp: ControlPlane, work: Path) -> None:
        self.cp, self.work = cp, work
        self.replicas: dict[str, OperatorProcess] = {}
        self.next_index = 0
        self.all_started: list[OperatorProcess] = []
        self.restarts: dict[str, int] = {}  # identity -> times it exited on its own and was started again

    # -- API --
    def _get(self, path: str, accept: str = "application/json", timeout: float = 60.0) -> bytes:
        headers = {**self.cp._auth_headers(), "Accept": accept}
        status, body = http_request(self.cp.server + path, headers=headers, timeout=timeout, context=self.cp._tls)
        if status >= 400:
            raise RuntimeError(f"GET {path} -> {status}: {body[:300]!r}")
        return body

    def labels(self) -> dict[str, dict[str, str]]:
        """name -> labels of every loop (metadata only)."""
        items = json.loads(self._get(LOOPS_PATH, METADATA_ONLY))["items"]
        return {item["metadata"]["name"]: dict(item["metadata"].get("labels") or {}) for item in items}

    def apiserver_metrics(self) -> str:
        return self._get("/metrics", "text/plain").decode()

    def leader(self) -> str | None:
        try:
            lease = json.loads(
                self._get(f"/apis/coordination.k8s.io/v1/namespaces/{OPERATOR_NAMESPACE}/leases/{LEADER_LEASE}")
            )
        except RuntimeError:
            return None
        return (lease.get("spec") or {}).get("holderIdentity")

    def unlabel_all(self) -> None:
        """Remove both shard labels from every loop (a fresh start for the next fleet)."""
        names = [name for name, labels in self.labels().items() if SHARD_LABEL in labels or DRAIN_LABEL in labels]
        body = {"metadata": {"labels": {SHARD_LABEL: None, DRAIN_LABEL: None}}}

        def patch(name: str) -> None:
            self.cp.api("PATCH", f"{LOOPS_PATH}/{name}", body, content_type="application/merge-patch+json")

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(patch, names))

    def delete_leases(self) -> None:
        self.cp.kubectl("delete", "leases", "--all", "-n", OPERATOR_NAMESPACE, "--wait=false", check=False)

    # -- replicas --
    def launch(self, count: int) -> list[OperatorProcess]:
        started = []
        for _ in range(count):
            identity = f"mfl-{self.next_index}"
            self.next_index += 1
            replica = OperatorProcess(
                self.cp.kubeconfig,
                self.work,
                env={**sharded_env(identity, OPERATOR_NAMESPACE), "MFL_WATCH_NAMESPACES": NAMESPACE},
                name=identity,
            ).launch()
            self.replicas[identity] = replica
            self.all_started.append(replica)
            STARTED_PIDS.append(replica.pid or 0)
            started.append(replica)
        for replica in started:
            replica.wait_healthy(120)
        return started

    def live(self) -> dict[str, OperatorProcess]:
        return {identity: r for identity, r in self.replicas.items() if r.running}

    def check_alive(self) -> None:
        """A replica that exited on its own (it lost its Lease: it exits by design) starts again, as its Pod
        would; the restarts are counted and reported."""
        for identity, replica in self.replicas.items():
            if not replica.running:
                last = [line for line in replica.log_tail(40).splitlines() if "CRITICAL" in line or "Error" in line]
                progress(f"    replica {identity} exited ({(last or ['?'])[-1][:160]}); restarting it")
                self.restarts[identity] = self.restarts.get(identity, 0) + 1
                if self.restarts[identity] > 5:
                    raise RuntimeError(f"replica {identity} keeps exiting:\n{replica.log_tail()}")
                replica.stop()
                replica.launch()
                STARTED_PIDS.append(replica.pid or 0)
                replica.wait_healthy(120)

    def stop_all(self) -> None:
        for replica in self.all_started:
            try:
                replica.stop()
            except Exception as error:  # keep stopping the others
                print(f"stopping {replica.name}: {error}", file=sys.stderr)
        self.replicas.clear()

    def metrics(self) -> dict[str, str]:
        """Each live replica's /metrics ("" from one that does not answer: it is just restarting)."""
        texts = {}
        for identity, replica in self.live().items():
            try:
                texts[identity] = replica.metrics()
            except OSError:
                texts[identity] = ""
        return texts


def count_by_shard(labels: dict[str, dict[str, str]]) -> tuple[Counter, int, int]:
    """(loops per shard label, unlabelled loops, loops with a drain in flight)."""
    shards = Counter(lbl.get(SHARD_LABEL) for lbl in labels.values() if lbl.get(SHARD_LABEL))
    unlabelled = sum(1 for lbl in labels.values() if not lbl.get(SHARD_LABEL))
    draining = sum(1 for lbl in labels.values() if lbl.get(DRAIN_LABEL))
    return shards, unlabelled, draining


def wait(what: str, check, timeout: float, every: float = 1.0) -> float:
    """Seconds until `check()` (which returns (done, progress line)) holds; raise TimeoutError after `timeout`."""
    started = time.monotonic()
    last_print = 0.0
    while True:
        done, line = check()
        elapsed = time.monotonic() - started
        if done:
            progress(f"    {what}: {line} after {elapsed:.1f}s")
            return elapsed
        if elapsed > timeout:
            raise TimeoutError(f"{what}: not done in {timeout:.0f}s ({line})")
        if time.monotonic() - last_print >= 5:
            progress(f"    {what}: {line} ({elapsed:.0f}s)")
            last_print = time.monotonic()
        time.sleep(every)


# ---- measurements ---------------------------------------------------------------------------------------


def create_loops(cp: ControlPlane, exporter: TestExporter, prom: Prometheus, have: int, want: int, interval: int):
    progress(f"creating loops {have}..{want - 1} ...")
    for i in range(have, want):
        exporter.set("bench_model_accuracy", 0.9, model=f"m{i}", namespace=NAMESPACE)
    manifests = [monitoring_loop(f"m{i}", NAMESPACE, prom.url, interval, QUERY, CLAIM) for i in range(have, want)]
    for start in range(0, len(manifests), 250):
        cp.kubectl(
            "apply",
            "-f",
            "-",
            input=yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": manifests[start : start + 250]}),
            timeout=300,
        )
        progress(f"    {min(have + start + 250, want)}/{want} loops created")


def measure(fleet: Fleet, size: int, replicas: int, args) -> dict[str, Any]:
    progress(f"--- {size} loops over {replicas} replica(s): resetting labels and Leases ...")
    fleet.stop_all()
    fleet.restarts.clear()
    fleet.delete_leases()
    fleet.unlabel_all()
    progress(f"    launching {replicas} replica(s) ...")
    api_start = fleet.apiserver_metrics()
    started = time.monotonic()
    fleet.launch(replicas)
    bound = math.ceil(LOAD_FACTOR * size / replicas)

    def assigned() -> tuple[bool, str]:
        fleet.check_alive()
        shards, unlabelled, draining = count_by_shard(fleet.labels())
        live = set(fleet.live())
        owned = sum(n for r, n in shards.items() if r in live)
        return owned == size and not draining, f"{owned}/{size} assigned, {draining} draining"

    wait("waiting for assignment", assigned, args.timeout)
    assigned_seconds = time.monotonic() - started

    def balanced() -> tuple[bool, str]:
        fleet.check_alive()
        shards, unlabelled, draining = count_by_shard(fleet.labels())
        counts = sorted(shards.get(i, 0) for i in fleet.live())
        ok = not unlabelled and not draining and max(counts) <= bound
        return ok, f"loops per replica {counts} (cap {bound}), {draining} draining"

    wait("waiting for balance", balanced, args.timeout)
    balanced_seconds = time.monotonic() - started
    api_balanced = fleet.apiserver_metrics()
    label_patches = {"verb": "PATCH", "resource": "modelfeedbackloops", "subresource": ""}
    patches = apiserver_count(api_balanced, **label_patches) - apiserver_count(api_start, **label_patches)
    patch_seconds = samples(api_balanced, "apiserver_request_duration_seconds_sum", **label_patches) - samples(
        api_start, "apiserver_request_duration_seconds_sum", **label_patches
    )
    progress(
        f"    assigned in {assigned_seconds:.1f}s, balanced in {balanced_seconds:.1f}s "
        f"({patches:.0f} label PATCHes); settling {args.settle}s ..."
    )
    time.sleep(args.settle)
    leader = fleet.leader()
    before = fleet.metrics()
    api_before = fleet.apiserver_metrics()
    cpu_before = {i: cpu_seconds(r.pid) for i, r in fleet.live().items()}
    t0 = time.monotonic()
    progress(f"    steady window {args.window}s (leader {leader}) ...")
    time.sleep(args.window)
    after = fleet.metrics()
    api_after = fleet.apiserver_metrics()
    cpu_after = {i: cpu_seconds(r.pid) for i, r in fleet.live().items()}
    seconds = time.monotonic() - t0
    fleet.check_alive()
    shards, _, _ = count_by_shard(fleet.labels())
    known = probes(fleet)
    lags = [
        quantile(
            histogram(before.get(i, ""), "mfl_operator_poll_lag_seconds"),
            histogram(after[i], "mfl_operator_poll_lag_seconds"),
            0.99,
        )
        for i in after
    ]
    cpu = {i: (cpu_after[i] - cpu_before.get(i, math.nan)) / seconds * 100 for i in cpu_after}
    status_writes = {
        "api": apiserver_count(api_after, verb="PATCH", resource="modelfeedbackloops", subresource="status")
        - apiserver_count(api_before, verb="PATCH", resource="modelfeedbackloops", subresource="status"),
        "operators": sum(samples(after[i], "mfl_operator_status_writes_total") for i in after)
        - sum(samples(before[i], "mfl_operator_status_writes_total") for i in before),
    }
    lists = apiserver_count(api_after, verb="LIST", resource="modelfeedbackloops") - apiserver_count(
        api_before, verb="LIST", resource="modelfeedbackloops"
    )
    list_seconds = apiserver_sum(api_after, verb="LIST", resource="modelfeedbackloops") - apiserver_sum(
        api_before, verb="LIST", resource="modelfeedbackloops"
    )
    return {
        "loops": size,
        "replicas": replicas,
        "assigned_s": assigned_seconds,
        "balanced_s": balanced_seconds,
        "patches": patches,
        "patch_ms": patch_seconds / patches * 1000 if patches else float("nan"),
        "patch_rate": patches / balanced_seconds,
        "lag_p99": max(lags) if lags else float("nan"),
        "rss": max(r.rss_mib() for r in fleet.live().values()),
        "cpu_leader": cpu.get(leader or "", float("nan")),
        "cpu_other": max((v for i, v in cpu.items() if i != leader), default=float("nan")),
        "writes_s": status_writes["api"] / seconds,
        "op_writes_s": status_writes["operators"] / seconds,
        "min_loops": min((shards.get(i, 0) for i in fleet.live()), default=0),
        "max_loops": max((shards.get(i, 0) for i in fleet.live()), default=0),
        "known": sum(known.values()),
        "lists_s": lists / seconds,
        "list_ms": list_seconds / lists * 1000 if lists else float("nan"),
        "leader": leader,
        "restarts": sum(fleet.restarts.values()),
    }


def probes(fleet: Fleet) -> dict[str, int]:
    """Loops each live replica's engine knows (its liveness probe)."""
    known = {}
    for identity, replica in fleet.live().items():
        try:
            known[identity] = int(replica.probes().get("loops", 0))
        except (OSError, ValueError):
            known[identity] = -1
    return known


def apiserver_count(text: str, **labels: str) -> float:
    return samples(text, "apiserver_request_total", **labels)


def apiserver_sum(text: str, **labels: str) -> float:
    return samples(text, "apiserver_request_duration_seconds_sum", **labels)


def rebalance(fleet: Fleet, size: int, args) -> dict[str, Any]:
    live = fleet.live()
    leader = fleet.leader()
    victim = sorted((i for i in live if i != leader), key=lambda i: int(i.split("-")[1]))[-1:]
    if not victim:
        raise RuntimeError("the rebalance needs at least two replicas (one that does not lead)")
    victim_id = victim[0]
    before = fleet.labels()
    victims_loops = {n for n, lbl in before.items() if lbl.get(SHARD_LABEL) == victim_id}
    progress(f"--- rebalance: SIGKILL {victim_id} ({len(victims_loops)} loops; leader {leader}) ...")
    moves_before = fleet.replicas[leader].metrics() if leader in live else ""
    started = time.monotonic()
    fleet.replicas[victim_id].kill()
    del fleet.replicas[victim_id]

    def taken() -> tuple[bool, str]:
        fleet.check_alive()
        labels = fleet.labels()
        alive = set(fleet.live())
        left = sum(1 for n in victims_loops if labels[n].get(SHARD_LABEL) not in alive)
        return left == 0, f"{len(victims_loops) - left}/{len(victims_loops)} of its loops re-owned"

    failover_s = wait("waiting for the dead replica's loops", taken, args.timeout, every=0.5)
    after_kill = fleet.labels()
    kill_moved = sum(1 for n in before if before[n].get(SHARD_LABEL) != after_kill[n].get(SHARD_LABEL))
    # let the survivors settle (a kill can leave them over the cap briefly? the plan assigns within it)
    survivors = len(fleet.live())
    shards, _, _ = count_by_shard(after_kill)
    after_kill_max = max(shards.values())

    progress("    launching one more replica ...")
    started = time.monotonic()
    (joined,) = fleet.launch(1)
    replicas = len(fleet.live())
    bound = math.ceil(LOAD_FACTOR * size / replicas)

    def balanced() -> tuple[bool, str]:
        fleet.check_alive()
        shards, unlabelled, draining = count_by_shard(fleet.labels())
        counts = [shards.get(i, 0) for i in fleet.live()]
        ok = not unlabelled and not draining and max(counts) <= bound and shards.get(joined.name, 0) > 0
        return ok, f"loops per replica {sorted(counts)} (cap {bound}), {draining} draining"

    balanced_s = wait("waiting for balance", balanced, args.timeout, every=0.5)
    state = {"labels": fleet.labels(), "since": time.monotonic()}

    def quiet() -> tuple[bool, str]:
        fleet.check_alive()
        labels = fleet.labels()
        if labels != state["labels"] or any(lbl.get(DRAIN_LABEL) for lbl in labels.values()):
            state.update(labels=labels, since=time.monotonic())
        still = time.monotonic() - state["since"]
        return still >= args.quiet, f"labels unchanged for {still:.0f}s"

    wait("waiting for the moves to stop", quiet, args.timeout, every=1.0)
    settled_s = state["since"] - started
    final = state["labels"]
    join_moved = sum(1 for n in after_kill if after_kill[n].get(SHARD_LABEL) != final[n].get(SHARD_LABEL))
    shards, _, _ = count_by_shard(final)
    leader_now = fleet.leader()
    moves_after = fleet.replicas[leader_now].metrics() if leader_now in fleet.replicas else ""
    moves_counted = {
        reason: samples(moves_after, "mfl_shard_moves_total", reason=reason)
        - samples(moves_before, "mfl_shard_moves_total", reason=reason)
        for reason in ("unassigned", "taken", "over_cap", "rebalance")
    }
    time.sleep(2)
    known = probes(fleet)
    return {
        "loops": size,
        "victim": victim_id,
        "victim_loops": len(victims_loops),
        "failover_s": failover_s,
        "kill_moved": kill_moved,
        "survivors": survivors,
        "after_kill_max": after_kill_max,
        "survivor_cap": math.ceil(LOAD_FACTOR * size / survivors),
        "joined": joined.name,
        "replicas": replicas,
        "cap": bound,
        "balanced_s": balanced_s,
        "settled_s": settled_s,
        "join_moved": join_moved,
        "joined_loops": shards.get(joined.name, 0),
        "final": {i: shards.get(i, 0) for i in sorted(fleet.live())},
        "moves_counted": moves_counted if leader_now == leader else {},
        "known": sum(known.values()),
        "known_by": known,
        "restarts": dict(fleet.restarts),
    }


# ---- output ---------------------------------------------------------------------------------------------


def print_tables(rows: list[dict], moves: list[dict], args) -> None:
    print(
        f"\nFleet sharding (interval {args.interval}s, steady window {args.window}s after {args.settle}s settling; "
        "each row starts from unlabelled loops and fresh replicas)"
    )
    header = (
        f"{'loops':>6} | {'replicas':>8} | {'assigned (s)':>12} | {'balanced (s)':>12} | "
        f"{'label PATCHes (/s, ms)':>22} | {'lag p99 max (s)':>15} | {'RSS max (MiB)':>13} | "
        f"{'CPU % leader/other':>18} | {'status writes/s':>15} | {'loops/replica min..max':>22} | "
        f"{'engines know':>12} | {'loop LISTs/s (ms)':>17} | {'restarts':>8}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        cpu = f"{r['cpu_leader']:.0f}/{r['cpu_other']:.0f}" if r["replicas"] > 1 else f"{r['cpu_leader']:.0f}/-"
        print(
            f"{r['loops']:>6} | {r['replicas']:>8} | {r['assigned_s']:>12.1f} | {r['balanced_s']:>12.1f} | "
            f"{r['patches']:>6.0f} ({r['patch_rate']:>5.1f}, {r['patch_ms']:>5.0f}) | {r['lag_p99']:>15.3f} | "
            f"{r['rss']:>13.0f} | {cpu:>18} | {r['writes_s']:>15.2f} | "
            f"{str(r['min_loops']) + '..' + str(r['max_loops']):>22} | {r['known']:>12} | "
            f"{r['lists_s']:>8.2f} ({r['list_ms']:>6.0f}) | {r['restarts']:>8}"
        )
    print(
        "assigned: launch of the replicas -> every loop labelled for a live replica, no drain in flight; balanced: "
        "and every replica within the cap ceil(1.25 N/R). label PATCHes: the coordinator's and the acks' writes "
        "of loop labels until balanced (rate, and mean time the API server spent on one). "
        "status writes/s: PATCHes of modelfeedbackloops/status the API server answered. engines know: loops in the "
        "replicas' engines, summed (= loops when none keeps a loop it does not own). loop LISTs/s (ms): the API "
        "server's LIST requests of the loops and their mean duration (the coordinator lists every loop each round). "
        "restarts: replicas that exited on their own (a lost Lease) and were started again, as a Pod would be."
    )
    for m in moves:
        print(f"\nRebalance ({m['loops']} loops, {m['replicas'] - 1} replicas, then one more)")
        print(
            f"  SIGKILL {m['victim']} ({m['victim_loops']} loops): all its loops owned by live replicas after "
            f"{m['failover_s']:.1f}s; {m['kill_moved']} loops relabelled; busiest survivor {m['after_kill_max']} "
            f"(cap for {m['survivors']}: {m['survivor_cap']})"
        )
        print(
            f"  join {m['joined']}: every replica within the cap ({m['cap']}) after {m['balanced_s']:.1f}s; moves "
            f"stopped after {m['settled_s']:.1f}s; {m['join_moved']} loops moved ({m['joined_loops']} to "
            f"{m['joined']}); coordinator's mfl_shard_moves_total since the kill: "
            + ", ".join(f"{k} +{v:.0f}" for k, v in m["moves_counted"].items())
        )
        print(f"  loops per replica now: {m['final']}; engines know {m['known']} loops {m['known_by']}")
        if m["restarts"]:
            print(f"  replicas that exited on their own and were restarted: {m['restarts']}")


def main(argv: Sequence[str] | None = None) -> tuple[list[dict], list[dict]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loops", type=int, nargs="+", default=[2000], help="loop counts N (ascending)")
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2, 4], help="replica counts R")
    parser.add_argument(
        "--rebalance",
        type=int,
        default=None,
        help="replicas of the kill/join run on the largest N (default: the largest R if >= 2; 0: none)",
    )
    parser.add_argument("--interval", type=int, default=10, help="monitoring.interval of every loop (s)")
    parser.add_argument("--window", type=int, default=60, help="steady-state measuring window (s)")
    parser.add_argument("--settle", type=int, default=20, help="seconds after assignment before the window")
    parser.add_argument("--quiet", type=int, default=10, help="labels unchanged this long: the moves stopped (s)")
    parser.add_argument("--timeout", type=float, default=600, help="for each wait (s)")
    args = parser.parse_args(argv)
    if args.rebalance is None:
        args.rebalance = max(args.replicas) if max(args.replicas) >= 2 else 0
    sizes = sorted(args.loops)

    stop_on_signals()
    work = Path(tempfile.mkdtemp(prefix="mfl-bench-shards-"))
    progress(f"work directory {work}")
    ensure_binaries(lambda line: print(f"[build] {line}", file=sys.stderr))
    rows: list[dict] = []
    moves: list[dict] = []
    with ControlPlane(work / "cp") as cp, TestExporter() as exporter, Prometheus(work / "prom") as prom:
        prom.add_target(exporter.address, {})
        install_crd(cp)
        cp.kubectl("create", "namespace", NAMESPACE)
        cp.kubectl("create", "namespace", OPERATOR_NAMESPACE)
        fleet = Fleet(cp, work)
        try:
            created = 0
            for size in sizes:
                create_loops(cp, exporter, prom, created, size, args.interval)
                created = size
                for replicas in args.replicas:
                    rows.append(measure(fleet, size, replicas, args))
                if size == sizes[-1] and args.rebalance >= 2:
                    if args.rebalance != args.replicas[-1]:
                        measure(fleet, size, args.rebalance, args)
                    moves.append(rebalance(fleet, size, args))
        except KeyboardInterrupt:
            progress("interrupted: stopping every process")
            raise
        except Exception:
            print_tables(rows, moves, args)  # what was measured so far
            for identity, replica in fleet.replicas.items():
                print(f"--- {identity} log tail:\n{replica.log_tail(30)}", file=sys.stderr)
            raise
        finally:
            fleet.stop_all()
    print_tables(rows, moves, args)
    return rows, moves


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
