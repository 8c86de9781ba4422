"""Hostile tenants: do 100 healthy loops notice a neighbour with a black-hole Prometheus and one with a
pathological spec? Against a real control plane, a real Prometheus and the operator as a process.

    python benchmarks/hostile_tenants.py [--loops 100] [--interval 5] [--window 60]

Two phases on the same operator: the healthy loops alone, then the same with (a) a loop whose Prometheus
accepts connections and never answers (queries wait out the 60 s maximum timeout) and (b) loops whose
specs the API server accepts but cannot work (a zero interval, a misspelt placeholder). For the healthy
loops it prints how old their last sample in status is (staleness: what a user sees), and the fleet's
poll lag, side by side.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import yaml
from operator_scale import NAMESPACE, counter, histogram, loop, quantile, start_jitter

from mfl_testbed.controlplane import ControlPlane, ensure_binaries
from mfl_testbed.exporter import TestExporter
from mfl_testbed.operatorproc import OperatorProcess, install_crd
from mfl_testbed.prometheus import Prometheus


class BlackHole:
    """A TCP server that accepts every connection and never answers."""

    def __init__(self) -> None:
        self.socket = socket.create_server(("127.0.0.1", 0))
        self.port = self.socket.getsockname()[1]
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            connection, _ = self.socket.accept()
            self.held.append(connection)


def hostile_loops(black_hole: BlackHole, interval: int) -> list[dict]:
    slow = loop("hostile-blackhole", f"http://127.0.0.1:{black_hole.port}", interval)
    slow["spec"]["monitoring"]["prometheus"]["timeout"] = "60s"
    zero = loop("hostile-zero-interval", "http://127.0.0.1:1", interval)
    zero["spec"]["monitoring"]["interval"] = "0s"
    misspelt = loop("hostile-placeholder", "http://127.0.0.1:1", interval)
    misspelt["spec"]["monitoring"]["metrics"][0]["query"] = 'x{model="{{modle}}"}'
    return [slow, zero, misspelt]


def staleness(cp: ControlPlane, names: set[str]) -> list[float]:
    """Seconds since each healthy loop's last sample, as its status shows it now."""
    items = json.loads(cp.kubectl("get", "mfl", "-n", NAMESPACE, "-o", "json", timeout=120).stdout)["items"]
    now = time.time()
    ages = []
    for item in items:
        if item["metadata"]["name"] not in names:
            continue
        sampled = ((item.get("status") or {}).get("metrics") or [{}])[0].get("sampleTime")
        if sampled:
            ages.append(now - datetime.fromisoformat(sampled.replace("Z", "+00:00")).timestamp())
    return ages


def measure(cp: ControlPlane, operator: OperatorProcess, names: set[str], window: int) -> dict[str, float]:
    before = operator.metrics()
    ages: list[float] = []
    deadline = time.monotonic() + window
    while time.monotonic() < deadline:
        ages += staleness(cp, names)
        time.sleep(2)
    after = operator.metrics()
    ages.sort()
    lag = "mfl_operator_poll_lag_seconds"
    return {
        "stale_p50": statistics.median(ages),
        "stale_p99": ages[int(0.99 * (len(ages) - 1))],
        "lag_p99": quantile(histogram(before, lag), histogram(after, lag), 0.99),
        "reconcile_errors": counter(after, "mfl_operator_reconcile_errors_total")
        - counter(before, "mfl_operator_reconcile_errors_total"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loops", type=int, default=100)
    parser.add_argument("--interval", type=int, default=5, help="monitoring.interval of every loop (s)")
    parser.add_argument("--window", type=int, default=60, help="measuring window per phase (s)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mfl-bench-hostile-"))
    ensure_binaries(lambda line: print(f"[build] {line}", file=sys.stderr))
    black_hole = BlackHole()
    names = {f"m{i}" for i in range(args.loops)}
    # Values are written to status every 2 s (instead of 5 min), so that status shows how fresh they are.
    env = {"MFL_STATUS_REFRESH_SECONDS": "2"}
    with ControlPlane(work / "cp") as cp, TestExporter() as exporter, Prometheus(work / "prom") as prom:
        prom.add_target(exporter.address, {})
        install_crd(cp)
        cp.kubectl("create", "namespace", NAMESPACE)
        operator = OperatorProcess(cp.kubeconfig, work, env=env).start()
        try:
            for name in sorted(names):
                exporter.set("bench_model_accuracy", 0.9, model=name, namespace=NAMESPACE)
            healthy = [loop(name, prom.url, args.interval) for name in sorted(names)]
            apply(cp, healthy)
            start_jitter(exporter, args.loops)  # values move every 5 s, so each refresh writes a new sample time
            time.sleep(3 * args.interval)
            print("--- the healthy loops alone", file=sys.stderr, flush=True)
            alone = measure(cp, operator, names, args.window)
            apply(cp, hostile_loops(black_hole, args.interval))
            time.sleep(args.interval)
            print("--- beside a black-hole Prometheus and two broken specs", file=sys.stderr, flush=True)
            beside = measure(cp, operator, names, args.window)
            phases = {
                i["metadata"]["name"]: (i.get("status") or {}).get("phase", "-")
                for i in json.loads(cp.kubectl("get", "mfl", "-n", NAMESPACE, "-o", "json").stdout)["items"]
                if i["metadata"]["name"].startswith("hostile")
            }
        finally:
            operator.stop()
    print(f"\nHostile tenants ({args.loops} healthy loops, interval {args.interval}s, window {args.window}s each)")
    header = f"{'':<44} | {'alone':>8} | {'beside hostile':>14} | {'ratio':>6}"
    print(header)
    print("-" * len(header))
    for key, label in (
        ("stale_p50", "healthy loops' sample age in status p50 (s)"),
        ("stale_p99", "healthy loops' sample age in status p99 (s)"),
        ("lag_p99", "fleet poll lag p99 (s)"),
    ):
        print(f"{label:<44} | {alone[key]:>8.2f} | {beside[key]:>14.2f} | {beside[key] / alone[key]:>6.2f}")
    print(f"{'reconcile errors':<44} | {alone['reconcile_errors']:>8.0f} | {beside['reconcile_errors']:>14.0f} |")
    print("hostile loops: " + ", ".join(f"{name} {phase}" for name, phase in sorted(phases.items())))


def apply(cp: ControlPlane, manifests: list[dict]) -> None:
    document = yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": manifests})
    cp.kubectl("apply", "-f", "-", input=document, timeout=300)


if __name__ == "__main__":
    main()
