"""The model server end to end: in-process (aiohttp test client on loopback) and as a subprocess."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import joblib
import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families
from sklearn.linear_model import LogisticRegression, Ridge

from mfl_server.app import ModelServer
from mfl_server.base import chunks_of as _chunks
from mfl_server.config import ServerConfig
from mfl_server.store import utc_day

FEATURES = ["f0", "f1", "f2", "f3"]
KEY = b"test-signing-key"
CONTRACT_METRICS = {
    "mfl_predictions",
    "mfl_prediction_latency_seconds",
    "mfl_feedback",
    "mfl_feedback_correct",
    "mfl_feedback_incorrect",
    "mfl_confusion",
    "mfl_feedback_abs_error",
    "mfl_http_requests",
    "mfl_feedback_rejected",
    "mfl_feature_bin",
    "mfl_feature_bin_expected",
}


# --- helpers -------------------------------------------------------------------------------------


def synthetic(rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, len(FEATURES)))
    return x, (x[:, 0] + 0.5 * x[:, 1] > 0).astype(int)


def write_model(
    root: Path,
    version: int = 1,
    *,
    model: str = "churn",
    estimator: Any = None,
    task: str = "classification",
    metadata: dict | None = None,
) -> Any:
    if estimator is None:
        estimator = LogisticRegression().fit(*synthetic(400))
    folder = root / model / "versions" / str(version)
    folder.mkdir(parents=True, exist_ok=True)
    joblib.dump(estimator, folder / "model.joblib")
    classes = np.asarray(estimator.classes_).tolist() if task == "classification" else None
    document = {
        "version": version,
        "task": task,
        "features": FEATURES,
        "target": "y",
        "classes": classes,
        **(metadata or {}),
    }
    (folder / "metadata.json").write_text(json.dumps(document))
    return estimator


def server_config(root: Path, version: int = 1, track: str = "stable", **overrides: Any) -> ServerConfig:
    settings = {"signing_key": KEY, "host": "127.0.0.1", **overrides}
    return ServerConfig(model="churn", version=version, track=track, storage_root=root, **settings)


@contextlib.asynccontextmanager
async def serving(config: ServerConfig, wait_ready: bool = True) -> AsyncIterator[tuple[ModelServer, TestClient]]:
    server = ModelServer(config)
    loader = asyncio.create_task(server.load_until_ready())
    watcher = asyncio.create_task(server.watch_store())
    if wait_ready:
        await asyncio.wait_for(asyncio.shield(loader), 30)
    try:
        async with TestClient(TestServer(server.web_app(), host="127.0.0.1")) as client:
            yield server, client
    finally:
        loader.cancel()
        watcher.cancel()
        server.close()


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def rows_of(x: np.ndarray) -> list[dict[str, float]]:
    return [dict(zip(FEATURES, row.tolist())) for row in x]


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(metrics: dict, name: str, **labels: str) -> float:
    return metrics.get((name, frozenset(labels.items())), 0.0)


async def metrics_of(client: TestClient) -> dict[tuple[str, frozenset], float]:
    response = await client.get("/metrics")
    assert response.status == 200
    return samples(await response.text())


async def predict(client: TestClient, instances: list[Any]) -> dict[str, Any]:
    response = await client.post("/predict", json={"instances": instances})
    assert response.status == 200, await response.text()
    return await response.json()


async def first_not_ready_reason(client: TestClient) -> str:
    """The reason /readyz gives once the first load attempt has failed."""
    for _ in range(500):
        response = await client.get("/readyz")
        assert response.status == 503
        reason = (await response.json())["reason"]
        if reason != "the model is loading":
            return reason
        await asyncio.sleep(0.01)
    raise AssertionError("the first load attempt never finished")


def jsonl(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for path in sorted(folder.rglob("*.jsonl")) for line in path.read_text().splitlines()]


# --- in-process ----------------------------------------------------------------------------------


def test_predict_feedback_round_trip(tmp_path):
    estimator = write_model(tmp_path)
    x, y = synthetic(40, seed=1)

    async def scenario() -> None:
        async with serving(server_config(tmp_path)) as (_, client):
            result = await predict(client, rows_of(x))
            assert result["model"] == "churn" and result["version"] == 1
            assert result["predictions"] == estimator.predict(x).tolist()
            assert len(set(result["ids"])) == 40
            response = await client.post(
                "/feedback",
                json={"feedback": [{"id": row_id, "label": int(label)} for row_id, label in zip(result["ids"], y)]},
            )
            assert await response.json() == {"accepted": 40, "rejected": []}
            metrics = await metrics_of(client)
            correct = int(sum(p == t for p, t in zip(result["predictions"], y)))
            own = {"model": "churn", "version": "1", "track": "stable"}
            assert value(metrics, "mfl_predictions_total", **own) == 40
            assert value(metrics, "mfl_feedback_total", **own) == 40
            assert value(metrics, "mfl_feedback_correct_total", **own) == correct
            assert value(metrics, "mfl_feedback_incorrect_total", **own) == 40 - correct
            confusion = sum(v for (name, _), v in metrics.items() if name == "mfl_confusion_total")
            assert confusion == 40
            assert value(metrics, "mfl_confusion_total", **own, actual="1", predicted="1") == int(
                sum((p == 1) and (t == 1) for p, t in zip(result["predictions"], y))
            )
            assert value(metrics, "mfl_http_requests_total", **own, endpoint="predict", code="200") == 1
            assert value(metrics, "mfl_prediction_latency_seconds_count", **own) == 1
            return result

    result = run(scenario())
    predictions = jsonl(tmp_path / "churn" / "predictions")
    assert [line["id"] for line in predictions] == result["ids"]
    assert predictions[0]["features"] == rows_of(x)[0] and predictions[0]["track"] == "stable"
    assert set(predictions[0]) == {"id", "ts", "version", "track", "features", "prediction"}
    feedback = jsonl(tmp_path / "churn" / "feedback")
    assert set(feedback[0]) == {"id", "ts", "label", "version", "track", "prediction", "predictionTs"}
    assert [line["id"] for line in feedback] == result["ids"]
    assert feedback[0]["predictionTs"] == pytest.approx(predictions[0]["ts"], abs=0.001)
    day = time.strftime("%Y-%m-%d", time.gmtime(predictions[0]["ts"]))
    files = list((tmp_path / "churn" / "predictions").rglob("*.jsonl"))
    assert [f.parent.name for f in files] == [f"date={day}"]
    assert files[0].name == f"{socket.gethostname()}-{os.getpid()}.jsonl"


def test_positional_rows_in_metadata_order(tmp_path):
    estimator = write_model(tmp_path)
    x, _ = synthetic(5, seed=2)

    async def scenario() -> dict[str, Any]:
        async with serving(server_config(tmp_path)) as (_, client):
            return await predict(client, x.tolist())

    assert run(scenario())["predictions"] == estimator.predict(x).tolist()
    assert jsonl(tmp_path / "churn" / "predictions")[0]["features"] == rows_of(x)[0]


def test_feedback_at_another_instance_counts_under_the_predictions_version_and_track(tmp_path):
    write_model(tmp_path, version=1)
    write_model(tmp_path, version=2, estimator=LogisticRegression(C=0.01).fit(*synthetic(400, seed=5)))
    x, y = synthetic(10, seed=3)

    async def scenario() -> dict:
        async with serving(server_config(tmp_path, version=1, track="canary")) as (_, canary):
            result = await predict(canary, rows_of(x))
        async with serving(server_config(tmp_path, version=2, track="stable")) as (_, stable):
            response = await stable.post(
                "/feedback",
                json={"feedback": [{"id": row_id, "label": int(label)} for row_id, label in zip(result["ids"], y)]},
            )
            assert (await response.json())["accepted"] == 10
            return await metrics_of(stable)

    metrics = run(scenario())
    assert value(metrics, "mfl_feedback_total", model="churn", version="1", track="canary") == 10
    assert value(metrics, "mfl_feedback_total", model="churn", version="2", track="stable") == 0
    lines = jsonl(tmp_path / "churn" / "feedback")
    assert {(line["version"], line["track"]) for line in lines} == {(1, "canary")}


def test_forged_garbled_and_foreign_ids_are_rejected_and_counted(tmp_path):
    write_model(tmp_path)

    async def scenario() -> tuple[dict, dict]:
        async with serving(server_config(tmp_path, signing_key=b"another-key")) as (_, other):
            [foreign] = (await predict(other, rows_of(synthetic(1)[0])))["ids"]
        async with serving(server_config(tmp_path)) as (_, client):
            [genuine] = (await predict(client, rows_of(synthetic(1)[0])))["ids"]
            forged = genuine[:30] + ("B" if genuine[30] == "A" else "A") + genuine[31:]
            response = await client.post(
                "/feedback",
                json={
                    "feedback": [
                        {"id": foreign, "label": 1},
                        {"id": forged, "label": 1},
                        {"id": "x" * 10, "label": 1},
                        {"id": 42, "label": 1},
                        {"id": genuine, "label": None},
                        {"id": genuine, "label": 1},
                    ]
                },
            )
            assert response.status == 200
            return await response.json(), await metrics_of(client)

    body, metrics = run(scenario())
    assert body["accepted"] == 1
    assert [(r["index"], r["reason"]) for r in body["rejected"]] == [
        (0, "bad_signature"),
        (1, "bad_signature"),
        (2, "malformed"),
        (3, "malformed"),
        (4, "bad_label"),
    ]
    own = {"model": "churn", "version": "1", "track": "stable"}
    assert value(metrics, "mfl_feedback_rejected_total", **own, reason="bad_signature") == 2
    assert value(metrics, "mfl_feedback_rejected_total", **own, reason="malformed") == 2
    assert value(metrics, "mfl_feedback_rejected_total", **own, reason="bad_label") == 1
    assert value(metrics, "mfl_feedback_total", **own) == 1
    assert len(jsonl(tmp_path / "churn" / "feedback")) == 1


def test_duplicate_feedback_is_counted_once(tmp_path):
    write_model(tmp_path)

    async def scenario() -> tuple[list, dict]:
        async with serving(server_config(tmp_path)) as (_, client):
            [row_id] = (await predict(client, rows_of(synthetic(1)[0])))["ids"]
            bodies = []
            for _ in range(3):
                response = await client.post("/feedback", json={"feedback": [{"id": row_id, "label": 1}]})
                bodies.append(await response.json())
            return bodies, await metrics_of(client)

    bodies, metrics = run(scenario())
    assert [b["accepted"] for b in bodies] == [1, 0, 0]
    assert bodies[1]["rejected"][0]["reason"] == "duplicate"
    assert value(metrics, "mfl_feedback_total", model="churn", version="1", track="stable") == 1
    assert len(jsonl(tmp_path / "churn" / "feedback")) == 1


@pytest.mark.parametrize(
    "path, body, status, words",
    [
        ("/predict", b"", 400, "empty body"),
        ("/predict", b"{not json", 400, "not valid JSON"),
        ("/predict", b"\xff\xfe", 400, "not valid JSON"),
        ("/predict", b"[1, 2]", 400, "JSON object"),
        ("/predict", b'{"rows": []}', 422, 'missing "instances"'),
        ("/predict", b'{"instances": []}', 422, "empty batch"),
        ("/predict", json.dumps({"instances": [[0, 0, 0, 0]] * 9}).encode(), 413, "batch too large"),
        ("/predict", b'{"instances": [{"f0": 1, "f1": 2, "f2": 3}]}', 422, "missing feature 'f3'"),
        ("/predict", b'{"instances": [{"f0": 1, "f1": "2", "f2": 3, "f3": 4}]}', 422, "'f1' has the wrong type"),
        ("/predict", b'{"instances": [[1, 2, 3]]}', 422, "has 3 values, expected 4"),
        ("/predict", b'{"instances": [{"f0": null, "f1": 2, "f2": 3, "f3": 4}]}', 422, "cannot predict these rows"),
        ("/predict", b"x" * 5000, 413, "body larger than 4096 bytes"),
        ("/feedback", b"{}", 422, '"feedback" must be a list'),
        ("/feedback", b'{"feedback": []}', 422, "empty batch"),
        ("/feedback", b'"text"', 400, "JSON object"),
    ],
    ids=lambda value: value[:40].decode(errors="replace") if isinstance(value, bytes) else None,
)
def test_malformed_requests_get_a_clear_4xx(tmp_path, path, body, status, words):
    write_model(tmp_path)

    async def scenario() -> tuple[int, dict, dict]:
        async with serving(server_config(tmp_path, max_batch=8, max_body_bytes=4096)) as (_, client):
            response = await client.post(path, data=body, headers={"Content-Type": "application/json"})
            return response.status, await response.json(), await metrics_of(client)

    got_status, got_body, metrics = run(scenario())
    assert got_status == status and words in got_body["error"], got_body
    endpoint = path.strip("/")
    assert (
        value(
            metrics,
            "mfl_http_requests_total",
            model="churn",
            version="1",
            track="stable",
            endpoint=endpoint,
            code=str(status),
        )
        == 1
    )


@pytest.mark.parametrize(
    "body",
    [
        b'{"instances": [' + b"[" * 1500 + b"]" * 1500 + b"]}",
        b'{"instances": [' + b"[" * 200000 + b"]" * 200000 + b"]}",
        b'{"instances": [{"f0": 1, "f1": 2, "f2": 3, "f3": 4, "x": ' + b"[" * 900 + b"]" * 900 + b"}]}",
    ],
    ids=["1500", "200000", "extra-key-900"],
)
def test_deeply_nested_json_is_a_4xx_not_a_crash(tmp_path, body):
    write_model(tmp_path)

    async def scenario() -> tuple[int, dict]:
        async with serving(server_config(tmp_path)) as (_, client):
            response = await client.post("/predict", data=body)
            status, payload = response.status, await response.json()
            assert (await client.get("/healthz")).status == 200
            return status, payload

    status, payload = run(scenario())
    assert 400 <= status < 500 or status == 200, payload  # 200: a deep extra key is ignored
    assert "error" in payload or "ids" in payload
    if status == 200:
        assert [set(line["features"]) for line in jsonl(tmp_path / "churn" / "predictions")] == [set(FEATURES)]


def test_metrics_have_exactly_the_contract_names_and_labels(tmp_path):
    write_model(tmp_path)

    async def scenario() -> tuple[str, str]:
        async with serving(server_config(tmp_path)) as (_, client):
            result = await predict(client, rows_of(synthetic(3)[0]))
            await client.post(
                "/feedback", json={"feedback": [{"id": result["ids"][0], "label": 1}, {"id": "bogus-id", "label": 1}]}
            )
            response = await client.get("/metrics")
            return response.headers["Content-Type"], await response.text()

    content_type, text = run(scenario())
    assert content_type.startswith("text/plain; version=0.0.4")
    families = {family.name: family for family in text_string_to_metric_families(text)}
    assert set(families) <= CONTRACT_METRICS
    assert set(families) >= CONTRACT_METRICS - {"mfl_feedback_abs_error"}
    extra_labels = {
        "mfl_confusion": {"actual", "predicted"},
        "mfl_http_requests": {"endpoint", "code"},
        "mfl_feedback_rejected": {"reason"},
        "mfl_prediction_latency_seconds": {"le"},
    }
    for name, family in families.items():
        for sample in family.samples:
            assert set(sample.labels) - {"le"} == {"model", "version", "track"} | extra_labels.get(name, set()) - {"le"}
    assert families["mfl_prediction_latency_seconds"].type == "histogram"
    buckets = [
        float(s.labels["le"]) for s in families["mfl_prediction_latency_seconds"].samples if s.name.endswith("_bucket")
    ]
    assert min(buckets) <= 0.001 and 0.5 in buckets
    assert "_created" not in text


def test_regression_feedback_observes_absolute_error(tmp_path):
    x, _ = synthetic(300)
    estimator = write_model(tmp_path, task="regression", estimator=Ridge().fit(x, x @ [1.0, 2.0, 0.0, -1.0]))
    query = synthetic(2, seed=9)[0]

    async def scenario() -> dict:
        async with serving(server_config(tmp_path)) as (_, client):
            result = await predict(client, rows_of(query))
            labels = [p + 0.5 for p in result["predictions"][:1]] + [str(result["predictions"][1] - 2.0)]
            response = await client.post(
                "/feedback",
                json={"feedback": [{"id": row_id, "label": label} for row_id, label in zip(result["ids"], labels)]},
            )
            assert (await response.json())["accepted"] == 2
            return await metrics_of(client)

    metrics = run(scenario())
    own = {"model": "churn", "version": "1", "track": "stable"}
    assert value(metrics, "mfl_feedback_abs_error_count", **own) == 2
    assert value(metrics, "mfl_feedback_abs_error_sum", **own) == pytest.approx(2.5)
    assert value(metrics, "mfl_feedback_total", **own) == 2
    assert estimator is not None


def test_not_ready_until_the_artifact_appears(tmp_path):
    config = server_config(tmp_path, reload_interval=0.05)

    async def scenario() -> None:
        async with serving(config, wait_ready=False) as (server, client):
            assert (await client.get("/healthz")).status == 200
            reason = await first_not_ready_reason(client)
            assert "does not exist" in reason and "model.joblib" in reason
            response = await client.post("/predict", json={"instances": [[0, 0, 0, 0]]})
            assert response.status == 503 and "not ready" in (await response.json())["error"]
            write_model(tmp_path)
            for _ in range(200):
                if (await client.get("/readyz")).status == 200:
                    break
                await asyncio.sleep(0.02)
            assert (await client.get("/readyz")).status == 200
            await predict(client, [[0, 0, 0, 0]])
            server.shutting_down = True
            assert (await client.get("/readyz")).status == 503

    run(scenario())


@pytest.mark.parametrize(
    "damage, words",
    [
        (lambda folder: (folder / "model.joblib").write_bytes(b"not a pickle"), "unreadable"),
        (lambda folder: (folder / "metadata.json").write_text("{"), "unreadable"),
        (lambda folder: (folder / "metadata.json").unlink(), "does not exist"),
        (lambda folder: (folder / "metadata.json").write_text(json.dumps({"version": 7})), "says version 7"),
        (lambda folder: (folder / "metadata.json").write_text(json.dumps({"features": ["a"]})), "takes 4 features"),
    ],
)
def test_broken_artifacts_keep_the_server_not_ready(tmp_path, damage, words):
    write_model(tmp_path)
    damage(tmp_path / "churn" / "versions" / "1")

    async def scenario() -> dict:
        async with serving(server_config(tmp_path, reload_interval=0.05), wait_ready=False) as (_, client):
            reason = await first_not_ready_reason(client)
            await asyncio.sleep(0.2)  # retried, still not ready
            assert (await client.get("/readyz")).status == 503
            return reason

    assert words in run(scenario())


def test_an_unwritable_store_keeps_the_server_not_ready(tmp_path):
    write_model(tmp_path)
    (tmp_path / "churn" / "predictions").write_text("a file where a folder belongs")

    async def scenario() -> str:
        async with serving(server_config(tmp_path, reload_interval=0.05), wait_ready=False) as (_, client):
            return await first_not_ready_reason(client)

    assert "artifact store is not writable" in run(scenario())


def test_estimator_fitted_with_feature_names_gets_its_column_order(tmp_path):
    x, y = synthetic(400)
    estimator = LogisticRegression().fit(x[:, ::-1], y)  # columns f3, f2, f1, f0
    estimator.feature_names_in_ = np.array(FEATURES[::-1], dtype=object)  # as a DataFrame fit leaves it
    write_model(tmp_path, estimator=estimator)
    query = synthetic(20, seed=4)[0]

    async def scenario() -> dict:
        async with serving(server_config(tmp_path)) as (_, client):
            return await predict(client, rows_of(query))

    with pytest.warns(UserWarning, match="valid feature names"):  # the test's own ndarray call
        expected = estimator.predict(query[:, ::-1]).tolist()
    assert run(scenario())["predictions"] == expected


OWN = {"model": "churn", "version": "1", "track": "stable"}


def counted(metrics: dict, name: str = "mfl_feedback_total") -> float:
    """A counter summed over every version and track: where a label counts is the id's business."""
    return sum(v for (sample, _), v in metrics.items() if sample == name)


