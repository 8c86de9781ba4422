"""Fleet-level Prometheus polling: one query per (endpoint, template) for every due loop together.

The thin edge around prometheus-api-client. Errors, timeouts, NaN and empty results all become
"no data" samples with the reason; the pure rule evaluation decides what no data means.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from prometheus_api_client import PrometheusApiClientException, PrometheusConnect
from urllib3.util.retry import Retry

from feedbackloop.core import promql
from feedbackloop.core.api import MetricRule, PrometheusEndpoint
from feedbackloop.core.credentials import redact
from feedbackloop.core.monitoring import Sample

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EndpointKey:
    """Loops that share this key share a client (and so a connection pool and batched queries)."""

    url: str
    token: str | None
    ca_file: str | None
    insecure: bool
    timeout: float


@dataclass
class LoopQuery:
    """One loop's wish for this round: its rules, placeholder values and endpoint."""

    key: str  # namespace/name
    endpoint: EndpointKey
    values: dict[str, str]
    rules: list[MetricRule]


@dataclass
class PollStats:
    queries: int = 0
    errors: int = 0
    batched_templates: int = 0
    unbatched_templates: int = 0
    seconds: float = 0.0
    error_messages: list[str] = field(default_factory=list)


Series = list[tuple[dict[str, str], float]]
QueryFn = Callable[[EndpointKey, str], Series]
AsyncQueryFn = Callable[[EndpointKey, str], Awaitable[Series]]


def endpoint_key(endpoint: PrometheusEndpoint, token: str | None, ca_file: str | None) -> EndpointKey:
    return EndpointKey(
        endpoint.url.rstrip("/"), token, ca_file, endpoint.insecure_skip_verify, endpoint.timeout.seconds
    )


class QueryRejected(Exception):
    """Prometheus answered and refused the query (4xx: bad PromQL, too many samples): the query is wrong,
    as opposed to an outage (connection errors, timeouts, 5xx), which is only missing data."""


class PrometheusClients:
    """One prometheus-api-client per endpoint; never retries inside a poll (the next poll is the retry)."""

    def __init__(self) -> None:
        self._clients: dict[EndpointKey, PrometheusConnect] = {}

    def query(self, endpoint: EndpointKey, query: str) -> Series:
        client = self._clients.get(endpoint) or self._connect(endpoint)
        try:
            result = client.custom_query(query)
        except PrometheusApiClientException as error:
            if re.match(r"HTTP Status Code 4\d\d", str(error)):
                raise QueryRejected(str(error)[:300]) from error
            raise
        return [(item.get("metric", {}), _to_float(item.get("value", [0, "NaN"])[1])) for item in result]

    def _connect(self, endpoint: EndpointKey) -> PrometheusConnect:
        headers = {"Authorization": f"Bearer {endpoint.token}"} if endpoint.token else None
        client = PrometheusConnect(
            url=endpoint.url,
            headers=headers,
            disable_ssl=endpoint.insecure,
            retry=Retry(total=0),
            timeout=endpoint.timeout,
        )
        if endpoint.ca_file and not endpoint.insecure:
            client._session.verify = endpoint.ca_file  # the client exposes no CA option of its own
        self._clients[endpoint] = client
        return client


def _to_float(text: str) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


PER_ENDPOINT_CONCURRENCY = 4  # queries in flight to one Prometheus URL


