"""How fast the trainer reads the labelled feedback: N logged predictions joined with N labels (issue 20's goal:
1,000,000 rows in <= 10 s and <= 500 MiB).

The logs are written to a temporary store as the server writes them (daily JSON-lines files, or the gzip
segments of s3 mode with ``--gzip``); the read (``datasource.read_feedback``, then ``build_table``, which
turns the rows into the training table) runs in a child process whose peak RSS (``ru_maxrss``) is its own.

    python benchmarks/trainer_read.py                    # 1,000,000 rows, 10 numeric features
    python benchmarks/trainer_read.py --rows 100000 --gzip
    MFL_JSON=stdlib python benchmarks/trainer_read.py    # without orjson
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

MODEL = "bench"
NOW = 1_764_340_000.0
SEGMENT_ROWS = 50_000  # lines per log file (a day file is split into the server's segments)


def write_logs(root: Path, rows: int, n_features: int, compress: bool, seed: int = 0) -> None:
    """One prediction per second ending at NOW, each labelled 60 s later."""
    rng = np.random.default_rng(seed)
    names = [f"x{i}" for i in range(n_features)]
    for start in range(0, rows, SEGMENT_ROWS):
        count = min(SEGMENT_ROWS, rows - start)
        ts = NOW - rows + start + np.arange(count, dtype=np.float64)
        X = rng.random((count, n_features)).round(6)
        labels = (X[:, 0] > 0.5).astype(int).tolist()
        predictions, feedback = [], []
        for i, (t, row, label) in enumerate(zip(ts.tolist(), X.tolist(), labels)):
            row_id = f"bench-{int(t * 1000)}-{start + i}"
            features = dict(zip(names, row))
            prediction = {"id": row_id, "ts": t, "version": 1, "track": "stable", "features": features}
            predictions.append(json.dumps({**prediction, "prediction": label}))
            label_line = {"id": row_id, "ts": t + 60, "label": label, "version": 1, "track": "stable"}
            feedback.append(json.dumps({**label_line, "prediction": label, "predictionTs": t}))
        day = datetime.fromtimestamp(ts[0], tz=UTC).strftime("%Y-%m-%d")
        for folder, lines in (("predictions", predictions), ("feedback", feedback)):
            path = root / MODEL / folder / f"date={day}" / f"w-{start:09d}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            data = ("\n".join(lines) + "\n").encode()
            if compress:
                path.with_name(path.name + ".gz").write_bytes(gzip.compress(data, compresslevel=6))
            else:
                path.write_bytes(data)


def read(root: Path, rows: int, n_features: int) -> dict[str, float]:
    """The child: read and join, then build the table; seconds of each and the peak RSS."""
    from mfl_trainer import datasource, tables

    started = time.perf_counter()
    feedback = datasource.read_feedback(root / MODEL, NOW - rows - 10, NOW + 120)
    read_seconds = time.perf_counter() - started
    read_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    features = [f"x{i}" for i in range(n_features)]
    started = time.perf_counter()
    table = tables.build_table(features, "label", "classification", None, feedback, Counter())
    table_seconds = time.perf_counter() - started
    if len(feedback) != rows or len(table) != rows:
        raise SystemExit(f"joined {len(feedback)} rows, table {len(table)}, expected {rows}")
    return {
        "rows": len(feedback),
        "readSeconds": round(read_seconds, 2),
        "readPeakRssMiB": round(read_rss),
        "tableSeconds": round(table_seconds, 2),
        "peakRssMiB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "json": "stdlib" if datasource._orjson is None else "orjson",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--features", type=int, default=10)
    parser.add_argument("--gzip", action="store_true", help="gzip segments (s3 mode) instead of plain JSON lines")
    parser.add_argument("--read", type=Path, help=argparse.SUPPRESS)  # the child's job
    args = parser.parse_args()
    if args.read:
        print(json.dumps(read(args.read, args.rows, args.features)))
        return
    with tempfile.TemporaryDirectory(prefix="mfl-read-bench-") as workdir:
        started = time.perf_counter()
        write_logs(Path(workdir), args.rows, args.features, args.gzip)
        print(f"wrote {args.rows:,} predictions + labels in {time.perf_counter() - started:.1f}s", flush=True)
        command = [sys.executable, __file__, "--read", workdir, "--rows", str(args.rows)]
        done = subprocess.run([*command, "--features", str(args.features)], capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(done.stderr)
        result = json.loads(done.stdout.strip().splitlines()[-1])
    print(
        f"read + join: {result['readSeconds']} s, peak RSS {result['readPeakRssMiB']} MiB; "
        f"+ table: {result['tableSeconds']} s, peak RSS {result['peakRssMiB']} MiB "
        f"({result['rows']:,} rows, {args.features} features, {'gzip' if args.gzip else 'plain'}, {result['json']})"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
