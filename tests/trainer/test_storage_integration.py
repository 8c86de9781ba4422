"""The trainer in object store + database mode against a REAL SeaweedFS and a REAL PostgreSQL (the test bed's
`seaweedfs` and `postgres` fixtures): a run from the bucket and the ledger publishes its version with
metadata.json last, a retry finds it published, retention deletes old versions, and store or database
failures fail the version naming the store."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import psycopg
import pytest

from mfl_contracts import ledger
from mfl_contracts.objectstore import S3Store, s3_settings_from_env
from mfl_trainer import mirror
from tests.trainer.test_storage_modes import gzip_segments
from tests.trainer.test_train import MODEL, config, run_trainer, write_base, write_feedback

pytestmark = pytest.mark.integration
FAST = {"hyperparameters": {"max_iter": 20}}


class RecordingS3Store(S3Store):
    """The real store, recording the key of every object written, in the order the requests went out."""

    created: list[RecordingS3Store] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.puts: list[str] = []
        RecordingS3Store.created.append(self)

    def _put(self, key: str, stream: Any, length: int) -> None:
        self.puts.append(key)
        super()._put(key, stream, length)


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> list[RecordingS3Store]:
    RecordingS3Store.created = []
    monkeypatch.setattr(mirror, "S3Store", RecordingS3Store)
    return RecordingS3Store.created


def use_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)


def seed_bucket(store: S3Store, folder: Path) -> list[dict[str, Any]]:
    """Base data and gzip prediction segments in the bucket, as the server writes them in s3 mode; the
    feedback lines that go with them (for the ledger)."""
    write_base(folder)
    write_feedback(folder, n=800)
    gzip_segments(folder / MODEL)
    labels = [
        json.loads(line) for path in sorted((folder / MODEL / "feedback").rglob("*.jsonl")) for line in path.open()
    ]
    shutil.rmtree(folder / MODEL / "feedback")  # no feedback objects in ledger mode
    store.upload(folder, "")
    return labels


def insert_labels(url: str, labels: list[dict[str, Any]]) -> None:
    """The rows the server's ledger writes, each with its own label time."""
    with psycopg.connect(url) as conn:
        for statement in ledger.ddl_statements({ledger.day_of(row["predictionTs"]) for row in labels}, schema=True):
            conn.execute(statement)
        conn.commit()
        for row in labels:
            entry = ledger.LabelRow(
                row["id"], json.dumps(row["label"]), json.dumps(row["prediction"]), 1, "stable", row["predictionTs"]
            )
            conn.execute(ledger.INSERT_LABELS, ledger.insert_params(MODEL, [entry], row["ts"]))
        conn.commit()


def version_keys(store: S3Store, version: int) -> list[str]:
    return [info.key for info in store.list(f"{MODEL}/versions/{version}/")]


def test_a_run_from_the_bucket_and_the_ledger_publishes_metadata_last(
    s3_env, postgres_url, recorded, tmp_path, monkeypatch, capsys
):
    store = S3Store(s3_settings_from_env(s3_env))
    insert_labels(postgres_url, seed_bucket(store, tmp_path / "seed"))
    use_env(monkeypatch, {**s3_env, "MFL_DATABASE_URL": postgres_url})
    document = config(tmp_path / "fetch", **FAST)

    code, summary, err = run_trainer(document, tmp_path, monkeypatch, capsys)

    assert code == 0, summary
    assert summary["rows"]["base"] == 2000 and summary["rows"]["feedback"] == 800
    assert "read 800 labels from the ledger" in err
    version_puts = [key for key in recorded[-1].puts if key.startswith(f"{MODEL}/versions/1/")]
    assert len(version_puts) == 5 and version_puts[-1] == f"{MODEL}/versions/1/metadata.json"
    assert sorted(version_keys(store, 1)) == sorted(version_puts)
    assert json.loads(store.get(f"{MODEL}/versions/1/metadata.json"))["rows"]["feedback"] == 800

    # The Job is retried after it published (its Pod was lost before it reported): nothing is rewritten.
    code, again, err = run_trainer(document, tmp_path, monkeypatch, capsys)
    assert code == 0 and again["existing"] is True, again
    assert "already exists with the same inputs" in err
    assert [key for key in recorded[-1].puts if "/versions/" in key] == []

    # A newer version with retention 1 deletes version 1 from the bucket, metadata first.
    code, summary, err = run_trainer(
        config(tmp_path / "fetch", version=2, retainVersions=1, **FAST), tmp_path, monkeypatch, capsys
    )
    assert code == 0, summary
    assert "retention: deleted versions [1]" in err
    assert version_keys(store, 1) == [] and f"{MODEL}/versions/2/metadata.json" in version_keys(store, 2)


def test_a_missing_bucket_fails_the_version_naming_the_store(seaweedfs, s3_env, tmp_path, monkeypatch, capsys):
    # The admin may see that a bucket does not exist; a tenant is refused every bucket not its own.
    env = seaweedfs.s3_env(seaweedfs.admin, prefix=s3_env["MFL_S3_PREFIX"], bucket="no-such-bucket")
    use_env(monkeypatch, env)
    code, summary, _ = run_trainer(config(tmp_path / "fetch"), tmp_path, monkeypatch, capsys)
    where = f"s3://no-such-bucket/{s3_env['MFL_S3_PREFIX']} at {seaweedfs.url}"
    assert code == 2 and summary["error"] == f"artifact store {where}: bucket 'no-such-bucket' does not exist"


@pytest.mark.parametrize("case", ["wrong secret", "another tenant's bucket"])
def test_refused_credentials_fail_the_version_naming_the_store(case, seaweedfs, s3_env, tmp_path, monkeypatch, capsys):
    if case == "wrong secret":
        env = {**s3_env, "MFL_S3_SECRET_ACCESS_KEY": "not-the-secret"}
    else:
        env = {**s3_env, "MFL_S3_BUCKET": seaweedfs.tenant_b.bucket}
    use_env(monkeypatch, env)
    code, summary, _ = run_trainer(config(tmp_path / "fetch"), tmp_path, monkeypatch, capsys)
    where = f"s3://{env['MFL_S3_BUCKET']}/{env['MFL_S3_PREFIX']} at {seaweedfs.url}"
    assert code == 2 and summary["error"].startswith(f"artifact store {where}: "), summary
    assert "not-the-secret" not in summary["error"]


def test_a_refused_database_fails_the_version_without_its_password(postgres_url, tmp_path, monkeypatch, capsys):
    root = tmp_path / "volume"
    write_base(root, n=400)
    wrong = _wrong_password(postgres_url)
    monkeypatch.setenv("MFL_DATABASE_URL", wrong)
    code, summary, _ = run_trainer(config(root), tmp_path, monkeypatch, capsys)
    assert code == 2 and summary["error"].startswith(
        f"label ledger: cannot read labels from {ledger.describe(wrong)}: "
    )
    assert "wrong-password" not in summary["error"]


def _wrong_password(url: str) -> str:
    head, _, tail = url.partition("://")
    user_info, _, host = tail.partition("@")
    user = user_info.split(":")[0]
    return f"{head}://{user}:wrong-password@{host}"