class FleetPoller:
    """Runs the fleet's queries on a thread pool of its own, at most `concurrency` at once and at most
    PER_ENDPOINT_CONCURRENCY per Prometheus URL: a tenant's black-hole Prometheus holds a few of these
    threads until its (bounded) timeout, never the Kubernetes calls' threads or other tenants' share."""

    def __init__(self, query: QueryFn, concurrency: int = 8) -> None:
        self._query = query
        self._semaphore = asyncio.Semaphore(concurrency)
        self._per_endpoint: dict[str, asyncio.Semaphore] = defaultdict(
            lambda: asyncio.Semaphore(min(PER_ENDPOINT_CONCURRENCY, concurrency))
        )
        self._executor = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="prometheus")

    async def run(self, endpoint: EndpointKey, query: str) -> Series:
        """One query, within the bounds; raises what the query raises."""
        async with self._per_endpoint[endpoint.url], self._semaphore:
            return await asyncio.get_running_loop().run_in_executor(self._executor, self._query, endpoint, query)

    async def poll(
        self, loops: Iterable[LoopQuery], now: float | None = None
    ) -> tuple[dict[str, dict[str, Sample]], PollStats]:
        """Samples per loop key and rule name for every loop given."""
        started = time.monotonic()
        at = time.time() if now is None else now
        stats = PollStats()
        groups: dict[tuple[EndpointKey, str], list[LoopQuery]] = defaultdict(list)
        for loop in loops:
            for rule in loop.rules:
                groups[(loop.endpoint, rule.query)].append(loop)
                if rule.samples_query:
                    groups[(loop.endpoint, rule.samples_query)].append(loop)
        results = await asyncio.gather(
            *(
                self._run_template(endpoint, template, members, stats)
                for (endpoint, template), members in groups.items()
            )
        )
        by_template: dict[tuple[EndpointKey, str], dict[str, float | str | None]] = dict(zip(groups, results))
        samples: dict[str, dict[str, Sample]] = defaultdict(dict)
        for (endpoint, template), members in groups.items():
            for loop in members:
                for rule in loop.rules:
                    if rule.query == template and rule.name not in samples[loop.key]:
                        samples[loop.key][rule.name] = _sample(rule, loop, endpoint, by_template, at)
        stats.seconds = time.monotonic() - started
        return samples, stats

    async def _run_template(
        self, endpoint: EndpointKey, template: str, members: list[LoopQuery], stats: PollStats
    ) -> dict[str, float | str | None]:
        """Value (or error text, or None for no data) per loop key."""
        plan = promql.plan_batch(template, (m.values for m in members)) if len(members) > 1 else None
        if plan is not None:
            outcome = await self._one(endpoint, plan.query, stats)
            if isinstance(outcome, str):
                return {m.key: outcome for m in members}
            split = _split(plan, outcome, members)
            if split is not None:
                stats.batched_templates += 1
                return split
        stats.unbatched_templates += 1
        outcomes = await asyncio.gather(
            *(self._one(endpoint, promql.render(template, m.values), stats) for m in members)
        )
        return {m.key: (o if isinstance(o, str) else _single(o)) for m, o in zip(members, outcomes)}

    async def _one(self, endpoint: EndpointKey, query: str, stats: PollStats) -> Series | str:
        stats.queries += 1
        try:
            return await self.run(endpoint, query)
        except Exception as error:  # any failure is "no data" with a reason, never a crash
            stats.errors += 1
            message = f"query to {redact(endpoint.url)} failed: {short_error(error)}"
            stats.error_messages.append(message)
            return message


def short_error(error: BaseException) -> str:
    """The root cause in a few words (requests wraps it in pool and retry errors)."""
    if isinstance(getattr(error, "status", None), int) and isinstance(getattr(error, "reason", None), str):
        return f"{error.status} {error.reason}"  # a Kubernetes ApiException
    if isinstance(error, KeyError):
        return str(error.args[0]) if error.args else "missing key"
    root: BaseException = error
    while True:
        inner = getattr(root, "reason", None) or root.__cause__ or root.__context__
        if not isinstance(inner, BaseException) or inner is root:
            break
        root = inner
    text = str(root)
    for known in ("Connection refused", "timed out", "Name or service not known", "certificate verify failed"):
        if known.lower() in str(error).lower() or known.lower() in text.lower():
            return known.lower()
    return f"{type(root).__name__}: {text[:160]}"


def _split(plan: promql.BatchPlan, series: Series, members: list[LoopQuery]) -> dict[str, float | str | None] | None:
    by_key: dict[tuple[str, ...], float] = {}
    for labels, value in series:
        key = plan.key_of_series(labels)
        if key is None:
            return None  # the query aggregated the split labels away
        if key in by_key:
            return None  # several series per loop: ambiguous, ask per loop
        by_key[key] = value
    return {m.key: by_key.get(plan.key_of_loop(m.values)) for m in members}


def _single(series: Series) -> float | str | None:
    if not series:
        return None
    if len(series) > 1:
        return f"query returned {len(series)} series; it must return one (aggregate with sum or avg)"
    return series[0][1]


def _sample(
    rule: MetricRule,
    loop: LoopQuery,
    endpoint: EndpointKey,
    by_template: Mapping[tuple[EndpointKey, str], Mapping[str, float | str | None]],
    at: float,
) -> Sample:
    value = by_template[(endpoint, rule.query)].get(loop.key)
    samples = by_template[(endpoint, rule.samples_query)].get(loop.key) if rule.samples_query else None
    if isinstance(value, str):
        return Sample(None, at, error=value)
    if isinstance(samples, str):
        return Sample(None, at, error=f"samples query: {samples}")
    return Sample(value, at, samples=samples if rule.samples_query else None)