async def send_labels(client: TestClient, ids: list[str], labels: list[int]) -> dict[str, Any]:
    response = await client.post(
        "/feedback", json={"feedback": [{"id": row_id, "label": label} for row_id, label in zip(ids, labels)]}
    )
    assert response.status == 200, await response.text()
    return await response.json()


async def wait_readiness(client: TestClient, status: int) -> dict[str, Any]:
    for _ in range(500):
        response = await client.get("/readyz")
        if response.status == status:
            return await response.json()
        await asyncio.sleep(0.01)
    raise AssertionError(f"/readyz never answered {status}")


def test_a_label_counts_once_across_replicas_and_a_restart(tmp_path):
    """Two replicas on one store get the same labels, again and again, and one restarts."""
    write_model(tmp_path)
    x, y = synthetic(30, seed=11)
    labels = [int(v) for v in y]

    async def scenario() -> tuple[list[dict], list[dict], dict[str, Any]]:
        first_round: list[dict] = []
        replica_b = server_config(tmp_path)
        async with serving(server_config(tmp_path)) as (_, a):
            result = await predict(a, rows_of(x))
            ids = result["ids"]
            async with serving(replica_b) as (_, b):
                first_round.append(await send_labels(a, ids[:20], labels[:20]))
                first_round.append(await send_labels(b, ids, labels))
                for _ in range(3):
                    await asyncio.gather(send_labels(a, ids, labels), send_labels(b, ids[::-1], labels[::-1]))
                before_restart = [await metrics_of(a), await metrics_of(b)]
            async with serving(replica_b) as (_, b_again):  # the same replica, restarted
                again = await send_labels(b_again, ids, labels)
                await send_labels(a, ids, labels)
                after_restart = [await metrics_of(a), await metrics_of(b_again)]
        return first_round, [*before_restart, *after_restart], {"again": again, "result": result}

    first_round, metrics, extra = run(scenario())
    assert [body["accepted"] for body in first_round] == [20, 10]
    assert {r["reason"] for r in first_round[1]["rejected"]} == {"duplicate"} and len(first_round[1]["rejected"]) == 20
    assert extra["again"]["accepted"] == 0 and len(extra["again"]["rejected"]) == 30
    a_before, b_before, a_after, b_after = metrics
    assert counted(a_before) == 20 and counted(b_before) == 10
    assert counted(a_after) == 20 and counted(b_after) == 0  # the restarted replica counted nothing again
    correct = sum(p == t for p, t in zip(extra["result"]["predictions"], labels))
    assert counted(a_before, "mfl_feedback_correct_total") + counted(b_before, "mfl_feedback_correct_total") == correct
    assert counted(a_before, "mfl_confusion_total") + counted(b_before, "mfl_confusion_total") == 30
    assert value(a_after, "mfl_feedback_rejected_total", **OWN, reason="duplicate") == 3 * 30 + 30
    lines = jsonl(tmp_path / "churn" / "feedback")
    assert sorted(line["id"] for line in lines) == sorted(extra["result"]["ids"])


