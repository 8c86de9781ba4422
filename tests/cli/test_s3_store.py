"""`mfl versions`, `report` and `feedback export` against a real S3 gateway (the test bed's SeaweedFS on loopback)
and a real PostgreSQL ledger: from flags, from the loop's spec and Secret (tests/cli/apiserver.py), and the one
line a refused or unreachable store gives."""

from __future__ import annotations

import copy
import csv
import gzip
import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from mfl_cli import cli
from mfl_contracts import ledger
from mfl_contracts.objectstore import S3Store, s3_settings_from_env

from .apiserver import FakeApiServer

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = yaml.safe_load((ROOT / "manifests" / "examples" / "loop.yaml").read_text())
REPORT = {
    "model": "churn",
    "version": 3,
    "parentVersion": 1,
    "task": "classification",
    "target": "label",
    "holdout": {"rows": 100, "strategy": "time_ordered_feedback"},
    "challenger": {"metrics": {"accuracy": 0.9}},
    "worstSlices": {"challenger": [{"feature": "x0", "bin": "[0, 0.2)", "accuracy": 0.6, "rows": 20}]},
}


def mfl(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as stop:
        cli.main(list(argv))
    out, err = capsys.readouterr()
    return int(stop.value.code or 0), out, err


@pytest.fixture
def bucket(s3_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> S3Store:
    """Tenant A's bucket under a prefix of this test's own, holding versions 1 and 3 and a half-uploaded 2;
    its keys in the environment, as a user would export them."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("MFL_S3_ACCESS_KEY_ID", s3_env["MFL_S3_ACCESS_KEY_ID"])
    monkeypatch.setenv("MFL_S3_SECRET_ACCESS_KEY", s3_env["MFL_S3_SECRET_ACCESS_KEY"])
    store = S3Store(s3_settings_from_env(s3_env))
    for version in (1, 2, 3):
        prefix = f"churn/versions/{version}/"
        store.put(prefix + "model.joblib", b"model")
        store.put(prefix + "report.json", json.dumps({**REPORT, "version": version}).encode())
        store.put(prefix + "confusion.png", b"\x89PNG")
        if version != 2:  # written last by the trainer: version 2 is still uploading
            metadata = {"parentVersion": version - 1, "task": "classification", "features": ["x0"]}
            store.put(prefix + "metadata.json", json.dumps(metadata).encode())
    return store


def flags(s3_env: dict[str, str]) -> list[str]:
    return [
        "--offline",
        "--s3-endpoint",
        s3_env["MFL_S3_ENDPOINT"],
        "--s3-bucket",
        s3_env["MFL_S3_BUCKET"],
        "--s3-prefix",
        s3_env["MFL_S3_PREFIX"],
    ]


def test_versions_and_report_from_the_bucket(bucket, s3_env, tmp_path, capsys):
    code, out, err = mfl(capsys, "versions", "churn", *flags(s3_env))
    assert code == 0, err
    assert [line.split()[0] for line in out.splitlines()[2:4]] == ["1", "3"] and "\n2 " not in out
    code, out, err = mfl(capsys, "report", "churn", *flags(s3_env), "--plots", str(tmp_path / "plots"))
    assert code == 0, err
    assert out.startswith("churn version 3 (parent 1), classification") and "[0, 0.2)" in out
    assert out.splitlines()[-1] == f"plot: {tmp_path / 'plots' / 'confusion.png'}"
    assert (tmp_path / "plots" / "confusion.png").read_bytes() == b"\x89PNG"
    code, out, _ = mfl(capsys, "report", "churn", *flags(s3_env), "--version", "1", "-o", "json")
    assert code == 0 and json.loads(out) == {**REPORT, "version": 1}


def test_another_tenants_keys_are_one_line(bucket, s3_env, seaweedfs, capsys):
    other = seaweedfs.tenant_b
    keys = ["--s3-access-key-id", other.access_key, "--s3-secret-access-key", other.secret_key]
    code, out, err = mfl(capsys, "versions", "churn", *flags(s3_env), *keys)
    assert (code, out) == (1, "") and err.count("\n") == 1
    assert err.startswith(f"mfl: s3://{s3_env['MFL_S3_BUCKET']}/{s3_env['MFL_S3_PREFIX']} at ")
    assert "AccessDenied" in err


def test_an_unreachable_store_is_one_line(bucket, s3_env, capsys):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    argv = ["--offline", "--s3-endpoint", f"http://127.0.0.1:{port}", "--s3-bucket", s3_env["MFL_S3_BUCKET"]]
    code, _, err = mfl(capsys, "report", "churn", *argv)
    assert code == 1 and err.count("\n") == 1 and "unreachable: connection refused" in err


def test_the_loops_spec_and_secret_are_enough(bucket, s3_env, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MFL_S3_ACCESS_KEY_ID")
    monkeypatch.delenv("MFL_S3_SECRET_ACCESS_KEY")
    loop = copy.deepcopy(EXAMPLE)
    loop["metadata"] = {"name": "churn", "namespace": "prod"}
    s3 = {"endpoint": s3_env["MFL_S3_ENDPOINT"], "bucket": s3_env["MFL_S3_BUCKET"], "prefix": s3_env["MFL_S3_PREFIX"]}
    loop["spec"]["model"]["storage"] = {"s3": {**s3, "credentialsSecret": "churn-s3"}}
    loop["status"] = {"phase": "Monitoring", "currentVersion": 1, "history": [{"version": 1, "outcome": "Promoted"}]}
    keys = {"accessKeyId": s3_env["MFL_S3_ACCESS_KEY_ID"], "secretAccessKey": s3_env["MFL_S3_SECRET_ACCESS_KEY"]}
    with FakeApiServer() as fake:
        monkeypatch.setenv("KUBECONFIG", str(fake.kubeconfig(tmp_path / "kubeconfig")))
        fake.add(loop)
        fake.add_secret("prod", "churn-s3", keys)
        versions = mfl(capsys, "versions", "churn")
        report = mfl(capsys, "report", "churn")
    assert versions[0] == 0 and versions[1].splitlines()[2].startswith("1 *") and "Promoted" in versions[1]
    assert report[0] == 0 and report[1].startswith("churn version 1 (parent 1)")  # the serving version
    assert "plot: churn/versions/1/confusion.png in s3://" in report[1]


def test_export_reads_segments_from_the_bucket_and_labels_from_the_ledger(
    bucket, s3_env, postgres_url, tmp_path, capsys
):
    now = time.time()
    records = [
        {"id": f"p{n:03d}", "ts": now - 600 - n, "version": 3, "track": "stable", "features": {"x0": n / 40},
         "prediction": n % 2}
        for n in range(40)
    ]  # fmt: skip
    for part in range(2):  # two flushed segments of the server, gzipped JSON lines
        lines = "".join(json.dumps(r) + "\n" for r in records[part::2]).encode()
        day = time.strftime("%Y-%m-%d", time.gmtime(now - 600))
        bucket.put(f"churn/predictions/date={day}/host-{int(now * 1000)}-{part:06d}.jsonl.gz", gzip.compress(lines))
    labelled = records[:10]
    record_labels(postgres_url, labelled)
    out_file = tmp_path / "label-me.csv"
    argv = ["feedback", "export", "churn", *flags(s3_env), "--database-url", postgres_url, "-o", str(out_file)]
    code, out, err = mfl(capsys, *argv, "--size", "100")
    assert code == 0, err
    with out_file.open(newline="") as file:
        exported = {row["id"] for row in csv.DictReader(file)}
    assert exported == {r["id"] for r in records[10:]}
    assert "10 ids labelled already (the label ledger)" in err and "version 3's worst slices" in out


def record_labels(url: str, records: list[dict[str, Any]]) -> None:
    """Labels as the server records them in the ledger (its statements, one transaction)."""
    import psycopg

    rows = [
        ledger.LabelRow(r["id"], json.dumps(1), json.dumps(r["prediction"]), r["version"], "stable", r["ts"])
        for r in records
    ]
    with psycopg.connect(url) as conn:
        for statement in ledger.ddl_statements({ledger.day_of(r["ts"]) for r in records}, schema=True):
            conn.execute(statement)
        conn.execute(ledger.INSERT_LABELS, ledger.insert_params("churn", rows, time.time()))
