"""`mfl feedback import` against the real server (in-process on loopback), directly (--url) and through the
API server's service proxy (tests/cli/apiserver.py forwards to it): every row is reported accepted, duplicate or
refused with the server's reason, a second import of the same file records nothing twice, and the exit status
is 1 exactly when a row was refused."""

from __future__ import annotations

import asyncio
import copy
import csv
from pathlib import Path
from typing import Any

import pytest
import yaml

from feedbackloop.core import resources
from mfl_cli import cli, labels
from tests.server.test_app import jsonl, predict, rows_of, run, server_config, serving, synthetic, write_model

from .apiserver import FakeApiServer

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = yaml.safe_load((ROOT / "manifests" / "examples" / "loop.yaml").read_text())


def mfl(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as stop:
        cli.main(list(argv))
    out, err = capsys.readouterr()
    return int(stop.value.code or 0), out, err


async def in_thread(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """The CLI blocks on HTTP; the server under test runs on this loop, so the CLI runs beside it."""
    return await asyncio.to_thread(mfl, capsys, *argv)


def write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, ["id", "ts", "version", "prediction", "f0", "label"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def curated(ids: list[str]) -> list[dict[str, Any]]:
    """A file as people return it: labels filled in, one left empty, one bad class, one id mangled."""
    rows = [{"id": i, "ts": "2026-12-02T10:00:00.000Z", "version": 1, "prediction": 1, "f0": 0.5} for i in ids]
    labels_ = ["1", "0", "", "7", "1", "0"]
    for row, label in zip(rows, labels_, strict=True):
        row["label"] = label
    rows[4]["id"] = ids[4][:-4] + "AAAA"  # a forged signature
    rows[5]["id"] = ids[0]  # the same prediction twice in the file
    return rows


def by_row(out: str) -> dict[int, list[str]]:
    """The per-row table: row number -> [id, label, result, reason...]."""
    found = {}
    for line in out.splitlines()[2:-1]:  # the header, its rule; the summary
        if line[:1].isdigit():
            number, *rest = line.split()
            found[int(number)] = rest
    return found


async def predicted_ids(client: Any, count: int) -> list[str]:
    return (await predict(client, rows_of(synthetic(count, seed=5)[0])))["ids"]


def test_each_row_is_accepted_duplicate_or_refused_and_a_second_import_records_nothing_twice(tmp_path, capsys):
    write_model(tmp_path)

    async def scenario() -> tuple[str, list[str], list[tuple[int, str, str]], list[dict]]:
        async with serving(server_config(tmp_path)) as (_, client):
            url = str(client.make_url("")).rstrip("/")
            ids = await predicted_ids(client, 6)
            path = write_csv(tmp_path / "labelled.csv", curated(ids))
            argv = ["feedback", "import", "churn", str(path), "--url", url, "--task", "classification", "--batch", "2"]
            results = [await in_thread(capsys, *argv), await in_thread(capsys, *argv)]
            return url, ids, results, jsonl(tmp_path / "churn" / "feedback")

    url, ids, [(code, out, err), (again, out_again, _)], logged = run(scenario())
    rows = by_row(out)
    assert code == 1, out + err  # a row was refused
    assert sorted(rows) == [1, 2, 4, 5, 6]  # row 3 has no label
    assert [rows[n][2] for n in (1, 2, 4, 5, 6)] == ["accepted", "accepted", "refused", "refused", "duplicate"]
    assert rows[4][3] == "bad_label:" and "not a class of this model" in " ".join(rows[4])
    assert rows[5][3] == "bad_signature:"
    assert out.splitlines()[-1] == (
        f"5 labels sent to {url}: 2 accepted, 1 duplicate (recorded before), 2 refused; 1 row without a label skipped"
    )
    rows_again = by_row(out_again)
    assert again == 1
    assert [rows_again[n][2] for n in (1, 2, 4, 5, 6)] == ["duplicate", "duplicate", "refused", "refused", "duplicate"]
    assert "0 accepted, 3 duplicate" in out_again
    # Exactly once: the two accepted labels are in the feedback log once each, however often they were sent.
    assert sorted((line["id"], line["label"]) for line in logged) == sorted([(ids[0], "1"), (ids[1], "0")])


def test_all_labels_through_the_api_servers_service_proxy(tmp_path, capsys, monkeypatch):
    write_model(tmp_path)
    loop = copy.deepcopy(EXAMPLE)
    loop["metadata"] = {"name": "churn", "namespace": "prod"}

    async def scenario(fake: FakeApiServer) -> tuple[tuple[int, str, str], tuple[int, str, str], list[dict]]:
        async with serving(server_config(tmp_path)) as (_, client):
            fake.services[("prod", "churn:http")] = str(client.make_url("")).rstrip("/")
            ids = await predicted_ids(client, 4)
            rows = [{"id": i, "label": label} for i, label in zip(ids, ["1", "0", "1", ""])]
            path = write_csv(tmp_path / "labelled.csv", rows)
            first = await in_thread(capsys, "feedback", "import", "churn", str(path))
            second = await in_thread(capsys, "feedback", "import", "churn", str(path))
            return first, second, jsonl(tmp_path / "churn" / "feedback")

    with FakeApiServer() as fake:
        monkeypatch.setenv("KUBECONFIG", str(fake.kubeconfig(tmp_path / "kubeconfig")))
        fake.add(loop)
        (code, out, err), (again, out_again, _), logged = run(scenario(fake))
        posts = [r for r in fake.requests if r["method"] == "POST"]
    assert code == 0, out + err
    assert "3 labels sent to Service prod/churn (through the API server): 3 accepted, 0 duplicate" in out
    assert again == 0 and "0 accepted, 3 duplicate (recorded before), 0 refused" in out_again
    assert [p["path"] for p in posts] == ["/api/v1/namespaces/prod/services/churn:http/proxy/feedback"] * 2
    assert posts[0]["authorization"] == "Bearer t0ken" and len(posts[0]["body"]["feedback"]) == 3
    assert len(logged) == 3


def test_a_service_without_ready_pods_is_one_line_and_says_importing_again_is_safe(tmp_path, capsys, monkeypatch):
    loop = copy.deepcopy(EXAMPLE)
    loop["metadata"] = {"name": "churn", "namespace": "prod"}
    path = write_csv(tmp_path / "labelled.csv", [{"id": "x", "label": "1"}])
    with FakeApiServer() as fake:
        monkeypatch.setenv("KUBECONFIG", str(fake.kubeconfig(tmp_path / "kubeconfig")))
        fake.add(loop)
        fake.services[("prod", "churn:http")] = None
        code, out, err = mfl(capsys, "feedback", "import", "churn", str(path))
    assert code == 1 and out.splitlines()[-1].startswith("0 labels sent")
    assert err.count("\n") == 1 and 'answered 503: no endpoints available for service "churn"' in err
    assert "1 label not sent: import the file again" in err


def test_a_file_without_a_label_column_is_refused_before_sending(tmp_path, capsys):
    path = tmp_path / "wrong.csv"
    path.write_text("id,answer\nabc,1\n")
    code, _, err = mfl(
        capsys, "feedback", "import", "churn", str(path), "--url", "http://127.0.0.1:9", "--task", "regression"
    )
    assert code == 1 and err == f"mfl: {path} has no 'label' column (it has: id, answer)\n"


def test_an_unlabelled_file_is_nothing_to_import(tmp_path, capsys):
    path = write_csv(tmp_path / "empty.csv", [{"id": "a", "label": ""}, {"id": "b", "label": " "}])
    code, _, err = mfl(
        capsys, "feedback", "import", "churn", str(path), "--url", "http://127.0.0.1:9", "--task", "regression"
    )
    assert code == 2 and "no row has a label (2 rows with an empty label column)" in err


# --- the pure parts ------------------------------------------------------------------------------------


def test_labels_are_numbers_for_regression_and_text_for_classes() -> None:
    records = [
        {"id": "a", "label": "3"},
        {"id": "b", "label": "2.5"},
        {"id": "c", "label": ""},
        {"id": "d", "label": "x"},
    ]
    rows, skipped = labels.label_rows(records, "regression")
    assert [r.label for r in rows] == [3, 2.5, "x"] and skipped == 1  # "x": sent, for the server to refuse
    rows, _ = labels.label_rows(records, "classification")
    assert [r.label for r in rows] == ["3", "2.5", "x"]
    rows, _ = labels.label_rows([{"id": "a", "label": 1.0}, {"id": "b", "label": None}], "classification")
    assert [r.label for r in rows] == ["1"]  # Parquet's 1.0 is the class 1
    # No task known: numbers when the whole column is numbers.
    assert [r.label for r in labels.label_rows(records[:2], None)[0]] == [3, 2.5]
    assert [r.label for r in labels.label_rows(records, None)[0]] == ["3", "2.5", "x"]


@pytest.mark.parametrize("name", ["churn", "1churn", "churn.v2", "a" * 70, "Churn-"])
def test_the_service_is_named_as_the_operator_names_it(name: str) -> None:
    assert labels.service_name(name) == resources.service_name(name)


def test_a_parquet_file_as_export_writes_it(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    from mfl_cli import export

    header = ["id", "ts", "version", "prediction", "f0", "label"]
    export.write_parquet(tmp_path / "x.parquet", header, [["a", "t", 1, 0, 0.5, None], ["b", "t", 1, 1, 0.7, None]])
    records = labels.read_records(tmp_path / "x.parquet")
    assert records == [{"id": "a", "label": None}, {"id": "b", "label": None}]
    assert labels.label_rows(records, "classification") == ([], 2)
