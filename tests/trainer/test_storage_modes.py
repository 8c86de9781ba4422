"""The trainer in s3 mode (a local mirror, publishing with metadata.json last), with labels from the ledger,
and version retention. A VolumeStore over a second folder stands in for the bucket here; the real SeaweedFS
and PostgreSQL runs are in test_storage_integration.py."""

from __future__ import annotations

import gzip
import json
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mfl_contracts import ledger, objectstore
from mfl_contracts.objectstore import ObjectInfo, StoreError, VolumeStore
from mfl_trainer import config as config_module
from mfl_trainer import datasource, mirror, retention
from mfl_trainer.errors import TrainerError
from tests.trainer.test_train import DAY, MODEL, NOW, config, run_trainer, write_base, write_feedback

S3_ENV = {
    "MFL_S3_ENDPOINT": "http://127.0.0.1:1",
    "MFL_S3_BUCKET": "models",
    "MFL_S3_PREFIX": "team",
    "MFL_S3_ACCESS_KEY_ID": "key",
    "MFL_S3_SECRET_ACCESS_KEY": "secret",
}
DATABASE_URL = "postgresql://trainer:hunter2@db.example:5432/labels"


class RecordingStore:
    """A store that records every key it writes or deletes, in order (upload: file by file)."""

    def __init__(self, inner: VolumeStore) -> None:
        self.inner = inner
        self.description = f"s3://models/team at {S3_ENV['MFL_S3_ENDPOINT']}"
        self.writes: list[str] = []
        self.deletes: list[list[str]] = []

    def get(self, key: str) -> bytes:
        return self.inner.get(key)

    def put(self, key: str, data: bytes) -> None:
        self.writes.append(key)
        self.inner.put(key, data)

    def list(self, prefix: str) -> list[ObjectInfo]:
        return self.inner.list(prefix)

    def delete(self, keys: Iterable[str]) -> None:
        self.deletes.append(list(keys))
        self.inner.delete(self.deletes[-1])

    def download(self, prefix: str, dest: Path) -> int:
        return self.inner.download(prefix, dest)

    def upload(self, folder: Path, prefix: str, last: str | None = None) -> int:
        files = objectstore._folder_files(folder, last)
        for rest, path in files:
            self.put(objectstore.folder_prefix(prefix) + rest, path.read_bytes())
        return len(files)

    def check(self) -> None:
        self.inner.check()


@pytest.fixture
def bucket(tmp_path: Path) -> Path:
    path = tmp_path / "bucket"
    path.mkdir()
    return path


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "artifacts"
    path.mkdir()
    return path


@pytest.fixture
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """$TMPDIR of the run: the mirror must leave nothing behind in it."""
    path = tmp_path / "tmpdir"
    path.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(path))
    return path


@pytest.fixture
def s3_mode(bucket: Path, scratch: Path, monkeypatch: pytest.MonkeyPatch) -> RecordingStore:
    """s3 mode by env, with the bucket played by a folder."""
    store = RecordingStore(VolumeStore(bucket))
    for name, value in S3_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(mirror, "S3Store", lambda settings: store)
    return store


def gzip_segments(model_dir: Path) -> None:
    """The server's s3-mode prediction log: gzip segments instead of daily files."""
    for path in sorted((model_dir / "predictions").rglob("*.jsonl")):
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(path.read_bytes()))
        path.unlink()


