"""Throughput and latency of mfl-server, MLServer and MLServer behind the feedback sidecar, serving the same
joblib model on one core.

One scikit-learn model (20 numeric features) is trained and dumped once. Each server is started in
turn, pinned to CPU 1; this process, the load generator (benchmarks/loadgen.py), pins itself to CPU 0.
Same load for every server: fixed concurrency, a bounded number of requests (and seconds), batch
sizes 1 and 32, loopback only. Servers:

- ``mfl-server`` as installed here (standard library json, asyncio loop), and again with its optional
  accelerators, orjson (>= 3.11.5) and uvloop, from a side virtualenv (``--fast-venv``, created on
  first use with system site packages, so it runs this checkout's mfl_server);
- MLServer with its scikit-learn runtime (V2 inference protocol, ``parallel_workers: 0`` so inference
  runs in the serving process, as in mfl-server), from ``--mlserver-venv`` (created on first use);
- MLServer behind ``mfl-sidecar`` (the Pod of ``spec.model.serving.runtime``): the same V2 requests go to
  the sidecar, which forwards them to MLServer on loopback, signs and logs every row and adds the ids.
  Both processes share CPU 1, as the two containers share a Pod's CPU: the sidecar's work is paid from
  the same core;
- mfl-server on its V2 route (``/v2/models/bench/infer``, the same body as MLServer's) and on its own
  ``/predict``.

The predict suite's rows are these four cells (``--variants`` adds mfl-server with the standard
library's json and asyncio, and the ``--baseline`` revision). Each is measured twice: at
``--concurrency`` (8: the server's CPU saturated; req/s, rows/s and the latency a loaded server shows)
and with one request in flight (``--latency-requests``: p50/p99 of one request, no queueing: what a hop
adds). The goals of issue 19 are printed under the table: the sidecar adds at most 1 ms at p50 and 3 ms
at p99 at batch 1 (one in flight) and keeps >= 80% of MLServer's throughput; mfl-server's V2 route stays
>= 2x MLServer at batch 1 and 32.

mfl-server does more per request than MLServer: it signs one id per row and appends every row with its
features to the prediction log before answering. A server that cannot be installed or started gets
a row saying why instead of numbers.

Feedback (``/feedback``, mfl-server only): every label is new (ids made beforehand by ``/predict``),
so each one is verified, claimed on the store (one ``O_EXCL`` create: exactly-once across replicas)
and logged. Side by side with ``--baseline``, a revision exported with ``git archive`` and run by
the same interpreter: by default the last one whose dedup was a per-replica in-memory LRU. Both
suites run the baseline, so a change that moves ``/predict`` shows too.
The storage modes of issue 20 (volume + claims, object store + PostgreSQL, two replicas sending the
same labels, and how the stores grow) are measured side by side with that baseline by
``benchmarks/feedback_storage.py``, which reuses this file's helpers.

    python benchmarks/server_throughput.py                   # logreg, 3 rounds of 2000 requests per cell
    python benchmarks/server_throughput.py --model hgb --requests 1000
    python benchmarks/server_throughput.py --no-setup         # only what is already installed
    python benchmarks/server_throughput.py --suites feedback --requests 1000 --no-setup
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
# The last revision whose feedback dedup was a per-replica in-memory LRU (before the claim store).
BASELINE_REV = "2c9ee5804813ab516bd6edf68406017811b8be5c"
REPO = Path(__file__).resolve().parent.parent
ID_BATCH = 1024  # rows per /predict when making ids for the feedback suite


@dataclass
class Cell:
    server: str
    batch: int
    runs: list[LoadResult] = field(default_factory=list)  # one per round
    note: str = ""
    solo: list[LoadResult] = field(default_factory=list)  # one request in flight, one per round
    cpu_ms: list[float] = field(default_factory=list)  # the server's CPU per request, one per round
    # Per process group (the sidecar's MLServer, then the sidecar), per round: where that CPU went.
    cpu_parts: list[list[float]] = field(default_factory=list)

    @property
    def median_parts(self) -> list[float]:
        if not self.cpu_parts:
            return []
        return [sorted(part)[len(part) // 2] for part in zip(*self.cpu_parts)]

    @property
    def median_cpu_ms(self) -> float | None:
        ordered = sorted(self.cpu_ms)
        return ordered[len(ordered) // 2] if ordered else None

    @property
    def solo_median(self) -> LoadResult | None:
        ordered = sorted(self.solo, key=lambda run: run.percentile_ms(0.5))
        return ordered[len(ordered) // 2] if ordered else None

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
    # Processes started before ``start`` (the sidecar's MLServer), each with its own readiness URL.
    before: list[tuple[Callable[[Path, int], subprocess.Popen], Callable[[int], str]]] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    feedback_url: Callable[[int], str] | None = None  # mfl-server only


# --- the model -----------------------------------------------------------------------------------


def train(kind: str, root: Path) -> tuple[Any, Path]:
    """The model, dumped under ``root``; further stores get a copy with ``copy_model``."""
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


def copy_model(source: Path, root: Path) -> Path:
    shutil.copytree(source / MODEL / "versions", root / MODEL / "versions")
    return root


# --- servers -------------------------------------------------------------------------------------


def pinned(command: list[str], env: dict[str, str], log: Path, cpu: int = SERVER_CPU) -> subprocess.Popen:
    """Started in its own session (so its whole group can be stopped), on the server CPU."""

    def pin() -> None:
        os.sched_setaffinity(0, {cpu})

    with log.open("wb") as out:
        return subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, preexec_fn=pin, start_new_session=True
        )


def mfl_env(storage: Path, port: int, extra_env: dict[str, str] | None = None) -> dict[str, str]:
    return {
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


def mfl_server_spec(
    name: str,
    python: str,
    storage: Path,
    unavailable: str = "",
    extra_env: dict[str, str] | None = None,
    route: str = "predict",
) -> ServerSpec:
    def start(workdir: Path, port: int) -> subprocess.Popen:
        env = mfl_env(storage, port, extra_env)
        return pinned([python, "-m", "mfl_server.app"], env, workdir / f"{_file_name(name)}.log")

    if route == "v2":
        return ServerSpec(
            name=name,
            start=start,
            unavailable=unavailable,
            ready_url=lambda port: f"http://127.0.0.1:{port}/v2/models/{MODEL}/ready",
            infer_url=lambda port: f"http://127.0.0.1:{port}/v2/models/{MODEL}/infer",
            encode=v2_body,
            decode=v2_predictions,
        )
    return ServerSpec(
        name=name,
        start=start,
        unavailable=unavailable,
        ready_url=lambda port: f"http://127.0.0.1:{port}/readyz",
        infer_url=lambda port: f"http://127.0.0.1:{port}/predict",
        encode=lambda rows: json.dumps({"instances": rows.tolist()}).encode(),
        decode=lambda body: json.loads(body)["predictions"],
        feedback_url=lambda port: f"http://127.0.0.1:{port}/feedback",
    )


def _file_name(name: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in name).strip("-")


def v2_body(rows: np.ndarray) -> bytes:
    """The same V2 request for every V2 cell: one FP64 tensor [rows, features], flat data."""
    tensor = {"name": "predict", "shape": list(rows.shape), "datatype": "FP64", "data": rows.ravel().tolist()}
    return json.dumps({"inputs": [tensor]}).encode()


def v2_predictions(body: bytes) -> list[Any]:
    output = json.loads(body)["outputs"][0]
    data = output["data"]
    return [value for row in data for value in row] if data and isinstance(data[0], list) else data


def export_baseline(rev: str, workdir: Path) -> tuple[str, str]:
    """(PYTHONPATH that puts the baseline's mfl_server first, '') or ('', why not)."""
    target = workdir / "baseline"
    target.mkdir()
    try:
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", rev, "server_image/mfl_server"],
            capture_output=True,
            check=True,
            timeout=60,
        )
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True, timeout=60)
    except (subprocess.SubprocessError, OSError) as error:
        return "", f"cannot export {rev}: {error}"
    return str(target / "server_image"), ""


