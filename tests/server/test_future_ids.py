"""Prediction ids dated in the future (issue 22, Build 5): refused beyond the clock margin in every label
recorder (claim files, the ledger) and through the V2 sidecar, counted as `future`; their days are swept."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from mfl_contracts import ledger
from mfl_server import claims
from mfl_server import feedback as fb
from mfl_server.config import ConfigError, from_env
from mfl_server.ids import IdSigner
from tests.server.test_app import (
    KEY,
    jsonl,
    metrics_of,
    predict,
    rows_of,
    run,
    server_config,
    serving,
    synthetic,
    value,
    write_model,
)

OWN = {"model": "churn", "version": "1", "track": "stable"}
DAY = 86400.0
NOW = 1_764_340_000.0
YEAR_2100 = datetime(2100, 1, 1, tzinfo=UTC).timestamp()


def signer() -> IdSigner:
    return IdSigner(KEY, "churn")


# --- the rule ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ahead, reason",
    [
        (-10.0, None),
        (0.0, None),
        (300.0, None),  # the margin itself: a replica whose clock runs 5 minutes ahead
        (301.0, "future"),
        (86400.0, "future"),
        (YEAR_2100 - NOW, "future"),
    ],
)
def test_an_id_dated_beyond_the_margin_is_refused_as_future(ahead, reason):
    [prediction_id] = signer().sign_batch(1, "stable", [1], NOW + ahead)
    rules = fb.LabelRules.for_model("classification", [0, 1], NOW, 30 * DAY)
    accepted, rejected = fb.review([{"id": prediction_id, "label": 1}], signer().verify, rules)
    assert [item.reason for item in rejected] == ([reason] if reason else [])
    assert len(accepted) == (0 if reason else 1)
    if reason:
        message = rejected[0].message
        assert "in the future" in message and "MFL_FEEDBACK_CLOCK_MARGIN_SECONDS" in message
        assert fb.refusal(0, rejected).startswith("no label recorded: entry 0: the prediction id is dated")


def test_the_margin_is_configurable_within_bounds():
    base = {"MFL_MODEL_NAME": "churn", "MFL_MODEL_VERSION": "1", "MFL_SIGNING_KEY": "k"}
    assert from_env(base).feedback_clock_margin == 300.0
    assert from_env({**base, "MFL_FEEDBACK_CLOCK_MARGIN_SECONDS": "60"}).feedback_clock_margin == 60.0
    for bad in ("0", "3601", "-1", "inf", "nan", "soon"):
        with pytest.raises(ConfigError, match="MFL_FEEDBACK_CLOCK_MARGIN_SECONDS"):
            from_env({**base, "MFL_FEEDBACK_CLOCK_MARGIN_SECONDS": bad})
    rules = fb.LabelRules.for_model("classification", None, NOW, DAY, future_margin=60.0)
    [ahead] = signer().sign_batch(1, "stable", [1], NOW + 120)
    assert fb.review([{"id": ahead, "label": 1}], signer().verify, rules)[1][0].reason == "future"


# --- volume mode (claim files) -------------------------------------------------------------------


def test_a_future_id_is_refused_with_a_422_counted_and_leaves_no_claim_or_line(tmp_path):
    write_model(tmp_path)

    async def scenario() -> tuple[list[tuple[int, dict]], dict]:
        async with serving(server_config(tmp_path)) as (server, client):
            [honest] = (await predict(client, rows_of(synthetic(1)[0])))["ids"]
            [far] = server.signer.sign_batch(1, "stable", [1], YEAR_2100)
            [soon] = server.signer.sign_batch(1, "stable", [1], time.time() + 3600)
            answers = []
            for entries in ([{"id": far, "label": 1}], [{"id": soon, "label": 0}, {"id": honest, "label": 1}]):
                response = await client.post("/feedback", json={"feedback": entries})
                answers.append((response.status, await response.json()))
            return answers, await metrics_of(client)

    answers, metrics = run(scenario())
    assert [status for status, _ in answers] == [422, 200]
    assert answers[0][1]["rejected"][0]["reason"] == "future"
    assert "in the future" in answers[0][1]["error"]
    assert answers[1][1]["accepted"] == 1 and answers[1][1]["rejected"][0]["reason"] == "future"
    assert value(metrics, "mfl_feedback_rejected_total", **OWN, reason="future") == 2
    assert value(metrics, "mfl_feedback_total", **OWN) == 1
    days = sorted(path.name for path in (tmp_path / "churn" / "feedback-claims").iterdir())
    assert days == [f"date={datetime.fromtimestamp(time.time(), UTC).date()}"]  # no claim for 2100
    assert len(jsonl(tmp_path / "churn" / "feedback")) == 1


def test_the_sweep_deletes_claim_days_dated_beyond_every_replicas_margin(tmp_path):
    store = claims.ClaimStore(tmp_path / "claims", "probe")
    now = datetime(2025, 11, 28, 23, 30, tzinfo=UTC).timestamp()
    # Just after midnight by the clock of a replica running ahead: its labels may still come.
    ahead, next_day, far = now + 2400, now + DAY, YEAR_2100
    for ts in (now, ahead, next_day, far):
        assert store.claim(f"id-{ts}", ts)
    assert store.sweep(now, 30 * DAY) == ["date=2100-01-01"]
    assert not store.claim(f"id-{ahead}", ahead)  # kept
    assert store.sweep(now - 2 * 3600, 30 * DAY) == ["date=2025-11-29"]  # two hours earlier it was future
    # A day is future only once it starts after every replica's clock plus its margin.
    start = datetime(2025, 11, 29, tzinfo=UTC).timestamp()
    assert claims.expired_days(["date=2025-11-29"], start - 2 * claims.CLOCK_MARGIN, DAY) == []
    assert claims.expired_days(["date=2025-11-29"], start - 2 * claims.CLOCK_MARGIN - 1, DAY) == ["date=2025-11-29"]


def test_the_ledger_drops_partitions_of_days_dated_beyond_every_servers_margin():
    names = ["mfl_labels_p20251128", "mfl_labels_p20251129", "mfl_labels_p21000101"]
    start = datetime(2025, 11, 29, tzinfo=UTC).timestamp()
    assert ledger.expired_partitions(names, start - 2 * ledger.CLOCK_MARGIN, 40 * DAY) == ["mfl_labels_p21000101"]
    assert ledger.expired_partitions(names, start - 2 * ledger.CLOCK_MARGIN - 1, 40 * DAY) == names[1:]
    assert ledger.expired_partitions(names, start, float("inf")) == ["mfl_labels_p21000101"]


# --- the V2 sidecar ------------------------------------------------------------------------------


def test_the_sidecar_refuses_future_ids_as_the_server_does(tmp_path):
    from tests.server.test_sidecar import reference_upstream, sidecar, two_roots

    upstream_root, sidecar_root, _ = two_roots(tmp_path)

    async def scenario() -> tuple[int, dict, dict]:
        async with reference_upstream(upstream_root) as url, sidecar(sidecar_root, url) as (server, client):
            [far] = server.signer.sign_batch(1, "stable", [1], time.time() + DAY)
            response = await client.post("/v2/models/churn/feedback", json={"feedback": [{"id": far, "label": 1}]})
            return response.status, await response.json(), await metrics_of(client)

    status, body, metrics = run(scenario())
    assert status == 422 and body["rejected"][0]["reason"] == "future"
    assert value(metrics, "mfl_feedback_rejected_total", **OWN, reason="future") == 1
    assert not list((sidecar_root / "churn" / "feedback-claims").glob("date=*"))


# --- database mode (the ledger) ------------------------------------------------------------------


@pytest.mark.integration
def test_the_ledger_refuses_future_ids_and_creates_no_partition_for_them(tmp_path: Path, postgres_url: str):
    import psycopg

    from tests.server.test_ledger_integration import ledger_config, ledger_serving, partitions

    write_model(tmp_path)

    async def scenario() -> tuple[int, dict[str, Any], dict]:
        async with ledger_serving(ledger_config(tmp_path, postgres_url)) as (server, client):
            [far] = server.signer.sign_batch(1, "stable", [1], YEAR_2100)
            [honest] = (await predict(client, rows_of(synthetic(1)[0])))["ids"]
            entries = [{"id": far, "label": 1}, {"id": honest, "label": 0}]
            response = await client.post("/feedback", json={"feedback": entries})
            return response.status, await response.json(), await metrics_of(client)

    status, body, metrics = asyncio.run(scenario())
    assert status == 200 and body["accepted"] == 1 and body["rejected"][0]["reason"] == "future"
    assert value(metrics, "mfl_feedback_rejected_total", **OWN, reason="future") == 1
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute(f"SELECT count(*) FROM {ledger.TABLE}").fetchone()[0] == 1
    assert "mfl_labels_p21000101" not in partitions(postgres_url)
