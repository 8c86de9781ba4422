"""Detection latency: from a breach being visible in Prometheus to the retraining Job existing.

    python benchmarks/detection_latency.py [--trials 8] [--intervals 2 10]

A real control plane, a real Prometheus scraping a test exporter, the operator as a process. Each trial
makes a fresh loop whose accuracy metric drops below its threshold at once; the clock starts when a
Prometheus query first returns the low value and stops when the API server first lists the Job.
Expected: about one polling interval (the poll grid) plus `for`, plus a few hundred ms of work.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

from mfl_testbed.controlplane import ControlPlane, ensure_binaries
from mfl_testbed.exporter import TestExporter
from mfl_testbed.fleet import monitoring_loop, stop_on_signals
from mfl_testbed.operatorproc import OperatorProcess, install_crd
from mfl_testbed.prometheus import Prometheus

NAMESPACE = "latency"
PHASES = random.Random(7)
QUERY = 'sum by (model, namespace) (bench_accuracy{model="{{model}}",namespace="{{namespace}}"})'


def loop(name: str, prometheus_url: str, interval: int, for_: str) -> dict:
    retraining = {"features": ["x0"], "target": "label", "cooldown": "1h"}
    return monitoring_loop(name, NAMESPACE, prometheus_url, interval, QUERY, "mfl-lat", for_, retraining)


def wait(predicate, timeout: float, step: float = 0.02) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return time.monotonic()
        time.sleep(step)
    raise TimeoutError("condition not reached")


def trial(cp, prom, exporter, name: str, interval: int, for_: str) -> float:
    exporter.set("bench_accuracy", 0.95, model=name, namespace=NAMESPACE)
    cp.kubectl("apply", "-f", "-", input=yaml.safe_dump(loop(name, prom.url, interval, for_)))

    def polled_healthy() -> bool:
        status = cp.api("GET", f"/apis/feedbackloop.dev/v1alpha1/namespaces/{NAMESPACE}/modelfeedbackloops/{name}")
        return ((status.get("status") or {}).get("metrics") or [{}])[0].get("state") == "Healthy"

    wait(polled_healthy, 120, 0.2)
    time.sleep(PHASES.uniform(0, interval))  # land the drop anywhere on the poll grid
    exporter.set("bench_accuracy", 0.5, model=name, namespace=NAMESPACE)
    visible = wait(lambda: prom.query_values(f'bench_accuracy{{model="{name}",namespace="{NAMESPACE}"}}') == [0.5], 60)
    jobs = f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs"
    created = wait(
        lambda: any(j["metadata"]["name"].startswith(f"{name}-train-") for j in cp.api("GET", jobs)["items"]), 120
    )
    return created - visible


def main() -> None:
    stop_on_signals()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--intervals", type=int, nargs="+", default=[2, 10])
    parser.add_argument("--fors", nargs="+", default=["0s", "10s"])
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mfl-bench-latency-"))
    ensure_binaries(lambda line: print(f"[build] {line}", file=sys.stderr))
    rows = []
    with ControlPlane(work / "cp") as cp, TestExporter() as exporter, Prometheus(work / "prom") as prom:
        prom.add_target(exporter.address, {})
        install_crd(cp)
        cp.kubectl("create", "namespace", NAMESPACE)
        operator = OperatorProcess(cp.kubeconfig, work).start()
        try:
            for interval in args.intervals:
                for for_ in args.fors:
                    latencies = []
                    for i in range(args.trials):
                        name = f"l{interval}-{for_.replace('s', '')}-{i}"
                        latencies.append(trial(cp, prom, exporter, name, interval, for_))
                        print(
                            f"  interval {interval}s for {for_}: trial {i + 1}: {latencies[-1]:.2f}s",
                            file=sys.stderr,
                            flush=True,
                        )
                    rows.append((interval, for_, latencies))
        finally:
            operator.stop()
    print(
        "\nDetection latency: breach visible in Prometheus -> retraining Job exists "
        f"({args.trials} trials each; the drop lands at an arbitrary point of the poll grid)"
    )
    header = f"{'interval':>8} | {'for':>4} | {'min (s)':>7} | {'p50 (s)':>7} | {'max (s)':>7} | {'bound (s)':>9}"
    print(header)
    print("-" * len(header))
    for interval, for_, latencies in rows:
        bound = interval + math.ceil(float(for_.rstrip("s")) / interval) * interval
        print(
            f"{interval:>7}s | {for_:>4} | {min(latencies):>7.2f} | {statistics.median(latencies):>7.2f} | "
            f"{max(latencies):>7.2f} | "
            f"{bound:>9.0f}"
        )
    print(
        "bound = the first poll after the drop (<= interval) + `for` rounded up to whole polls; "
        "the rest is query, reconcile and the Job create"
    )


if __name__ == "__main__":
    main()