def test_unknown_classes_and_expired_predictions_are_refused_with_a_422(tmp_path):
    write_model(tmp_path)

    async def scenario() -> tuple[list[tuple[int, dict]], dict]:
        async with serving(server_config(tmp_path)) as (server, client):
            ids = (await predict(client, rows_of(synthetic(3)[0])))["ids"]
            [old] = server.signer.sign_batch(1, "stable", [1], time.time() - 31 * 86400)
            answers = []
            for entries in (
                [{"id": ids[0], "label": 2}],
                [{"id": ids[0], "label": "x" * 5000}],
                [{"id": old, "label": 1}],
                [{"id": ids[0], "label": "spam"}, {"id": ids[1], "label": "1"}],
            ):
                response = await client.post("/feedback", json={"feedback": entries})
                answers.append((response.status, await response.json()))
            return answers, await metrics_of(client)

    answers, metrics = run(scenario())
    statuses = [status for status, _ in answers]
    assert statuses == [422, 422, 422, 200]
    assert "entry 0: label 2 is not a class of this model; its classes are ['0', '1']" in answers[0][1]["error"]
    assert "5000 characters long" in answers[1][1]["error"]
    assert "31.0 days old" in answers[2][1]["error"] and answers[2][1]["rejected"][0]["reason"] == "expired"
    assert answers[3][1]["accepted"] == 1 and answers[3][1]["rejected"][0]["reason"] == "bad_label"
    assert value(metrics, "mfl_feedback_rejected_total", **OWN, reason="bad_label") == 3
    assert value(metrics, "mfl_feedback_rejected_total", **OWN, reason="expired") == 1
    assert value(metrics, "mfl_http_requests_total", **OWN, endpoint="feedback", code="422") == 3
    assert [line["label"] for line in jsonl(tmp_path / "churn" / "feedback")] == ["1"]


