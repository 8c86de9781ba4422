"""Throughput and latency of mfl-server next to MLServer, serving the same joblib model on one core.

One scikit-learn model (20 numeric features) is trained and dumped once. Each server is started in
turn, pinned to CPU 1; this process, the load generator (benchmarks/loadgen.py), pins itself to CPU 0.
Same load for every server: fixed concurrency, a bounded number of requests (and seconds), batch
sizes 1 and 32, loopback only. Servers:

- ``mfl-server`` as installed here (standard library json, asyncio loop), and again with its optional
  accelerators, orjson (>= 3.11.5) and uvloop, from a side virtualenv (``--fast-venv``, created on
  first use with system site packages, so it runs this checkout's mfl_server);
- MLServer with its scikit-learn runtime (V2 inference protocol, ``parallel_workers: 0`` so inference
  runs in the serving process, as in mfl-server), from ``--mlserver-venv`` (created on first use).

mfl-server does more per request than MLServer: it signs one id per row and appends every row with its
features to the prediction log before answering. A server that cannot be installed or started gets
a row saying why instead of numbers.

    python benchmarks/server_throughput.py                   # logreg, 3 rounds of 2000 requests per cell
    python benchmarks/server_throughput.py --model hgb --requests 1000
    python benchmarks/server_throughput.py --no-setup         # only what is already installed
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import joblib
import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadgen import LoadResult, run_load  # noqa: E402

N_FEATURES = 20
FEATURES = [f"f{i}" for i in range(N_FEATURES)]
MODEL = "bench"
SERVER_CPU, CLIENT_CPU = 1, 0
CACHE = Path(os.environ.get("MFL_BENCH_CACHE", Path.home() / ".cache" / "mfl-bench"))
INSTALL_TIMEOUT = 900
START_TIMEOUT = 90


@dataclass
class Cell:
    server: str
    batch: int
    runs: list[LoadResult] = field(default_factory=list)  # one per round
    note: str = ""

    @property
    def median(self) -> LoadResult | None:
        ordered = sorted(self.runs, key=lambda run: run.requests_per_second)
        return ordered[len(ordered) // 2] if ordered else None


@dataclass
class ServerSpec:
    name: str
    start: Callable[[Path, int], subprocess.Popen]
    ready_url: Callable[[int], str]
    infer_url: Callable[[int], str]
    encode: Callable[[np.ndarray], bytes]
    decode: Callable[[bytes], list[Any]]
    unavailable: str = ""  # why this server cannot run, if it cannot
    env: dict[str, str] = field(default_factory=dict)


# --- the model -----------------------------------------------------------------------------------


def train(kind: str, root: Path) -> tuple[Any, Path]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20_000, N_FEATURES))
    y = (x[:, 0] + 0.5 * x[:, 1] - x[:, 2] + 0.3 * rng.normal(size=len(x)) > 0).astype(np.int64)
    estimator = (
        HistGradientBoostingClassifier(max_iter=100, random_state=0)
        if kind == "hgb"
        else LogisticRegression(max_iter=1000)
    ).fit(x, y)
    folder = root / MODEL / "versions" / "1"
    folder.mkdir(parents=True)
    joblib.dump(estimator, folder / "model.joblib")
    (folder / "metadata.json").write_text(
        json.dumps(
            {
                "version": 1,
                "task": "classification",
                "features": FEATURES,
                "target": "label",
                "classes": estimator.classes_.tolist(),
            }
        )
    )
    return estimator, folder / "model.joblib"


# --- servers -------------------------------------------------------------------------------------


def pinned(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """Started in its own session (so its whole group can be stopped), on the server CPU."""

    def pin() -> None:
        os.sched_setaffinity(0, {SERVER_CPU})

    with log.open("wb") as out:
        return subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, preexec_fn=pin, start_new_session=True
        )


def mfl_server_spec(
    name: str, python: str, storage: Path, unavailable: str = "", extra_env: dict[str, str] | None = None
) -> ServerSpec:
    def start(workdir: Path, port: int) -> subprocess.Popen:
        env = {
            **os.environ,
            "MFL_MODEL_NAME": MODEL,
            "MFL_MODEL_VERSION": "1",
            "MFL_TRACK": "stable",
            "MFL_STORAGE_ROOT": str(storage),
            "MFL_PORT": str(port),
            "MFL_HOST": "127.0.0.1",
            "MFL_SIGNING_KEY": "bench-key",
            "MFL_LOG_LEVEL": "WARNING",
            **(extra_env or {}),
        }
        return pinned([python, "-m", "mfl_server.app"], env, workdir / f"{name}.log")

    return ServerSpec(
        name=name,
        start=start,
        unavailable=unavailable,
        ready_url=lambda port: f"http://127.0.0.1:{port}/readyz",
        infer_url=lambda port: f"http://127.0.0.1:{port}/predict",
        encode=lambda rows: json.dumps({"instances": rows.tolist()}).encode(),
        decode=lambda body: json.loads(body)["predictions"],
    )


def mlserver_spec(venv: Path, model_file: Path, unavailable: str) -> ServerSpec:
    def start(workdir: Path, port: int) -> subprocess.Popen:
        folder = workdir / "mlserver"
        folder.mkdir(exist_ok=True)
        shutil.copy(model_file, folder / "model.joblib")
        (folder / "settings.json").write_text(
            json.dumps(
                {
                    "host": "127.0.0.1",
                    "http_port": port,
                    "grpc_port": free_port(),
                    "metrics_port": free_port(),
                    "parallel_workers": 0,
                    "debug": False,
                }
            )
        )
        (folder / "model-settings.json").write_text(
            json.dumps(
                {
                    "name": MODEL,
                    "implementation": "mlserver_sklearn.SKLearnModel",
                    "parameters": {"uri": "./model.joblib", "version": "1"},
                }
            )
        )
        return pinned(
            [str(venv / "bin" / "mlserver"), "start", str(folder)], dict(os.environ), workdir / "mlserver.log"
        )

    def encode(rows: np.ndarray) -> bytes:
        return json.dumps(
            {
                "inputs": [
                    {"name": "predict", "shape": list(rows.shape), "datatype": "FP64", "data": rows.ravel().tolist()}
                ]
            }
        ).encode()

    return ServerSpec(
        name=f"MLServer {_mlserver_version(venv)} (sklearn)",
        start=start,
        unavailable=unavailable,
        ready_url=lambda port: f"http://127.0.0.1:{port}/v2/models/{MODEL}/ready",
        infer_url=lambda port: f"http://127.0.0.1:{port}/v2/models/{MODEL}/infer",
        encode=encode,
        decode=lambda body: json.loads(body)["outputs"][0]["data"],
    )


@contextlib.contextmanager
def running(spec: ServerSpec, workdir: Path) -> Iterator[int]:
    port = free_port()
    process = spec.start(workdir, port)
    try:
        wait_ready(spec.ready_url(port), process, workdir)
        yield port
    finally:
        stop(process)


def wait_ready(url: str, process: subprocess.Popen, workdir: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"exited with {process.returncode} before becoming ready (logs in {workdir})")
        with contextlib.suppress(urllib.error.URLError, OSError), urllib.request.urlopen(url, timeout=2) as response:
            if response.status == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"not ready after {START_TIMEOUT} s")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)  # the group we created for this server
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --- side virtualenvs ----------------------------------------------------------------------------


def ensure_venv(path: Path, packages: list[str], probe: str, setup: bool, system_site: bool = False) -> str:
    """'' when ``probe`` imports in the venv (creating it if allowed), else why not."""
    python = path / "bin" / "python"
    if python.exists() and _imports(python, probe):
        return ""
    if not setup:
        return f"not installed ({path}); run without --no-setup"
    try:
        command = [sys.executable, "-m", "venv", *(["--system-site-packages"] if system_site else []), str(path)]
        subprocess.run(command, check=True, capture_output=True, timeout=120)
        installed = subprocess.run(
            [str(python), "-m", "pip", "install", "-q", *packages],
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT,
        )
    except (subprocess.SubprocessError, OSError) as error:
        return f"cannot create {path}: {error}"
    if installed.returncode != 0:
        lines = [line for line in installed.stderr.splitlines() if line.startswith("ERROR")]
        return f"pip install {' '.join(packages)} failed: {(lines or [installed.stderr[-300:]])[-1]}"
    return "" if _imports(python, probe) else f"{probe} does not import after installing"


def _imports(python: Path, code: str) -> bool:
    try:
        return subprocess.run([str(python), "-c", code], capture_output=True, timeout=120).returncode == 0
    except (subprocess.SubprocessError, OSError):
        return False


def _mlserver_version(venv: Path) -> str:
    try:
        found = subprocess.run(
            [str(venv / "bin" / "python"), "-c", "import mlserver; print(mlserver.__version__)"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        return found.stdout.strip() or "?"
    except (subprocess.SubprocessError, OSError):
        return "?"


# --- measuring -----------------------------------------------------------------------------------


def measure_all(specs: list[ServerSpec], estimator: Any, workdir: Path, args: argparse.Namespace) -> list[Cell]:
    """All servers stay up (idle ones cost nothing); rounds interleave them, so a burst of other
    work on the machine hits every server rather than one."""
    notes = {spec.name: f"not run: {spec.unavailable}" for spec in specs if spec.unavailable}
    runs: dict[tuple[str, int], list[LoadResult]] = {}
    with contextlib.ExitStack() as stack:
        ports = {}
        for spec in specs:
            if spec.name in notes:
                continue
            try:
                ports[spec.name] = stack.enter_context(running(spec, workdir))
            except Exception as error:  # a server that fails to start is reported, not fatal
                notes[spec.name] = f"not run: {type(error).__name__}: {error}"
        live = [spec for spec in specs if spec.name in ports]
        for round_index in range(args.rounds):
            for batch in args.batches:
                for spec in live:
                    key = (spec.name, batch)
                    if key in notes:
                        continue
                    outcome = measure_batch(spec, ports[spec.name], estimator, batch, args, check=round_index == 0)
                    if isinstance(outcome, str):
                        notes[key] = f"not run: {outcome}"
                    else:
                        runs.setdefault(key, []).append(outcome)
    return [
        Cell(
            spec.name,
            batch,
            runs.get((spec.name, batch), []),
            notes.get(spec.name) or notes.get((spec.name, batch), ""),
        )
        for spec in specs
        for batch in args.batches
    ]


def measure_batch(
    spec: ServerSpec, port: int, estimator: Any, batch: int, args: argparse.Namespace, check: bool
) -> LoadResult | str:
    rng = np.random.default_rng(batch)
    matrices = [rng.normal(size=(batch, N_FEATURES)) for _ in range(64)]
    problem = _check_predictions(spec, port, estimator, matrices[0]) if check else ""
    if problem:
        return problem
    return asyncio.run(
        run_load(
            spec.infer_url(port),
            [spec.encode(m) for m in matrices],
            rows_per_request=batch,
            concurrency=args.concurrency,
            requests=args.requests,
            warmup=args.warmup,
            max_seconds=args.max_seconds,
        )
    )


def _check_predictions(spec: ServerSpec, port: int, estimator: Any, rows: np.ndarray) -> str:
    """Both servers must answer what the estimator answers, or their numbers mean nothing."""
    request = urllib.request.Request(
        spec.infer_url(port), data=spec.encode(rows), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        got = [int(v) for v in spec.decode(response.read())]
    expected = estimator.predict(rows).tolist()
    return "" if got == expected else f"predictions differ from the estimator's: {got[:5]} vs {expected[:5]}"


def table(cells: list[Cell], args: argparse.Namespace) -> str:
    head = (
        f"{'server':<30} {'batch':>5} {'req/s':>7} {'(range)':>11} {'rows/s':>8} {'p50 ms':>7} "
        f"{'p99 ms':>7} {'errors':>6} {'client CPU':>10}"
    )
    lines = [
        f"model: {args.model}, {N_FEATURES} features; concurrency {args.concurrency}; {args.requests} "
        f"requests per run (max {args.max_seconds:.0f} s) after {args.warmup} warm-up; median of "
        f"{args.rounds} interleaved rounds; server on CPU {SERVER_CPU}, load generator on CPU {CLIENT_CPU}",
        head,
        "-" * len(head),
    ]
    for cell in cells:
        run = cell.median
        if run is None:
            lines.append(f"{cell.server:<30} {cell.batch:>5} {cell.note}")
            continue
        rates = [r.requests_per_second for r in cell.runs]
        spread = f"{min(rates):.0f}-{max(rates):.0f}"
        lines.append(
            f"{cell.server:<30} {cell.batch:>5} {run.requests_per_second:>7.0f} {spread:>11} "
            f"{run.rows_per_second:>8.0f} {run.percentile_ms(0.5):>7.2f} {run.percentile_ms(0.99):>7.2f} "
            f"{sum(r.errors for r in cell.runs):>6} {100 * run.client_cpu:>9.0f}%"
        )
        errors = [r.first_error for r in cell.runs if r.first_error]
        if errors:
            lines.append(f"{'':<30} first error: {errors[0]}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["logreg", "hgb"], default="logreg")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--max-seconds", type=float, default=30.0)
    parser.add_argument("--mlserver-venv", type=Path, default=CACHE / "mlserver")
    parser.add_argument("--fast-venv", type=Path, default=CACHE / "mfl-fast")
    parser.add_argument("--no-setup", action="store_true", help="do not create missing virtualenvs")
    args = parser.parse_args()
    if len(os.sched_getaffinity(0)) < 2 and os.cpu_count() and os.cpu_count() < 2:
        raise SystemExit("needs two CPUs: one for the server, one for the load generator")
    setup = not args.no_setup
    import sklearn

    pins = [f"scikit-learn=={sklearn.__version__}", f"numpy=={np.__version__}", f"joblib=={joblib.__version__}"]
    mlserver_missing = ensure_venv(
        args.mlserver_venv, ["mlserver", "mlserver-sklearn", *pins], "import mlserver, mlserver_sklearn", setup
    )
    fast_missing = ensure_venv(
        args.fast_venv,
        ["orjson>=3.11.5", "uvloop"],
        "import uvloop, mfl_server.jsonio as j; assert j.BACKEND == 'orjson'",
        setup,
        system_site=True,
    )
    os.sched_setaffinity(0, {CLIENT_CPU})
    load_before = _load_average()
    with tempfile.TemporaryDirectory(prefix="mfl-bench-") as tmp:
        workdir = Path(tmp)
        estimator, model_file = train(args.model, workdir / "store")
        specs = [
            mfl_server_spec(
                "mfl-server (json, asyncio)",
                sys.executable,
                workdir / "store",
                extra_env={"MFL_JSON": "stdlib", "MFL_EVENT_LOOP": "asyncio"},
            ),
            mfl_server_spec(
                "mfl-server (orjson, uvloop)",
                str(args.fast_venv / "bin" / "python"),
                workdir / "store",
                unavailable=fast_missing,
            ),
            mlserver_spec(args.mlserver_venv, model_file, mlserver_missing),
        ]
        cells = measure_all(specs, estimator, workdir, args)
    print(table(cells, args))
    print(
        f"load average (1, 5, 15 min) before: {load_before}, after: {_load_average()} "
        "(other work on these two CPUs slows every server alike)"
    )


def _load_average() -> str:
    return ", ".join(f"{value:.2f}" for value in os.getloadavg())


if __name__ == "__main__":
    main()