def mlserver_starter(venv: Path, model_file: Path, folder_name: str) -> Callable[[Path, int], subprocess.Popen]:
    def start(workdir: Path, port: int) -> subprocess.Popen:
        folder = workdir / folder_name
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
            [str(venv / "bin" / "mlserver"), "start", str(folder)], dict(os.environ), workdir / f"{folder_name}.log"
        )

    return start


def mlserver_spec(venv: Path, model_file: Path, unavailable: str) -> ServerSpec:
    return ServerSpec(
        name=f"MLServer {_mlserver_version(venv)} alone (V2)",
        start=mlserver_starter(venv, model_file, "mlserver"),
        unavailable=unavailable,
        ready_url=lambda port: f"http://127.0.0.1:{port}/v2/models/{MODEL}/ready",
        infer_url=lambda port: f"http://127.0.0.1:{port}/v2/models/{MODEL}/infer",
        encode=v2_body,
        decode=v2_predictions,
    )


def sidecar_spec(
    venv: Path, model_file: Path, python: str, storage: Path, unavailable: str, cpu: int = SERVER_CPU
) -> ServerSpec:
    """MLServer on a port of its own, then ``mfl-sidecar`` in front of it (MFL_UPSTREAM_URL), both on CPU 1.
    The sidecar reads the version's metadata.json (features, task, classes) from ``storage``."""
    upstream_port = free_port()

    def start_mlserver(workdir: Path, _port: int) -> subprocess.Popen:
        return mlserver_starter(venv, model_file, "mlserver-upstream")(workdir, upstream_port)

    def start(workdir: Path, port: int) -> subprocess.Popen:
        env = mfl_env(storage, port, {"MFL_UPSTREAM_URL": f"http://127.0.0.1:{upstream_port}"})
        return pinned([python, "-m", "mfl_server.sidecar"], env, workdir / "mfl-sidecar.log", cpu)

    return ServerSpec(
        name=f"MLServer {_mlserver_version(venv)} + mfl-sidecar (V2)",
        start=start,
        unavailable=unavailable,
        ready_url=lambda port: f"http://127.0.0.1:{port}/v2/health/ready",
        infer_url=lambda port: f"http://127.0.0.1:{port}/v2/models/{MODEL}/infer",
        encode=v2_body,
        decode=v2_predictions,
        before=[(start_mlserver, lambda _port: f"http://127.0.0.1:{upstream_port}/v2/models/{MODEL}/ready")],
    )


