"""`mfl conformance URL` against the reference server, the feedback sidecar in front of it (both real, in-process
on loopback) and small stand-ins that break one rule each, so the right check fails with a clear line."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from mfl_cli import cli, conformance
from tests.server.test_app import run, server_config, serving, write_model
from tests.server.test_sidecar import sidecar, two_roots

CHECKS = [
    "live",
    "ready",
    "server metadata",
    "model metadata",
    "model ready",
    "infer",
    "prediction ids",
    "feedback",
    "duplicate label",
    "metrics",
    "feedback counted once",
]


def mfl(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """`mfl ...` as a user runs it: exit code, stdout, stderr."""
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    out, err = capsys.readouterr()
    return int(exited.value.code or 0), out, err


async def in_thread(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """The CLI blocks on urllib; the server under test runs on this loop, so the CLI runs beside it."""
    return await asyncio.to_thread(mfl, argv, capsys)


def lines_by_check(out: str) -> dict[str, str]:
    found = {}
    for line in out.splitlines()[:-1]:
        status, rest = line.split(None, 1)
        name = next(name for name in sorted(CHECKS, key=len, reverse=True) if rest.startswith(name))
        found[name] = f"{status} {rest[len(name) :].strip()}"
    return found


def test_the_reference_server_meets_the_contract(tmp_path, capsys):
    write_model(tmp_path)

    async def scenario() -> tuple[tuple[int, str, str], tuple[int, str, str]]:
        async with serving(server_config(tmp_path)) as (_, client):
            url = str(client.make_url("")).rstrip("/")
            text = await in_thread(["conformance", url, "--model", "churn"], capsys)
            as_json = await in_thread(["conformance", url, "-o", "json", "--timeout", "5s"], capsys)  # model found
            return text, as_json

    (code, out, err), (json_code, json_out, _) = run(scenario())
    assert code == 0, out + err
    by_check = lines_by_check(out)
    assert list(by_check) == CHECKS and all(line.startswith("ok ") for line in by_check.values()), out
    assert "meets the serving contract" in out.splitlines()[-1]
    assert "mfl_feedback_total" in by_check["feedback counted once"]
    report = json.loads(json_out)
    assert json_code == 0 and report["passed"] and report["model"] == "churn" and report["version"] == "1"
    assert [check["name"] for check in report["checks"]] == CHECKS


def test_the_sidecar_in_front_of_the_reference_server_meets_the_contract(tmp_path, capsys):
    upstream_root, sidecar_root, _ = two_roots(tmp_path, metadata={"classes": [0, 1]})

    async def scenario() -> tuple[int, str, str]:
        async with serving(server_config(upstream_root)) as (_, upstream):
            upstream_url = str(upstream.make_url("")).rstrip("/")
            async with sidecar(sidecar_root, upstream_url) as (_, client):
                metadata = await (await client.get("/v2/models/churn")).json()
                assert metadata["parameters"]["classes"] == [0, 1]
                assert metadata["parameters"]["task"] == "classification"
                return await in_thread(["conformance", str(client.make_url("")).rstrip("/")], capsys)

    code, out, err = run(scenario())
    assert code == 0, out + err
    assert all(line.startswith("ok ") for line in lines_by_check(out).values()), out


# --- stand-ins that break one rule each ---------------------------------------------------------


class StandIn:
    """A V2 server with the contract's routes, in memory; each flag breaks one rule."""

    def __init__(self, ids: bool = True, header: bool = True, dedupe: bool = True, count_per_label: int = 1) -> None:
        self.ids, self.header, self.dedupe, self.count_per_label = ids, header, dedupe, count_per_label
        self.recorded: list[str] = []
        self.feedback_total = 0
        self.rejected = 0
        self.issued = 0

    def app(self) -> web.Application:
        app = web.Application()

        def ok(answer: dict[str, Any]) -> Any:
            async def handler(request: web.Request) -> web.Response:
                return web.json_response(answer)

            return handler

        app.router.add_get("/v2/health/live", ok({"live": True}))
        app.router.add_get("/v2/health/ready", ok({"ready": True}))
        app.router.add_get("/v2", ok({"name": "stand-in", "version": "0.0.1", "extensions": []}))
        app.router.add_get("/readyz", ok({"status": "ready", "model": "churn"}))
        app.router.add_get("/v2/models/churn", self.metadata)
        app.router.add_get("/v2/models/churn/ready", ok({"ready": True}))
        app.router.add_post("/v2/models/churn/infer", self.infer)
        app.router.add_post("/v2/models/churn/feedback", self.feedback)
        app.router.add_get("/metrics", self.metrics)
        return app

    async def metadata(self, request: web.Request) -> web.Response:
        outputs = [{"name": "predict", "datatype": "INT64", "shape": [-1, 1]}]
        if self.ids:
            outputs.append({"name": "mfl_prediction_id", "datatype": "BYTES", "shape": [-1, 1]})
        return web.json_response(
            {
                "name": "churn",
                "versions": ["3"],
                "platform": "stand-in",
                "inputs": [{"name": "input-0", "datatype": "FP64", "shape": [-1, 4]}],
                "outputs": outputs,
            }
        )

    async def infer(self, request: web.Request) -> web.Response:
        body = await request.json()
        rows = body["inputs"][0]["shape"][0]
        self.issued += rows
        ids = [f"id-{self.issued}-{n}" for n in range(rows)]
        outputs: list[dict[str, Any]] = [
            {"name": "predict", "datatype": "INT64", "shape": [rows, 1], "data": [1] * rows}
        ]
        if self.ids:
            outputs.append({"name": "mfl_prediction_id", "datatype": "BYTES", "shape": [rows, 1], "data": ids})
        answer = {"model_name": "churn", "model_version": "3", "id": body.get("id"), "outputs": outputs}
        headers = {"mfl-prediction-ids": ",".join(ids)} if self.header else {}
        return web.json_response(answer, headers=headers)

    async def feedback(self, request: web.Request) -> web.Response:
        entries = (await request.json())["feedback"]
        accepted, rejected = 0, []
        for index, entry in enumerate(entries):
            if self.dedupe and entry["id"] in self.recorded:
                rejected.append({"index": index, "id": entry["id"], "reason": "duplicate"})
                self.rejected += 1
                continue
            self.recorded.append(entry["id"])
            self.feedback_total += self.count_per_label
            accepted += 1
        status = 422 if rejected and not accepted else 200
        return web.json_response({"accepted": accepted, "rejected": rejected}, status=status)

    async def metrics(self, request: web.Request) -> web.Response:
        own = 'model="churn",version="3",track="stable"'
        text = "\n".join(
            [
                f"mfl_predictions_total{{{own}}} {self.issued}",
                f'mfl_prediction_latency_seconds_bucket{{{own},le="+Inf"}} 1',
                f"mfl_prediction_latency_seconds_count{{{own}}} 1",
                f"mfl_prediction_latency_seconds_sum{{{own}}} 0.001",
                f"mfl_feedback_total{{{own}}} {self.feedback_total}",
                f"mfl_feedback_correct_total{{{own}}} {self.feedback_total}",
                f"mfl_feedback_incorrect_total{{{own}}} 0",
                f'mfl_confusion_total{{{own},actual="1",predicted="1"}} {self.feedback_total}',
                f'mfl_http_requests_total{{{own},endpoint="infer",code="200"}} {self.issued}',
                f'mfl_feedback_rejected_total{{{own},reason="duplicate"}} {self.rejected}',
                "",
            ]
        )
        return web.Response(text=text, content_type="text/plain")


