"""Feedback in the storage modes of issue 20, side by side in one run: throughput, latency, exactly-once across
two replicas, and how much the stores grow per million labelled predictions.

Rows, each at batch 1 and 32 (labels per ``/feedback`` request), every label new (ids made beforehand by
``/predict``), measured in interleaved rounds on servers that stay up:

- **baseline**: ``--baseline``, the last revision whose dedup was a per-replica in-memory LRU (not exactly-once
  across replicas), exported with ``git archive`` and run by the same interpreter: the throughput to keep;
- **volume + claims**: this checkout on a volume (today's default mode): one ``O_EXCL`` claim file per label,
  then a line of the daily feedback JSON-lines file;
- **object store + PostgreSQL**: this checkout with ``MFL_S3_*`` (prediction log: gzip segments in SeaweedFS)
  and ``MFL_DATABASE_URL`` (labels: the requests queued meanwhile in one autocommit ``INSERT ... ON CONFLICT DO
  NOTHING RETURNING``, acknowledged once it returned);
- **2 replicas, same labels**: two object store + PostgreSQL servers sharing the bucket and the database; the
  load generator splits its concurrency between them and sends every label to both, so each label races
  itself. Reported: labels/s acknowledged as new, the duplicates, and a check that every label is stored once
  (``SELECT count(*)`` = labels acknowledged as new = labels sent; every acknowledged id is in the ledger).

The goal (issue 20): exactly-once across replicas at >= 0.8x the baseline's labels/s, at batch 1 and 32. It is
judged on labels/s and, steadier on a shared machine, on CPU per request of everything server-side (the
server, plus PostgreSQL and SeaweedFS in the object store mode). ``/predict`` (rows/s) is measured on the same
servers for scale: on the volume each row is appended to the daily file before the answer, in s3 mode to an
in-memory segment uploaded every ``MFL_LOG_FLUSH_SECONDS`` (5 s) or 4 MB.

Growth: a fresh volume server and a fresh object store + PostgreSQL server each predict ``--growth`` rows
(20 float features) and get a label for every one; after a clean stop (the last segments uploaded) the run
counts the volume's files, folders (inodes) and bytes (prediction and feedback JSON lines, claim files), the
bucket's objects and bytes, and the ledger's rows and ``pg_total_relation_size`` (heap, index, TOAST of every
partition), scaled to 1,000,000 labelled predictions. Retention (``MFL_RETENTION_LOG_SECONDS``; claims and
ledger days never before the feedback max age + 1 h) bounds them: days kept x a day's volume.

CPUs: the load generator (this process) runs on CPU 0; every server, PostgreSQL and SeaweedFS on CPU 1. On a
2-core machine they would compete for the same cores anyway; pinning all server-side work to one core makes
the comparison honest: the database's and the object store's CPU is paid from the same core as the server's,
while the baseline's dedup (a dict in the server) has no such companion. PostgreSQL is the test bed's
(``mfl_testbed.postgres``): fsync off, as the volume mode's claim files and log lines are not fsynced per
request either; a production database flushes its WAL at each COMMIT (on its own disk and CPU). SeaweedFS and
PostgreSQL are started here and stopped at the end.

    python benchmarks/feedback_storage.py                  # 3 rounds of 2000 requests per cell, ~6-8 min
    python benchmarks/feedback_storage.py --quick          # one round of 1000, ~1.5-2 min: a smoke run
    python benchmarks/feedback_storage.py --baseline none --batches 32 --growth 1000000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
import server_throughput as st  # noqa: E402
from loadgen import LoadResult  # noqa: E402

from mfl_testbed.postgres import Postgres  # noqa: E402
from mfl_testbed.process import TestbedUnavailable  # noqa: E402
from mfl_testbed.seaweed import SeaweedFS  # noqa: E402

MODEL = st.MODEL
GOAL = 0.8  # feedback labels/s against the baseline's
POOL_SIZE = 4  # mfl_server.ledger_labels.POOL_SIZE: connections per replica
FLUSH_SECONDS, FLUSH_BYTES = 5.0, 4 * 1024 * 1024  # the server's defaults for prediction segments
MILLION = 1_000_000
BASELINE, VOLUME, S3 = "baseline", "volume", "s3"
JSON_HEADERS = {"Content-Type": "application/json"}
DEFAULTS = {"requests": 2000, "warmup": 300, "rounds": 3, "growth": 100_000, "max_seconds": 30.0}
QUICK = {"requests": 1000, "warmup": 100, "rounds": 1, "growth": 20_000, "max_seconds": 15.0}


# --- the services: SeaweedFS and PostgreSQL, on the server CPU -----------------------------------------------


@contextlib.contextmanager
def on_cpu(cpu: int) -> Iterator[None]:
    """Processes started meanwhile inherit ``cpu`` (all their threads: Go's, PostgreSQL's later backends)."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


@dataclass
class Services:
    seaweed: SeaweedFS
    postgres: Postgres

    def s3_env(self, prefix: str) -> dict[str, str]:
        return self.seaweed.s3_env(self.seaweed.tenant_a, prefix=prefix)

    def processes(self) -> dict[str, int]:
        """The process trees whose CPU the object store mode pays: the postmaster (its backends are its
        children) and SeaweedFS."""
        return {"pg": self.postgres.pid or 0, "s3": self.seaweed.pid or 0}