def test_non_finite_regression_labels_never_reach_the_log(tmp_path, monkeypatch):
    x, _ = synthetic(300)
    write_model(tmp_path, task="regression", estimator=Ridge().fit(x, x @ [1.0, 2.0, 0.0, -1.0]))

    async def scenario() -> list[int]:
        async with serving(server_config(tmp_path)) as (_, client):
            [row_id] = (await predict(client, rows_of(synthetic(1)[0])))["ids"]
            statuses = []
            for label in (b"NaN", b"Infinity", b"-1e400", b"1e39", b'"inf"', b"true", b"null"):
                body = b'{"feedback": [{"id": "' + row_id.encode() + b'", "label": ' + label + b"}]}"
                statuses.append((await client.post("/feedback", data=body)).status)
            return statuses

    for backend in ("orjson", "stdlib"):  # orjson refuses NaN and 1e400 as JSON; the stdlib parses them
        if backend == "stdlib":
            monkeypatch.setattr("mfl_server.jsonio.loads", json.loads)
        statuses = run(scenario())
        assert all(400 <= status < 500 for status in statuses), (backend, statuses)
    assert jsonl(tmp_path / "churn" / "feedback") == []


@pytest.mark.parametrize(
    "row, status",
    [
        (b'{"f0": 1, "f1": 2, "f2": 3, "f3": 3.5e38}', 422),
        (b'{"f0": 1, "f1": 2, "f2": 3, "f3": 100000000000000000000000000000000000000000}', 422),
        (b'{"f0": 1, "f1": 2, "f2": 3, "f3": NaN}', None),
        (b'{"f0": 1, "f1": 2, "f2": 3, "f3": 1e400}', None),
    ],
    ids=["huge", "huge-int", "nan", "overflow"],
)
def test_non_finite_or_huge_features_are_a_4xx(tmp_path, monkeypatch, row, status):
    write_model(tmp_path)
    monkeypatch.setattr("mfl_server.jsonio.loads", json.loads)  # the parser that lets NaN and 1e400 through

    async def scenario() -> tuple[int, dict]:
        async with serving(server_config(tmp_path)) as (_, client):
            response = await client.post("/predict", data=b'{"instances": [' + row + b"]}")
            return response.status, await response.json()

    got, body = run(scenario())
    assert got == (status or 422) and "feature 'f3' must be a finite number" in body["error"], body
    assert jsonl(tmp_path / "churn" / "predictions") == []


