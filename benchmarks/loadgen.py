"""A closed-loop HTTP load generator: fixed concurrency, bounded request count and time, loopback only.

``concurrency`` workers share one keep-alive connection pool; each sends a pre-encoded body, waits for
the full response, records the latency and sends the next, until ``requests`` were measured or
``max_seconds`` passed. Warm-up requests are sent first and not measured. The client's own CPU use is
reported, so a saturated client is visible instead of being mistaken for a slow server.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import aiohttp

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass
class LoadResult:
    requests: int
    errors: int
    elapsed: float
    rows_per_request: int
    client_cpu: float  # client CPU seconds / wall seconds (1.0 = one core saturated)
    latencies: list[float] = field(default_factory=list)  # seconds, successful requests only
    first_error: str | None = None

    @property
    def requests_per_second(self) -> float:
        return len(self.latencies) / self.elapsed if self.elapsed else 0.0

    @property
    def rows_per_second(self) -> float:
        return self.requests_per_second * self.rows_per_request

    def percentile_ms(self, fraction: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return 1000 * ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def run_load(
    url: str,
    bodies: list[bytes],
    *,
    rows_per_request: int,
    concurrency: int = 8,
    requests: int = 2000,
    warmup: int = 200,
    max_seconds: float = 30.0,
) -> LoadResult:
    _require_loopback(url)
    headers = {"Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await _phase(session, url, bodies, headers, concurrency, warmup, max_seconds, None)
        result = LoadResult(requests=0, errors=0, elapsed=0.0, rows_per_request=rows_per_request, client_cpu=0.0)
        cpu_started, started = time.process_time(), time.perf_counter()
        await _phase(session, url, bodies, headers, concurrency, requests, max_seconds, result)
        result.elapsed = time.perf_counter() - started
        result.client_cpu = (time.process_time() - cpu_started) / result.elapsed
    return result


async def _phase(
    session: aiohttp.ClientSession,
    url: str,
    bodies: list[bytes],
    headers: dict[str, str],
    concurrency: int,
    requests: int,
    max_seconds: float,
    result: LoadResult | None,
) -> None:
    deadline = time.perf_counter() + max_seconds
    tickets = iter(range(requests))
    cycle = itertools.cycle(bodies)

    async def worker() -> None:
        for _ in tickets:
            if time.perf_counter() > deadline:
                return
            await _one(session, url, next(cycle), headers, result)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def _one(
    session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str], result: LoadResult | None
) -> None:
    sent = time.perf_counter()
    try:
        async with session.post(url, data=body, headers=headers) as response:
            payload = await response.read()
            ok = response.status == 200
            problem = None if ok else f"HTTP {response.status}: {payload[:200]!r}"
    except (TimeoutError, aiohttp.ClientError) as error:
        ok, problem = False, f"{type(error).__name__}: {error}"
    if result is None:
        return
    result.requests += 1
    if ok:
        result.latencies.append(time.perf_counter() - sent)
    else:
        result.errors += 1
        result.first_error = result.first_error or problem


def _require_loopback(url: str) -> None:
    host = urlsplit(url).hostname
    if host not in LOOPBACK and not (host or "").startswith("127."):
        raise ValueError(f"load is only ever sent to loopback addresses, not {host!r}")