@contextlib.contextmanager
def services(workdir: Path) -> Iterator[Services]:
    # PostgreSQL runs as the `postgres` user when we are root: not under a 0700 temporary folder.
    pg_dir = Path(tempfile.mkdtemp(prefix="mfl-bench-pg-", dir="/var/tmp"))
    pg_dir.chmod(0o755)
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, pg_dir, ignore_errors=True)
        with on_cpu(st.SERVER_CPU):
            seaweed = SeaweedFS(workdir / "seaweedfs").start()
            stack.callback(seaweed.stop)
            postgres = Postgres(pg_dir / "server").start()
            stack.callback(postgres.stop)
        yield Services(seaweed, postgres)


# --- the servers -------------------------------------------------------------------------------------------


@dataclass
class Target:
    """One server (or two replicas) under test and the processes whose CPU it costs."""

    name: str
    kind: str  # BASELINE, VOLUME or S3
    specs: list[st.ServerSpec]
    database_url: str = ""
    services: dict[str, int] = field(default_factory=dict)  # label -> root of a process tree (pg, s3)
    ports: list[int] = field(default_factory=list)

    @property
    def unavailable(self) -> str:
        return next((spec.unavailable for spec in self.specs if spec.unavailable), "")

    def processes(self) -> dict[str, int]:
        many = len(self.specs) > 1
        servers = {f"srv{n + 1}" if many else "srv": st.GROUPS[spec.name][-1] for n, spec in enumerate(self.specs)}
        return {**servers, **self.services}

    def cpu_seconds(self) -> dict[str, float]:
        return tree_cpu_seconds(self.processes())

    def url(self, path: str, replica: int = 0) -> str:
        return f"http://127.0.0.1:{self.ports[replica]}{path}"


def server_python(args: argparse.Namespace) -> tuple[str, str]:
    """The servers' interpreter (as in their images: orjson and uvloop) and what it runs with."""
    probe = "import uvloop, mfl_server.jsonio as j; assert j.BACKEND == 'orjson'"
    if st._imports(Path(sys.executable), probe):
        return sys.executable, "orjson, uvloop"
    missing = st.ensure_venv(args.fast_venv, ["orjson>=3.11.5", "uvloop"], probe, not args.no_setup, True)
    if not missing:
        return str(args.fast_venv / "bin" / "python"), "orjson, uvloop"
    return sys.executable, f"json, asyncio: {missing}"


def s3_target(
    name: str, services: Services, python: str, store: Path, workdir: Path, tag: str, replicas: int = 1
) -> Target:
    """Object store + PostgreSQL servers sharing a bucket prefix and a database of their own."""
    url = services.postgres.create_tenant(f"bench_{tag}")
    env = {**services.s3_env(f"bench-{tag}"), "MFL_DATABASE_URL": url}
    specs = [
        st.mfl_server_spec(
            f"{name} #{n + 1}" if replicas > 1 else name,
            python,
            st.copy_model(store, workdir / f"store-{tag}-{n}"),  # s3 mode: the fetched version only
            extra_env=env,
        )
        for n in range(replicas)
    ]
    return Target(name, S3, specs, url, services.processes())


@contextlib.contextmanager
def started(targets: list[Target], workdir: Path, notes: dict[str, str]) -> Iterator[list[Target]]:
    """The targets that could start, up (one after the other: each replica's segment names differ)."""
    with contextlib.ExitStack() as stack:
        live = []
        for target in targets:
            if target.unavailable:
                notes[target.name] = f"not run: {target.unavailable}"
                continue
            try:
                target.ports = [stack.enter_context(st.running(spec, workdir)) for spec in target.specs]
            except Exception as error:  # reported in the table, not fatal
                notes[target.name] = f"not run: {type(error).__name__}: {error}"
                continue
            live.append(target)
        yield live


