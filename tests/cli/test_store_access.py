"""Where `mfl versions`, `report` and `feedback export` read from a laptop: the loop's S3 spec and its Secrets read
through the kubeconfig (tests/cli/apiserver.py), flags and environment over the spec field by field, the
database URL from its Secret; a version is listed only once its metadata.json exists; a bucket's plots are named
or downloaded; a store's failure is one line."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from mfl_cli import cli, kube, stores
from mfl_contracts.objectstore import ArtifactStore, ObjectInfo, S3Settings, StoreError, VolumeStore

from .apiserver import FakeApiServer

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = yaml.safe_load((ROOT / "manifests" / "examples" / "loop.yaml").read_text())
PEM = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
S3 = {
    "endpoint": "https://s3.storage:8333",
    "bucket": "churn-models",
    "prefix": "team-a",
    "region": "eu-1",
    "credentialsSecret": "churn-s3",
    "caSecret": {"name": "churn-ca", "key": "ca.crt"},
}


def s3_loop(**s3: Any) -> dict[str, Any]:
    body = copy.deepcopy(EXAMPLE)
    body["metadata"] = {"name": "churn", "namespace": "prod"}
    body["spec"]["model"]["storage"] = {
        "s3": {**S3, **s3},
        "database": {"urlSecret": {"name": "churn-db", "key": "url"}},
    }
    body["status"] = {"phase": "Monitoring", "currentVersion": 2}
    return body


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeApiServer:
    with FakeApiServer() as server:
        monkeypatch.setenv("HOME", str(tmp_path))
        monkeypatch.setenv("KUBECONFIG", str(server.kubeconfig(tmp_path / "kubeconfig")))
        for name in ("MFL_S3_ACCESS_KEY_ID", "MFL_S3_SECRET_ACCESS_KEY", "MFL_DATABASE_URL"):
            monkeypatch.delenv(name, raising=False)
        server.add(s3_loop())
        server.add_secret("prod", "churn-s3", {"accessKeyId": "AKIA-loop", "secretAccessKey": "from-the-secret"})
        server.add_secret("prod", "churn-ca", {"ca.crt": PEM})
        server.add_secret("prod", "churn-db", {"url": "postgresql://churn:pw@db.prod:5432/churn\n"})
        yield server


def resolve(*argv: str) -> tuple[S3Settings | None, str | None]:
    """The bucket and database `mfl feedback export churn ARGV` would use."""
    args = cli.build_parser().parse_args(["feedback", "export", "churn", "-o", "x.csv", *argv])
    loops, args.namespace = kube.connect(kube.Target())
    loop = loops.get("churn", args.namespace)
    return stores.s3_settings(args, loop, loops, os.environ), stores.database_url(args, loop, loops, os.environ)


def secret_reads(server: FakeApiServer) -> list[str]:
    return [r["path"].rsplit("/", 1)[-1] for r in server.requests if "/secrets/" in r["path"]]


def mfl(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as stop:
        cli.main(list(argv))
    out, err = capsys.readouterr()
    return int(stop.value.code or 0), out, err


# --- the loop's bucket -----------------------------------------------------------------------------------


def test_the_loops_bucket_and_secrets_through_the_kubeconfig(fake):
    settings, url = resolve()
    assert settings is not None
    assert (settings.endpoint, settings.bucket, settings.prefix, settings.region) == (
        "https://s3.storage:8333",
        "churn-models",
        "team-a",
        "eu-1",
    )
    assert (settings.access_key, settings.secret_key, settings.insecure) == ("AKIA-loop", "from-the-secret", False)
    assert settings.ca_file and Path(settings.ca_file).read_bytes() == PEM
    assert url == "postgresql://churn:pw@db.prod:5432/churn"
    assert sorted(secret_reads(fake)) == ["churn-ca", "churn-db", "churn-s3", "churn-s3"]


def test_flags_and_the_environment_win_field_by_field(fake, monkeypatch, tmp_path):
    monkeypatch.setenv("MFL_S3_ACCESS_KEY_ID", "env-id")
    monkeypatch.setenv("MFL_S3_SECRET_ACCESS_KEY", "env-secret")
    (tmp_path / "ca.pem").write_bytes(PEM)
    settings, url = resolve(
        "--s3-endpoint",
        "http://127.0.0.1:8333/",
        "--s3-prefix",
        "",
        "--s3-ca-file",
        str(tmp_path / "ca.pem"),
        "--s3-insecure-skip-verify",
        "--database-url",
        "postgresql://me@127.0.0.1:5432/churn",
    )
    assert settings is not None and settings.endpoint == "http://127.0.0.1:8333" and settings.bucket == "churn-models"
    assert (settings.prefix, settings.access_key, settings.secret_key) == ("", "env-id", "env-secret")
    assert settings.ca_file == str(tmp_path / "ca.pem") and settings.insecure is True
    assert url == "postgresql://me@127.0.0.1:5432/churn"
    assert secret_reads(fake) == []  # nothing asked of the cluster that the flags gave


def test_a_forbidden_secret_says_what_to_pass_instead(fake, capsys):
    fake.forbidden_secrets = True
    code, out, err = mfl(capsys, "versions", "churn")
    assert (code, out) == (1, "") and err.count("\n") == 1
    assert err.startswith("mfl: cannot read the loop's Secret 'churn-s3': forbidden: secrets \"churn-s3\" is forbidden")
    assert err.rstrip().endswith(
        "pass --s3-access-key-id and --s3-secret-access-key (or set MFL_S3_ACCESS_KEY_ID and MFL_S3_SECRET_ACCESS_KEY)"
    )


def test_a_missing_secret_key_is_named(fake, capsys):
    fake.add_secret("prod", "churn-s3", {"accessKeyId": "AKIA-loop"})
    code, _, err = mfl(capsys, "report", "churn")
    assert code == 1 and "Secret prod/churn-s3 has no key 'secretAccessKey' (it has: accessKeyId)" in err


def test_offline_a_bucket_needs_its_flags(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("MFL_S3_ACCESS_KEY_ID", raising=False)
    monkeypatch.delenv("MFL_S3_SECRET_ACCESS_KEY", raising=False)
    code, _, err = mfl(capsys, "versions", "churn", "--offline", "--s3-endpoint", "http://127.0.0.1:1")
    assert code == 1 and err == "mfl: --s3-endpoint needs --s3-bucket (the loop has no spec.model.storage.s3)\n"
    code, _, err = mfl(capsys, "versions", "churn", "--offline", "--s3-endpoint", "http://h:1", "--s3-bucket", "b")
    assert code == 1 and "no S3 credentials: pass --s3-access-key-id" in err
    code, _, err = mfl(capsys, "versions", "churn", "--offline", "--s3-bucket", "b", "--s3-access-key-id", "a")
    assert code == 1 and "S3 endpoint '': expected http://host[:port]" in err


# --- reading the registry and reports through the store --------------------------------------------------


def publish(root: Path, version: int, report: dict[str, Any] | None = None, metadata: bool = True) -> None:
    folder = root / "churn" / "versions" / str(version)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.joblib").write_bytes(b"model")
    (folder / "report.json").write_text(json.dumps(report or {"model": "churn", "version": version, "task": "x"}))
    (folder / "confusion.png").write_bytes(b"png")
    if metadata:
        (folder / "metadata.json").write_text(json.dumps({"parentVersion": version - 1, "rows": {"train": 10}}))


def test_a_version_without_metadata_is_not_one_yet(tmp_path):
    publish(tmp_path, 1)
    publish(tmp_path, 2, metadata=False)  # the trainer writes metadata.json last: still uploading
    assert list(cli.registry_versions(VolumeStore(tmp_path), "churn")) == [1]
    assert list(cli.registry_versions(tmp_path, "churn")) == [1]  # a Path is a folder store


class Bucket:
    """A store that is not a folder (as S3Store), over one: the commands must not reach for local paths."""

    def __init__(self, root: Path, fail: str | None = None) -> None:
        self.inner = VolumeStore(root)
        self.description = "s3://churn-models/team-a at http://127.0.0.1:8333"
        self.fail = fail

    def get(self, key: str) -> bytes:
        if self.fail:
            raise StoreError(f"{self.description}: cannot get {key}: {self.fail}")
        return self.inner.get(key)

    def list(self, prefix: str) -> list[ObjectInfo]:
        return self.inner.list(prefix)


@pytest.fixture
def bucket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOME", str(tmp_path))
    root = tmp_path / "bucket"
    publish(root, 1)
    publish(root, 2)
    return root


def use_store(monkeypatch: pytest.MonkeyPatch, store: ArtifactStore) -> None:
    monkeypatch.setattr(stores, "open_store", lambda *_: store)


def test_a_report_in_a_bucket_names_its_plots_or_downloads_them(bucket, tmp_path, capsys, monkeypatch):
    use_store(monkeypatch, Bucket(bucket))
    code, out, _ = mfl(capsys, "report", "churn", "--offline")
    assert code == 0 and out.startswith("churn version 2")
    assert out.splitlines()[-1] == (
        "plot: churn/versions/2/confusion.png in s3://churn-models/team-a at http://127.0.0.1:8333 "
        "(--plots DIR downloads it)"
    )
    code, out, _ = mfl(capsys, "report", "churn", "--offline", "--version", "1", "--plots", str(tmp_path / "plots"))
    assert code == 0 and out.splitlines()[-1] == f"plot: {tmp_path / 'plots' / 'confusion.png'}"
    assert (tmp_path / "plots" / "confusion.png").read_bytes() == b"png"


def test_versions_from_a_bucket(bucket, capsys, monkeypatch):
    use_store(monkeypatch, Bucket(bucket))
    code, out, _ = mfl(capsys, "versions", "churn", "--offline")
    assert code == 0 and [line.split()[0] for line in out.splitlines()[2:4]] == ["1", "2"]
    assert "(in registry)" in out and "not reachable" not in out


def test_a_store_error_is_one_line(bucket, capsys, monkeypatch):
    use_store(monkeypatch, Bucket(bucket, fail="AccessDenied (Access Denied.)"))
    for argv in (["versions", "churn", "--offline"], ["report", "churn", "--offline", "--version", "1"]):
        code, out, err = mfl(capsys, *argv)
        assert (code, out) == (1, "")
        assert err.startswith("mfl: s3://churn-models/team-a at http://127.0.0.1:8333: cannot get churn/versions/1/")
        assert err.endswith(": AccessDenied (Access Denied.)\n") and err.count("\n") == 1
