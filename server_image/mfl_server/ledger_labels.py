"""Labels recorded in the PostgreSQL ledger (mfl_contracts.ledger): concurrent requests share one statement.

Labels go in as ONE ``INSERT ... ON CONFLICT DO NOTHING RETURNING id`` on an autocommit connection: a
single statement is a transaction by itself, so there is no BEGIN or COMMIT round trip, and no transaction
left open while the event loop is busy elsewhere. The ids that come back are the labels recorded, and only
those move the metrics, once the statement returned (committed). Nothing is acknowledged that is not
committed. If the answer to a committed request is lost (the client times out, the connection drops), the
retry is a duplicate: never a second count (the metrics may then miss that one label; the ledger does not).

Group commit (``GroupWriter``): requests queue their rows; whenever fewer than ``MAX_IN_FLIGHT`` statements
run, everything queued (up to ``MAX_GROUP_ROWS``) goes in as one statement, with no timer: a lone request
starts at once, and under load the requests that arrived during a statement share the next one. Each request
gets the ids it won; an id in two queued requests is won by the first in queue order, the other sees a
duplicate. A failed statement fails every request of its group (503, nothing acknowledged).

A small async pool (psycopg_pool) of at most ``POOL_SIZE`` connections: a replica's labels are a small
share of its requests, and a database shared by every replica of every loop must not run out of
connections. A broken database fails the request with a 503 naming the reason and makes the replica
not ready; the readiness probe (``SELECT 1`` and today's partition) makes it ready again by itself.

Daily partitions are created ahead of need (every day whose labels can still arrive, and tomorrow) by the
probe, so a request almost never runs DDL; a day missing anyway is created before the insert, in a
transaction of its own (DDL inside the insert's transaction could deadlock two replicas).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from mfl_contracts import ledger

from . import feedback as fb
from . import jsonio
from .errors import RequestError, StoreFailure

log = logging.getLogger("mfl_server")
DATABASE = "the label database"
POOL_SIZE = 4
# Statements at once: one runs while the next group gathers. Measured at concurrency 8, batch 1 (server and
# database on one core): 1 makes groups of ~3.9 requests, 2 of ~2.3, for ~20% more CPU per request (client and
# database) and no better latency. A longer round trip only makes the groups bigger: throughput is bounded by
# MAX_GROUP_ROWS per round trip, not by the round trip.
MAX_IN_FLIGHT = 1
# Rows per statement: several full requests (MFL_MAX_BATCH 1024), and a statement well within its timeout.
MAX_GROUP_ROWS = 4096
CONNECT_TIMEOUT = 5  # seconds: libpq's connect_timeout, and the wait for a free connection of the pool
STATEMENT_TIMEOUT = "5s"
# Short: after a restart of the database the pool must not be backing off for minutes. Once it gives up,
# the next request or probe starts a new attempt.
RECONNECT_TIMEOUT = 10.0
NUL_JSON = "\\u0000"  # jsonb cannot store a NUL character

Insert = Callable[[list[ledger.LabelRow], list[float]], Awaitable[set[str]]]


@dataclass
class _Queued:
    """One request's rows, waiting for a statement; ``won`` gets the ids it recorded, or the error."""

    rows: list[ledger.LabelRow]
    ts: float
    won: asyncio.Future[set[str]]


class GroupWriter:
    """Runs ``insert`` for the rows of every request queued, as few statements as the load allows."""

    def __init__(
        self,
        insert: Insert,
        isolated_errors: tuple[type[BaseException], ...] = (),
        max_rows: int = MAX_GROUP_ROWS,
        max_in_flight: int = MAX_IN_FLIGHT,
    ) -> None:
        self._insert = insert
        # A refusal caused by one request's values (a label the database cannot store) must not fail the
        # others of its group: the group is retried one request at a time (the failed statement stored nothing).
        self._isolated = isolated_errors
        self._max_rows = max_rows
        self._max_in_flight = max_in_flight
        self._queue: deque[_Queued] = deque()
        self._running: set[asyncio.Task[None]] = set()

    async def write(self, rows: list[ledger.LabelRow], ts: float) -> set[str]:
        """The ids of ``rows`` this call recorded; raises what the statement raised."""
        queued = _Queued(rows, ts, asyncio.get_running_loop().create_future())
        self._queue.append(queued)
        self._start()
        return await queued.won

    async def aclose(self) -> None:
        """Waits for the statements running (each finished one starts what is still queued)."""
        while self._running:
            await asyncio.gather(*self._running, return_exceptions=True)

    def _start(self) -> None:
        while self._queue and len(self._running) < self._max_in_flight:
            # A task of the writer, not of a request: a cancelled handler cannot stop a statement whose
            # ids other requests wait for.
            task = asyncio.create_task(self._run(self._take()))
            self._running.add(task)
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._start()  # at once: the requests queued meanwhile are the next group

    def _take(self) -> list[_Queued]:
        """Queued requests in order, up to the row cap (one bigger request goes alone)."""
        group = [self._queue.popleft()]
        size = len(group[0].rows)
        while self._queue and size + len(self._queue[0].rows) <= self._max_rows:
            size += len(self._queue[0].rows)
            group.append(self._queue.popleft())
        return group

    async def _run(self, group: list[_Queued]) -> None:
        try:
            await self._write_group(group)
        finally:  # cancelled (the loop is shutting down): the outcome is unknown, nobody is told it
            for queued in group:
                if not queued.won.done():
                    queued.won.cancel()

    async def _write_group(self, group: list[_Queued]) -> None:
        try:
            won = await self._insert(*_merged(group))
        except Exception as error:
            if isinstance(error, self._isolated) and len(group) > 1:
                for queued in group:
                    await self._write_group([queued])
                return
            for queued in group:
                _fail(queued.won, error)
            return
        for queued, ids in zip(group, _attributed(group, won), strict=True):
            _resolve(queued.won, ids)