@contextlib.contextmanager
def running(spec: ServerSpec, workdir: Path) -> Iterator[int]:
    port = free_port()
    with contextlib.ExitStack() as stack:
        groups = GROUPS.setdefault(spec.name, [])
        for start, ready_url in spec.before:  # the server behind a sidecar: ready before the sidecar starts
            companion = start(workdir, port)
            stack.callback(stop, companion)
            groups.append(companion.pid)
            wait_ready(ready_url(port), companion, workdir)
        process = spec.start(workdir, port)
        stack.callback(stop, process)
        groups.append(process.pid)
        wait_ready(spec.ready_url(port), process, workdir)
        yield port


GROUPS: dict[str, list[int]] = {}  # server name -> the process groups it runs as (each started a session)


def group_cpu_seconds(groups: list[int]) -> float:
    """User + system CPU of every live process in these process groups (their waited children included).
    CPU per request does not depend on how much of the shared CPUs other work left the server, as req/s
    does: on a busy machine it is the steadier figure."""
    wanted, ticks = set(groups), 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) in wanted:  # pgrp
            ticks += sum(int(value) for value in fields[11:15])  # utime, stime, cutime, cstime
    return ticks / os.sysconf("SC_CLK_TCK")


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
    if system_site and python.exists():
        _see_this_venv(path)
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
    if system_site:
        _see_this_venv(path)
    return "" if _imports(python, probe) else f"{probe} does not import after installing"