def test_unknown_fields_are_not_logged(tmp_path):
    write_model(tmp_path)
    row = {**dict(zip(FEATURES, [0.1, 0.2, 0.3, 0.4])), "comment": "x" * 100_000, "nested": [[[1]]]}

    async def scenario() -> None:
        async with serving(server_config(tmp_path)) as (_, client):
            for _ in range(3):
                await predict(client, [row] * 8)

    run(scenario())
    files = list((tmp_path / "churn" / "predictions").rglob("*.jsonl"))
    assert sum(path.stat().st_size for path in files) < 24 * 400
    assert {tuple(line["features"]) for line in jsonl(tmp_path / "churn" / "predictions")} == {tuple(FEATURES)}


def test_readiness_follows_runtime_store_failures_and_no_label_is_lost_or_doubled(tmp_path):
    write_model(tmp_path)
    claims = tmp_path / "churn" / "feedback-claims"

    async def scenario() -> None:
        async with serving(server_config(tmp_path, store_check_interval=0.05)) as (_, client):
            result = await predict(client, rows_of(synthetic(4)[0]))
            entries = [{"id": row_id, "label": 1} for row_id in result["ids"]]
            await wait_readiness(client, 200)
            claims.rename(tmp_path / "claims-away")
            claims.write_text("the volume went bad")
            response = await client.post("/feedback", json={"feedback": entries})
            assert response.status == 503 and "retry later" in (await response.json())["error"]
            reason = (await wait_readiness(client, 503))["reason"]
            assert "artifact store is not writable" in reason
            await asyncio.sleep(0.2)
            assert (await client.get("/readyz")).status == 503  # the probe keeps failing
            claims.unlink()
            (tmp_path / "claims-away").rename(claims)
            await wait_readiness(client, 200)
            assert (await send_labels(client, [e["id"] for e in entries], [1] * 4))["accepted"] == 4
            assert value(await metrics_of(client), "mfl_feedback_total", **OWN) == 4

    run(scenario())
    assert len(jsonl(tmp_path / "churn" / "feedback")) == 4