def move_feedback_to_ledger(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The feedback log's lines become the ledger's rows (ledger.read_labels yields the same dicts)."""
    rows = [json.loads(line) for path in sorted((model_dir / "feedback").rglob("*.jsonl")) for line in path.open()]
    for path in (model_dir / "feedback").rglob("*.jsonl"):
        path.unlink()
    calls: list[tuple[str, str, float]] = []

    def read_labels(url: str, model: str, since: float) -> Iterator[dict[str, Any]]:
        calls.append((url, model, since))
        yield from (row for row in rows if row["predictionTs"] >= since)

    monkeypatch.setattr(ledger, "read_labels", read_labels)
    monkeypatch.setenv("MFL_DATABASE_URL", DATABASE_URL)
    return calls


# --- s3 mode -------------------------------------------------------------------------------------


def test_s3_mode_trains_on_the_mirror_and_publishes_metadata_last(
    s3_mode, bucket, scratch, tmp_path, monkeypatch, capsys
):
    write_base(bucket)
    write_feedback(bucket, n=800)
    gzip_segments(bucket / MODEL)
    old = bucket / MODEL / "predictions" / "date=2020-01-01" / "old.jsonl.gz"
    old.parent.mkdir()
    old.write_bytes(b"outside the window: never downloaded")
    calls = move_feedback_to_ledger(bucket / MODEL, monkeypatch)
    local_root = tmp_path / "not-used"  # storageRoot: the fetch folder in s3 mode, unused by the trainer

    code, summary, err = run_trainer(config(local_root), tmp_path, monkeypatch, capsys)

    assert code == 0, summary
    assert summary["rows"]["feedback"] == 800 and summary["rows"]["base"] == 2000
    assert calls == [(DATABASE_URL, MODEL, NOW - 7 * DAY)]
    assert "read 800 labels from the ledger at postgresql://trainer@db.example:5432/labels" in err
    assert "hunter2" not in err
    written = [key for key in s3_mode.writes if key.startswith(f"{MODEL}/versions/1/")]
    assert written[-1] == f"{MODEL}/versions/1/metadata.json" and len(written) == 5
    assert json.loads(s3_mode.get(f"{MODEL}/versions/1/metadata.json"))["rows"]["feedback"] == 800
    assert not local_root.exists() and list((scratch / "mfl-store").iterdir()) == []
    assert old.read_bytes().startswith(b"outside")  # the store is read, never changed but for the version


def test_s3_retry_finds_the_version_published(s3_mode, bucket, tmp_path, monkeypatch, capsys):
    write_base(bucket, n=600)
    document = config(tmp_path / "fetch", hyperparameters={"max_iter": 20})
    code, first, _ = run_trainer(document, tmp_path, monkeypatch, capsys)
    assert code == 0, first
    published = s3_mode.get(f"{MODEL}/versions/1/metadata.json")
    s3_mode.writes.clear()

    # A retried Job (the same inputs; the operator may have moved the protected versions meanwhile).
    code, again, err = run_trainer({**document, "protectedVersions": [1]}, tmp_path, monkeypatch, capsys)

    assert code == 0 and again["existing"] is True, again
    assert {k: v for k, v in again.items() if k != "existing"} == {k: v for k, v in first.items() if k != "existing"}
    assert "already exists with the same inputs" in err
    assert [key for key in s3_mode.writes if "/versions/" in key] == []
    assert s3_mode.get(f"{MODEL}/versions/1/metadata.json") == published


def test_s3_version_published_with_other_inputs_is_refused(s3_mode, bucket, tmp_path, monkeypatch, capsys):
    write_base(bucket, n=600)
    document = config(tmp_path / "fetch", hyperparameters={"max_iter": 20})
    assert run_trainer(document, tmp_path, monkeypatch, capsys)[0] == 0
    write_base(bucket, n=500, seed=4)

    code, summary, _ = run_trainer(document, tmp_path, monkeypatch, capsys)

    assert code == 2
    assert summary["error"].startswith(
        f"version 1 already exists at {s3_mode.description}: {MODEL}/versions/1 with different inputs (baseData"
    )


def test_s3_recreated_job_made_later_reads_the_published_window(s3_mode, bucket, tmp_path, monkeypatch, capsys):
    """A Job re-created two days later for a published version: the mirror and the ledger read the window the
    version was trained on (its first days are outside the new Job's window), and the version is reported."""
    write_base(bucket, n=600)
    write_feedback(bucket, n=500, start=NOW - 6.5 * DAY, step=900.0)
    gzip_segments(bucket / MODEL)
    calls = move_feedback_to_ledger(bucket / MODEL, monkeypatch)
    document = config(tmp_path / "fetch", hyperparameters={"max_iter": 20})
    code, first, _ = run_trainer(document, tmp_path, monkeypatch, capsys)
    assert code == 0 and first["rows"]["feedback"] == 500, first
    s3_mode.writes.clear()

    later = {**document, "now": NOW + 2 * DAY, "jobName": "churn-train-v1-b", "trainerImage": "trainer:2"}
    code, again, err = run_trainer(later, tmp_path, monkeypatch, capsys)

    assert code == 0 and again["existing"] is True, again
    assert calls[-1] == (DATABASE_URL, MODEL, NOW - 7 * DAY)  # the published window's start
    assert "already exists with the same inputs" in err
    assert [key for key in s3_mode.writes if "/versions/" in key] == []


def test_store_errors_fail_the_version_with_the_store_message(s3_mode, bucket, tmp_path, monkeypatch, capsys):
    write_base(bucket, n=600)
    reason = f"{s3_mode.description}: cannot list {MODEL}/predictions/date=2025-11-21/: AccessDenied (Access Denied.)"

    def refuse(prefix: str, dest: Path) -> int:
        if "/predictions/" in prefix:
            raise StoreError(reason)
        return s3_mode.inner.download(prefix, dest)

    monkeypatch.setattr(s3_mode, "download", refuse)
    code, summary, err = run_trainer(config(tmp_path / "fetch"), tmp_path, monkeypatch, capsys)

    assert code == 2 and summary == {"ok": False, "error": f"artifact store {reason}", "model": MODEL, "version": 1}
    assert f"error: artifact store {reason}" in err


def test_ledger_errors_fail_the_version_naming_the_database(s3_mode, bucket, tmp_path, monkeypatch, capsys):
    write_base(bucket, n=600)

    def unreachable(url: str, model: str, since: float) -> Iterator[dict[str, Any]]:
        raise ledger.LedgerError(f"cannot read labels from {ledger.describe(url)}: connection refused")
        yield {}

    monkeypatch.setattr(ledger, "read_labels", unreachable)
    monkeypatch.setenv("MFL_DATABASE_URL", DATABASE_URL)
    code, summary, _ = run_trainer(config(tmp_path / "fetch"), tmp_path, monkeypatch, capsys)

    assert code == 2 and summary["error"] == (
        "label ledger: cannot read labels from postgresql://trainer@db.example:5432/labels: connection refused"
    )


def test_bad_store_settings_are_a_configuration_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MFL_S3_BUCKET", "models")
    monkeypatch.setenv("MFL_S3_ENDPOINT", "ftp://store")
    code, summary, _ = run_trainer(config(tmp_path), tmp_path, monkeypatch, capsys)
    assert code == 2 and summary["error"].startswith("artifact store settings: MFL_S3_ENDPOINT='ftp://store'")


def test_the_mirror_copies_the_window_the_champion_and_a_published_version(bucket, tmp_path):
    store = VolumeStore(bucket)
    files = {
        f"{MODEL}/data/base.csv": b"x0,label\n",
        f"{MODEL}/predictions/date=2025-11-20/a.jsonl.gz": b"before the window",
        f"{MODEL}/predictions/date=2025-11-21/a.jsonl.gz": b"first day",
        f"{MODEL}/predictions/date=2025-11-28/b.jsonl": b"today",
        f"{MODEL}/feedback/date=2025-11-28/f.jsonl": b"labels",
        f"{MODEL}/versions/1/model.joblib": b"champion",
        f"{MODEL}/versions/1/metadata.json": b"{}",
        f"{MODEL}/versions/2/model.joblib": b"not the champion",
        f"{MODEL}/versions/2/metadata.json": b"{}",
        f"{MODEL}/versions/3/model.joblib": b"an upload cut short: not this run's to compare with",
        "other/data/base.csv": b"another model",
    }
    for key, data in files.items():
        store.put(key, data)
    settings = config_module.parse_config(config(tmp_path, version=3, parentVersion=1, reviveVersions=0), env={})
    local = tmp_path / "mirror"

    assert mirror.mirror_inputs(store, local, settings, lambda _: None) == 6

    copied = sorted(path.relative_to(local).as_posix() for path in local.rglob("*") if path.is_file())
    skipped = ("2025-11-20", "/versions/2/", "/versions/3/", "other/")
    assert copied == sorted(key for key in files if not any(part in key for part in skipped))
    with_published = config_module.parse_config(config(tmp_path, version=2, parentVersion=1), env={})
    assert mirror.mirror_inputs(store, tmp_path / "retry", with_published, lambda _: None) == 8
    # With reviveVersions (default 5) the published versions before this one are mirrored too: the run scores
    # them on the holdout (revive.py); an upload cut short (no metadata.json) is not a version.
    reviving = config_module.parse_config(config(tmp_path, version=4, parentVersion=1), env={})
    assert mirror.mirror_inputs(store, tmp_path / "reviving", reviving, lambda _: None) == 8
    assert (tmp_path / "reviving" / MODEL / "versions" / "2" / "model.joblib").is_file()
    assert not (tmp_path / "reviving" / MODEL / "versions" / "3").exists()


def test_window_partitions():
    settings = config_module.parse_config(config(Path("/x"), dataWindowSeconds=DAY), env={})
    assert mirror.window_partitions(settings) == ["date=2025-11-27/", "date=2025-11-28/"]
    unbounded = config_module.parse_config(config(Path("/x"), dataWindowSeconds=None), env={})
    assert mirror.window_partitions(unbounded) == [""]


def test_publish_uploads_metadata_last_or_adopts_the_published_version(bucket, tmp_path):
    store = RecordingStore(VolumeStore(bucket))
    folder = tmp_path / "local" / MODEL / "versions" / "4"
    folder.mkdir(parents=True)
    for name in ("metadata.json", "model.joblib", "report.json", "z.png"):
        (folder / name).write_text(json.dumps({"mine": name}))

    assert mirror.publish(store, tmp_path / "local", MODEL, 4, lambda _: None) is None
    assert store.writes[-1] == f"{MODEL}/versions/4/metadata.json" and len(store.writes) == 4

    other = tmp_path / "other" / MODEL / "versions" / "4"
    other.mkdir(parents=True)
    (other / "metadata.json").write_text(json.dumps({"theirs": True}))
    assert mirror.publish(store, tmp_path / "other", MODEL, 4, lambda _: None) == {"mine": "metadata.json"}
    assert sorted(p.name for p in other.iterdir()) == ["metadata.json", "model.joblib", "report.json", "z.png"]
    assert len(store.writes) == 4


# --- volume mode with the ledger -----------------------------------------------------------------


def test_volume_mode_with_a_database_reads_labels_from_the_ledger(root, scratch, tmp_path, monkeypatch, capsys):
    write_base(root)
    write_feedback(root, n=600)
    write_feedback(root, n=200, start=NOW - DAY, seed=3)
    model_dir = root / MODEL
    before = sorted(model_dir.rglob("*.jsonl"))
    move_feedback_to_ledger(model_dir, monkeypatch)
    # Feedback logged on the volume before the loop moved to the ledger still counts.
    old = model_dir / "feedback" / "date=2025-11-27" / "synthetic-0.jsonl"
    old.parent.mkdir(parents=True, exist_ok=True)
    first_ids = [json.loads(line)["id"] for line in sorted(before)[-1].open()][:50]
    old.write_text("".join(json.dumps({"id": i, "ts": NOW - 10, "label": 1}) + "\n" for i in first_ids))

    code, summary, _ = run_trainer(config(root), tmp_path, monkeypatch, capsys)

    assert code == 0, summary
    assert summary["rows"]["feedback"] == 800
    metadata = json.loads((model_dir / "versions" / "1" / "metadata.json").read_text())
    assert metadata["skipped"]["duplicateFeedback"] == 50  # the ledger's earlier label of an id wins
    assert not list((model_dir / "feedback").rglob("ledger.jsonl"))  # nothing written to the shared volume
    assert list((scratch / "mfl-store").iterdir()) == []


def test_ledger_rows_become_feedback_files_the_reader_joins(tmp_path):
    common = {"version": 1, "track": "stable", "prediction": None}
    rows = [
        {**common, "id": "a", "ts": NOW - 5, "label": 1, "predictionTs": NOW - 9},
        {**common, "id": "b", "ts": NOW - 4, "label": "x", "predictionTs": NOW - 2 * DAY},
    ]
    assert mirror.write_label_files(rows, tmp_path / "labels") == 2
    assert sorted(p.relative_to(tmp_path / "labels").as_posix() for p in (tmp_path / "labels").rglob("*.jsonl")) == [
        "date=2025-11-26/ledger.jsonl",
        "date=2025-11-28/ledger.jsonl",
    ]
    predictions = tmp_path / "model" / "predictions" / "date=2025-11-28" / "p.jsonl"
    predictions.parent.mkdir(parents=True)
    predictions.write_text(json.dumps({"id": "a", "ts": NOW - 9, "features": {"f": 1.0}}) + "\n")
    data = datasource.read_feedback(tmp_path / "model", NOW - 3 * DAY, NOW, [tmp_path / "labels"])
    assert data.ids == ["a"] and data.labels == [1] and data.stats["feedbackWithoutPrediction"] == 1


# --- retention -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("complete", "partial", "keep", "protected", "expected"),
    [
        ({1, 2, 3}, set(), 0, set(), []),  # 0: keep everything
        ({1, 2, 3, 4, 5}, set(), 2, set(), [1, 2, 3]),
        ({1, 2, 3, 4, 5}, set(), 2, {1, 5}, [2, 3]),
        ({1, 3, 4, 5, 6}, {2, 7}, 2, {1}, [2, 3, 4]),  # 7: maybe an upload in progress
        ({1, 2}, set(), 5, set(), []),
        (set(), {1, 2}, 3, set(), []),
        ({10, 9, 100}, set(), 1, set(), [9, 10]),  # numbers, not names, decide what is newest
    ],
)
def test_versions_to_delete(complete, partial, keep, protected, expected):
    assert retention.versions_to_delete(complete, partial, keep, protected) == expected


def _settings(**overrides: Any) -> config_module.TrainerConfig:
    return config_module.parse_config(config(Path("/unused"), **overrides), env={})


def _versions(store: VolumeStore, complete: Iterable[int], partial: Iterable[int]) -> None:
    for version in complete:
        store.put(f"{MODEL}/versions/{version}/metadata.json", b"{}")
    for version in [*complete, *partial]:
        store.put(f"{MODEL}/versions/{version}/model.joblib", b"m")


def test_volume_retention(bucket):
    store = VolumeStore(bucket)
    _versions(store, complete=[1, 3, 4, 5, 6], partial=[2, 7])
    (bucket / MODEL / "versions" / ".tmp-8-abc").mkdir()  # the registry's staging folder: not a version
    space = mirror.Workspace(bucket, MODEL)
    notes: list[str] = []

    deleted = space.retain(_settings(version=6, retainVersions=2, protectedVersions=[1]), notes.append)

    assert deleted == [2, 3, 4] and notes == ["retention: deleted versions [2, 3, 4] (keeping the newest 2)"]
    assert sorted(p.name for p in (bucket / MODEL / "versions").iterdir()) == [".tmp-8-abc", "1", "5", "6", "7"]


def test_store_retention_deletes_metadata_first(bucket):
    store = RecordingStore(VolumeStore(bucket))
    _versions(store.inner, complete=[1, 2, 3, 4], partial=[])
    space = mirror.Workspace(bucket, MODEL, store)

    deleted = space.retain(_settings(version=4, parentVersion=2, retainVersions=1), lambda _: None)

    assert deleted == [1, 3]  # 2: the champion
    assert store.deletes == [
        [f"{MODEL}/versions/1/metadata.json"],
        [f"{MODEL}/versions/1/model.joblib"],
        [f"{MODEL}/versions/3/metadata.json"],
        [f"{MODEL}/versions/3/model.joblib"],
    ]
    assert sorted({info.key.split("/")[2] for info in store.list(f"{MODEL}/versions/")}) == ["2", "4"]


def test_a_retention_failure_is_a_note_not_a_failed_version(bucket):
    store = RecordingStore(VolumeStore(bucket))
    _versions(store.inner, complete=[1, 2, 3], partial=[])

    def refuse(keys: Iterable[str]) -> None:
        raise StoreError("s3://models/team at http://h: cannot delete churn/versions/1/metadata.json: AccessDenied")

    store.delete = refuse  # type: ignore[method-assign]
    notes: list[str] = []
    assert mirror.Workspace(bucket, MODEL, store).retain(_settings(version=3, retainVersions=1), notes.append) == []
    assert notes == [
        "note: version retention failed: s3://models/team at http://h: cannot delete churn/versions/1/metadata.json: "
        "AccessDenied"
    ]


def test_training_runs_apply_retention(root, tmp_path, monkeypatch, capsys):
    write_base(root, n=600)
    fast = {"hyperparameters": {"max_iter": 20}, "retainVersions": 2}
    for version in (1, 2, 3):
        document = config(root, version=version, now=NOW - (4 - version) * DAY, **fast)
        code, summary, err = run_trainer(document, tmp_path, monkeypatch, capsys)
        assert code == 0, summary
    assert "retention: deleted versions [1] (keeping the newest 2)" in err
    assert sorted(p.name for p in (root / MODEL / "versions").iterdir()) == ["2", "3"]


def test_retention_config_keys():
    parsed = _settings(retainVersions=10, protectedVersions=[3, 4])
    assert (parsed.retain_versions, parsed.protected_versions, parsed.ignored_keys) == (10, [3, 4], [])
    assert (_settings().retain_versions, _settings().protected_versions) == (0, [])
    for bad, message in (
        ({"retainVersions": -1}, "retainVersions must be >= 0"),
        ({"retainVersions": "3"}, "retainVersions must be an integer"),
        ({"protectedVersions": [1, True]}, "protectedVersions must be a list of integers"),
        ({"protectedVersions": [0]}, "protectedVersions >= 1"),
    ):
        with pytest.raises(TrainerError, match=message):
            _settings(**bad)