def _see_this_venv(path: Path) -> None:
    """``--system-site-packages`` of a venv made by a venv's python is the base interpreter's: when this
    process runs in a venv (this checkout installed editable), its site-packages are added by a .pth,
    after the side venv's own (so its orjson and uvloop come first)."""
    if sys.prefix == sys.base_prefix:
        return
    import sysconfig

    ours = sysconfig.get_paths()["purelib"]
    for target in (path / "lib").glob("python*/site-packages"):
        (target / "zz-mfl-checkout.pth").write_text(f"import site; site.addsitedir({ours!r})\n")


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
    solo: dict[tuple[str, int], list[LoadResult]] = {}
    cpu: dict[tuple[str, int], list[float]] = {}
    parts: dict[tuple[str, int], list[list[float]]] = {}
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
                    port = ports[spec.name]
                    if round_index == 0:
                        problem = measure_batch(spec, port, estimator, batch, args, check=True, check_only=True)
                        if problem:
                            notes[key] = f"not run: {problem}"
                            continue
                    groups = GROUPS[spec.name]
                    cpu_before = [group_cpu_seconds([group]) for group in groups]
                    outcome = measure_batch(spec, port, estimator, batch, args, check=False)
                    assert not isinstance(outcome, str)
                    sent = args.warmup + outcome.requests
                    spent = [1000 * (group_cpu_seconds([g]) - b) / sent for g, b in zip(groups, cpu_before)]
                    cpu.setdefault(key, []).append(sum(spent))
                    parts.setdefault(key, []).append(spent)
                    runs.setdefault(key, []).append(outcome)
                    if args.latency_requests:
                        one = measure_batch(spec, port, estimator, batch, args, check=False, concurrency=1)
                        assert not isinstance(one, str)
                        solo.setdefault(key, []).append(one)
    return [
        Cell(
            spec.name,
            batch,
            runs.get((spec.name, batch), []),
            notes.get(spec.name) or notes.get((spec.name, batch), ""),
            solo.get((spec.name, batch), []),
            cpu.get((spec.name, batch), []),
            parts.get((spec.name, batch), []),
        )
        for spec in specs
        for batch in args.batches
    ]


