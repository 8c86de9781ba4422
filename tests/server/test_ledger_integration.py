"""The object store + database mode against a REAL PostgreSQL and a REAL SeaweedFS (the test bed's fixtures):
labels in the ledger exactly once, outages, a crash, prediction segments in the bucket, retention, mfl-fetch."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from mfl_contracts import ledger
from mfl_contracts.objectstore import S3Store, s3_settings_from_env
from mfl_server.app import ModelServer
from mfl_server.config import ServerConfig
from mfl_server.fetch import fetch
from mfl_server.sidecar import SidecarServer, Upstream
from tests.server.test_app import (
    KEY,
    counted,
    free_port,
    metrics_of,
    predict,
    rows_of,
    server_config,
    synthetic,
    value,
    wait_ready,
    write_model,
)
from tests.server.test_sidecar import reference_upstream, two_roots
from tests.server.test_v2 import tensor

pytestmark = pytest.mark.integration
DAY = 86400


@contextlib.asynccontextmanager
async def ledger_serving(config: ServerConfig, wait: bool = True) -> AsyncIterator[tuple[ModelServer, TestClient]]:
    async with running(ModelServer(config), wait) as served:
        yield served


@contextlib.asynccontextmanager
async def running(server: Any, wait: bool = True) -> AsyncIterator[tuple[Any, TestClient]]:
    """A server with all its background tasks (as `mfl-server` runs them) and the async shutdown."""
    tasks = [asyncio.create_task(task) for task in server.background_tasks()]
    try:
        if wait:
            await asyncio.wait_for(asyncio.shield(tasks[0]), 30)
        async with TestClient(TestServer(server.web_app(), host="127.0.0.1")) as client:
            yield server, client
    finally:
        for task in tasks:
            task.cancel()
        await server.aclose()


def ledger_config(root: Path, url: str, version: int = 1, track: str = "stable", **overrides: Any) -> ServerConfig:
    return server_config(root, version, track, database_url=url, store_check_interval=0.1, **overrides)


async def wait_status(client: TestClient, status: int, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = await client.get("/readyz")
        if response.status == status:
            return await response.json()
        await asyncio.sleep(0.05)
    raise AssertionError(f"/readyz never answered {status} within {timeout} s")


async def post_feedback(client: TestClient, entries: list[dict[str, Any]]) -> tuple[int, dict[str, Any]]:
    response = await client.post("/feedback", json={"feedback": entries}, timeout=aiohttp.ClientTimeout(total=30))
    return response.status, await response.json()


def stored(url: str) -> dict[str, dict[str, Any]]:
    return {row["id"]: row for row in ledger.read_labels(url, "churn", 0.0)}


def count_rows(url: str) -> int:
    with psycopg.connect(url, connect_timeout=5, options="-c statement_timeout=10s") as conn:
        return conn.execute("SELECT count(*) FROM mfl_labels").fetchone()[0]


# --- exactly once --------------------------------------------------------------------------------


def test_two_servers_sending_the_same_labels_at_once_count_each_exactly_once(tmp_path, postgres_url):
    """Stable and canary replicas on one database; every label goes to both, three times, in shuffled
    batches, concurrently: sent, acknowledged, stored and counted all agree."""
    write_model(tmp_path, 1)
    write_model(tmp_path, 2)
    rows = rows_of(synthetic(60, seed=3)[0])

    async def scenario() -> tuple[list[str], list[int], list[dict], int]:
        stable_config = ledger_config(tmp_path, postgres_url, 1, "stable")
        canary_config = ledger_config(tmp_path, postgres_url, 2, "canary")
        async with ledger_serving(stable_config) as (_, a), ledger_serving(canary_config) as (_, b):
            ids = (await predict(a, rows[:30]))["ids"] + (await predict(b, rows[30:]))["ids"]
            entries = [{"id": row_id, "label": n % 2} for n, row_id in enumerate(ids)]
            sends = []
            for round_ in range(3):
                shuffled = random.Random(round_).sample(entries, len(entries))
                batches = [shuffled[start : start + 7] for start in range(0, len(shuffled), 7)]
                sends += [post_feedback(client, batch) for batch in batches for client in (a, b)]
            answers = await asyncio.gather(*sends)
            metrics = [await metrics_of(a), await metrics_of(b)]
        assert all(status == 200 for status, _ in answers), answers
        accepted = [body["accepted"] for _, body in answers]
        duplicates = sum(len(body["rejected"]) for _, body in answers)
        return ids, accepted, metrics, duplicates

    ids, accepted, metrics, duplicates = asyncio.run(scenario())
    assert sum(accepted) == 60 and duplicates == 6 * 60 - 60
    assert count_rows(postgres_url) == 60 and set(stored(postgres_url)) == set(ids)
    assert counted(metrics[0]) + counted(metrics[1]) == 60
    for version, track in (("1", "stable"), ("2", "canary")):  # under the version and track that predicted
        labels = {"model": "churn", "version": version, "track": track}
        assert sum(value(m, "mfl_feedback_total", **labels) for m in metrics) == 30
    assert not (tmp_path / "churn" / "feedback").exists()  # the ledger is the feedback log
    assert not (tmp_path / "churn" / "feedback-claims").exists()


def test_the_ledger_rows_are_the_feedback_lines_the_trainer_reads(tmp_path, postgres_url):
    write_model(tmp_path)

    async def scenario() -> tuple[dict, float]:
        async with ledger_serving(ledger_config(tmp_path, postgres_url)) as (_, client):
            answer = await predict(client, rows_of(synthetic(2, seed=4)[0]))
            before = time.time()
            entries = [{"id": answer["ids"][0], "label": "1"}, {"id": answer["ids"][1], "label": "a\u0000b"}]
            status, body = await post_feedback(client, entries)  # jsonb cannot hold NUL: that label alone is refused
            assert status == 200 and body["accepted"] == 1
            assert [(entry["index"], entry["reason"]) for entry in body["rejected"]] == [(1, "bad_label")]
            assert (await client.get("/readyz")).status == 200
            return answer, before

    answer, before = asyncio.run(scenario())
    [row] = stored(postgres_url).values()
    assert set(row) == {"id", "ts", "label", "version", "track", "prediction", "predictionTs"}
    assert (row["id"], row["label"], row["version"], row["track"]) == (answer["ids"][0], "1", 1, "stable")
    assert row["prediction"] == answer["predictions"][0] and before <= row["ts"] <= time.time()
    assert list(ledger.read_labels(postgres_url, "churn", row["predictionTs"] + 1)) == []
    assert list(ledger.read_labels(postgres_url, "another-model", 0.0)) == []


def test_a_retry_after_a_lost_answer_is_a_duplicate_never_a_second_count(tmp_path, postgres_url):
    """The client gives up while the insert waits (a lock held elsewhere) and the test server cancels the
    handler (aiohttp's TestServer cancels handlers of lost connections); the insert then commits and its
    labels count; the client's retry finds every label recorded."""
    write_model(tmp_path)

    async def scenario() -> tuple[dict, dict]:
        async with ledger_serving(ledger_config(tmp_path, postgres_url)) as (_, client):
            ids = (await predict(client, rows_of(synthetic(4, seed=7)[0])))["ids"]
            entries = [{"id": row_id, "label": 1} for row_id in ids]
            # Off the loop, with timeouts: a sync call waiting on the server's transactions must not freeze them.
            blocker = await asyncio.to_thread(psycopg.connect, postgres_url, connect_timeout=5)
            try:
                await asyncio.to_thread(blocker.execute, "SET lock_timeout = '10s'")
                await asyncio.to_thread(blocker.execute, "LOCK TABLE mfl_labels IN SHARE MODE")  # until rollback
                with pytest.raises(TimeoutError):
                    await client.post("/feedback", json={"feedback": entries}, timeout=aiohttp.ClientTimeout(total=0.5))
                await asyncio.to_thread(blocker.rollback)
            finally:
                await asyncio.to_thread(blocker.close)
            deadline = time.monotonic() + 10
            while await asyncio.to_thread(count_rows, postgres_url) < 4 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            status, body = await post_feedback(client, entries)
            assert status == 200
            return body, await metrics_of(client)

    body, metrics = asyncio.run(scenario())
    assert body["accepted"] == 0 and [entry["reason"] for entry in body["rejected"]] == ["duplicate"] * 4
    assert count_rows(postgres_url) == 4 and counted(metrics) == 4


# --- group commit: concurrent requests share one INSERT ------------------------------------------


@contextlib.asynccontextmanager
async def table_locked(url: str) -> AsyncIterator[None]:
    """The server's inserts wait (a SHARE lock of another session) until the block ends. Off the loop, with
    timeouts: a sync call waiting on the server's statements must not freeze them."""
    blocker = await asyncio.to_thread(psycopg.connect, url, connect_timeout=5)
    try:
        await asyncio.to_thread(blocker.execute, "SET lock_timeout = '10s'")
        await asyncio.to_thread(blocker.execute, "LOCK TABLE mfl_labels IN SHARE MODE")  # until rollback
        yield
    finally:
        await asyncio.to_thread(blocker.rollback)
        await asyncio.to_thread(blocker.close)


def statement_sizes(server: ModelServer) -> list[int]:
    """Rows of every INSERT the server runs from now on (its group writer's statement, wrapped)."""
    writer = server.labels._writer
    insert, sizes = writer._insert, []

    async def counted_insert(rows: list[ledger.LabelRow], received: list[float]) -> set[str]:
        sizes.append(len(rows))
        return await insert(rows, received)

    writer._insert = counted_insert
    return sizes


async def until(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "never happened"
        await asyncio.sleep(0.01)


def labelled(ids: list[str]) -> list[dict[str, Any]]:
    return [{"id": row_id, "label": 1} for row_id in ids]


async def behind_waiting_statements(
    server: ModelServer, client: TestClient, ids: list[str], *batches: list[str]
) -> tuple[list[asyncio.Task], list[int], int]:
    """With the table locked: one request per statement slot (ids[0], ids[1]...) takes it and waits; then
    ``batches`` are sent one after the other, each queued before the next is sent. The requests, the rows
    of every statement, and the number of slots."""
    writer, sizes = server.labels._writer, statement_sizes(server)
    slots = writer._max_in_flight
    sends = [asyncio.create_task(post_feedback(client, labelled([row_id]))) for row_id in ids[:slots]]
    await until(lambda: len(sizes) == slots)
    for n, batch in enumerate(batches, start=1):
        sends.append(asyncio.create_task(post_feedback(client, labelled(batch))))
        await until(lambda n=n: len(writer._queue) == n)
    return sends, sizes, slots


def test_concurrent_requests_share_one_insert_and_an_id_in_two_of_them_counts_once(tmp_path, postgres_url):
    """While the statements wait, two requests queue (ids 5 and 6 in both): they go in as ONE statement of
    10 rows; the first request queued wins ids 5 and 6, the second gets them as duplicates."""
    write_model(tmp_path)

    async def scenario() -> tuple[list[tuple[int, dict]], list[int], int, dict]:
        async with ledger_serving(ledger_config(tmp_path, postgres_url)) as (server, client):
            ids = (await predict(client, rows_of(synthetic(12, seed=8)[0])))["ids"]
            async with table_locked(postgres_url):
                sends, sizes, slots = await behind_waiting_statements(server, client, ids, ids[2:7], ids[5:12])
            answers = await asyncio.gather(*sends)
            return answers, sizes, slots, await metrics_of(client)

    answers, sizes, slots, metrics = asyncio.run(scenario())
    assert sizes == [1] * slots + [10]
    assert [status for status, _ in answers] == [200] * (slots + 2)
    assert [body["accepted"] for _, body in answers] == [1] * slots + [5, 5]
    duplicates = [(entry["index"], entry["reason"]) for entry in answers[-1][1]["rejected"]]
    assert duplicates == [(0, "duplicate"), (1, "duplicate")]
    assert count_rows(postgres_url) == slots + 10 and counted(metrics) == slots + 10


async def inserts_waiting(observer: psycopg.Connection, count: int, besides: set[int]) -> set[int]:
    """The backends of the server's INSERTs waiting on the lock (but ``besides``), once there are ``count``.
    ``observer``: autocommit (pg_stat_activity is a snapshot for the rest of a transaction)."""
    query = """SELECT pid FROM pg_stat_activity WHERE application_name = 'mfl-server churn'
      AND wait_event_type = 'Lock' AND query LIKE 'INSERT INTO mfl_labels%'"""
    deadline = time.monotonic() + 10
    while True:
        rows = await asyncio.to_thread(lambda: observer.execute(query).fetchall())
        pids = {row[0] for row in rows} - besides
        if len(pids) >= count:
            return pids
        assert time.monotonic() < deadline, f"{len(pids)} inserts waiting, not {count}"
        await asyncio.sleep(0.01)


async def terminate(observer: psycopg.Connection, pids: set[int]) -> None:
    for pid in pids:
        await asyncio.to_thread(observer.execute, "SELECT pg_terminate_backend(%s)", (pid,))


def test_a_failed_insert_fails_every_request_of_its_group_with_a_503(tmp_path, postgres_url):
    """The server's connections are terminated while their INSERTs wait: the lone requests first, then the
    group of three queued behind them, all get the 503 and make the replica unready (nothing acknowledged);
    the client's retry records every label once."""
    write_model(tmp_path)

    async def scenario() -> tuple[list[tuple[int, dict]], list[int], int, list[str], int, dict]:
        async with ledger_serving(ledger_config(tmp_path, postgres_url)) as (server, client):
            ids = (await predict(client, rows_of(synthetic(11, seed=12)[0])))["ids"]
            problems: list[str] = []
            store_failed = server._store_failed
            server._store_failed = lambda problem: (problems.append(problem), store_failed(problem))
            observer = await asyncio.to_thread(psycopg.connect, postgres_url, connect_timeout=5, autocommit=True)
            try:
                async with table_locked(postgres_url):
                    batches = [ids[2:5], ids[5:8], ids[8:11]]
                    sends, sizes, slots = await behind_waiting_statements(server, client, ids, *batches)
                    lone = await inserts_waiting(observer, slots, set())
                    await terminate(observer, lone)
                    await terminate(observer, await inserts_waiting(observer, 1, lone))  # the group's statement
                    answers = await asyncio.gather(*sends)
            finally:
                await asyncio.to_thread(observer.close)
            await wait_status(client, 200)
            status, body = await post_feedback(client, labelled(ids[:slots] + ids[2:]))
            assert status == 200, body
            return answers, sizes, slots, problems, body["accepted"], await metrics_of(client)

    answers, sizes, slots, problems, accepted, metrics = asyncio.run(scenario())
    assert sizes[: slots + 1] == [1] * slots + [9]
    assert [status for status, _ in answers] == [503] * (slots + 3), answers
    assert all("cannot record feedback in the label database" in body["error"] for _, body in answers)
    assert len(problems) == slots + 3 and all(p.startswith("the label database is unavailable") for p in problems)
    assert accepted == slots + 9 and count_rows(postgres_url) == slots + 9 and counted(metrics) == slots + 9


# --- outages and crashes -------------------------------------------------------------------------


def test_a_database_outage_is_a_503_and_unready_with_the_reason_and_the_replica_recovers_by_itself(
    tmp_path, postgres, postgres_url
):
    write_model(tmp_path)

    async def scenario() -> tuple[int, dict]:
        async with ledger_serving(ledger_config(tmp_path, postgres_url)) as (_, client):
            ids = (await predict(client, rows_of(synthetic(20, seed=5)[0])))["ids"]
            entries = [{"id": row_id, "label": 1} for row_id in ids]
            assert (await post_feedback(client, entries[:5]))[1]["accepted"] == 5
            await asyncio.to_thread(postgres.kill)
            try:
                status, body = await post_feedback(client, entries[5:10])
                assert status == 503, body
                assert "cannot record feedback in the label database" in body["error"]
                assert "retry later" in body["error"]
                reason = (await wait_status(client, 503))["reason"]
                assert reason.startswith("the label database is unavailable: postgresql://")
                assert "127.0.0.1" in reason and "password" not in reason.lower()
                await asyncio.sleep(0.5)
                assert (await client.get("/readyz")).status == 503  # the probe keeps failing
            finally:
                await asyncio.to_thread(postgres.start)
            await wait_status(client, 200)
            status, body = await post_feedback(client, entries)  # the client's retry of everything
            assert status == 200, body
            return body["accepted"], await metrics_of(client)

    accepted, metrics = asyncio.run(scenario())
    assert accepted == 15  # the 5 before the outage are duplicates; nothing of the refused batch was kept
    assert count_rows(postgres_url) == 20 and counted(metrics) == 20


def test_a_wrong_password_keeps_the_replica_unready_and_says_why(tmp_path, postgres_url):
    write_model(tmp_path)
    wrong = postgres_url.replace("@", "x@", 1)  # the password gets a character more

    async def scenario() -> str:
        async with ledger_serving(ledger_config(tmp_path, wrong, reload_interval=0.1), wait=False) as (_, client):
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                response = await client.get("/readyz")
                reason = (await response.json())["reason"]
                if reason != "the model is loading":
                    return reason
                await asyncio.sleep(0.05)
        raise AssertionError("never gave a reason")

    reason = asyncio.run(scenario())
    assert "the label database is unavailable" in reason and "password authentication failed" in reason


def start_ledger_process(root: Path, port: int, url: str) -> subprocess.Popen:
    env = {
        **os.environ,
        "MFL_MODEL_NAME": "churn",
        "MFL_MODEL_VERSION": "1",
        "MFL_STORAGE_ROOT": str(root),
        "MFL_PORT": str(port),
        "MFL_HOST": "127.0.0.1",
        "MFL_SIGNING_KEY": KEY.decode(),
        "MFL_DATABASE_URL": url,
    }
    return subprocess.Popen(
        [sys.executable, "-m", "mfl_server.app"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


def test_every_label_acknowledged_before_a_sigkill_is_in_the_database(tmp_path, postgres_url):
    write_model(tmp_path)
    port = free_port()
    process = start_ledger_process(tmp_path, port, postgres_url)
    base = f"http://127.0.0.1:{port}"

    async def scenario() -> tuple[list[str], int]:
        acknowledged: list[str] = []
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
            await wait_ready(session, base, process)
            ids: list[str] = []
            for seed in range(10):
                async with session.post(f"{base}/predict", json={"instances": rows_of(synthetic(50, seed)[0])}) as r:
                    ids += (await r.json())["ids"]
            batches = [ids[start : start + 5] for start in range(0, len(ids), 5)]
            # A few requests in flight, not all 100: with every one sent at once, a loaded machine had answered
            # them all before the kill landed, and the run was not cut short at all.
            in_flight = asyncio.Semaphore(4)

            async def send(batch: list[str]) -> None:
                entries = [{"id": row_id, "label": 0} for row_id in batch]
                try:
                    async with in_flight, session.post(f"{base}/feedback", json={"feedback": entries}) as response:
                        if response.status == 200 and (await response.json())["accepted"] == len(batch):
                            acknowledged.extend(batch)
                            if len(acknowledged) == 200:
                                process.send_signal(signal.SIGKILL)  # right after an acknowledgement
                except (aiohttp.ClientError, TimeoutError):
                    pass  # killed under this request: not acknowledged

            await asyncio.gather(*(send(batch) for batch in batches))
        return acknowledged, len(ids)

    try:
        acknowledged, sent = asyncio.run(scenario())
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=30)
    assert process.returncode == -signal.SIGKILL
    assert 200 <= len(acknowledged) < sent  # the kill cut the run short
    assert set(acknowledged) <= set(stored(postgres_url))


# --- the object store: prediction segments, retention, mfl-fetch -----------------------------------


def s3_config(root: Path, url: str, s3_env: dict[str, str], **overrides: Any) -> ServerConfig:
    settings = {"log_flush_seconds": 0.2, **overrides}
    return ledger_config(root, url, s3=s3_settings_from_env(s3_env), **settings)


def segment_lines(store: S3Store, prefix: str = "churn/predictions/") -> list[dict[str, Any]]:
    return [
        json.loads(line) for info in store.list(prefix) for line in gzip.decompress(store.get(info.key)).splitlines()
    ]


def test_predictions_are_logged_to_the_bucket_as_gzip_segments_and_labels_to_the_ledger(tmp_path, postgres_url, s3_env):
    write_model(tmp_path)
    store = S3Store(s3_settings_from_env(s3_env))

    async def scenario() -> tuple[list[str], list[str]]:
        async with ledger_serving(s3_config(tmp_path, postgres_url, s3_env)) as (server, client):
            early = []
            for seed in range(3):
                early += (await predict(client, rows_of(synthetic(10, seed)[0])))["ids"]
            deadline = time.monotonic() + 20
            while len(segment_lines(store)) < 30 and time.monotonic() < deadline:  # flushed by age
                await asyncio.sleep(0.1)
            assert {line["id"] for line in segment_lines(store)} == set(early)
            late = (await predict(client, rows_of(synthetic(5, seed=9)[0])))["ids"]
            status, body = await post_feedback(client, [{"id": row_id, "label": 1} for row_id in early + late])
            assert status == 200 and body["accepted"] == 35
        return early, late  # the shutdown uploaded the last segment

    early, late = asyncio.run(scenario())
    lines = segment_lines(store)
    assert sorted(line["id"] for line in lines) == sorted(early + late)
    assert set(lines[0]) == {"id", "ts", "version", "track", "features", "prediction"}
    keys = [info.key for info in store.list("churn/")]
    day = time.strftime("%Y-%m-%d", time.gmtime())
    assert keys and all(key.startswith(f"churn/predictions/date={day}/") and key.endswith(".jsonl.gz") for key in keys)
    assert len(stored(postgres_url)) == 35
    assert not (tmp_path / "churn" / "predictions").exists() and not (tmp_path / "churn" / "feedback").exists()


def test_the_sidecar_logs_to_the_bucket_and_records_labels_in_the_ledger(tmp_path, postgres_url, s3_env):
    upstream_root, sidecar_root, _ = two_roots(tmp_path)
    store = S3Store(s3_settings_from_env(s3_env))
    x, y = synthetic(8, seed=11)

    async def scenario() -> tuple[list[str], dict]:
        async with reference_upstream(upstream_root) as url:
            sidecar = SidecarServer(s3_config(sidecar_root, postgres_url, s3_env), Upstream(url, "churn", 5.0))
            async with running(sidecar) as (_, client):
                response = await client.post("/v2/models/churn/infer", json={"inputs": [tensor(x.tolist())]})
                assert response.status == 200, await response.text()
                ids = (await response.json())["outputs"][-1]["data"]
                labels = [{"id": row_id, "label": int(label)} for row_id, label in zip(ids, y)]
                assert (await post_feedback(client, labels))[1]["accepted"] == 8
                assert (await post_feedback(client, labels))[1]["accepted"] == 0
                return ids, await metrics_of(client)

    ids, metrics = asyncio.run(scenario())
    assert counted(metrics) == 8 and set(stored(postgres_url)) == set(ids)
    assert sorted(line["id"] for line in segment_lines(store)) == sorted(ids)  # uploaded at the latest at shutdown
    assert not (sidecar_root / "churn" / "predictions").exists() and not (sidecar_root / "churn" / "feedback").exists()


def test_an_unreachable_bucket_is_unready_with_the_reason(tmp_path, postgres_url, s3_env):
    write_model(tmp_path)
    dead = {**s3_env, "MFL_S3_ENDPOINT": f"http://127.0.0.1:{free_port()}"}

    async def scenario() -> str:
        async with ledger_serving(s3_config(tmp_path, postgres_url, dead, reload_interval=0.1), wait=False) as (
            _,
            client,
        ):
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                reason = (await (await client.get("/readyz")).json())["reason"]
                if reason != "the model is loading":
                    return reason
                await asyncio.sleep(0.05)
        raise AssertionError("never gave a reason")

    reason = asyncio.run(scenario())
    assert "the artifact store is not writable" in reason and "unreachable" in reason


def test_retention_deletes_old_log_objects_and_ledger_partitions_but_never_live_ones(tmp_path, postgres_url, s3_env):
    write_model(tmp_path)
    store = S3Store(s3_settings_from_env(s3_env))
    now = time.time()
    keep, max_age = 10 * DAY, 3 * DAY
    old, kept = ledger.day_of(now - 12 * DAY), ledger.day_of(now - 5 * DAY)
    for day in (old, kept):
        store.put(f"churn/predictions/date={day}/host-1-000001.jsonl.gz", gzip.compress(b"{}\n"))
        store.put(f"churn/feedback/date={day}/host-1.jsonl", b"{}\n")
    config = s3_config(tmp_path, postgres_url, s3_env, retention_log_seconds=keep, feedback_max_age=max_age)

    async def scenario() -> None:
        async with ledger_serving(config) as (server, _):  # ready: the probe created the live days' partitions
            # Another loop on this database keeps its labels for 20 days: nothing younger goes. Recorded before
            # the old partition exists, so the server's own first sweep (in the background) cannot drop it either.
            await asyncio.to_thread(
                execute, postgres_url, (ledger.RECORD_HORIZON, {"model": "other", "keep": 20.0 * DAY, "now": now})
            )
            await asyncio.to_thread(execute, postgres_url, *(ledger.partition_ddl(day) for day in (old, kept)))
            await server.sweep(now)
            assert ledger.partition_name(old) in await asyncio.to_thread(partitions, postgres_url)
            await asyncio.to_thread(execute, postgres_url, "DELETE FROM mfl_label_horizons WHERE model = 'other'")
            await server.sweep(now)

    asyncio.run(scenario())
    keys = [info.key for info in store.list("churn/")]
    assert keys == sorted(
        [f"churn/feedback/date={kept}/host-1.jsonl", f"churn/predictions/date={kept}/host-1-000001.jsonl.gz"]
    )
    names = partitions(postgres_url)
    assert ledger.partition_name(old) not in names and ledger.partition_name(kept) in names
    assert ledger.partition_name(ledger.day_of(now)) in names


def execute(url: str, *statements: str | tuple[str, dict[str, Any]]) -> None:
    """Statements in one transaction, with timeouts: called off the loop, beside a running server."""
    with psycopg.connect(url, connect_timeout=5, options="-c statement_timeout=10s") as conn:
        for statement in statements:
            query, params = statement if isinstance(statement, tuple) else (statement, None)
            conn.execute(query, params)


def partitions(url: str) -> set[str]:
    with psycopg.connect(url, connect_timeout=5) as conn:
        return {row[0] for row in conn.execute(ledger.LIST_PARTITIONS).fetchall()}


def test_mfl_fetch_waits_for_the_version_then_downloads_it(tmp_path, s3_env):
    store = S3Store(s3_settings_from_env(s3_env))
    source = tmp_path / "trained"
    write_model(source, 4)
    emptydir = tmp_path / "emptydir"

    async def scenario() -> int:
        fetching = asyncio.create_task(asyncio.to_thread(fetch, store, "churn", 4, emptydir, 0.1))
        await asyncio.sleep(0.5)
        assert not fetching.done()  # no metadata.json yet: waiting
        store.put("churn/versions/4/model.joblib", (source / "churn/versions/4/model.joblib").read_bytes())
        await asyncio.sleep(0.3)
        assert not fetching.done()  # a version without its metadata.json does not exist yet
        store.upload(source / "churn/versions/4", "churn/versions/4", last="metadata.json")
        return await asyncio.wait_for(fetching, 30)

    assert asyncio.run(scenario()) == 2
    version = emptydir / "churn" / "versions" / "4"
    assert sorted(path.name for path in version.iterdir()) == ["metadata.json", "model.joblib"]
    assert (version / "model.joblib").read_bytes() == (source / "churn/versions/4/model.joblib").read_bytes()

    env = {**os.environ, **s3_env, "MFL_MODEL_NAME": "churn", "MFL_MODEL_VERSION": "4"}
    env["MFL_STORAGE_ROOT"] = str(tmp_path / "another")
    result = subprocess.run([sys.executable, "-m", "mfl_server.fetch"], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "fetched version 4 of churn (2 files)" in result.stderr
    assert (tmp_path / "another" / "churn" / "versions" / "4" / "metadata.json").exists()
    env.pop("MFL_S3_BUCKET")
    result = subprocess.run([sys.executable, "-m", "mfl_server.fetch"], env=env, capture_output=True, text=True)
    assert result.returncode == 2 and "MFL_S3_BUCKET is not set" in result.stderr
