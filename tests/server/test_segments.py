"""The s3-mode prediction log (mfl_server.segments) over an in-memory store and a fake clock."""

from __future__ import annotations

import asyncio
import gzip
import json
import re

import pytest

from mfl_server.errors import StoreFailure
from mfl_server.segments import BACKLOG_FACTOR, SegmentLog, writer_name

DAY1 = 1764288000.0  # 2025-11-28T00:00:00Z
KEY = re.compile(r"^churn/predictions/date=(\d{4}-\d{2}-\d{2})/host-a-\d{13}-(\d{6})\.jsonl\.gz$")


class MemoryStore:
    """An ArtifactStore's put and check, in memory; ``failing`` makes both raise as an unreachable bucket."""

    description = "s3://bucket at http://memory"

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.failing: str | None = None
        self.puts = 0

    def put(self, key: str, data: bytes) -> None:
        self.puts += 1
        if self.failing:
            raise RuntimeError(self.failing)
        self.objects[key] = data

    def check(self) -> None:
        if self.failing:
            raise RuntimeError(self.failing)

    def lines(self) -> list[dict]:
        objects = [gzip.decompress(self.objects[key]) for key in sorted(self.objects)]
        return [json.loads(line) for data in objects for line in data.splitlines()]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def line(n: int, size: int = 0) -> bytes:
    return json.dumps({"n": n, "pad": "x" * size}).encode() + b"\n"


def make(store: MemoryStore, clock: Clock, flush_bytes: int = 1000, flush_seconds: float = 5.0) -> SegmentLog:
    return SegmentLog(store, "churn/predictions", flush_bytes, flush_seconds, writer="host-a", clock=clock)


def test_a_full_buffer_is_sealed_and_uploaded_as_one_gzip_object_under_its_day():
    store, clock = MemoryStore(), Clock()
    log = make(store, clock)
    log.append(line(1, 500), DAY1 + 10)
    log.append(line(2, 100), DAY1 + 86400 + 5)  # the next UTC day: a segment of its own
    assert asyncio.run(log.flush()) and store.objects == {}  # nothing is full yet
    log.append(line(3, 600), DAY1 + 20)  # day 1 passes 1000 bytes: sealed
    assert asyncio.run(log.flush())
    [key] = store.objects
    assert KEY.match(key).groups() == ("2025-11-28", "000001")
    assert [entry["n"] for entry in store.lines()] == [1, 3]
    assert log.buffered == len(line(2, 100))


def test_an_old_buffer_is_sealed_by_age_not_before():
    store, clock = MemoryStore(), Clock()
    log = make(store, clock, flush_seconds=5.0)
    log.append(line(1), DAY1)
    clock.now += 4.9
    log.seal_due(clock.now)
    asyncio.run(log.flush())
    assert store.objects == {}
    clock.now += 0.1
    log.seal_due(clock.now)
    asyncio.run(log.flush())
    assert [entry["n"] for entry in store.lines()] == [1] and log.buffered == 0
    log.append(line(2), DAY1)  # a new segment: a new sequence number, its own age
    log.seal_due(clock.now + 4)
    asyncio.run(log.flush())
    assert len(store.objects) == 1


def test_a_failed_upload_keeps_the_segment_and_a_later_flush_uploads_it_once():
    store, clock = MemoryStore(), Clock()
    log = make(store, clock)
    log.append(line(1, 1200), DAY1)
    store.failing = "unreachable: connection refused"
    assert asyncio.run(log.flush()) is False
    assert store.objects == {} and log.buffered > 0 and log.last_error == "unreachable: connection refused"
    store.failing = None
    assert asyncio.run(log.flush()) is True
    assert [entry["n"] for entry in store.lines()] == [1] and log.buffered == 0 and log.last_error is None


def test_above_the_bound_predictions_are_refused_and_the_log_is_not_writable_until_uploads_succeed():
    store, clock = MemoryStore(), Clock()
    log = make(store, clock, flush_bytes=1000)
    store.failing = "AccessDenied (Access Denied.)"
    for n in range(BACKLOG_FACTOR):
        log.append(line(n, 1000), DAY1)
        asyncio.run(log.flush())
    with pytest.raises(StoreFailure) as refused:
        log.append(line(99), DAY1)
    message = refused.value.request_message("predictions")
    assert "AccessDenied" in message and "new predictions are refused" in message and "retry later" in message
    with pytest.raises(StoreFailure, match="AccessDenied"):
        log.check_writable()
    store.failing = None
    asyncio.run(log.flush())
    log.check_writable()
    log.append(line(100), DAY1)
    assert sorted(entry["n"] for entry in store.lines()) == list(range(BACKLOG_FACTOR))


def test_the_background_task_uploads_by_age_and_retries_with_a_backoff():
    store = MemoryStore()

    async def scenario() -> None:
        log = SegmentLog(store, "churn/predictions", 1 << 20, 0.05, writer="host-a")
        task = asyncio.create_task(log.run())
        store.failing = "unreachable: timed out"
        log.append(line(1), DAY1)
        await asyncio.sleep(0.3)
        failed_puts = store.puts
        assert store.objects == {} and 1 <= failed_puts <= 6  # retried, not hammered
        store.failing = None
        for _ in range(100):
            if store.objects:
                break
            await asyncio.sleep(0.02)
        task.cancel()
        assert [entry["n"] for entry in store.lines()] == [1]

    asyncio.run(scenario())


def test_close_uploads_whatever_is_buffered():
    store, clock = MemoryStore(), Clock()
    log = make(store, clock)
    log.append(line(1), DAY1)
    log.append(line(2), DAY1 + 86400)
    log.close()
    assert sorted(entry["n"] for entry in store.lines()) == [1, 2] and log.buffered == 0
    assert [KEY.match(key).group(2) for key in sorted(store.objects)] == ["000001", "000002"]


def test_close_gives_up_on_a_dead_store_and_says_what_was_lost(caplog):
    store, clock = MemoryStore(), Clock()
    log = make(store, clock)
    log.append(line(1) + line(2), DAY1)
    store.failing = "unreachable: connection refused"
    log.close()
    assert log.buffered == 0 and "lost 2 prediction lines" in caplog.text


def test_the_writer_is_a_safe_host_name():
    assert writer_name("pod/a b") == "pod_a_b" and writer_name("") != ""