def measure_batch(
    spec: ServerSpec,
    port: int,
    estimator: Any,
    batch: int,
    args: argparse.Namespace,
    check: bool,
    concurrency: int | None = None,
    check_only: bool = False,
) -> LoadResult | str:
    """At ``--concurrency`` by default; ``concurrency=1``: ``--latency-requests`` with one in flight."""
    rng = np.random.default_rng(batch)
    matrices = [rng.normal(size=(batch, N_FEATURES)) for _ in range(64)]
    problem = _check_predictions(spec, port, estimator, matrices[0]) if check else ""
    if problem or check_only:
        return problem
    solo = concurrency == 1
    return asyncio.run(
        run_load(
            spec.infer_url(port),
            [spec.encode(m) for m in matrices],
            rows_per_request=batch,
            concurrency=concurrency or args.concurrency,
            requests=args.latency_requests if solo else args.requests,
            warmup=min(args.warmup, 50) if solo else args.warmup,
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


def measure_feedback(specs: list[ServerSpec], workdir: Path, args: argparse.Namespace) -> list[Cell]:
    """Like measure_all, on /feedback; every label sent is new, so each one is recorded."""
    notes = {spec.name: f"not run: {spec.unavailable}" for spec in specs if spec.unavailable}
    runs: dict[tuple[str, int], list[LoadResult]] = {}
    with contextlib.ExitStack() as stack:
        ports = {}
        for spec in specs:
            if spec.name in notes:
                continue
            try:
                ports[spec.name] = stack.enter_context(running(spec, workdir))
            except Exception as error:
                notes[spec.name] = f"not run: {type(error).__name__}: {error}"
        live = [spec for spec in specs if spec.name in ports]
        per_cell = (args.warmup + args.requests) * args.rounds
        ids = {
            spec.name: iter(make_ids(spec.infer_url(ports[spec.name]), per_cell * sum(args.batches))) for spec in live
        }
        for round_index in range(args.rounds):
            for batch in args.batches:
                for spec in live:
                    url = spec.feedback_url(ports[spec.name]) if spec.feedback_url else ""
                    bodies = [feedback_body(ids[spec.name], batch) for _ in range(args.warmup + args.requests)]
                    problem = _check_feedback(url, bodies.pop()) if round_index == 0 else ""
                    if problem:
                        notes[(spec.name, batch)] = f"not run: {problem}"
                        continue
                    runs.setdefault((spec.name, batch), []).append(run_feedback(url, bodies, batch, args))
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


def make_ids(predict_url: str, count: int) -> list[str]:
    rows = np.random.default_rng(7).normal(size=(ID_BATCH, N_FEATURES)).tolist()
    ids: list[str] = []
    while len(ids) < count:
        request = urllib.request.Request(
            predict_url, data=json.dumps({"instances": rows}).encode(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            ids += json.loads(response.read())["ids"]
    return ids


def feedback_body(ids: Iterator[str], batch: int) -> bytes:
    return json.dumps({"feedback": [{"id": next(ids), "label": n % 2} for n in range(batch)]}).encode()


def run_feedback(url: str, bodies: list[bytes], batch: int, args: argparse.Namespace) -> LoadResult:
    """Warm-up on its own bodies: the load generator restarts its body list in each phase."""
    warm, measured = bodies[: args.warmup], bodies[args.warmup :]
    load = {"rows_per_request": batch, "concurrency": args.concurrency, "warmup": 0, "max_seconds": args.max_seconds}
    if warm:
        asyncio.run(run_load(url, warm, requests=len(warm), **load))
    return asyncio.run(run_load(url, measured, requests=len(measured), **load))


def _check_feedback(url: str, body: bytes) -> str:
    """Every label of a fresh body must be recorded, or the numbers measure rejections."""
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        answer = json.loads(response.read())
    sent = len(json.loads(body)["feedback"])
    return "" if answer["accepted"] == sent else f"{answer['accepted']} of {sent} labels accepted: {answer}"


def feedback_table(cells: list[Cell], args: argparse.Namespace, store: Path) -> str:
    head = f"{'server':<44} {'batch':>5} {'req/s':>7} {'(range)':>11} {'labels/s':>8} {'p50 ms':>7} {'p99 ms':>7}"
    lines = [
        f"feedback: every label new; concurrency {args.concurrency}; {args.requests} requests per run after "
        f"{args.warmup} warm-up; median of {args.rounds} rounds; store on {filesystem_of(store)}",
        head,
        "-" * len(head),
    ]
    for cell in cells:
        run = cell.median
        if run is None:
            lines.append(f"{cell.server:<44} {cell.batch:>5} {cell.note}")
            continue
        rates = [r.requests_per_second for r in cell.runs]
        lines.append(
            f"{cell.server:<44} {cell.batch:>5} {run.requests_per_second:>7.0f} "
            f"{f'{min(rates):.0f}-{max(rates):.0f}':>11} {run.rows_per_second:>8.0f} "
            f"{run.percentile_ms(0.5):>7.2f} {run.percentile_ms(0.99):>7.2f}"
        )
        errors = [r.first_error for r in cell.runs if r.first_error]
        if errors:
            lines.append(f"{'':<44} errors: {sum(r.errors for r in cell.runs)}, first: {errors[0]}")
    lines.extend(_ratios(cells))
    return "\n".join(lines)


def _ratios(cells: list[Cell]) -> list[str]:
    """after/before per batch size, when both ran."""
    out = []
    for batch in sorted({cell.batch for cell in cells}):
        pair = [cell.median for cell in cells if cell.batch == batch]
        if len(pair) == 2 and all(pair):
            before, after = pair
            out.append(f"batch {batch}: after/before = {after.requests_per_second / before.requests_per_second:.2f}")
    return out


def filesystem_of(path: Path) -> str:
    """The type of the filesystem holding ``path`` (a claim costs what a file create costs there)."""
    best, kind = "", "?"
    with contextlib.suppress(OSError), open("/proc/self/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            if len(fields) > 2 and str(path).startswith(fields[1]) and len(fields[1]) > len(best):
                best, kind = fields[1], fields[2]
    return kind


def table(cells: list[Cell], args: argparse.Namespace) -> str:
    head = (
        f"{'server':<40} {'batch':>5} {'req/s':>7} {'(range)':>11} {'rows/s':>8} {'p50 ms':>7} "
        f"{'p99 ms':>7} {'1 in flight: p50':>16} {'p99':>6} {'CPU ms/req':>10} {'errors':>6} {'client CPU':>10}"
    )
    lines = [
        f"model: {args.model}, {N_FEATURES} features; concurrency {args.concurrency}; {args.requests} "
        f"requests per run (max {args.max_seconds:.0f} s) after {args.warmup} warm-up, then "
        f"{args.latency_requests} with one in flight; median of {args.rounds} interleaved rounds; "
        f"servers on CPU {SERVER_CPU} (the sidecar and its MLServer share it), load generator on CPU {CLIENT_CPU}",
        head,
        "-" * len(head),
    ]
    for cell in cells:
        run = cell.median
        if run is None:
            lines.append(f"{cell.server:<40} {cell.batch:>5} {cell.note}")
            continue
        rates = [r.requests_per_second for r in cell.runs]
        spread = f"{min(rates):.0f}-{max(rates):.0f}"
        solo = cell.solo_median
        solo_text = (
            f"{solo.percentile_ms(0.5):>16.2f} {solo.percentile_ms(0.99):>6.2f}" if solo else f"{'-':>16} {'-':>6}"
        )
        lines.append(
            f"{cell.server:<40} {cell.batch:>5} {run.requests_per_second:>7.0f} {spread:>11} "
            f"{run.rows_per_second:>8.0f} {run.percentile_ms(0.5):>7.2f} {run.percentile_ms(0.99):>7.2f} "
            f"{solo_text} {_cpu_text(cell):>10} {sum(r.errors for r in cell.runs + cell.solo):>6} "
            f"{100 * run.client_cpu:>9.0f}%"
        )
        errors = [r.first_error for r in cell.runs + cell.solo if r.first_error]
        if errors:
            lines.append(f"{'':<40} first error: {errors[0]}")
    return "\n".join(lines + goals(cells))


def _cpu_text(cell: Cell) -> str:
    return f"{cell.median_cpu_ms:.3f}" if cell.median_cpu_ms is not None else "-"


MLSERVER, SIDECAR, REFERENCE_V2, REFERENCE_OWN = "mlserver", "sidecar", "reference-v2", "reference-own"


def goals(cells: list[Cell]) -> list[str]:
    """Issue 19's goals from the medians: what the sidecar adds to MLServer, mfl-server's V2 route against
    MLServer. A goal whose cells did not run is said so."""
    by_role: dict[tuple[str, int], Cell] = {}
    for cell in cells:
        role = ROLES.get(cell.server)
        if role and cell.median is not None:
            by_role[(role, cell.batch)] = cell
    lines = ["", "goals (issue 19):"]

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    for batch in sorted({cell.batch for cell in cells}):
        alone, side = by_role.get((MLSERVER, batch)), by_role.get((SIDECAR, batch))
        if alone and side:
            ratio = side.median.requests_per_second / alone.median.requests_per_second
            text = (
                f"batch {batch}: sidecar throughput / MLServer's = {ratio:.2f} (goal >= 0.80: {verdict(ratio >= 0.8)})"
            )
            text += _cpu_ratio(alone, side, 0.8)
            shares = side.median_parts
            if len(shares) == 2 and alone.median_cpu_ms:
                upstream, own = shares
                bound = "MLServer-bound" if upstream >= own else "sidecar-bound"
                text += (
                    f"; CPU per request: MLServer {upstream:.3f} ms + sidecar {own:.3f} ms; with a core each "
                    f"{min(1.0, alone.median_cpu_ms / max(upstream, own)):.2f} ({bound})"
                )
            if alone.solo_median and side.solo_median:
                p50 = side.solo_median.percentile_ms(0.5) - alone.solo_median.percentile_ms(0.5)
                p99 = side.solo_median.percentile_ms(0.99) - alone.solo_median.percentile_ms(0.99)
                text += f"; added latency, one in flight: p50 {p50:+.2f} ms, p99 {p99:+.2f} ms"
                if batch == 1:
                    text += f" (goal <= 1 / 3 ms: {verdict(p50 <= 1.0)} / {verdict(p99 <= 3.0)})"
            loaded50 = side.median.percentile_ms(0.5) - alone.median.percentile_ms(0.5)
            loaded99 = side.median.percentile_ms(0.99) - alone.median.percentile_ms(0.99)
            text += f"; at concurrency: p50 {loaded50:+.2f} ms, p99 {loaded99:+.2f} ms"
            lines.append(text)
        reference = by_role.get((REFERENCE_V2, batch))
        if alone and reference:
            ratio = reference.median.requests_per_second / alone.median.requests_per_second
            lines.append(
                f"batch {batch}: mfl-server V2 / MLServer = {ratio:.2f}x (goal >= 2: {verdict(ratio >= 2)})"
                + _cpu_ratio(alone, reference, 2.0)
            )
        own = by_role.get((REFERENCE_OWN, batch))
        if alone and own:
            ratio = own.median.requests_per_second / alone.median.requests_per_second
            lines.append(f"batch {batch}: mfl-server /predict / MLServer = {ratio:.2f}x" + _cpu_ratio(alone, own, None))
    return lines if len(lines) > 2 else []


def _cpu_ratio(alone: Cell, other: Cell, goal: float | None) -> str:
    """The same ratio from CPU per request: the throughput each would have on a core of its own."""
    if not alone.median_cpu_ms or not other.median_cpu_ms:
        return ""
    ratio = alone.median_cpu_ms / other.median_cpu_ms
    verdict = "" if goal is None else f" ({'met' if ratio >= goal else 'MISSED'})"
    return f"; by CPU per request {ratio:.2f}{verdict}"


ROLES: dict[str, str] = {}  # server name -> role in the goals; filled by main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["logreg", "hgb"], default="logreg")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--max-seconds", type=float, default=30.0)
    parser.add_argument(
        "--latency-requests", type=int, default=500, help="per cell with one request in flight (0: skip)"
    )
    parser.add_argument(
        "--sidecar-cpu",
        type=int,
        default=SERVER_CPU,
        help=f"the sidecar's CPU (default {SERVER_CPU}: MLServer's, as one Pod on one core; another CPU needs 3)",
    )
    parser.add_argument(
        "--variants",
        action="store_true",
        help="also mfl-server with the standard library's json and asyncio, and the --baseline revision",
    )
    parser.add_argument("--mlserver-venv", type=Path, default=CACHE / "mlserver")
    parser.add_argument("--fast-venv", type=Path, default=CACHE / "mfl-fast")
    parser.add_argument("--no-setup", action="store_true", help="do not create missing virtualenvs")
    parser.add_argument("--suites", nargs="+", choices=["predict", "feedback"], default=["predict", "feedback"])
    parser.add_argument(
        "--baseline", default=BASELINE_REV, help="git revision to run beside this checkout ('none': skip)"
    )
    args = parser.parse_args()
    if len(os.sched_getaffinity(0)) < 2 and os.cpu_count() and os.cpu_count() < 2:
        raise SystemExit("needs two CPUs: one for the server, one for the load generator")
    setup = not args.no_setup
    import sklearn

    pins = [f"scikit-learn=={sklearn.__version__}", f"numpy=={np.__version__}", f"joblib=={joblib.__version__}"]
    mlserver_missing = (
        ensure_venv(
            args.mlserver_venv, ["mlserver", "mlserver-sklearn", *pins], "import mlserver, mlserver_sklearn", setup
        )
        if "predict" in args.suites
        else "not in --suites"
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
        fast = str(args.fast_venv / "bin" / "python")
        baseline_path, baseline_missing = (
            ("", "--baseline none") if args.baseline == "none" else export_baseline(args.baseline, workdir)
        )
        baseline_missing = baseline_missing or fast_missing
        baseline_name = f"mfl-server {args.baseline[:7]} (orjson, uvloop)"
        if "predict" in args.suites:
            alone = mlserver_spec(args.mlserver_venv, model_file, mlserver_missing)
            behind = sidecar_spec(
                args.mlserver_venv,
                model_file,
                fast,
                copy_model(workdir / "store", workdir / "store-sidecar"),
                mlserver_missing or fast_missing,
                args.sidecar_cpu,
            )
            v2_route = mfl_server_spec(
                "mfl-server V2 (orjson, uvloop)",
                fast,
                copy_model(workdir / "store", workdir / "store-v2"),
                unavailable=fast_missing,
                route="v2",
            )
            own_route = mfl_server_spec(
                "mfl-server /predict (orjson, uvloop)", fast, workdir / "store", unavailable=fast_missing
            )
            ROLES.update(
                {alone.name: MLSERVER, behind.name: SIDECAR, v2_route.name: REFERENCE_V2, own_route.name: REFERENCE_OWN}
            )
            specs = [alone, behind, v2_route, own_route]
            if args.variants:
                specs += [
                    mfl_server_spec(
                        "mfl-server /predict (json, asyncio)",
                        sys.executable,
                        copy_model(workdir / "store", workdir / "store-stdlib"),
                        extra_env={"MFL_JSON": "stdlib", "MFL_EVENT_LOOP": "asyncio"},
                    ),
                    mfl_server_spec(
                        baseline_name,
                        fast,
                        copy_model(workdir / "store", workdir / "store-baseline"),
                        unavailable=baseline_missing,
                        extra_env={"PYTHONPATH": baseline_path},
                    ),
                ]
            print(table(measure_all(specs, estimator, workdir, args), args), flush=True)
        if "feedback" in args.suites:
            stores = [copy_model(workdir / "store", workdir / f"feedback-{n}") for n in ("before", "after")]
            specs = [
                mfl_server_spec(
                    f"before: {baseline_name}",
                    fast,
                    stores[0],
                    unavailable=baseline_missing,
                    extra_env={"PYTHONPATH": baseline_path},
                ),
                mfl_server_spec("after: mfl-server (orjson, uvloop)", fast, stores[1], unavailable=fast_missing),
            ]
            print(feedback_table(measure_feedback(specs, workdir, args), args, workdir), flush=True)
            if (stores[0] / MODEL / "feedback-claims").exists():
                print("warning: the baseline wrote claims, so it ran this checkout's code, not the baseline's")
    print(
        f"load average (1, 5, 15 min) before: {load_before}, after: {_load_average()} "
        "(other work on these two CPUs slows every server alike)"
    )


def _load_average() -> str:
    return ", ".join(f"{value:.2f}" for value in os.getloadavg())


if __name__ == "__main__":
    main()