def tree_cpu_seconds(roots: dict[str, int]) -> dict[str, float]:
    """User + system CPU of each root process and its descendants, live or waited for. By process tree, not
    group: PostgreSQL's backends each start a session of their own (setsid), away from the postmaster's group."""
    parents, ticks = {}, {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(stat.parent.name)
        parents[pid] = int(fields[1])  # ppid
        ticks[pid] = sum(int(value) for value in fields[11:15])  # utime, stime, cutime, cstime
    totals = dict.fromkeys(roots, 0)
    owner = {pid: label for label, pid in roots.items()}
    for pid, spent in ticks.items():
        ancestor, seen = pid, 0
        while ancestor not in owner and ancestor > 1 and seen < 64:
            ancestor, seen = parents.get(ancestor, 0), seen + 1
        if ancestor in owner:
            totals[owner[ancestor]] += spent
    return {label: value / os.sysconf("SC_CLK_TCK") for label, value in totals.items()}


# --- the load: every body once, answers tallied ------------------------------------------------------------


@dataclass
class Tally:
    """What one replica answered: labels acknowledged as new, duplicates, other rejections."""

    accepted: int = 0
    duplicates: int = 0
    refused: int = 0
    requests: int = 0
    errors: int = 0
    first_error: str | None = None
    latencies: list[float] = field(default_factory=list)
    answered: set[int] = field(default_factory=set)  # indices of the bodies answered 200

    def add(self, other: Tally) -> None:
        self.answered |= other.answered
        self.accepted += other.accepted
        self.duplicates += other.duplicates
        self.refused += other.refused
        self.requests += other.requests
        self.errors += other.errors
        self.first_error = self.first_error or other.first_error


@dataclass
class LabelRun:
    batch: int
    elapsed: float
    client_cpu: float
    replicas: list[Tally]  # the measured phase, one per replica
    total: list[Tally]  # warm-up and measured phase, one per replica
    cpu_ms: dict[str, float] = field(default_factory=dict)  # srv, pg, s3 -> CPU ms per request sent

    @property
    def new_per_second(self) -> float:
        return sum(t.accepted for t in self.replicas) / self.elapsed if self.elapsed else 0.0

    @property
    def load(self) -> LoadResult:
        latencies = [value for tally in self.replicas for value in tally.latencies]
        errors = [tally.first_error for tally in self.replicas if tally.first_error]
        return LoadResult(
            requests=sum(t.requests for t in self.replicas),
            errors=sum(t.errors for t in self.replicas),
            elapsed=self.elapsed,
            rows_per_request=self.batch,
            client_cpu=self.client_cpu,
            latencies=latencies,
            first_error=errors[0] if errors else None,
        )


async def _post_each(
    session: aiohttp.ClientSession,
    url: str,
    bodies: list[bytes],
    first: int,
    workers: int,
    deadline: float,
    tally: Tally,
) -> None:
    """Each body once (each label is new); ``first``: the index of bodies[0] in the run, for ``answered``."""
    queue = iter(enumerate(bodies, first))

    async def worker() -> None:
        for index, body in queue:
            if time.perf_counter() > deadline:
                return
            sent = time.perf_counter()
            tally.requests += 1
            try:
                async with session.post(url, data=body, headers=JSON_HEADERS) as response:
                    payload, status = await response.read(), response.status
            except (TimeoutError, aiohttp.ClientError) as error:
                _failed(tally, f"{type(error).__name__}: {error}")
                continue
            if status != 200:
                _failed(tally, f"HTTP {status}: {payload[:200]!r}")
                continue
            tally.latencies.append(time.perf_counter() - sent)
            tally.answered.add(index)
            answer = json.loads(payload)
            tally.accepted += answer["accepted"]
            for entry in answer["rejected"]:
                if entry["reason"] == "duplicate":
                    tally.duplicates += 1
                else:
                    tally.refused += 1
                    tally.first_error = tally.first_error or f"rejected: {entry}"

    await asyncio.gather(*(worker() for _ in range(workers)))


def _failed(tally: Tally, problem: str) -> None:
    tally.errors += 1
    tally.first_error = tally.first_error or problem


async def _send(urls: list[str], bodies: list[bytes], warmup: int, batch: int, args: argparse.Namespace) -> LabelRun:
    """Every body to every url, ``--concurrency`` split between the urls; the first ``warmup`` bodies first,
    not timed."""
    workers = max(1, args.concurrency // len(urls))
    connector = aiohttp.TCPConnector(limit=workers * len(urls))
    phases = []
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:
        for first, part in ((0, bodies[:warmup]), (warmup, bodies[warmup:])):
            tallies = [Tally() for _ in urls]
            cpu, started_at = time.process_time(), time.perf_counter()
            deadline = started_at + args.max_seconds
            await asyncio.gather(
                *(_post_each(session, url, part, first, workers, deadline, t) for url, t in zip(urls, tallies))
            )
            elapsed = time.perf_counter() - started_at
            phases.append((tallies, elapsed, (time.process_time() - cpu) / elapsed if elapsed else 0.0))
    (warm, _, _), (measured, elapsed, client_cpu) = phases
    totals = []
    for early, late in zip(warm, measured):
        both = Tally()
        both.add(early)
        both.add(late)
        totals.append(both)
    return LabelRun(batch, elapsed, client_cpu, measured, totals)


def send_labels(target: Target, batches: list[list[str]], warmup: int, args: argparse.Namespace) -> LabelRun:
    """One timed run after ``warmup`` bodies: every replica gets every batch of ids, labelled."""
    urls = [target.url("/feedback", n) for n in range(len(target.ports))]
    before = target.cpu_seconds()
    bodies = [_feedback_body(chunk) for chunk in batches]
    run = asyncio.run(_send(urls, bodies, warmup, len(batches[0]), args))
    sent = sum(t.requests for t in run.total)
    run.cpu_ms = {k: 1000 * (v - before[k]) / max(sent, 1) for k, v in target.cpu_seconds().items()}
    return run


def batches_of(ids: Iterator[str], batch: int, count: int) -> list[list[str]]:
    return [[next(ids) for _ in range(batch)] for _ in range(count)]


def _feedback_body(ids: list[str]) -> bytes:
    return json.dumps({"feedback": [{"id": row_id, "label": n % 2} for n, row_id in enumerate(ids)]}).encode()


# --- what the database's connections do while labels arrive ------------------------------------------------


class ActivitySampler:
    """Samples the servers' connections in pg_stat_activity a few times a second, per phase: ``active`` (a
    statement runs in PostgreSQL), ``idle in transaction`` (PostgreSQL waits for the server's next statement or
    COMMIT: the server's loop is behind), ``idle`` (free in the pool). All ``POOL_SIZE`` connections of a replica
    busy means the next request waits for the pool."""

    QUERY = (
        "SELECT state, coalesce(wait_event_type || ':' || wait_event, '') FROM pg_stat_activity "
        "WHERE application_name LIKE 'mfl-server%'"
    )

    def __init__(self, url: str, interval: float = 0.2) -> None:
        self.url = url
        self.interval = interval
        self.phase: str | None = None
        self.states: dict[str, Counter[str]] = {}
        self.waits: dict[str, Counter[str]] = {}
        self.busy: dict[str, Counter[int]] = {}  # phase -> connections not idle -> samples
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pg-activity", daemon=True)

    def __enter__(self) -> ActivitySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    @contextlib.contextmanager
    def sampling(self, phase: str) -> Iterator[None]:
        self.phase = phase
        try:
            yield
        finally:
            self.phase = None

    def _run(self) -> None:
        import psycopg

        with contextlib.suppress(psycopg.Error), psycopg.connect(self.url, autocommit=True) as conn:
            while not self._stop.wait(self.interval):
                phase = self.phase
                if phase is None:
                    continue
                rows = conn.execute(self.QUERY).fetchall()
                self.states.setdefault(phase, Counter()).update(state or "?" for state, _ in rows)
                self.waits.setdefault(phase, Counter()).update(w for s, w in rows if w and s == "active")
                self.busy.setdefault(phase, Counter())[sum(state != "idle" for state, _ in rows)] += 1

    def summary(self, phase: str, replicas: int = 1) -> str:
        states, busy = self.states.get(phase), self.busy.get(phase)
        if not states or not busy:
            return f"{phase}: no samples"
        total, samples = sum(states.values()), sum(busy.values())
        shares = ", ".join(f"{state} {100 * n / total:.0f}%" for state, n in states.most_common())
        full = sum(n for count, n in busy.items() if count >= POOL_SIZE * replicas)
        waits = ", ".join(f"{what} {100 * n / total:.0f}%" for what, n in self.waits[phase].most_common(3))
        return (
            f"{phase}: connections {shares} ({samples} samples, {total / samples:.1f} connections); all "
            f"{POOL_SIZE * replicas} busy (requests wait for the pool) in {100 * full / samples:.0f}% of samples"
            + (f"; active connections waited on: {waits}" if waits else "")
        )


# --- measuring ---------------------------------------------------------------------------------------------


@dataclass
class Row:
    name: str
    kind: str
    batch: int
    runs: list[Any] = field(default_factory=list)  # LabelRun (feedback) or (LoadResult, cpu ms) (predict)
    note: str = ""

    @property
    def median(self) -> Any:
        ordered = sorted(self.runs, key=_rate)
        return ordered[len(ordered) // 2] if ordered else None


def _rate(run: Any) -> float:
    return run.new_per_second if isinstance(run, LabelRun) else run[0].rows_per_second


@dataclass
class Throughput:
    feedback: list[Row]
    predict: list[Row]
    stored: dict[str, tuple[int, int]] = field(default_factory=dict)  # target -> (accepted, ledger rows)


def measure(
    targets: list[Target], estimator: Any, workdir: Path, args: argparse.Namespace, sampler: ActivitySampler
) -> Throughput:
    """Feedback then /predict, rounds interleaving the targets so a burst of other work hits each alike."""
    notes: dict[Any, str] = {}
    feedback: dict[tuple[str, int], list[LabelRun]] = {}
    predict: dict[tuple[str, int], list[tuple[LoadResult, float]]] = {}
    accepted: Counter[str] = Counter()
    with started(targets, workdir, notes) as live:
        per_target = (args.warmup + args.requests) * args.rounds * sum(args.batches) + sum(args.batches)
        progress(f"making {per_target:,} prediction ids on each of {len(live)} servers")
        ids = {t.name: iter(st.make_ids(t.url("/predict"), per_target)) for t in live}
        for round_index in range(args.rounds):
            for batch in args.batches:
                progress(f"feedback, round {round_index + 1} of {args.rounds}, batch {batch}")
                for target in live:
                    key = (target.name, batch)
                    if round_index == 0:
                        problem = st._check_feedback(
                            target.url("/feedback"), _feedback_body(batches_of(ids[target.name], batch, 1)[0])
                        )
                        accepted[target.name] += 0 if problem else batch
                        notes.update({key: f"not run: {problem}"} if problem else {})
                    if key in notes:
                        continue
                    batches = batches_of(ids[target.name], batch, args.warmup + args.requests)
                    with sampler.sampling(target.name) if target.kind == S3 else contextlib.nullcontext():
                        run = send_labels(target, batches, args.warmup, args)
                    accepted[target.name] += sum(t.accepted for t in run.total)
                    feedback.setdefault(key, []).append(run)
        for round_index in range(args.rounds):
            for batch in args.batches:
                progress(f"/predict, round {round_index + 1} of {args.rounds}, batch {batch}")
                for target in live:
                    key = ("predict", target.name, batch)
                    if round_index == 0:
                        problem = st.measure_batch(
                            target.specs[0], target.ports[0], estimator, batch, args, True, None, True
                        )
                        notes.update({key: f"not run: {problem}"} if problem else {})
                    if key not in notes:
                        predict.setdefault(key[1:], []).append(measure_predict(target, estimator, batch, args))
        stored = {t.name: (accepted[t.name], ledger_rows(t.database_url)) for t in live if t.database_url}

    def rows(runs: dict[tuple[str, int], list[Any]], prefix: tuple[str, ...]) -> list[Row]:
        return [
            Row(t.name, t.kind, b, runs.get((t.name, b), []), notes.get(t.name) or notes.get((*prefix, t.name, b), ""))
            for b in args.batches
            for t in targets
        ]

    return Throughput(rows(feedback, ()), rows(predict, ("predict",)), stored)


def measure_predict(target: Target, estimator: Any, batch: int, args: argparse.Namespace) -> tuple[LoadResult, float]:
    """st.measure_batch's load (64 bodies cycled) and the server-side CPU per request."""
    before = sum(target.cpu_seconds().values())
    result = st.measure_batch(target.specs[0], target.ports[0], estimator, batch, args, False)
    assert isinstance(result, LoadResult)
    cpu = 1000 * (sum(target.cpu_seconds().values()) - before) / max(args.warmup + result.requests, 1)
    return result, cpu


def ledger_rows(url: str) -> int:
    import psycopg

    with psycopg.connect(url) as conn:
        return conn.execute("SELECT count(*) FROM mfl_labels").fetchone()[0]


@dataclass
class PairOutcome:
    rows: list[Row]
    verdict: str = ""  # the exactly-once check, said
    verified: bool = False
    per_replica: list[tuple[int, int]] = field(default_factory=list)  # (new, duplicates) per replica, all runs


def measure_pair(target: Target, workdir: Path, args: argparse.Namespace, sampler: ActivitySampler) -> PairOutcome:
    """Two replicas, every label sent to both at about the same time; then the ledger is checked."""
    notes: dict[str, str] = {}
    runs: dict[int, list[LabelRun]] = {}
    sent: set[str] = set()  # ids in a body that some replica answered
    twice: set[str] = set()  # ids in a body that both replicas answered: one of them must say duplicate
    totals = [Tally(), Tally()]
    with started([target], workdir, notes) as live:
        if not live:
            return PairOutcome([Row(target.name, S3, b, note=notes[target.name]) for b in args.batches])
        count = (args.warmup + args.requests) * args.rounds * sum(args.batches)
        progress(f"2 replicas: making {count:,} prediction ids")
        ids = iter(st.make_ids(target.url("/predict"), count))
        for round_index in range(args.rounds):
            for batch in args.batches:
                progress(f"2 replicas, round {round_index + 1} of {args.rounds}, batch {batch}")
                batches = batches_of(ids, batch, args.warmup + args.requests)
                with sampler.sampling(target.name):
                    run = send_labels(target, batches, args.warmup, args)
                runs.setdefault(batch, []).append(run)
                for total, tally in zip(totals, run.total):
                    total.add(tally)
                first, second = (t.answered for t in run.total)
                sent.update(i for n in first | second for i in batches[n])
                twice.update(i for n in first & second for i in batches[n])
    outcome = PairOutcome([Row(target.name, S3, b, runs.get(b, [])) for b in args.batches])
    outcome.verified, outcome.verdict = verify_once(target.database_url, sent, len(twice), totals)
    return outcome


def verify_once(url: str, acknowledged: set[str], twice: int, totals: list[Tally]) -> tuple[bool, str]:
    """Every label stored once: rows = distinct ids = labels acknowledged as new (by either replica) = labels
    sent; every acknowledged id is in the ledger; every label answered by both replicas was new on one only."""
    import psycopg

    with psycopg.connect(url) as conn:
        rows, distinct = conn.execute("SELECT count(*), count(DISTINCT id) FROM mfl_labels").fetchone()
        present = conn.execute("SELECT count(*) FROM mfl_labels WHERE id = ANY(%s)", [sorted(acknowledged)]).fetchone()[
            0
        ]
    new = sum(t.accepted for t in totals)
    duplicates = sum(t.duplicates for t in totals)
    sent = len(acknowledged)
    errors = sum(t.errors + t.refused for t in totals)
    ok = rows == distinct == new == present == sent and duplicates == twice and errors == 0
    said = (
        f"exactly-once {'verified' if ok else 'FAILED'}: {sent:,} labels sent, {twice:,} of them answered by both "
        "replicas; "
        f"acknowledged as new {new:,} (replica 1: {totals[0].accepted:,}, replica 2: {totals[1].accepted:,}), "
        f"duplicates {duplicates:,}; SELECT count(*) = {rows:,}, count(DISTINCT id) = {distinct:,}, "
        f"acknowledged ids found: {present:,}"
    )
    return ok, said + (f"; errors/refusals: {errors}" if errors else "")


# --- growth ------------------------------------------------------------------------------------------------


@dataclass
class FolderSize:
    files: int = 0
    folders: int = 0
    bytes: int = 0  # file sizes
    allocated: int = 0  # blocks of files and folders (what du counts)

    @property
    def inodes(self) -> int:
        return self.files + self.folders


def folder_size(root: Path) -> FolderSize:
    size = FolderSize()
    for folder, _, files in os.walk(root):
        size.folders += 1
        size.allocated += os.stat(folder).st_blocks * 512
        for name in files:
            info = os.stat(Path(folder) / name)
            size.files += 1
            size.bytes += info.st_size
            size.allocated += info.st_blocks * 512
    return size


@dataclass
class Growth:
    labelled: int
    volume: dict[str, FolderSize] = field(default_factory=dict)  # predictions, feedback, feedback-claims
    objects: dict[str, tuple[int, int]] = field(default_factory=dict)  # top folder -> (objects, bytes)
    ledger_rows: int = 0
    ledger_bytes: int = 0  # of the partitions holding rows
    partitions: int = 0  # holding rows
    empty_partitions: int = 0  # made ahead for the days whose labels may still come: a fixed cost
    empty_bytes: int = 0
    notes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


def measure_growth(services: Services, python: str, store: Path, workdir: Path, args: argparse.Namespace) -> Growth:
    growth = Growth(args.growth)
    volume_root = st.copy_model(store, workdir / "growth-volume")
    volume = Target("growth: volume", VOLUME, [st.mfl_server_spec("growth volume", python, volume_root)])
    s3 = s3_target("growth: object store", services, python, store, workdir, "growth")
    for target in (volume, s3):
        started_at = time.monotonic()
        problem = label_everything(target, workdir, args)  # the servers stop here: segments uploaded
        growth.seconds[target.kind] = time.monotonic() - started_at
        if problem:
            growth.notes.append(f"{target.name}: {problem}")
    for name in ("predictions", "feedback", "feedback-claims"):
        growth.volume[name] = folder_size(volume_root / MODEL / name)
    from mfl_contracts.objectstore import S3Store, s3_settings_from_env

    settings = s3_settings_from_env(services.s3_env("bench-growth"))
    assert settings is not None
    for info in S3Store(settings).list(""):
        top = info.key.split("/")[1] if info.key.startswith(f"{MODEL}/") else info.key.split("/")[0]
        count, size = growth.objects.get(top, (0, 0))
        growth.objects[top] = (count + 1, size + info.size)
    import psycopg

    with psycopg.connect(s3.database_url) as conn:
        rows = dict(conn.execute("SELECT tableoid::regclass::text, count(*) FROM mfl_labels GROUP BY 1").fetchall())
        sizes = conn.execute(
            "SELECT relid::regclass::text, pg_total_relation_size(relid) FROM pg_partition_tree('mfl_labels') "
            "WHERE isleaf"
        ).fetchall()
    growth.ledger_rows = sum(rows.values())
    for name, size in sizes:
        if rows.get(name):
            growth.partitions += 1
            growth.ledger_bytes += size
        else:
            growth.empty_partitions += 1
            growth.empty_bytes += size
    return growth


def label_everything(target: Target, workdir: Path, args: argparse.Namespace) -> str:
    """``--growth`` rows predicted, each labelled once (32 per request); '' or what went wrong. The server
    stops before this returns: its last segments are uploaded."""
    notes: dict[str, str] = {}
    with started([target], workdir, notes) as live:
        if not live:
            return notes[target.name]
        ids = st.make_ids(target.url("/predict"), args.growth)[: args.growth]
        batches = [ids[start : start + 32] for start in range(0, len(ids), 32)]
        run = send_labels(target, batches, 0, argparse.Namespace(**{**vars(args), "max_seconds": 1200.0}))
    total = run.total[0]
    if total.accepted != len(ids):
        return f"{total.accepted} of {len(ids)} labels accepted ({total.first_error})"
    return ""


# --- the tables --------------------------------------------------------------------------------------------


def _ms(load: LoadResult) -> str:
    return f"{load.percentile_ms(0.5):>7.2f} {load.percentile_ms(0.99):>7.2f}"


def _cpu_total(cpu: dict[str, float]) -> float:
    return sum(cpu.values())


def _cpu_text(cpu: dict[str, float]) -> str:
    parts = " ".join(f"{label} {value:.2f}" for label, value in cpu.items() if len(cpu) > 1)
    return f"{_cpu_total(cpu):.2f}" + (f" ({parts})" if parts else "")


def feedback_table(
    rows: list[Row], pair: PairOutcome, args: argparse.Namespace, backend: str, workdir: Path
) -> list[str]:
    head = (
        f"{'feedback':<44} {'batch':>5} {'labels/s':>9} {'(range)':>13} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'CPU ms/request (server-side)':<42} {'x base':>6} {'(CPU)':>6}  goal >= {GOAL}"
    )
    lines = [
        f"feedback: every label new; concurrency {args.concurrency}; {args.requests} requests per run after "
        f"{args.warmup} warm-up; median of {args.rounds} interleaved rounds; servers ({backend}), PostgreSQL "
        f"(fsync off) and SeaweedFS on CPU {st.SERVER_CPU}, load generator on "
        f"CPU {st.CLIENT_CPU}; volume on {st.filesystem_of(workdir)}",
        "labels/s: acknowledged as new; x base: labels/s / the baseline's; (CPU): the baseline's CPU per request / "
        "this row's (srv: the server, pg: PostgreSQL, s3: SeaweedFS); 2 replicas: each label sent to both",
        head,
        "-" * len(head),
    ]
    base = {row.batch: row.median for row in rows if row.kind == BASELINE and row.median}
    for batch in args.batches:
        for row in [r for r in rows if r.batch == batch] + [r for r in pair.rows if r.batch == batch]:
            lines += _feedback_line(row, base.get(batch), row in pair.rows)
    return lines


def _feedback_line(row: Row, base: LabelRun | None, pair: bool) -> list[str]:
    name = row.name
    run: LabelRun | None = row.median
    if run is None:
        return [f"{name:<44} {row.batch:>5} {row.note or 'not run'}"]
    rates = [r.new_per_second for r in row.runs]
    spread = f"{min(rates):.0f}-{max(rates):.0f}"
    ratio = cpu_ratio = verdict = ""
    if base is not None and row.kind != BASELINE:
        value = run.new_per_second / base.new_per_second
        by_cpu = _cpu_total(base.cpu_ms) / _cpu_total(run.cpu_ms) if _cpu_total(run.cpu_ms) else float("nan")
        ratio, cpu_ratio = f"{value:.2f}", f"{by_cpu:.2f}"
        verdict = "(2 requests per label)" if pair else f"{_verdict(value)} (by CPU: {_verdict(by_cpu)})"
    load = run.load
    lines = [
        f"{name:<44} {row.batch:>5} {run.new_per_second:>9.0f} {spread:>13} {_ms(load)} "
        f"{_cpu_text(run.cpu_ms):<42} {ratio:>6} {cpu_ratio:>6}  {verdict}"
    ]
    if pair:
        duplicates = sum(t.duplicates for t in run.replicas)
        lines.append(
            f"{'':<44} {'':>5} duplicates/s {duplicates / run.elapsed:.0f}, requests/s {load.requests_per_second:.0f}"
            f" (replica 1: {run.replicas[0].accepted:,} new, {run.replicas[0].duplicates:,} duplicates; "
            f"replica 2: {run.replicas[1].accepted:,} new, {run.replicas[1].duplicates:,} duplicates)"
        )
    errors = sum(t.errors + t.refused for r in row.runs for t in r.total)
    if errors:
        first = next(t.first_error for r in row.runs for t in r.total if t.first_error)
        lines.append(f"{'':<44} errors or refusals: {errors}, first: {first}")
    return lines


def _verdict(ratio: float) -> str:
    return "met" if ratio >= GOAL else "MISSED"


def predict_table(rows: list[Row], args: argparse.Namespace) -> list[str]:
    head = f"{'/predict':<44} {'batch':>5} {'rows/s':>9} {'(range)':>13} {'p50 ms':>7} {'p99 ms':>7} {'CPU ms/req':>10}"
    lines = [
        "/predict on the same servers (volume: a line per row appended before the answer; s3: buffered gzip "
        f"segments, uploaded every {FLUSH_SECONDS:.0f} s or {FLUSH_BYTES >> 20} MB)",
        head,
        "-" * len(head),
    ]
    for row in rows:
        if row.median is None:
            lines.append(f"{row.name:<44} {row.batch:>5} {row.note or 'not run'}")
            continue
        load, cpu = row.median
        rates = [r.rows_per_second for r, _ in row.runs]
        lines.append(
            f"{row.name:<44} {row.batch:>5} {load.rows_per_second:>9.0f} {f'{min(rates):.0f}-{max(rates):.0f}':>13} "
            f"{_ms(load)} {cpu:>10.3f}" + (f"  errors: {load.errors} ({load.first_error})" if load.errors else "")
        )
    return lines


def growth_table(growth: Growth, args: argparse.Namespace) -> list[str]:
    """Bytes, claim files and ledger rows grow with the labels: scaled to a million. Log files, segment
    objects and folders grow with days, writers and time (not labels): as this run counted them."""
    scale = MILLION / growth.labelled
    head = (
        f"{'':<44} {'per 1M: items':>13} {'bytes':>11} {'on disk':>11} | {'this run: files/objects':>23} {'folders':>7}"
    )
    lines = [
        f"growth: {growth.labelled:,} rows predicted (20 float features), each labelled once (volume "
        f"{growth.seconds.get(VOLUME, 0):.0f} s, object store + PostgreSQL {growth.seconds.get(S3, 0):.0f} s), "
        "then the servers stopped (last segments uploaded); per 1,000,000 labelled predictions:",
        head,
        "-" * len(head),
    ]
    names = {
        "predictions": ("volume: prediction log (JSON lines)", False),
        "feedback": ("volume: feedback log (JSON lines)", False),
        "feedback-claims": ("volume: claims (an empty file per label)", True),
    }
    for name, size in growth.volume.items():
        what, per_label = names[name]
        items = f"{size.files * scale:,.0f}" if per_label else "-"
        lines.append(
            f"{what:<44} {items:>13} {_size(size.bytes * scale):>11} {_size(size.allocated * scale):>11} | "
            f"{size.files:>23,} {size.folders:>7,}"
        )
    for top, (count, size) in sorted(growth.objects.items()):
        what = "object store: prediction segments (gzip)" if top == "predictions" else f"object store: {top}/"
        lines.append(f"{what:<44} {'-':>13} {_size(size * scale):>11} {'-':>11} | {count:>23,}")
    if not growth.objects:
        lines.append("object store: no objects")
    lines.append(
        f"{'PostgreSQL: ledger (heap + index + TOAST)':<44} {growth.ledger_rows * scale:>13,.0f} "
        f"{_size(growth.ledger_bytes * scale):>11} {'-':>11} | {growth.partitions} day partition(s) with rows; "
        f"{growth.empty_partitions} empty ones made ahead: {_size(growth.empty_bytes)} in all"
    )
    lines += [f"problem: {note}" for note in growth.notes]
    return lines + retention_lines(growth, args)


def retention_lines(growth: Growth, args: argparse.Namespace) -> list[str]:
    """What retention keeps at ``--labels-per-day`` on ``--replicas`` replicas for ``--retention-days``."""
    days, daily, replicas = args.retention_days + 1, args.labels_per_day, args.replicas
    per_day = daily / growth.labelled  # this run's measures -> a day's
    volume_bytes = sum(size.allocated for size in growth.volume.values()) * per_day
    claims = growth.volume["feedback-claims"].files * per_day
    # Folders and log files come per day, not per label: 256 claim shards, a file per writer in each log's day.
    fixed_inodes = 1 + 256 + 2 * (1 + replicas)
    segments, segment_bytes = growth.objects.get("predictions", (0, 0))
    line_bytes = growth.volume["predictions"].bytes / growth.labelled  # uncompressed: a segment's content
    # A replica uploads a segment every FLUSH_SECONDS while it has traffic, or at FLUSH_BYTES: time decides
    # unless a replica logs more than FLUSH_BYTES every FLUSH_SECONDS.
    objects_day = replicas * max(86400 / FLUSH_SECONDS, daily * line_bytes / replicas / FLUSH_BYTES)
    return [
        "",
        "bounded by retention: the hourly sweep deletes log days past MFL_RETENTION_LOG_SECONDS (day folders, "
        "segment objects, ledger partitions; claim days and ledger days never before the feedback max age + 1 h), "
        f"so a store holds about (days kept + 1) x a day's volume. At {daily:,} labelled predictions a day on "
        f"{replicas} replicas, {args.retention_days} days kept (the operator's default: feedback max age 30 d + 2 d):",
        f"  volume + claims: {_size(volume_bytes * days)} on disk, {(claims + fixed_inodes) * days / MILLION:,.1f} M "
        f"inodes ({claims * days / MILLION:,.1f} M claim files: check df -i as well as df)",
        f"  object store: {_size(segment_bytes * per_day * days)} of prediction segments in ~{objects_day * days:,.0f} "
        f"objects ({objects_day:,.0f} a day: a segment per replica every {FLUSH_SECONDS:.0f} s with traffic, "
        f"{_size(daily * line_bytes / objects_day)} of JSON lines each; this run, at full speed, wrote {segments})",
        f"  PostgreSQL: {daily * days / MILLION:,.1f} M rows, {_size(growth.ledger_bytes * per_day * days)} in "
        f"{days} day partitions (+ WAL, recycled)",
    ]


def _size(value: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{value:.0f} B"
        value /= 1024
    return f"{value:.1f} TiB"


# --- main --------------------------------------------------------------------------------------------------


@dataclass
class Report:
    text: str
    throughput: Throughput
    pair: PairOutcome
    growth: Growth


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a ~2 min smoke run: " + str(QUICK))
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--requests", type=int, help=f"per run (default {DEFAULTS['requests']})")
    parser.add_argument("--warmup", type=int, help=f"requests before each run (default {DEFAULTS['warmup']})")
    parser.add_argument("--rounds", type=int, help=f"default {DEFAULTS['rounds']}")
    parser.add_argument("--max-seconds", type=float, help=f"per run (default {DEFAULTS['max_seconds']})")
    parser.add_argument("--growth", type=int, help=f"labelled predictions for growth (default {DEFAULTS['growth']})")
    parser.add_argument("--baseline", default=st.BASELINE_REV, help="git revision (in-memory dedup); 'none': skip")
    parser.add_argument("--labels-per-day", type=int, default=MILLION, help="for the retention bound")
    parser.add_argument("--retention-days", type=int, default=32, help="for the retention bound")
    parser.add_argument("--replicas", type=int, default=2, help="for the retention bound")
    parser.add_argument("--fast-venv", type=Path, default=st.CACHE / "mfl-fast")
    parser.add_argument("--no-setup", action="store_true", help="do not create a venv for orjson and uvloop")
    args = parser.parse_args(argv)
    for name, value in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def main(argv: list[str] | None = None) -> Report:
    args = parse(argv)
    if len(os.sched_getaffinity(0)) < 2 and (os.cpu_count() or 1) < 2:
        raise SystemExit("needs two CPUs: one for the servers and their services, one for the load generator")
    python, backend = server_python(args)
    affinity = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {st.CLIENT_CPU})
    load_before = os.getloadavg()
    try:
        with tempfile.TemporaryDirectory(prefix="mfl-bench-storage-") as tmp:
            report = run(Path(tmp), python, backend, args)
    finally:
        os.sched_setaffinity(0, affinity)
    report.text += (
        f"\nload average (1, 5, 15 min) before: {_loads(load_before)}, after: {_loads(os.getloadavg())} "
        "(other work on these two CPUs slows every row alike; CPU per request is the steadier figure)"
    )
    print(report.text, flush=True)
    return report


def run(workdir: Path, python: str, backend: str, args: argparse.Namespace) -> Report:
    estimator, _ = st.train("logreg", workdir / "store")
    store = workdir / "store"
    baseline_path, missing = (
        ("", "--baseline none") if args.baseline == "none" else st.export_baseline(args.baseline, workdir)
    )
    progress("starting SeaweedFS and PostgreSQL")
    with services(workdir) as svc, ActivitySampler(svc.postgres.admin_url) as sampler:
        baseline = st.mfl_server_spec(
            "baseline",
            python,
            st.copy_model(store, workdir / "store-baseline"),
            unavailable=missing,
            extra_env={"PYTHONPATH": baseline_path},
        )
        volume = st.mfl_server_spec("volume", python, st.copy_model(store, workdir / "store-volume"))
        single = s3_target("object store + PostgreSQL", svc, python, store, workdir, "single")
        targets = [
            Target(f"baseline {args.baseline[:7]}: in-memory dedup", BASELINE, [baseline]),
            Target("volume + claims", VOLUME, [volume]),
            single,
        ]
        throughput = measure(targets, estimator, workdir, args, sampler)
        pair_target = s3_target("s3 + PostgreSQL: 2 replicas, same labels", svc, python, store, workdir, "pair", 2)
        pair = measure_pair(pair_target, workdir, args, sampler)
        progress(f"growth: {args.growth:,} labelled predictions in each mode")
        growth = measure_growth(svc, python, store, workdir, args)
        lines = feedback_table(throughput.feedback, pair, args, backend, workdir)
        lines += ["", pair.verdict or "exactly-once: not checked (the replicas did not run)"]
        lines += _stored_lines(throughput.stored)
        if (workdir / "store-baseline" / MODEL / "feedback-claims").exists():
            lines.append("warning: the baseline wrote claims, so it ran this checkout's code, not the baseline's")
        lines += ["", "PostgreSQL connections of the servers during their feedback runs (sampled):"]
        lines += [f"  {sampler.summary(t.name, len(t.specs))}" for t in (single, pair_target)]
        lines += ["", *predict_table(throughput.predict, args), "", *growth_table(growth, args)]
    return Report("\n".join(lines), throughput, pair, growth)


def _stored_lines(stored: dict[str, tuple[int, int]]) -> list[str]:
    return [
        f"{name}: {accepted:,} labels acknowledged, {rows:,} rows in its ledger "
        f"({'the same' if accepted == rows else 'DIFFERENT'})"
        for name, (accepted, rows) in stored.items()
    ]


def _loads(values: tuple[float, float, float]) -> str:
    return ", ".join(f"{value:.2f}" for value in values)


def progress(message: str) -> None:
    """On stderr, so the table on stdout stays whole."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    try:
        main()
    except TestbedUnavailable as error:
        raise SystemExit(f"cannot run: {error}") from None
