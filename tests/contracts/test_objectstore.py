"""mfl_contracts.objectstore: VolumeStore over a folder, S3Store against a real SeaweedFS (the `seaweedfs`
fixture: two tenants, each allowed its own bucket only), and the MFL_S3_* settings."""

from __future__ import annotations

import io
import time
import uuid
from pathlib import Path

import pytest

from mfl_contracts.objectstore import (
    ArtifactStore,
    NotFound,
    ObjectInfo,
    S3Settings,
    S3Store,
    StoreError,
    VolumeStore,
    s3_settings_from_env,
    store_from_env,
)
from mfl_testbed.netutil import free_port
from mfl_testbed.seaweed import S3Credentials, SeaweedFS

BAD_KEYS = ["", "/abs", "a/../b", "..", "a/./b", "a//b", "a/", "a\\b"]
VERSION = {"model.joblib": b"model", "report.json": b"{}", "plots/confusion.png": b"png", "metadata.json": b"{}"}


def write_tree(folder: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return folder


class RecordingVolumeStore(VolumeStore):
    """Records the order upload() writes keys in."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.uploaded: list[str] = []

    def _upload_file(self, path: Path, key: str) -> None:
        self.uploaded.append(key)
        super()._upload_file(path, key)


class RecordingS3Store(S3Store):
    def __init__(self, settings: S3Settings) -> None:
        super().__init__(settings)
        self.uploaded: list[str] = []

    def _upload_file(self, path: Path, key: str) -> None:
        self.uploaded.append(key)
        super()._upload_file(path, key)


# ---- the behaviour both stores share -------------------------------------------------------------


def check_round_trip(store: ArtifactStore) -> None:
    store.put("churn/versions/1/metadata.json", b'{"version": 1}')
    store.put("churn/versions/10/model.joblib", b"x" * 10)
    store.put("churn/data/base.csv", b"a,b\n")
    assert store.get("churn/versions/1/metadata.json") == b'{"version": 1}'
    store.put("churn/versions/1/metadata.json", b"{}")  # overwrite
    assert store.get("churn/versions/1/metadata.json") == b"{}"

    listed = store.list("churn/")
    assert [info.key for info in listed] == [
        "churn/data/base.csv",
        "churn/versions/1/metadata.json",
        "churn/versions/10/model.joblib",
    ]
    assert all(isinstance(info, ObjectInfo) for info in listed)
    assert listed[2].size == 10 and abs(listed[2].modified - time.time()) < 120
    # A prefix is a string prefix, as in S3: "versions/1" also matches "versions/10".
    assert [i.key for i in store.list("churn/versions/1")] == [
        "churn/versions/1/metadata.json",
        "churn/versions/10/model.joblib",
    ]
    assert [i.key for i in store.list("churn/versions/1/")] == ["churn/versions/1/metadata.json"]
    assert store.list("other/") == [] and store.list("churn/versions/2") == []

    with pytest.raises(NotFound) as missing:
        store.get("churn/versions/2/metadata.json")
    assert "churn/versions/2/metadata.json" in str(missing.value) and store.description in str(missing.value)
    assert isinstance(missing.value, StoreError)

    store.delete(["churn/versions/10/model.joblib", "churn/versions/99/never-there"])
    assert [i.key for i in store.list("churn/versions/")] == ["churn/versions/1/metadata.json"]
    store.delete([])


def check_download_and_upload(store: ArtifactStore, tmp_path: Path, recorded: list[str]) -> None:
    source = write_tree(tmp_path / "source", VERSION)
    assert store.upload(source, "churn/versions/3", last="metadata.json") == 4
    assert recorded[-1] == "churn/versions/3/metadata.json"  # a reader never sees a version without its files
    assert sorted(recorded) == sorted(f"churn/versions/3/{name}" for name in VERSION)
    store.put("churn/versions/30/model.joblib", b"not part of version 3")

    dest = tmp_path / "dest" / "churn" / "versions" / "3"  # parents created
    assert store.download("churn/versions/3", dest) == 4
    assert {p.relative_to(dest).as_posix(): p.read_bytes() for p in dest.rglob("*") if p.is_file()} == VERSION
    assert store.download("churn/versions/4/", tmp_path / "none") == 0

    with pytest.raises(StoreError, match="missing.json"):
        store.upload(source, "churn/versions/5", last="missing.json")
    with pytest.raises(StoreError, match="no-such-folder"):
        store.upload(tmp_path / "no-such-folder", "churn/versions/5")


def check_keys_are_safe(store: ArtifactStore, tmp_path: Path) -> None:
    for key in BAD_KEYS:
        with pytest.raises(ValueError):
            store.get(key)
        with pytest.raises(ValueError):
            store.put(key, b"x")
        with pytest.raises(ValueError):
            store.delete([key])
    for prefix in ["/abs/", "../", "a/../", "a//"]:
        with pytest.raises(ValueError):
            store.list(prefix)
        with pytest.raises(ValueError):
            store.download(prefix, tmp_path / "out")


# ---- VolumeStore ------------------------------------------------------------------------------------


def test_volume_store_round_trip(tmp_path: Path) -> None:
    store = VolumeStore(tmp_path / "root")
    assert isinstance(store, ArtifactStore) and store.description == str(tmp_path / "root")
    check_round_trip(store)
    assert (tmp_path / "root" / "churn" / "data" / "base.csv").read_bytes() == b"a,b\n"  # today's layout
    # delete() removes the folders it leaves empty (as a bucket has none), never the root.
    assert not (tmp_path / "root" / "churn" / "versions" / "10").exists()
    store.delete(["churn/versions/1/metadata.json", "churn/data/base.csv"])
    assert list((tmp_path / "root").iterdir()) == []


def test_volume_store_download_and_upload(tmp_path: Path) -> None:
    store = RecordingVolumeStore(tmp_path / "root")
    check_download_and_upload(store, tmp_path, store.uploaded)


def test_volume_store_keys_are_safe(tmp_path: Path) -> None:
    (tmp_path / "secret").write_bytes(b"outside")
    store = VolumeStore(tmp_path / "root")
    check_keys_are_safe(store, tmp_path)
    assert (tmp_path / "secret").read_bytes() == b"outside"


def test_volume_store_put_leaves_no_staging_files_and_list_skips_them(tmp_path: Path) -> None:
    store = VolumeStore(tmp_path)
    store.put("m/predictions/date=2024-01-01/a.jsonl", b"{}\n")
    folder = tmp_path / "m" / "predictions" / "date=2024-01-01"
    assert [p.name for p in folder.iterdir()] == ["a.jsonl"]
    (folder / ".tmp-b.jsonl-1234").write_bytes(b"half")  # another writer's staging file
    assert [i.key for i in store.list("m/")] == ["m/predictions/date=2024-01-01/a.jsonl"]
    assert [i.key for i in store.list("m/predictions/date=2024-01-0")] == ["m/predictions/date=2024-01-01/a.jsonl"]
    assert [i.key for i in store.list("")] == ["m/predictions/date=2024-01-01/a.jsonl"]


def test_volume_store_check(tmp_path: Path) -> None:
    VolumeStore(tmp_path).check()
    assert list(tmp_path.iterdir()) == []  # the probe is gone
    with pytest.raises(StoreError, match="not a folder"):
        VolumeStore(tmp_path / "not-mounted").check()
    with pytest.raises(NotFound):
        VolumeStore(tmp_path / "not-mounted").get("a/b")
    assert VolumeStore(tmp_path / "not-mounted").list("a/") == []


# ---- settings ----------------------------------------------------------------------------------------

ENV = {
    "MFL_S3_ENDPOINT": "http://seaweedfs.storage:8333",
    "MFL_S3_BUCKET": "churn-models",
    "MFL_S3_ACCESS_KEY_ID": "key",
    "MFL_S3_SECRET_ACCESS_KEY": "secret",
}


def test_s3_settings_from_env(tmp_path: Path) -> None:
    assert s3_settings_from_env({}) is None
    assert s3_settings_from_env({**ENV, "MFL_S3_BUCKET": ""}) is None
    settings = s3_settings_from_env(ENV)
    endpoint = "http://seaweedfs.storage:8333"
    assert settings == S3Settings(endpoint, "churn-models", access_key="key", secret_key="secret")
    assert "secret" not in repr(settings)
    assert settings.description == "s3://churn-models at http://seaweedfs.storage:8333"

    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    full = s3_settings_from_env(
        {
            **ENV,
            "MFL_S3_ENDPOINT": "https://s3.example.com/",
            "MFL_S3_PREFIX": "team-a/models",
            "MFL_S3_REGION": "eu-west-1",
            "MFL_S3_CA_FILE": str(ca),
            "MFL_S3_INSECURE_SKIP_VERIFY": "True",
        }
    )
    assert full is not None
    assert (full.endpoint, full.prefix, full.region, full.ca_file, full.insecure) == (
        "https://s3.example.com",
        "team-a/models",
        "eu-west-1",
        str(ca),
        True,
    )
    assert full.description == "s3://churn-models/team-a/models at https://s3.example.com"


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("MFL_S3_ENDPOINT", "", "MFL_S3_ENDPOINT"),
        ("MFL_S3_ENDPOINT", "seaweedfs:8333", "MFL_S3_ENDPOINT"),
        ("MFL_S3_ENDPOINT", "ftp://host", "MFL_S3_ENDPOINT"),
        ("MFL_S3_ENDPOINT", "http://host:8333/bucket", "MFL_S3_ENDPOINT"),
        ("MFL_S3_ENDPOINT", "http://host:99999", "MFL_S3_ENDPOINT"),
        ("MFL_S3_BUCKET", "Churn_Models", "MFL_S3_BUCKET"),
        ("MFL_S3_PREFIX", "/team", "MFL_S3_PREFIX"),
        ("MFL_S3_PREFIX", "team/", "MFL_S3_PREFIX"),
        ("MFL_S3_PREFIX", "a/../b", "MFL_S3_PREFIX"),
        ("MFL_S3_SECRET_ACCESS_KEY", "", "MFL_S3_SECRET_ACCESS_KEY"),
        ("MFL_S3_ACCESS_KEY_ID", "", "MFL_S3_ACCESS_KEY_ID"),
        ("MFL_S3_INSECURE_SKIP_VERIFY", "maybe", "MFL_S3_INSECURE_SKIP_VERIFY"),
        ("MFL_S3_CA_FILE", "/no/such/ca.pem", "MFL_S3_CA_FILE"),
    ],
)
def test_s3_settings_refuse_bad_values(name: str, value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        s3_settings_from_env({**ENV, name: value})


def test_store_from_env(tmp_path: Path) -> None:
    volume = store_from_env({"MFL_STORAGE_ROOT": "/ignored"}, tmp_path)
    assert isinstance(volume, VolumeStore) and volume.root == tmp_path
    s3 = store_from_env(ENV, tmp_path)  # no request until an operation
    assert isinstance(s3, S3Store) and s3.description == "s3://churn-models at http://seaweedfs.storage:8333"


# ---- S3Store against a real SeaweedFS ----------------------------------------------------------------


def settings_for(seaweedfs: SeaweedFS, who: S3Credentials, bucket: str | None = None, prefix: str = "") -> S3Settings:
    return S3Settings(seaweedfs.url, bucket or who.bucket, prefix, None, who.access_key, who.secret_key)


@pytest.fixture
def prefix() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"


@pytest.mark.integration
def test_s3_store_round_trip(seaweedfs: SeaweedFS, prefix: str) -> None:
    store = S3Store(settings_for(seaweedfs, seaweedfs.tenant_a, prefix=prefix))
    store.check()
    check_round_trip(store)
    # Keys are relative to the prefix: the bucket holds them under it, and nothing else is listed.
    admin = seaweedfs.client()
    names = {o.object_name for o in admin.list_objects(seaweedfs.tenant_a.bucket, prefix=f"{prefix}/", recursive=True)}
    assert names == {f"{prefix}/churn/data/base.csv", f"{prefix}/churn/versions/1/metadata.json"}
    other = S3Store(settings_for(seaweedfs, seaweedfs.tenant_a, prefix=f"{prefix}-other"))
    other.put("churn/x", b"1")
    assert [i.key for i in store.list("")] == ["churn/data/base.csv", "churn/versions/1/metadata.json"]


@pytest.mark.integration
def test_s3_store_download_and_upload(seaweedfs: SeaweedFS, prefix: str, tmp_path: Path) -> None:
    store = RecordingS3Store(settings_for(seaweedfs, seaweedfs.tenant_a, prefix=prefix))
    check_download_and_upload(store, tmp_path, store.uploaded)
    big = tmp_path / "big" / "model.joblib"  # several of the download's chunks
    big.parent.mkdir()
    big.write_bytes(bytes(range(256)) * 12_000)
    assert store.upload(big.parent, "churn/versions/7") == 1
    assert store.download("churn/versions/7", tmp_path / "big-copy") == 1
    assert (tmp_path / "big-copy" / "model.joblib").read_bytes() == big.read_bytes()


@pytest.mark.integration
def test_s3_store_keys_are_safe(seaweedfs: SeaweedFS, prefix: str, tmp_path: Path) -> None:
    store = S3Store(settings_for(seaweedfs, seaweedfs.tenant_a, prefix=prefix))
    check_keys_are_safe(store, tmp_path)
    # Folder markers other tools create (keys ending with "/") are no objects of ours.
    admin = seaweedfs.client()
    admin.put_object(seaweedfs.tenant_a.bucket, f"{prefix}/m/v/folder/", io.BytesIO(b""), 0)
    admin.put_object(seaweedfs.tenant_a.bucket, f"{prefix}/m/v/folder/a", io.BytesIO(b"1"), 1)
    assert [i.key for i in store.list("m/")] == ["m/v/folder/a"]
    assert store.download("m/v", tmp_path / "ok") == 1
    assert (tmp_path / "ok" / "folder" / "a").read_bytes() == b"1"


@pytest.mark.integration
def test_s3_store_missing_bucket(seaweedfs: SeaweedFS) -> None:
    store = S3Store(settings_for(seaweedfs, seaweedfs.admin, bucket="no-such-bucket"))
    for operation in (store.check, lambda: store.put("a/b", b"1"), lambda: store.list("a/")):
        with pytest.raises(StoreError, match="bucket 'no-such-bucket' does not exist") as error:
            operation()
        assert store.description in str(error.value)
    with pytest.raises(StoreError, match="bucket 'no-such-bucket' does not exist") as error:
        store.get("a/b")
    assert not isinstance(error.value, NotFound)


@pytest.mark.integration
def test_s3_store_tenant_cannot_use_another_tenants_bucket(seaweedfs: SeaweedFS, prefix: str) -> None:
    own = S3Store(settings_for(seaweedfs, seaweedfs.tenant_b, prefix=prefix))
    own.put("churn/versions/1/metadata.json", b"{}")
    intruder = S3Store(settings_for(seaweedfs, seaweedfs.tenant_a, bucket=seaweedfs.tenant_b.bucket, prefix=prefix))
    bucket = seaweedfs.tenant_b.bucket
    expected = f"s3://{bucket}/{prefix} at {seaweedfs.url}: cannot put churn/x: AccessDenied (Access Denied.)"
    with pytest.raises(StoreError) as denied:
        intruder.put("churn/x", b"1")
    assert str(denied.value) == expected
    for operation in (
        intruder.check,
        lambda: intruder.get("churn/versions/1/metadata.json"),
        lambda: intruder.list("churn/"),
        lambda: intruder.delete(["churn/versions/1/metadata.json"]),
        lambda: intruder.download("churn/versions/1", Path("/nonexistent")),
    ):
        with pytest.raises(StoreError, match="AccessDenied") as error:
            operation()
        assert not isinstance(error.value, NotFound)
    assert own.get("churn/versions/1/metadata.json") == b"{}"  # the delete was refused


@pytest.mark.integration
def test_s3_store_wrong_credentials(seaweedfs: SeaweedFS) -> None:
    tenant = seaweedfs.tenant_a
    wrong_secret = S3Credentials(tenant.name, tenant.bucket, tenant.access_key, "not-the-secret")
    with pytest.raises(StoreError, match="SignatureDoesNotMatch"):
        S3Store(settings_for(seaweedfs, wrong_secret)).check()
    unknown = S3Credentials("nobody", tenant.bucket, "no-such-key", "x")
    with pytest.raises(StoreError, match="InvalidAccessKeyId"):
        S3Store(settings_for(seaweedfs, unknown)).put("a/b", b"1")


@pytest.mark.integration
def test_s3_store_over_tls(seaweedfs: SeaweedFS, prefix: str) -> None:
    tenant = seaweedfs.tenant_a
    env = {**seaweedfs.s3_env(tenant, prefix), "MFL_S3_ENDPOINT": seaweedfs.https_url}
    verified = store_from_env({**env, "MFL_S3_CA_FILE": str(seaweedfs.ca_file)}, Path("/unused"))
    verified.check()
    verified.put("a/b", b"tls")
    assert store_from_env({**env, "MFL_S3_INSECURE_SKIP_VERIFY": "true"}, Path("/unused")).get("a/b") == b"tls"
    with pytest.raises(StoreError, match="cannot check bucket: TLS: .*certificate verify failed"):
        store_from_env(env, Path("/unused")).check()  # a self-signed certificate, no CA given
    plain = {**env, "MFL_S3_ENDPOINT": seaweedfs.url.replace("http://", "https://")}
    with pytest.raises(StoreError, match="TLS: "):  # TLS to a plain HTTP port
        store_from_env({**plain, "MFL_S3_INSECURE_SKIP_VERIFY": "true"}, Path("/unused")).get("a/b")


@pytest.mark.integration
def test_s3_store_nothing_listening_fails_fast() -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    store = S3Store(S3Settings(endpoint, "bucket", "p", None, "key", "secret"))
    started = time.monotonic()
    with pytest.raises(StoreError) as error:
        store.check()
    assert str(error.value).startswith(f"s3://bucket/p at {endpoint}: cannot check bucket: unreachable: ")
    assert "connection refused" in str(error.value)
    with pytest.raises(StoreError, match="cannot get a/b: unreachable: connection refused"):
        store.get("a/b")
    assert time.monotonic() - started < 15


@pytest.mark.integration
def test_s3_store_fails_fast_while_the_store_is_down_and_recovers(tmp_path: Path) -> None:
    """A store of its own: killed (as a crash), then restarted on the same data and port."""
    seaweedfs = SeaweedFS(tmp_path / "seaweedfs").start()
    try:
        store = S3Store(settings_for(seaweedfs, seaweedfs.tenant_a, prefix="p"))
        store.put("churn/versions/1/metadata.json", b"{}")
        seaweedfs.kill()
        started = time.monotonic()
        for operation in (store.check, lambda: store.get("churn/versions/1/metadata.json"), lambda: store.list("")):
            with pytest.raises(StoreError, match="unreachable: connection refused"):
                operation()
        assert time.monotonic() - started < 15
        seaweedfs.start()
        store.check()
        assert store.get("churn/versions/1/metadata.json") == b"{}"
    finally:
        seaweedfs.stop()