def test_a_failed_log_write_releases_the_claims_and_makes_the_server_not_ready(tmp_path):
    write_model(tmp_path)

    def full_disk(data: bytes, ts: float) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    async def scenario() -> None:
        async with serving(server_config(tmp_path, store_check_interval=0.3)) as (server, client):
            ids = (await predict(client, rows_of(synthetic(3)[0])))["ids"]
            working = server.feedback_log.append
            server.feedback_log.append = full_disk  # type: ignore[method-assign]
            response = await client.post("/feedback", json={"feedback": [{"id": i, "label": 0} for i in ids]})
            assert response.status == 503 and "No space left on device" in (await response.json())["error"]
            ready = await client.get("/readyz")
            assert ready.status == 503 and "No space left on device" in (await ready.json())["reason"]
            server.predictions_log.append = full_disk  # type: ignore[method-assign]
            response = await client.post("/predict", json={"instances": [[0, 0, 0, 0]]})
            assert response.status == 503 and "cannot record predictions" in (await response.json())["error"]
            server.feedback_log.append = working  # type: ignore[method-assign]
            await wait_readiness(client, 200)  # the probe writes again
            assert (await send_labels(client, ids, [0, 0, 0]))["accepted"] == 3
            assert value(await metrics_of(client), "mfl_feedback_total", **OWN) == 3

    run(scenario())


def test_a_claim_failing_midway_releases_every_claim_of_the_request(tmp_path):
    write_model(tmp_path)
    claims = tmp_path / "churn" / "feedback-claims"

    async def scenario() -> None:
        async with serving(server_config(tmp_path, store_check_interval=3600)) as (server, client):
            now = time.time()
            today = server.signer.sign_batch(1, "stable", [1] * 20, now)
            yesterday = server.signer.sign_batch(1, "stable", [1] * 20, now - 86400)
            ids = today[:10] + yesterday + today[10:]  # spread over every claiming thread
            blocked = claims / f"date={utc_day(now - 86400)}"
            blocked.parent.mkdir(parents=True, exist_ok=True)
            blocked.write_text("a file where a day belongs")
            response = await client.post("/feedback", json={"feedback": [{"id": i, "label": 1} for i in ids]})
            assert response.status == 503
            assert [path for path in claims.rglob("*") if path.is_file()] == [blocked]
            blocked.unlink()
            assert (await send_labels(client, ids, [1] * 40))["accepted"] == 40
            assert value(await metrics_of(client), "mfl_feedback_total", **OWN) == 40

    run(scenario())
    assert len(jsonl(tmp_path / "churn" / "feedback")) == 40


