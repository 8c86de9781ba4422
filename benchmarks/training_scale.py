"""How the trainer scales with the base-data size (default estimator, 20 numeric features), and the Job
engine against the Dask engine on a window of labelled feedback (``--engines``).

Each size runs ``mfl-trainer`` in its own subprocess on a fresh temporary artifact store; peak RSS is
that child's own ``ru_maxrss`` (``os.wait4``), so sizes do not mask each other.

    python benchmarks/training_scale.py                  # 10k, 100k, 1M rows
    python benchmarks/training_scale.py --sizes 10000 --threads 1

``--engines``: 1M labelled feedback rows (20 features; predictions and labels in 16 log files over 8 days)
trained with estimator ``lightgbm`` by the Job engine (the trainer in one process) and by the Dask engine
with 1, 2 and 4 local worker processes (``distributed.LocalCluster``, one thread each, ``--worker-memory``
each); the runner is a ``mfl-trainer`` subprocess as on the Job engine. Peak RSS: the trainer's (runner's)
``ru_maxrss``, and each worker process's own ``ru_maxrss`` read on the workers. ``--ten-million`` adds 10M.

    python benchmarks/training_scale.py --engines
    python benchmarks/training_scale.py --engines --workers 2 --engine-rows 200000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mfl_testbed.datasets import write_base_csv

MODEL = "bench"
N_FEATURES = 20


@dataclass
class Result:
    rows: int
    fit_seconds: float
    total_seconds: float
    peak_rss_mib: float
    accuracy: float


def run_size(rows: int, workdir: Path, threads: int | None) -> Result:
    root = workdir / f"rows-{rows}"
    features = write_base_csv(root / MODEL / "data" / "base.csv", rows, seed=rows, n_features=N_FEATURES)
    config = {
        "model": MODEL,
        "storageRoot": str(root),
        "version": 1,
        "features": features,
        "target": "label",
        "now": 1_764_340_000.0,
        "minRows": 200,
    }
    env = {
        **os.environ,
        "MFL_TRAINER_CONFIG": json.dumps(config),
        "MFL_TERMINATION_LOG": str(workdir / f"termination-{rows}"),
    }
    if threads:
        env["MFL_TRAINER_THREADS"] = str(threads)
    started = time.monotonic()
    child = subprocess.Popen(
        [sys.executable, "-m", "mfl_trainer.main"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    stdout = child.stdout.read() if child.stdout else ""
    _, status, usage = os.wait4(child.pid, 0)
    total = time.monotonic() - started
    child.returncode = os.waitstatus_to_exitcode(status)  # already reaped: keep Popen from waiting again
    summary = json.loads(stdout.strip().splitlines()[-1])
    if child.returncode != 0 or not summary.get("ok"):
        raise SystemExit(f"trainer failed for {rows} rows: {summary}")
    metadata = json.loads((root / MODEL / "versions" / "1" / "metadata.json").read_text())
    return Result(
        rows,
        metadata["seconds"]["fit"],
        total,
        usage.ru_maxrss / 1024,  # ru_maxrss is KiB on Linux
        summary["challenger"]["accuracy"],
    )


def table(results: list[Result]) -> str:
    lines = ["| rows | fit seconds | total seconds | peak RSS MiB | holdout accuracy |", "|---:|---:|---:|---:|---:|"]
    lines += [
        f"| {r.rows:,} | {r.fit_seconds:.2f} | {r.total_seconds:.2f} | {r.peak_rss_mib:.0f} | {r.accuracy:.4f} |"
        for r in results
    ]
    return "\n".join(lines)


# --- the Job engine against the Dask engine ------------------------------------------------------

DAYS, HOSTS = 8, 2
NOW = 1_764_340_000.0
DAY = 86_400.0


@dataclass
class EngineResult:
    engine: str
    workers: int
    rows: int
    total_seconds: float
    fit_seconds: float
    runner_rss_mib: float
    worker_rss_mib: list[float]
    accuracy: float

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.total_seconds


def write_feedback_window(model_dir: Path, rows: int, seed: int = 0) -> list[str]:
    """``rows`` labelled predictions of one hyperplane concept, as the server logs them: DAYS day partitions
    of HOSTS prediction files each, the label a minute after its prediction."""
    import orjson

    from mfl_testbed.datasets import concept_labels, feature_names, sample_features

    names = feature_names("hyperplane", N_FEATURES)
    per_file = -(-rows // (DAYS * HOSTS))
    start = NOW - DAYS * DAY
    step = DAY / per_file
    written = 0
    for day in range(DAYS):
        date = time.strftime("%Y-%m-%d", time.gmtime(start + day * DAY))
        for host in range(HOSTS):
            n = min(per_file, rows - written)
            if n <= 0:
                break
            X = sample_features(n, seed=seed * 1000 + day * HOSTS + host, n_features=N_FEATURES)
            y = concept_labels(X, 0)
            ts = start + day * DAY + (np.arange(n) + host / HOSTS) * step
            predictions, labels = bytearray(), bytearray()
            for i, (row, label, t) in enumerate(zip(X.tolist(), y.tolist(), ts.tolist())):
                row_id = f"h{host}-{day}-{i}"
                predictions += orjson.dumps({"id": row_id, "ts": t, "features": dict(zip(names, row))}) + b"\n"
                labels += orjson.dumps({"id": row_id, "ts": t + 60.0, "label": int(label), "predictionTs": t}) + b"\n"
            for folder, data in (("predictions", predictions), ("feedback", labels)):
                path = model_dir / folder / f"date={date}" / f"host-{host}.jsonl"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(bytes(data))
            written += n
    return names


def run_engine(
    root: Path, rows: int, features: list[str], workers: int, worker_memory: str, version: int
) -> EngineResult:
    """One training of the window at ``root``: the Job engine (``workers`` 0) or the Dask engine."""
    config = {
        "model": MODEL,
        "storageRoot": str(root),
        "version": version,
        "features": features,
        "target": "label",
        "estimator": "lightgbm",
        "now": NOW,
        "dataWindowSeconds": (DAYS + 1) * DAY,
        "minRows": 200,
        "changePoint": False,
    }
    env = {**os.environ, "MFL_TERMINATION_LOG": str(root / f"termination-{version}")}
    cluster = None
    if workers:
        from distributed import LocalCluster

        cluster = LocalCluster(
            n_workers=workers,
            processes=True,
            threads_per_worker=1,
            memory_limit=worker_memory,
            dashboard_address=None,
        )
        config.update(engine="dask", dask={"workers": workers, "waitSeconds": 120})
        env["DASK_SCHEDULER_ADDRESS"] = cluster.scheduler_address
    env["MFL_TRAINER_CONFIG"] = json.dumps(config)
    try:
        started = time.monotonic()
        child = subprocess.Popen(
            [sys.executable, "-m", "mfl_trainer.main"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        stdout = child.stdout.read() if child.stdout else ""
        _, status, usage = os.wait4(child.pid, 0)
        total = time.monotonic() - started
        child.returncode = os.waitstatus_to_exitcode(status)
        worker_rss = _worker_peaks(cluster) if cluster is not None else []
    finally:
        if cluster is not None:
            cluster.close()
    summary = json.loads(stdout.strip().splitlines()[-1])
    if child.returncode != 0 or not summary.get("ok"):
        raise SystemExit(f"trainer failed ({'dask' if workers else 'job'}, {workers} workers): {summary}")
    metadata = json.loads((root / MODEL / "versions" / str(version) / "metadata.json").read_text())
    return EngineResult(
        "dask" if workers else "job",
        workers,
        rows,
        total,
        metadata["seconds"]["fit"],
        usage.ru_maxrss / 1024,
        worker_rss,
        summary["challenger"]["accuracy"],
    )


def _peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _worker_peaks(cluster: Any) -> list[float]:
    from distributed import Client

    with Client(cluster) as client:
        peaks = client.run(_peak_rss_mib)
    return [peaks[address] for address in sorted(peaks)]


def engine_table(results: list[EngineResult]) -> str:
    lines = [
        "| engine | workers | rows | wall s | fit s | rows/s | runner peak RSS MiB | worker peak RSS MiB | accuracy |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in results:
        workers = ", ".join(f"{v:.0f}" for v in r.worker_rss_mib) or "-"
        lines.append(
            f"| {r.engine} | {r.workers or '-'} | {r.rows:,} | {r.total_seconds:.1f} | {r.fit_seconds:.1f} | "
            f"{r.rows_per_second:,.0f} | {r.runner_rss_mib:.0f} | {workers} | {r.accuracy:.4f} |"
        )
    return "\n".join(lines)


def engines(arguments: argparse.Namespace) -> None:
    sizes = [arguments.engine_rows] + ([10_000_000] if arguments.ten_million else [])
    results = []
    with tempfile.TemporaryDirectory(prefix="mfl-bench-engines-") as workdir:
        for rows in sizes:
            root = Path(workdir) / f"rows-{rows}"
            print(f"writing {rows:,} labelled feedback rows ...", file=sys.stderr, flush=True)
            features = write_feedback_window(root / MODEL, rows)
            for version, workers in enumerate([0, *arguments.workers], start=1):
                label = f"dask with {workers} workers" if workers else "job engine"
                print(f"training on {rows:,} rows: {label} ...", file=sys.stderr, flush=True)
                results.append(run_engine(root, rows, features, workers, arguments.worker_memory, version))
                print(engine_table(results[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
    print(engine_table(results))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--threads", type=int, help="MFL_TRAINER_THREADS for the trainer (default: its own)")
    parser.add_argument("--engines", action="store_true", help="the Job engine against the Dask engine")
    parser.add_argument("--engine-rows", type=int, default=1_000_000, help="--engines: labelled feedback rows")
    parser.add_argument("--ten-million", action="store_true", help="--engines: also 10M rows")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4], help="--engines: Dask workers")
    parser.add_argument("--worker-memory", default="4GiB", help="--engines: memory_limit of each Dask worker")
    arguments = parser.parse_args()
    if arguments.engines:
        engines(arguments)
        return
    results = []
    with tempfile.TemporaryDirectory(prefix="mfl-bench-") as workdir:
        for rows in arguments.sizes:
            print(f"training on {rows:,} rows ...", file=sys.stderr, flush=True)
            results.append(run_size(rows, Path(workdir), arguments.threads))
    print(table(results))


if __name__ == "__main__":
    main()
