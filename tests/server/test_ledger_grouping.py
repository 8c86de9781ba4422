"""The label ledger's group commit (mfl_server.ledger_labels.GroupWriter) and probe, without a database: a fake
statement that behaves as ``INSERT ... ON CONFLICT DO NOTHING RETURNING id`` on a set of ids."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from mfl_contracts.ledger import LabelRow
from mfl_server.ledger_labels import GroupWriter, LedgerLabels

TS = 1764288000.0


class FakeTable:
    """Records each statement's rows; ``gate`` (when set) holds every statement until it is opened."""

    def __init__(self, existing: set[str] | None = None, fail: Exception | None = None, held: bool = False) -> None:
        self.ids = set(existing or ())
        self.statements: list[list[str]] = []
        self.received: list[list[float]] = []
        self.fail = fail
        self.running = self.most = 0  # statements at once
        self.gate = asyncio.Event()
        if not held:
            self.gate.set()

    async def insert(self, rows: list[LabelRow], received: list[float]) -> set[str]:
        ids = [row.id for row in rows]
        self.statements.append(ids)
        self.received.append(received)
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            return await self._result(rows, ids)
        finally:
            self.running -= 1

    async def _result(self, rows: list[LabelRow], ids: list[str]) -> set[str]:
        await asyncio.sleep(0)  # a statement takes a while: others may queue meanwhile
        await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        if any(row.label == "bad" for row in rows):
            raise BadValue("the database cannot store this label")
        assert len(set(ids)) == len(ids), "an id twice in one statement"
        won = {row_id for row_id in ids if row_id not in self.ids}
        self.ids |= won
        return won


class BadValue(Exception):
    """Stands for psycopg.DataError: caused by one request's values."""


def rows(*ids: str, label: str = "1") -> list[LabelRow]:
    return [LabelRow(row_id, label, "0", 1, "stable", TS) for row_id in ids]


async def until(condition: Any) -> None:
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("never happened")


async def queued_behind_two_statements(
    table: FakeTable, writer: GroupWriter, *requests: list[LabelRow]
) -> list[asyncio.Task[set[str]]]:
    """Two requests hold both statement slots (the gate is shut); ``requests`` queue behind them, in order."""
    fillers = [asyncio.create_task(writer.write(rows(f"filler-{n}"), TS)) for n in range(2)]
    await until(lambda: len(table.statements) == 2)
    tasks = []
    for n, request in enumerate(requests):
        tasks.append(asyncio.create_task(writer.write(request, TS + 1 + n)))
        await asyncio.sleep(0)  # queued in this order
    table.gate.set()
    return fillers + tasks


def test_a_lone_request_starts_at_once_without_waiting_for_others():
    async def scenario() -> tuple[set[str], list[list[str]]]:
        table = FakeTable()
        won = await asyncio.wait_for(GroupWriter(table.insert).write(rows("a", "b"), TS), 1)
        return won, table.statements

    assert asyncio.run(scenario()) == ({"a", "b"}, [["a", "b"]])


def test_requests_arriving_during_the_statements_share_the_next_one():
    async def scenario() -> tuple[list[set[str]], FakeTable]:
        table = FakeTable(held=True)
        writer = GroupWriter(table.insert, max_in_flight=2)
        tasks = await queued_behind_two_statements(table, writer, rows("a"), rows("b", "c"), rows("d"))
        return list(await asyncio.gather(*tasks)), table

    outcomes, table = asyncio.run(scenario())
    assert table.statements == [["filler-0"], ["filler-1"], ["a", "b", "c", "d"]]
    assert table.received[2] == [TS + 1, TS + 2, TS + 2, TS + 3]  # each row keeps its request's receive time
    assert outcomes[2:] == [{"a"}, {"b", "c"}, {"d"}]


def test_a_group_stops_at_the_row_cap_and_the_rest_goes_in_the_next_statement():
    async def scenario() -> FakeTable:
        table = FakeTable(held=True)
        writer = GroupWriter(table.insert, max_rows=3, max_in_flight=2)
        requests = [rows("a", "b"), rows("c"), rows("d", "e"), rows("f", "g", "h", "i")]
        await asyncio.gather(*await queued_behind_two_statements(table, writer, *requests))
        return table

    statements = asyncio.run(scenario()).statements[2:]
    assert statements == [["a", "b", "c"], ["d", "e"], ["f", "g", "h", "i"]]  # a request over the cap goes alone