def _merged(group: list[_Queued]) -> tuple[list[ledger.LabelRow], list[float]]:
    """The group's rows in queue order, each id once: the first request that sent it is the one recorded."""
    rows: list[ledger.LabelRow] = []
    received: list[float] = []
    seen: set[str] = set()
    for queued in group:
        for row in queued.rows:
            if row.id not in seen:
                seen.add(row.id)
                rows.append(row)
                received.append(queued.ts)
    return rows, received


def _attributed(group: list[_Queued], won: set[str]) -> list[set[str]]:
    """Each id the statement returned goes to the first request (in queue order) that sent it."""
    left = set(won)
    shares = []
    for queued in group:
        mine = {row.id for row in queued.rows if row.id in left}
        left -= mine
        shares.append(mine)
    return shares


# A future already done was cancelled by its waiter: the request is gone (base shields it: only at shutdown).
def _resolve(won: asyncio.Future[set[str]], ids: set[str]) -> None:
    if not won.done():
        won.set_result(ids)


def _fail(won: asyncio.Future[set[str]], error: BaseException) -> None:
    if not won.done():
        won.set_exception(error)


class LedgerLabels:
    def __init__(self, url: str, model: str, max_age: float, retention: float, pool_size: int = POOL_SIZE) -> None:
        self.url = url
        self.model = model
        self.max_age = max_age
        self.retention = retention
        self.where = ledger.describe(url)
        self._pool_size = pool_size
        self._pool: Any = None
        self._schema = False  # the table exists (created by us or found)
        self._days: set[date] = set()  # partitions known to exist
        self._writer = GroupWriter(self._insert, isolated_errors=_data_errors())

    # --- recording ---------------------------------------------------------------------------------

    async def record(self, items: list[fb.Accepted], ts: float) -> tuple[list[fb.Accepted], list[fb.Rejected]]:
        if not items:
            return [], []
        items, refused = _storable(items)
        rows = [_row(item) for item in items]
        won = await self._guarded(self._writer.write(rows, ts)) if rows else set()
        recorded = [item for item in items if item.id in won]
        duplicates = [fb.duplicate(item.index, item.id) for item in items if item.id not in won]
        return recorded, duplicates + refused

    async def _insert(self, rows: list[ledger.LabelRow], received: list[float]) -> set[str]:
        import psycopg

        params = ledger.insert_params(self.model, rows, received)
        days = set(params["days"])
        await self._ensure_partitions(days)
        try:
            return await self._insert_committed(params)
        except psycopg.errors.CheckViolation:  # "no partition found for row": dropped under our cache
            self._days -= days
            await self._ensure_partitions(days)
            return await self._insert_committed(params)

    async def _insert_committed(self, params: dict[str, Any]) -> set[str]:
        pool = await self._opened_pool()
        async with pool.connection() as conn:  # autocommit: committed when execute returns, or not at all
            cursor = await conn.execute(ledger.INSERT_LABELS, params)
            return {row[0] for row in await cursor.fetchall()}

    async def _ensure_partitions(self, days: set[date], force: frozenset[date] = frozenset()) -> None:
        """Creates the table (once) and the missing day partitions, in a transaction of their own."""
        missing = (days - self._days) | force
        if not missing and self._schema:
            return
        pool = await self._opened_pool()
        async with pool.connection() as conn, conn.transaction():  # the advisory lock and SET LOCAL need one
            for statement in ledger.ddl_statements(missing, schema=not self._schema):
                await conn.execute(statement)
        self._schema = True
        self._days |= missing

    # --- readiness, retention, lifecycle -----------------------------------------------------------

    async def probe(self, now: float) -> None:
        """``SELECT 1`` on a pooled connection and today's partition (re-created if someone dropped it)."""
        await self._guarded(self._probe(now))

    async def _probe(self, now: float) -> None:
        from psycopg_pool import PoolTimeout

        pool = await self._opened_pool()
        await pool.check()  # idle connections broken by a restart of the database go before a request meets them
        _raise_if_cancelled()
        try:
            async with pool.connection() as conn:
                await conn.execute("SELECT 1")
        except PoolTimeout as error:  # the pool only says it waited: ask the database why directly
            raise PoolTimeout(await self._connect_reason()) from error
        window = live_days(now, self.max_age)
        self._days &= window  # days before it are dropped by a sweep, or soon: forget them
        await self._ensure_partitions(window, force=frozenset({ledger.day_of(now)}))

    async def _connect_reason(self) -> str:
        import psycopg

        try:
            conn = await psycopg.AsyncConnection.connect(self.url, connect_timeout=CONNECT_TIMEOUT)
        except psycopg.Error as error:
            return ledger.reason(error)
        await conn.close()
        return f"no connection of the pool was free within {CONNECT_TIMEOUT} s"

    async def sweep(self, now: float) -> list[str]:
        """Drops the day partitions past retention (never one whose labels can still arrive)."""
        if self.retention <= 0:
            return []
        try:
            return await asyncio.to_thread(
                ledger.drop_expired_partitions,
                self.url,
                now,
                self.retention,
                model=self.model,
                feedback_max_age=self.max_age,
                connect_timeout=CONNECT_TIMEOUT,
            )
        except ledger.LedgerError as error:
            log.warning("%s", error)
            return []

    def close(self) -> None:
        """Nothing to do synchronously: the pool is async (``aclose``)."""

    async def aclose(self) -> None:
        await self._writer.aclose()
        if self._pool is not None:
            await self._pool.close(timeout=CONNECT_TIMEOUT)

    # --- helpers -----------------------------------------------------------------------------------

    async def _opened_pool(self) -> Any:
        if self._pool is None:
            from psycopg_pool import AsyncConnectionPool

            # The pool warns at every reconnection attempt; readiness already logs each new reason once.
            logging.getLogger("psycopg.pool").setLevel(logging.ERROR)

            self._pool = AsyncConnectionPool(
                self.url,
                min_size=1,
                max_size=self._pool_size,
                open=False,
                timeout=CONNECT_TIMEOUT,
                reconnect_timeout=RECONNECT_TIMEOUT,
                kwargs={
                    "connect_timeout": CONNECT_TIMEOUT,
                    "application_name": f"mfl-server {self.model}"[:63],
                    "autocommit": True,  # an INSERT is its own transaction: no BEGIN, no COMMIT round trip
                },
                configure=_configure,
                name=f"mfl-ledger-{self.model}",
            )
            await self._pool.open(wait=False)  # a database down at start is a readiness problem, not a crash
        return self._pool

    async def _guarded(self, work: Any) -> Any:
        """Runs ``work``, turning the database's refusals into StoreFailure (503, not ready) and data errors
        (a label the database cannot store) into a 422 that leaves the replica ready."""
        import psycopg

        try:
            return await work
        except psycopg.DataError as error:
            raise RequestError(422, f"{DATABASE} refused the labels: {ledger.reason(error)}") from error
        except (psycopg.Error, OSError) as error:  # logged by the server, once per new reason
            raise StoreFailure(DATABASE, "unavailable", f"{self.where}: {ledger.reason(error)}") from error


