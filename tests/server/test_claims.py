"""Exactly-once claims of labelled prediction ids on the shared store (mfl_server.claims)."""

from __future__ import annotations

import os
import threading

import pytest

from mfl_server.claims import CLOCK_MARGIN, DAY_SECONDS, ClaimStore, claim_key, expired_days

DAY1 = 1764288000.0  # 2025-11-28T00:00:00Z
MAX_AGE = 7 * DAY_SECONDS


def test_the_key_is_the_prediction_day_a_shard_and_a_hash_of_the_id():
    key = claim_key("AQAB-some-id_", DAY1 + 86399.9)
    day, shard, name = key.split("/")
    assert day == "date=2025-11-28" and len(shard) == 2 and len(name) == 30
    assert all(ch in "0123456789abcdef" for ch in shard + name)
    assert claim_key("AQAB-some-id_", DAY1 + 86400.0).startswith("date=2025-11-29/" + shard)
    assert claim_key("AQAB-some-id-", DAY1) != claim_key("AQAB-some-id_", DAY1)


def test_keys_spread_over_the_shards():
    shards = {claim_key(f"id-{i}", DAY1).split("/")[1] for i in range(5000)}
    assert len(shards) == 256


@pytest.mark.parametrize(
    "name, now, expired",
    [
        ("date=2025-11-28", DAY1 + DAY_SECONDS + MAX_AGE + CLOCK_MARGIN - 1, False),
        ("date=2025-11-28", DAY1 + DAY_SECONDS + MAX_AGE + CLOCK_MARGIN, True),
        ("date=2025-11-29", DAY1 + DAY_SECONDS + MAX_AGE + CLOCK_MARGIN, False),
        ("date=2025-01-01", DAY1, True),
        ("date=garbage", DAY1 * 2, False),
        (".probe-host-1", DAY1 * 2, False),
        ("2025-11-28", DAY1 * 2, False),
    ],
)
def test_a_day_expires_once_its_last_prediction_is_older_than_max_age_and_the_margin(name, now, expired):
    assert expired_days([name], now, MAX_AGE) == ([name] if expired else [])


def test_a_claim_is_won_once_and_released_for_a_retry(tmp_path):
    store, other = ClaimStore(tmp_path / "claims", "a-1"), ClaimStore(tmp_path / "claims", "b-2")
    assert store.claim("id-1", DAY1) is True
    assert store.claim("id-1", DAY1) is False
    assert other.claim("id-1", DAY1) is False  # another replica, same volume
    assert other.claim("id-2", DAY1) is True
    assert store.release("id-1", DAY1) is True
    assert other.claim("id-1", DAY1) is True
    assert store.release("never-claimed", DAY1) is True
    files = [path for path in (tmp_path / "claims").rglob("*") if path.is_file()]
    assert len(files) == 2 and all(path.stat().st_size == 0 for path in files)


def test_concurrent_claimers_of_one_id_have_exactly_one_winner(tmp_path):
    stores = [ClaimStore(tmp_path / "claims", f"r-{i}") for i in range(8)]
    wins: list[bool] = []
    barrier = threading.Barrier(len(stores))

    def claim_all(store: ClaimStore) -> None:
        barrier.wait()
        wins.extend(store.claim(f"id-{n}", DAY1) for n in range(200))

    threads = [threading.Thread(target=claim_all, args=(store,)) for store in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(wins) == 8 * 200 and sum(wins) == 200


def test_an_unwritable_store_raises_instead_of_answering(tmp_path):
    (tmp_path / "claims").write_text("a file where a folder belongs")
    store = ClaimStore(tmp_path / "claims", "a-1")
    with pytest.raises(OSError):
        store.claim("id-1", DAY1)
    with pytest.raises(OSError):
        store.probe()
    assert store.release("id-1", DAY1) is False


def test_the_probe_writes_and_leaves_nothing(tmp_path):
    store = ClaimStore(tmp_path / "claims", "a-1")
    store.probe()
    assert os.listdir(tmp_path / "claims") == []


def test_sweep_deletes_only_expired_days_and_tolerates_a_concurrent_sweeper(tmp_path):
    store = ClaimStore(tmp_path / "claims", "a-1")
    for day in range(10):
        for n in range(20):
            assert store.claim(f"id-{n}", DAY1 + day * DAY_SECONDS)
    (tmp_path / "claims" / "date=not-a-day").mkdir()
    now = DAY1 + 10 * DAY_SECONDS  # days 0-1 are older than 7 days + the margin + their own length
    assert store.sweep(now, MAX_AGE) == ["date=2025-11-28", "date=2025-11-29"]
    assert store.sweep(now, MAX_AGE) == []
    assert sorted(os.listdir(tmp_path / "claims"))[:2] == ["date=2025-11-30", "date=2025-12-01"]
    assert "date=not-a-day" in os.listdir(tmp_path / "claims")
    assert store.claim("id-0", DAY1 + 2 * DAY_SECONDS) is False  # a kept day still answers
    half_gone = tmp_path / "claims" / "date=2025-11-30"
    for shard in list(half_gone.iterdir())[:3]:  # another replica got here first
        for path in shard.iterdir():
            path.unlink()
        shard.rmdir()
    assert store.sweep(now + DAY_SECONDS, MAX_AGE) == ["date=2025-11-30"]
    assert not half_gone.exists()
    assert ClaimStore(tmp_path / "missing", "a-1").sweep(now, MAX_AGE) == []


def test_claim_all_stops_at_the_first_error_and_says_what_it_won(tmp_path):
    store = ClaimStore(tmp_path / "claims", "a-1")
    assert store.claim("taken", DAY1)
    (tmp_path / "claims" / "date=2025-11-29").write_text("a file where a day belongs")
    won, error = store.claim_all([("new", DAY1), ("taken", DAY1), ("next-day", DAY1 + DAY_SECONDS), ("x", DAY1)])
    assert won == [True, False] and isinstance(error, OSError)
    assert store.claim_all([("x", DAY1), ("y", DAY1)]) == ([True, True], None)