@contextlib.asynccontextmanager
async def standing(stand_in: StandIn) -> AsyncIterator[str]:
    async with TestServer(stand_in.app(), host="127.0.0.1") as server:
        yield str(server.make_url("")).rstrip("/")


def check_stand_in(stand_in: StandIn, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, str], str]:
    async def scenario() -> tuple[int, str, str]:
        async with standing(stand_in) as url:
            return await in_thread(["conformance", url], capsys)

    code, out, _ = run(scenario())
    return code, lines_by_check(out), out


def test_a_compliant_stand_in_passes(capsys):
    code, by_check, out = check_stand_in(StandIn(), capsys)
    assert code == 0 and all(line.startswith("ok ") for line in by_check.values()), out


def test_a_server_without_ids_fails_the_ids_checks_and_labels_nothing(capsys):
    code, by_check, out = check_stand_in(StandIn(ids=False), capsys)
    assert code == 1
    assert by_check["model metadata"].startswith("FAIL") and "'mfl_prediction_id'" in by_check["model metadata"]
    assert by_check["prediction ids"].startswith("FAIL")
    assert "no 'mfl_prediction_id' output tensor" in by_check["prediction ids"]
    assert by_check["feedback"].startswith("SKIP") and by_check["duplicate label"].startswith("SKIP")
    assert by_check["infer"].startswith("ok")
    assert out.splitlines()[-1].endswith("does not meet the serving contract")