async def _configure(conn: Any) -> None:
    """Every pooled connection: a statement that hangs (a lock, an overloaded server) fails instead."""
    await conn.execute(f"SET statement_timeout = '{STATEMENT_TIMEOUT}'")  # autocommit: kept for the session


def _raise_if_cancelled() -> None:
    """psycopg_pool's ``check()`` takes a CancelledError met while testing a connection for a broken connection
    and goes on: a probe cancelled there (at shutdown) must stop all the same, or the store watch would go on
    probing a closed pool for ever (the cancellation asked for is still counted by the task)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _data_errors() -> tuple[type[BaseException], ...]:
    """The refusals caused by a request's own values (GroupWriter retries those one request at a time)."""
    import psycopg

    return (psycopg.DataError,)


def live_days(now: float, max_age: float) -> set[date]:
    """Every day whose predictions can still be labelled, and tomorrow's (a probe just before midnight)."""
    first = ledger.day_of(now - max_age - ledger.CLOCK_MARGIN)
    last = ledger.day_of(now + ledger.CLOCK_MARGIN)
    return {first + timedelta(days=n) for n in range((last - first).days + 1)}


def _row(item: fb.Accepted) -> ledger.LabelRow:
    ref = item.ref
    prediction = jsonio.dumps(ref.label).decode().replace(NUL_JSON, "")  # our own model's class: never refused
    return ledger.LabelRow(item.id, jsonio.dumps(item.label).decode(), prediction, ref.version, ref.track, ref.ts)


def _storable(items: list[fb.Accepted]) -> tuple[list[fb.Accepted], list[fb.Rejected]]:
    """A label with a NUL character would fail the whole batch's statement: it alone is refused."""
    kept, refused = [], []
    for item in items:
        if isinstance(item.label, str) and "\0" in item.label:
            refused.append(fb.Rejected(item.index, item.id, "bad_label", "label contains a NUL character"))
        else:
            kept.append(item)
    return kept, refused
