"""Labels recorded in the PostgreSQL ledger (mfl_contracts.ledger): one statement and one COMMIT per request.

A request's labels go in as ONE ``INSERT ... ON CONFLICT DO NOTHING RETURNING id``: the ids that come back
are the labels this request recorded, and only those move the metrics, after the COMMIT returned. A label
is in the database when it is acknowledged; nothing is acknowledged that is not committed. If the answer
to a committed request is lost (the client times out, the connection drops after COMMIT), the retry is a
duplicate: never a second count (the metrics may then miss that one label; the ledger does not).

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
from datetime import date, timedelta
from typing import Any

from mfl_contracts import ledger

from . import feedback as fb
from . import jsonio
from .errors import RequestError, StoreFailure

log = logging.getLogger("mfl_server")
DATABASE = "the label database"
POOL_SIZE = 4
CONNECT_TIMEOUT = 5  # seconds: libpq's connect_timeout, and the wait for a free connection of the pool
STATEMENT_TIMEOUT = "5s"
# Short: after a restart of the database the pool must not be backing off for minutes. Once it gives up,
# the next request or probe starts a new attempt.
RECONNECT_TIMEOUT = 10.0
NUL_JSON = "\\u0000"  # jsonb cannot store a NUL character


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

    # --- recording ---------------------------------------------------------------------------------

    async def record(self, items: list[fb.Accepted], ts: float) -> tuple[list[fb.Accepted], list[fb.Rejected]]:
        if not items:
            return [], []
        items, refused = _storable(items)
        rows = [_row(item) for item in items]
        won = await self._guarded(self._insert(rows, ts)) if rows else set()
        recorded = [item for item in items if item.id in won]
        duplicates = [fb.duplicate(item.index, item.id) for item in items if item.id not in won]
        return recorded, duplicates + refused

    async def _insert(self, rows: list[ledger.LabelRow], ts: float) -> set[str]:
        import psycopg

        days = {ledger.day_of(row.prediction_ts) for row in rows}
        await self._ensure_partitions(days)
        params = ledger.insert_params(self.model, rows, ts)
        try:
            return await self._insert_committed(params)
        except psycopg.errors.CheckViolation:  # "no partition found for row": dropped under our cache
            self._days -= days
            await self._ensure_partitions(days)
            return await self._insert_committed(params)

    async def _insert_committed(self, params: dict[str, Any]) -> set[str]:
        pool = await self._opened_pool()
        async with pool.connection() as conn:  # COMMIT on leaving the block; an error there raises
            cursor = await conn.execute(ledger.INSERT_LABELS, params)
            won = {row[0] for row in await cursor.fetchall()}
        return won

    async def _ensure_partitions(self, days: set[date], force: frozenset[date] = frozenset()) -> None:
        """Creates the table (once) and the missing day partitions, in a transaction of their own."""
        missing = (days - self._days) | force
        if not missing and self._schema:
            return
        pool = await self._opened_pool()
        async with pool.connection() as conn:
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
                kwargs={"connect_timeout": CONNECT_TIMEOUT, "application_name": f"mfl-server {self.model}"[:63]},
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
    await conn.execute(f"SET statement_timeout = '{STATEMENT_TIMEOUT}'")
    await conn.commit()


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
