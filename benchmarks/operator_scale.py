"""Operator scale: N loops on one replica against a real control plane and a real Prometheus.

    python benchmarks/operator_scale.py [--sizes 100 1000 2000] [--interval 10] [--window 60]

For each N it prints poll lag p99, poll duration p99, operator RSS, Prometheus queries per poll cycle
and per loop-interval, and apiserver status writes per loop per hour in steady state.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import yaml

from mfl_testbed.controlplane import ControlPlane, ensure_binaries
from mfl_testbed.exporter import TestExporter
from mfl_testbed.fleet import histogram, monitoring_loop, quantile, stop_on_signals
from mfl_testbed.operatorproc import OperatorProcess, install_crd
from mfl_testbed.prometheus import Prometheus

NAMESPACE = "bench"
CLAIM = "mfl-bench"
QUERY = 'sum by (model, namespace) (bench_model_accuracy{model="{{model}}",namespace="{{namespace}}"})'


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def counter(text: str, name: str) -> float:
    """Sum of the samples of `name`, or of one labelled series when `name` carries its labels."""
    if "{" in name:
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + " "))
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + " ") or line.startswith(name + "{")
    )


def main() -> None:
    stop_on_signals()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 2000])
    parser.add_argument("--interval", type=int, default=10, help="monitoring.interval of every loop (s)")
    parser.add_argument(
        "--window",
        type=int,
        default=300,
        help="steady-state measuring window (s); >= the operator's 300 s status refresh",
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mfl-bench-scale-"))
    ensure_binaries(lambda line: print(f"[build] {line}", file=sys.stderr))
    with ControlPlane(work / "cp") as cp, TestExporter() as exporter, Prometheus(work / "prom") as prom:
        prom.add_target(exporter.address, {})
        install_crd(cp)
        cp.kubectl("create", "namespace", NAMESPACE)
        operator = OperatorProcess(cp.kubeconfig, work).start()
        rows, created = [], 0
        try:
            for size in args.sizes:
                rows.append(measure(cp, prom, exporter, operator, created, size, args))
                created = size
        except Exception as error:  # a size that did not settle: the sizes measured before it still count
            print(f"--- stopped at {size} loops: {error}", file=sys.stderr, flush=True)
        finally:
            operator.stop()
    print_table(rows, args)


def measure(cp, prom, exporter, operator, created: int, size: int, args) -> dict:
    print(f"--- {size} loops: creating {size - created} ...", file=sys.stderr, flush=True)
    for i in range(created, size):
        exporter.set("bench_model_accuracy", 0.9, model=f"m{i}", namespace=NAMESPACE)
    manifests = [
        monitoring_loop(f"m{i}", NAMESPACE, prom.url, args.interval, QUERY, CLAIM) for i in range(created, size)
    ]
    for start in range(0, len(manifests), 250):
        cp.kubectl(
            "apply",
            "-f",
            "-",
            input=yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": manifests[start : start + 250]}),
            timeout=300,
        )
    wait_all_polled(cp, size)
    start_jitter(exporter, size)
    time.sleep(args.interval)  # let creation-time writes settle
    text_before = operator.metrics()
    started = time.monotonic()
    time.sleep(args.window)
    text_after = operator.metrics()
    seconds = time.monotonic() - started
    queries = counter(text_after, "mfl_operator_prometheus_queries_total") - counter(
        text_before, "mfl_operator_prometheus_queries_total"
    )
    cycles = counter(text_after, "mfl_operator_poll_cycles_total") - counter(
        text_before, "mfl_operator_poll_cycles_total"
    )
    changes = counter(text_after, 'mfl_operator_status_writes_total{reason="change"}') - counter(
        text_before, 'mfl_operator_status_writes_total{reason="change"}'
    )
    refreshes = counter(text_after, 'mfl_operator_status_writes_total{reason="refresh"}') - counter(
        text_before, 'mfl_operator_status_writes_total{reason="refresh"}'
    )
    lag = quantile(
        histogram(text_before, "mfl_operator_poll_lag_seconds"),
        histogram(text_after, "mfl_operator_poll_lag_seconds"),
        0.99,
    )
    duration = quantile(
        histogram(text_before, "mfl_operator_poll_duration_seconds"),
        histogram(text_after, "mfl_operator_poll_duration_seconds"),
        0.99,
    )
    return {
        "loops": size,
        "lag_p99": lag,
        "poll_p99": duration,
        "rss": rss_mib(operator._process.pid),
        "queries_per_cycle": queries / cycles if cycles else float("nan"),
        "queries_per_interval": queries / seconds * args.interval,
        "changes_per_loop_hour": changes / size * 3600 / seconds,
        "refreshes_per_loop_hour": refreshes / size * 3600 / seconds,
    }


_JITTER: dict[str, object] = {}


def start_jitter(exporter, size: int) -> None:
    """Values move a little every few seconds, as a real model's accuracy does, always above the threshold."""
    import random
    import threading

    _JITTER["size"] = size
    if "thread" in _JITTER:
        return

    def jitter() -> None:
        while True:
            for i in range(int(_JITTER["size"])):  # type: ignore[arg-type]
                exporter.set(
                    "bench_model_accuracy",
                    round(0.9 + random.uniform(-0.02, 0.02), 4),
                    model=f"m{i}",
                    namespace=NAMESPACE,
                )
            time.sleep(5)

    _JITTER["thread"] = threading.Thread(target=jitter, daemon=True)
    _JITTER["thread"].start()  # type: ignore[attr-defined]


def wait_all_polled(cp, size: int, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        items = json.loads(cp.kubectl("get", "mfl", "-n", NAMESPACE, "-o", "json", timeout=120).stdout)["items"]
        polled = sum(1 for item in items if (item.get("status") or {}).get("metrics"))
        print(f"    {polled}/{size} loops polled", file=sys.stderr, flush=True)
        if polled >= size:
            return
        time.sleep(5)
    raise TimeoutError(f"only {polled} of {size} loops were polled in {timeout:.0f}s")


def print_table(rows: list[dict], args) -> None:
    print(
        f"\nOperator scale (one replica, interval {args.interval}s, steady-state window {args.window}s, "
        "one PromQL template shared by all loops)"
    )
    header = (
        f"{'loops':>6} | {'poll lag p99 (s)':>16} | {'poll p99 (s)':>12} | {'RSS (MiB)':>9} | "
        f"{'queries/cycle':>13} | {'queries/interval':>16} | {'change writes/loop/h':>20} | "
        f"{'refresh writes/loop/h':>21}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['loops']:>6} | {r['lag_p99']:>16.3f} | {r['poll_p99']:>12.3f} | {r['rss']:>9.0f} | "
            f"{r['queries_per_cycle']:>13.2f} | {r['queries_per_interval']:>16.2f} | "
            f"{r['changes_per_loop_hour']:>20.2f} | {r['refreshes_per_loop_hour']:>21.2f}"
        )
    print(
        "Steady state: every value jitters inside its threshold (no state change). Change writes follow a state "
        "change (breach, recovery, ...); refresh writes carry new live values at most every "
        "MFL_STATUS_REFRESH_SECONDS (300 s), so <= 12 per loop per hour by design."
    )


if __name__ == "__main__":
    main()