def test_an_id_in_two_requests_of_one_group_is_won_by_the_first_and_a_duplicate_for_the_other():
    async def scenario() -> tuple[list[set[str]], FakeTable]:
        table = FakeTable(existing={"old"}, held=True)
        writer = GroupWriter(table.insert, max_in_flight=2)
        tasks = await queued_behind_two_statements(table, writer, rows("x", "y", "old"), rows("z", "x"))
        return list(await asyncio.gather(*tasks)), table

    outcomes, table = asyncio.run(scenario())
    assert table.statements[2] == ["x", "y", "old", "z"]  # x once: the first request's row
    assert outcomes[2:] == [{"x", "y"}, {"z"}]


def test_a_failed_statement_fails_every_request_of_its_group_and_acknowledges_nothing():
    async def scenario() -> list[Any]:
        table = FakeTable(held=True, fail=ConnectionError("server closed the connection"))
        writer = GroupWriter(table.insert, max_in_flight=2)
        tasks = await queued_behind_two_statements(table, writer, rows("a"), rows("b"), rows("c"))
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        assert len(table.statements) == 3
        return outcomes

    outcomes = asyncio.run(scenario())
    assert all(isinstance(outcome, ConnectionError) for outcome in outcomes)


def test_a_value_one_request_sent_fails_that_request_alone():
    """A label the database refuses (psycopg.DataError) fails its statement, which stored nothing: the group
    is retried one request at a time, so the others are recorded and only that request gets the error."""

    async def scenario() -> tuple[list[Any], FakeTable]:
        table = FakeTable(held=True)
        writer = GroupWriter(table.insert, isolated_errors=(BadValue,), max_in_flight=2)
        requests = [rows("a"), rows("b", label="bad"), rows("c", "a")]
        return await asyncio.gather(
            *await queued_behind_two_statements(table, writer, *requests), return_exceptions=True
        ), table

    outcomes, table = asyncio.run(scenario())
    assert table.statements[2:] == [["a", "b", "c"], ["a"], ["b"], ["c", "a"]]
    assert outcomes[2] == {"a"} and isinstance(outcomes[3], BadValue) and outcomes[4] == {"c"}


def test_a_waiter_cancelled_does_not_stop_the_statement_of_its_group():
    """The handler's own cancellation (base shields it; only the shutdown's last resort gets through) must
    not cancel the statement other requests of its group wait for."""

    async def scenario() -> tuple[set[str], set[str]]:
        table = FakeTable(held=True)
        writer = GroupWriter(table.insert, max_in_flight=1)
        gone = asyncio.create_task(writer.write(rows("a"), TS))
        await until(lambda: table.statements)
        staying = asyncio.create_task(writer.write(rows("b"), TS))
        gone.cancel()
        await asyncio.sleep(0)
        table.gate.set()
        won = await staying
        await writer.aclose()
        return won, table.ids

    assert asyncio.run(scenario()) == ({"b"}, {"a", "b"})


@pytest.mark.parametrize("in_flight", [1, 2, 3])
def test_many_concurrent_requests_each_get_exactly_their_ids(in_flight):
    async def scenario() -> tuple[list[set[str]], FakeTable]:
        table = FakeTable()
        writer = GroupWriter(table.insert, max_in_flight=in_flight)
        requests = [rows(*(f"id-{(n * 7 + k) % 150}" for k in range(10))) for n in range(60)]
        return list(await asyncio.gather(*(writer.write(request, TS) for request in requests))), table

    outcomes, table = asyncio.run(scenario())
    won = [row_id for outcome in outcomes for row_id in outcome]
    assert len(won) == len(set(won)) == len(table.ids) == 150  # every id won once, by one request
    assert len(table.statements) < 60 and table.most == in_flight  # grouped, never more statements at once


class CancelSwallowingPool:
    """As psycopg_pool's check(): a CancelledError while testing a connection counts as a broken connection."""

    async def check(self) -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            pass

    def connection(self) -> Any:
        raise AssertionError("the probe went on after its cancellation")


def test_a_probe_cancelled_while_the_pool_checks_its_connections_stops():
    """Else the shutdown's cancellation of the store watch is lost and it probes a closed pool for ever."""

    async def scenario() -> None:
        labels = LedgerLabels("postgresql://mfl@db:5432/mfl", "churn", 3600.0, 0.0)
        labels._pool = CancelSwallowingPool()
        probe = asyncio.create_task(labels.probe(TS))
        await asyncio.sleep(0.01)
        probe.cancel()
        with pytest.raises(asyncio.CancelledError):
            await probe

    asyncio.run(scenario())