def test_chunks_cover_the_items_in_order():
    for count in (0, 1, 7, 8, 9, 32, 1024):
        parts = _chunks(list(range(count)), 8)
        assert sum(parts, []) == list(range(count)) and len(parts) <= 8 and all(parts)
        assert max(map(len, parts), default=0) - min(map(len, parts), default=0) <= max(1, -(-count // 8))


# --- as a process --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_process(root: Path, port: int, version: int = 1, track: str = "canary") -> subprocess.Popen:
    env = {
        **os.environ,
        "MFL_MODEL_NAME": "churn",
        "MFL_MODEL_VERSION": str(version),
        "MFL_TRACK": track,
        "MFL_STORAGE_ROOT": str(root),
        "MFL_PORT": str(port),
        "MFL_HOST": "127.0.0.1",
        "MFL_SIGNING_KEY": KEY.decode(),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "mfl_server.app"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


async def wait_ready(session: aiohttp.ClientSession, base: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        with contextlib.suppress(aiohttp.ClientError):
            async with session.get(f"{base}/readyz") as response:
                if response.status == 200:
                    return
        await asyncio.sleep(0.1)
    raise AssertionError("server never became ready")


async def load_until_stopped(
    session: aiohttp.ClientSession, base: str, process: subprocess.Popen, requests: int = 400, concurrency: int = 8
) -> list[str]:
    """Predictions in flight while SIGTERM arrives; returns the ids of acknowledged ones."""
    acknowledged: list[str] = []
    rows = rows_of(synthetic(64, seed=6)[0])
    queue = iter(range(requests))

    async def worker() -> None:
        for index in queue:
            if index == requests // 4:
                process.send_signal(signal.SIGTERM)
            try:
                async with session.post(f"{base}/predict", json={"instances": rows}) as response:
                    if response.status == 200:
                        acknowledged.extend((await response.json())["ids"])
            except (TimeoutError, aiohttp.ClientError):
                await asyncio.sleep(0.001)  # refused or reset after the stop: not acknowledged

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return acknowledged


@pytest.mark.integration
def test_graceful_shutdown_flushes_everything_acknowledged(tmp_path):
    write_model(tmp_path, version=1)
    write_model(tmp_path, version=2)
    port = free_port()
    process = start_process(tmp_path, port, version=1, track="canary")
    base = f"http://127.0.0.1:{port}"

    async def scenario() -> tuple[list[str], dict, dict]:
        timeout = aiohttp.ClientTimeout(total=20)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            await wait_ready(session, base, process)
            first = await (await session.post(f"{base}/predict", json={"instances": [[1, 2, 3, 4]] * 3})).json()
            async with session.post(f"{base}/feedback", json={"feedback": [{"id": first["ids"][0], "label": 1}]}) as r:
                assert (await r.json())["accepted"] == 1
            acknowledged = await load_until_stopped(session, base, process)
        # A label for the subprocess's prediction, given to another instance (this process, v2 stable).
        async with serving(server_config(tmp_path, version=2, track="stable")) as (_, other):
            response = await other.post("/feedback", json={"feedback": [{"id": first["ids"][1], "label": 0}]})
            assert (await response.json())["accepted"] == 1
            metrics = await metrics_of(other)
        return first["ids"] + acknowledged, first, metrics

    try:
        acknowledged, first, metrics = run(scenario())
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr
    assert "stopped" in stderr
    assert len(acknowledged) >= 64 * 50
    logged = {line["id"] for line in jsonl(tmp_path / "churn" / "predictions")}
    assert set(acknowledged) <= logged
    feedback = jsonl(tmp_path / "churn" / "feedback")
    assert sorted(line["id"] for line in feedback if line["track"] == "canary") == sorted(first["ids"][:2])
    assert value(metrics, "mfl_feedback_total", model="churn", version="1", track="canary") == 1
    assert value(metrics, "mfl_feedback_incorrect_total", model="churn", version="1", track="canary") == (
        1 if first["predictions"][1] == 1 else 0
    )


@pytest.mark.integration
def test_bad_configuration_exits_non_zero(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MFL_")}
    env.update({"MFL_MODEL_NAME": "churn", "MFL_MODEL_VERSION": "one", "MFL_SIGNING_KEY": "k"})
    result = subprocess.run(
        [sys.executable, "-m", "mfl_server.app"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2 and "MFL_MODEL_VERSION must be an integer" in result.stderr


def test_config_replace_is_supported():
    assert replace(server_config(Path("/x")), version=3).version_dir == Path("/x/churn/versions/3")


@pytest.mark.integration
def test_a_request_in_flight_at_sigterm_is_answered_and_logged(tmp_path):
    """Headers and half the body before SIGTERM, the rest after: the handler is mid-request."""
    write_model(tmp_path)
    port = free_port()
    process = start_process(tmp_path, port)
    body = json.dumps({"instances": rows_of(synthetic(3, seed=8)[0])}).encode()
    head = (
        f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()

    async def ready() -> None:
        async with aiohttp.ClientSession() as session:
            await wait_ready(session, f"http://127.0.0.1:{port}", process)

    try:
        run(ready())
        with socket.create_connection(("127.0.0.1", port), timeout=20) as connection:
            connection.sendall(head + body[:20])
            time.sleep(0.3)
            process.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            assert process.poll() is None  # still finishing our request
            connection.sendall(body[20:])
            response = b""
            while b"\r\n\r\n" not in response or not response.rstrip().endswith(b"}"):
                chunk = connection.recv(65536)
                if not chunk:
                    break
                response += chunk
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    status_line, _, payload = response.partition(b"\r\n")
    assert b" 200 " in status_line, response
    ids = json.loads(payload.split(b"\r\n\r\n", 1)[1])["ids"]
    assert process.returncode == 0, stderr
    assert [line["id"] for line in jsonl(tmp_path / "churn" / "predictions")] == ids


async def scrape(session: aiohttp.ClientSession, base: str) -> dict[tuple[str, frozenset], float]:
    async with session.get(f"{base}/metrics") as response:
        return samples(await response.text())


async def post_labels(session: aiohttp.ClientSession, base: str, ids: list[str], labels: list[int]) -> int:
    entries = [{"id": row_id, "label": label} for row_id, label in zip(ids, labels)]
    async with session.post(f"{base}/feedback", json={"feedback": entries}) as response:
        assert response.status == 200, await response.text()
        return (await response.json())["accepted"]


def stop_process(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr


@pytest.mark.integration
def test_two_server_processes_on_one_store_count_each_label_once_across_a_restart(tmp_path):
    """Stable and canary processes share the store; labels go to both, repeatedly; the canary restarts."""
    write_model(tmp_path, version=1)
    write_model(tmp_path, version=2)
    ports = [free_port(), free_port()]
    stable, canary = start_process(tmp_path, ports[0], 1, "stable"), start_process(tmp_path, ports[1], 2, "canary")
    processes = [stable, canary]
    bases = [f"http://127.0.0.1:{port}" for port in ports]
    x, y = synthetic(40, seed=12)
    labels = [int(v) for v in y]

    async def scenario() -> tuple[list[int], list[dict]]:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            for base, process in zip(bases, processes):
                await wait_ready(session, base, process)
            ids = []
            for base in bases:  # half the predictions from each track
                async with session.post(f"{base}/predict", json={"instances": rows_of(x[: len(x) // 2])}) as r:
                    ids += (await r.json())["ids"]
            accepted = []
            for _ in range(3):  # the same labels to both at once, three times
                accepted += await asyncio.gather(*(post_labels(session, base, ids, labels) for base in bases))
            scraped = [await scrape(session, base) for base in bases]
            stop_process(canary)
            processes.append(start_process(tmp_path, ports[1], 2, "canary"))
            await wait_ready(session, bases[1], processes[-1])
            accepted += await asyncio.gather(*(post_labels(session, base, ids, labels) for base in bases))
            scraped += [await scrape(session, base) for base in bases]
        return accepted, scraped

    try:
        accepted, scraped = run(scenario())
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.communicate()
    assert sum(accepted) == 40 and accepted[2:] == [0] * 6
    stable_before, canary_before, stable_after, canary_after = scraped
    assert counted(stable_before) + counted(canary_before) == 40
    assert counted(stable_after) == counted(stable_before) and counted(canary_after) == 0
    for track, version in (("stable", "1"), ("canary", "2")):
        labels_here = {"model": "churn", "version": version, "track": track}
        total = sum(value(m, "mfl_feedback_total", **labels_here) for m in (stable_before, canary_before))
        assert total == 20  # each label under the version and track that made its prediction
    feedback = jsonl(tmp_path / "churn" / "feedback")
    assert len(feedback) == 40 and len({line["id"] for line in feedback}) == 40


# --- input drift (monitoring.inputDrift) --------------------------------------------------------


def test_served_values_are_counted_into_the_versions_profile_bins(tmp_path):
    from mfl_contracts.inputprofile import PROFILE_KEY, make_profile

    x_train, _ = synthetic(2000, seed=3)
    profile = make_profile({f: x_train[:, i].tolist() for i, f in enumerate(FEATURES)})
    write_model(tmp_path, metadata={PROFILE_KEY: profile})
    x, _ = synthetic(50, seed=4)
    x[:10, 0] = 99.0  # beyond the training maximum

    async def scenario(enabled: bool) -> dict:
        async with serving(server_config(tmp_path, input_drift=enabled)) as (_, client):
            await predict(client, rows_of(x))
            response = await client.post("/predict", json={"instances": [{"f0": None, "f1": 0, "f2": 0, "f3": 0}]})
            assert response.status in (200, 422)
            return await metrics_of(client)

    metrics = run(scenario(True))
    own = {"model": "churn", "version": "1", "track": "stable"}
    counted = {
        dict(labels)["bin"]: v
        for (name, labels), v in metrics.items()
        if name == "mfl_feature_bin_total" and dict(labels)["feature"] == "f0"
    }
    assert counted["above"] == 10
    assert sum(counted.values()) in (50, 51)  # a missing value counts when the server takes the row
    assert set(counted) == {"below", *(f"b{i}" for i in range(10)), "above", "missing"}  # every bin from zero
    assert value(metrics, "mfl_feature_bin_expected", **own, feature="f2", bin="b3") == pytest.approx(0.1)
    assert value(metrics, "mfl_feature_bin_expected", **own, feature="f2", bin="above") == 0
    off = run(scenario(False))
    assert not [k for k in off if k[0].startswith("mfl_feature_bin")]


def test_a_version_without_a_profile_serves_and_counts_nothing(tmp_path):
    write_model(tmp_path, metadata={"inputProfile": {"features": {"f0": {"edges": "broken"}}}})

    async def scenario() -> dict:
        async with serving(server_config(tmp_path, input_drift=True)) as (_, client):
            await predict(client, rows_of(synthetic(5)[0]))
            return await metrics_of(client)

    assert not [k for k in run(scenario()) if k[0].startswith("mfl_feature_bin")]
