"""How the trainer scales with the base-data size (default estimator, 20 numeric features).

Each size runs ``mfl-trainer`` in its own subprocess on a fresh temporary artifact store; peak RSS is
that child's own ``ru_maxrss`` (``os.wait4``), so sizes do not mask each other.

    python benchmarks/training_scale.py                  # 10k, 100k, 1M rows
    python benchmarks/training_scale.py --sizes 10000 --threads 1
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--threads", type=int, help="MFL_TRAINER_THREADS for the trainer (default: its own)")
    arguments = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="mfl-bench-") as workdir:
        for rows in arguments.sizes:
            print(f"training on {rows:,} rows ...", file=sys.stderr, flush=True)
            results.append(run_size(rows, Path(workdir), arguments.threads))
    print(table(results))


if __name__ == "__main__":
    main()