def test_a_missing_header_is_named(capsys):
    code, by_check, _ = check_stand_in(StandIn(header=False), capsys)
    assert code == 1 and by_check["prediction ids"] == "FAIL no 'mfl-prediction-ids' response header"
    assert by_check["feedback counted once"].startswith("ok")  # the tensor's id was enough to label


def test_a_server_that_records_a_label_twice_fails_the_duplicate_check(capsys):
    code, by_check, _ = check_stand_in(StandIn(dedupe=False), capsys)
    assert code == 1
    assert by_check["duplicate label"].startswith("FAIL") and "reason 'duplicate'" in by_check["duplicate label"]
    assert by_check["feedback counted once"].startswith("FAIL")
    assert "moved by 2, expected exactly 1" in by_check["feedback counted once"]


def test_a_server_that_counts_one_label_twice_fails_the_counter_check(capsys):
    code, by_check, _ = check_stand_in(StandIn(count_per_label=2), capsys)
    assert code == 1 and by_check["duplicate label"].startswith("ok")
    assert by_check["feedback counted once"] == ('FAIL mfl_feedback_total{version="3"} moved by 2, expected exactly 1')


def test_an_unreachable_url_is_one_error_line(capsys):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens once it is closed
    code, out, err = mfl(["conformance", f"http://127.0.0.1:{port}"], capsys)
    assert code == 1 and out == ""
    assert err == f"mfl: cannot reach http://127.0.0.1:{port}: connection refused\n"


@pytest.mark.parametrize(
    ("text", "seconds"), [("10s", 10.0), ("500ms", 0.5), ("1m30s", 90.0), ("2", 2.0), ("1.5s", 1.5)]
)
def test_durations(text, seconds):
    assert conformance.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "ten", "5d", "-1s", "2h"])
def test_bad_durations_are_refused(text):
    with pytest.raises(ValueError, match="invalid duration"):
        conformance.parse_duration(text)


def test_a_bad_timeout_is_one_error_line(capsys):
    code, out, err = mfl(["conformance", "http://127.0.0.1:1", "--timeout", "soon"], capsys)
    assert code == 1 and out == "" and err.count("\n") == 1 and "invalid duration 'soon'" in err


def test_the_label_is_a_listed_class_when_the_prediction_is_not_one():
    metadata = {"parameters": {"classes": ["stay", "churn"]}}
    assert conformance.label_for("churn", metadata) == "churn"
    assert conformance.label_for(0.83, metadata) == "stay"  # a probability passed through: a class instead
    assert conformance.label_for(1.0, {}) == 1
    assert conformance.label_for(2.5, {}) == 2.5


def test_the_row_follows_the_metadata():
    named = {
        "inputs": [
            {"name": "age", "datatype": "INT64", "shape": [-1]},
            {"name": "city", "datatype": "BYTES", "shape": [-1, 1]},
        ]
    }
    assert conformance.input_tensors(named) == [
        {"name": "age", "datatype": "INT64", "shape": [1], "data": [0]},
        {"name": "city", "datatype": "BYTES", "shape": [1, 1], "data": [""]},
    ]
    open_width = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, -1]}],
        "parameters": {"features": ["a", "b"]},
    }
    assert conformance.input_tensors(open_width) == [
        {"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [0.0, 0.0]}
    ]
    assert conformance.input_tensors({"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, -1]}]}) is None
