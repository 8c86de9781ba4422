"""Fleet-level Prometheus polling: one query per (tenant, endpoint, template) for every due loop together.

The thin edge around prometheus-api-client. Errors, timeouts, NaN and empty results all become
"no data" samples with the reason; the pure rule evaluation decides what no data means.

Fair shares (runtime/slots.py): every query takes a slot of its tenant (the loop's namespace), of its
Prometheus host (scheme, host and port: not the URL string, whose path a tenant chooses freely) and one in
all, in that order, so one tenant never holds more than its share and a tenant waiting for its own slots
holds nothing another tenant needs. Polls and canary looks have a lane each: a look never waits behind a
poll. A batched query carries the loops of one tenant only (see FleetPoller.poll).
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

from prometheus_api_client import PrometheusConnect
from prometheus_api_client.exceptions import PrometheusApiClientException
from urllib3.util.retry import Retry

from feedbackloop.core import egress, promql
from feedbackloop.core.api import MetricRule, PrometheusEndpoint
from feedbackloop.core.credentials import redact
from feedbackloop.core.monitoring import Sample
from feedbackloop.core.tenancy import origin, tenant_of
from feedbackloop.runtime import egress_net
from feedbackloop.runtime.slots import Grant, Lane

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
AsyncQueryFn = Callable[[EndpointKey, str, str], Awaitable[Series]]  # (endpoint, query, tenant): a canary look's


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
        # Connections only to addresses the egress policy allows, checked when each is made (docs/security.md).
        egress_net.guard(client._session, egress.PROMETHEUS, max_retries=Retry(total=0))
        self._clients[endpoint] = client
        return client


def _to_float(text: str) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


DEADLINE_FACTOR, DEADLINE_MARGIN_SECONDS = 2, 5.0  # a query's answer is awaited 2 x its timeout + 5 s at most


class FleetPoller:
    """Runs the fleet's queries on a thread pool of its own, within fair shares (AdminSettings): at most
    `per_tenant` queries in flight for one namespace's loops, `per_host` to one Prometheus host and
    `concurrency` in all, for the polls; the same again, apart, for the canary looks. A tenant's black-hole
    Prometheus holds its own share of these threads until its (bounded) timeout, never another tenant's
    share, the Kubernetes calls' threads or a canary look's slot."""

    def __init__(self, query: QueryFn, concurrency: int = 8, *, per_tenant: int = 2, per_host: int = 4) -> None:
        self._query = query
        self.polls = Lane("polls", concurrency, per_tenant, per_host)
        self.looks = Lane("canary looks", concurrency, per_tenant, per_host)
        # A slot is held until its thread ends, so the pool never queues: a thread per slot of both lanes.
        self._executor = ThreadPoolExecutor(max_workers=2 * concurrency, thread_name_prefix="prometheus")

    async def run(self, endpoint: EndpointKey, query: str, tenant: str) -> Series:
        """One query of a canary look (canary_queries.observe), in the looks' own lane: never queued behind
        any poll, within `tenant`'s share of the looks; raises what the query raises."""
        return await self._in_lane(self.looks, tenant, endpoint, query)

    async def breakdown(self, endpoint: EndpointKey, query: str, tenant: str) -> Series:
        """A follow-up of this round's poll with a series per label value (the input-drift check's features),
        in the polls' lane and `tenant`'s share of it; raises what the query raises."""
        return await self._in_lane(self.polls, tenant, endpoint, query)

    async def _in_lane(self, lane: Lane, tenant: str, endpoint: EndpointKey, query: str) -> Series:
        grant = await lane.acquire(tenant, origin(endpoint.url))  # the wait for slots is not timed
        try:
            future = asyncio.get_running_loop().run_in_executor(self._executor, self._query, endpoint, query)
        except BaseException:
            grant.release()
            raise
        # The slots go back when the thread ends, not when the caller stops waiting: an abandoned query still
        # holds a connection and a thread, and its tenant pays for them, not the next tenant in the queue.
        future.add_done_callback(lambda done: _settle(done, grant))
        deadline = DEADLINE_FACTOR * endpoint.timeout + DEADLINE_MARGIN_SECONDS
        try:
            async with asyncio.timeout(deadline):
                return await asyncio.shield(future)
        except TimeoutError:  # a server that trickles its answer byte by byte defeats the socket timeout
            raise TimeoutError(f"timed out: no complete answer within {deadline:.0f}s") from None

    async def poll(
        self, loops: Iterable[LoopQuery], now: float | None = None
    ) -> tuple[dict[str, dict[str, Sample]], PollStats]:
        """Samples per loop key and rule name for every loop given.

        Batching is within a tenant: one query per (tenant, endpoint, template), charged to that tenant. A
        batch across tenants would let one tenant's loops make another's query slow (thousands of names in
        its regex), refused (too long, too many series) or ambiguous, and the batch would have to be charged
        to one of them; per tenant, what a batch costs and how it fails is its own tenant's alone. The price:
        tenants sharing one Prometheus and template cost a query each instead of one together."""
        started = time.monotonic()
        at = time.time() if now is None else now
        stats = PollStats()
        groups: dict[GroupKey, list[LoopQuery]] = defaultdict(list)
        for loop in loops:
            tenant = tenant_of(loop.key)
            for rule in loop.rules:
                groups[(tenant, loop.endpoint, rule.query)].append(loop)
                if rule.samples_query:
                    groups[(tenant, loop.endpoint, rule.samples_query)].append(loop)
        results = await asyncio.gather(
            *(
                self._run_template(tenant, endpoint, template, members, stats)
                for (tenant, endpoint, template), members in groups.items()
            )
        )
        by_template: dict[GroupKey, dict[str, float | str | None]] = dict(zip(groups, results))
        samples: dict[str, dict[str, Sample]] = defaultdict(dict)
        for (_, _, template), members in groups.items():
            for loop in members:
                for rule in loop.rules:
                    if rule.query == template and rule.name not in samples[loop.key]:
                        samples[loop.key][rule.name] = _sample(rule, loop, by_template, at)
        stats.seconds = time.monotonic() - started
        return samples, stats

    async def _run_template(
        self, tenant: str, endpoint: EndpointKey, template: str, members: list[LoopQuery], stats: PollStats
    ) -> dict[str, float | str | None]:
        """Value (or error text, or None for no data) per loop key."""
        plan = promql.plan_batch(template, (m.values for m in members)) if len(members) > 1 else None
        if plan is not None:
            outcome = await self._one(tenant, endpoint, plan.query, stats)
            if isinstance(outcome, str):
                return {m.key: outcome for m in members}
            split = _split(plan, outcome, members)
            if split is not None:
                stats.batched_templates += 1
                return split
        stats.unbatched_templates += 1
        outcomes = await asyncio.gather(
            *(self._one(tenant, endpoint, promql.render(template, m.values), stats) for m in members)
        )
        return {m.key: (o if isinstance(o, str) else _single(o)) for m, o in zip(members, outcomes)}

    async def _one(self, tenant: str, endpoint: EndpointKey, query: str, stats: PollStats) -> Series | str:
        stats.queries += 1
        try:
            return await self._in_lane(self.polls, tenant, endpoint, query)
        except Exception as error:  # any failure is "no data" with a reason, never a crash
            stats.errors += 1
            message = f"query to {redact(endpoint.url)} failed: {short_error(error)}"
            stats.error_messages.append(message)
            return message


GroupKey = tuple[str, EndpointKey, str]  # (tenant, endpoint, template)


def _settle(done: asyncio.Future[Series], grant: Grant) -> None:
    grant.release()
    if not done.cancelled():
        done.exception()  # retrieved: an answer nobody waited for any more is not an "exception never retrieved"


def short_error(error: BaseException) -> str:
    """The root cause in a few words (requests wraps it in pool and retry errors)."""
    status, reason = getattr(error, "status", None), getattr(error, "reason", None)
    if isinstance(status, int) and isinstance(reason, str):
        return f"{status} {reason}"  # a Kubernetes ApiException
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
    by_template: Mapping[GroupKey, Mapping[str, float | str | None]],
    at: float,
) -> Sample:
    tenant = tenant_of(loop.key)
    value = by_template[(tenant, loop.endpoint, rule.query)].get(loop.key)
    samples = by_template[(tenant, loop.endpoint, rule.samples_query)].get(loop.key) if rule.samples_query else None
    if isinstance(value, str):
        return Sample(None, at, error=value)
    if isinstance(samples, str):
        return Sample(None, at, error=f"samples query: {samples}")
    return Sample(value, at, samples=samples if rule.samples_query else None)
