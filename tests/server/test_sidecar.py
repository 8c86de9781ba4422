"""The feedback sidecar in front of a real V2 server (the reference server, in-process on loopback), and
in front of small stand-ins only where a real server cannot be made to misbehave on cue."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from mfl_server.config import ConfigError
from mfl_server.sidecar import SidecarServer, Upstream, upstream_from_env
from tests.server.test_app import jsonl, metrics_of, run, server_config, serving, synthetic, value, write_model
from tests.server.test_v2 import by_feature, tensor

OWN = {"model": "churn", "version": "1", "track": "stable"}


@contextlib.asynccontextmanager
async def sidecar(
    root: Path, upstream_url: str, wait_ready: bool = True, **config: Any
) -> AsyncIterator[tuple[SidecarServer, TestClient]]:
    server = SidecarServer(server_config(root, **config), Upstream(upstream_url, "churn", 5.0))
    tasks = [asyncio.create_task(task) for task in server.background_tasks()]
    if wait_ready:
        await asyncio.wait_for(asyncio.shield(tasks[0]), 30)
    try:
        async with TestClient(TestServer(server.web_app(), host="127.0.0.1")) as client:
            yield server, client
    finally:
        for task in tasks:
            task.cancel()
        await server.aclose()


@contextlib.asynccontextmanager
async def reference_upstream(root: Path) -> AsyncIterator[str]:
    async with serving(server_config(root)) as (_, client):
        yield str(client.make_url("")).rstrip("/")


@contextlib.asynccontextmanager
async def stand_in(handler: Any) -> AsyncIterator[str]:
    """A V2 server that answers infer with ``handler`` (and is ready)."""
    app = web.Application()

    async def ready(request: web.Request) -> web.Response:
        return web.json_response({"ready": True})

    app.router.add_get("/v2/models/churn/ready", ready)
    app.router.add_post("/v2/models/churn/infer", handler)
    async with TestServer(app, host="127.0.0.1") as server:
        yield str(server.make_url("")).rstrip("/")


def two_roots(tmp_path: Path, metadata: dict | None = None) -> tuple[Path, Path, Any]:
    upstream_root, sidecar_root = tmp_path / "upstream", tmp_path / "sidecar"
    estimator = write_model(upstream_root, metadata=metadata)
    shutil.copytree(upstream_root, sidecar_root)
    return upstream_root, sidecar_root, estimator


def test_inference_passes_through_with_ids_and_labels_count_once(tmp_path):
    upstream_root, sidecar_root, estimator = two_roots(tmp_path)
    x, y = synthetic(16, seed=5)

    async def scenario() -> None:
        async with reference_upstream(upstream_root) as url, sidecar(sidecar_root, url) as (_, client):
            assert await (await client.get("/v2/health/ready")).json() == {"ready": True}
            response = await client.post("/v2/models/churn/infer", json={"id": "r", "inputs": [tensor(x.tolist())]})
            assert response.status == 200, await response.text()
            body = await response.json()
            assert body["id"] == "r" and body["model_name"] == "churn"
            predict, upstream_ids, ids = body["outputs"]  # the upstream's own ids stay; ours come last
            assert predict["data"] == estimator.predict(x).tolist()
            assert upstream_ids["name"] == ids["name"] == "mfl_prediction_id"
            assert response.headers["mfl-prediction-ids"].split(",") == ids["data"]
            by_name = await client.post("/v2/models/churn/infer", json={"inputs": by_feature(x.tolist())})
            assert (await by_name.json())["outputs"][0]["data"] == predict["data"]
            labels = [{"id": i, "label": int(t)} for i, t in zip(ids["data"], y)]
            assert await (await client.post("/v2/models/churn/feedback", json={"feedback": labels})).json() == {
                "accepted": 16,
                "rejected": [],
            }
            again = await (await client.post("/feedback", json={"feedback": labels})).json()
            assert again["accepted"] == 0 and {r["reason"] for r in again["rejected"]} == {"duplicate"}
            metrics = await metrics_of(client)
            correct = sum(int(p == t) for p, t in zip(predict["data"], y))
            assert value(metrics, "mfl_feedback_total", **OWN) == 16
            assert value(metrics, "mfl_feedback_correct_total", **OWN) == correct
            assert value(metrics, "mfl_predictions_total", **OWN) == 32
            assert value(metrics, "mfl_http_requests_total", **OWN, endpoint="infer", code="200") == 2

    run(scenario())
    logged = jsonl(sidecar_root / "churn" / "predictions")
    assert len(logged) == 32 and logged[0]["features"] == dict(zip(["f0", "f1", "f2", "f3"], x[0].tolist()))
    assert len(jsonl(sidecar_root / "churn" / "feedback")) == 16


def test_the_sidecar_counts_inputs_into_the_profile_bins_of_any_v2_servers_version(tmp_path):
    from mfl_contracts.inputprofile import PROFILE_KEY, make_profile

    x_train, _ = synthetic(1000, seed=2)
    profile = make_profile({f: x_train[:, i].tolist() for i, f in enumerate(["f0", "f1", "f2", "f3"])})
    upstream_root, sidecar_root, _ = two_roots(tmp_path, metadata={PROFILE_KEY: profile})
    x, _ = synthetic(20, seed=6)
    x[:, 3] = -50.0  # every value below the training minimum

    async def scenario() -> dict:
        async with reference_upstream(upstream_root) as url, sidecar(sidecar_root, url, input_drift=True) as (_, c):
            response = await c.post("/v2/models/churn/infer", json={"inputs": [tensor(x.tolist())]})
            assert response.status == 200, await response.text()
            return await metrics_of(c)

    metrics = run(scenario())
    assert value(metrics, "mfl_feature_bin_total", **OWN, feature="f3", bin="below") == 20
    assert value(metrics, "mfl_feature_bin_total", **OWN, feature="f3", bin="b0") == 0
    assert (
        sum(v for (n, labels), v in metrics.items() if n == "mfl_feature_bin_total" and ("feature", "f0") in labels)
        == 20
    )


def test_the_legacy_predict_route_is_translated(tmp_path):
    upstream_root, sidecar_root, estimator = two_roots(tmp_path)
    x, _ = synthetic(3, seed=6)

    async def scenario() -> dict[str, Any]:
        async with reference_upstream(upstream_root) as url, sidecar(sidecar_root, url) as (_, client):
            rows = [dict(zip(["f0", "f1", "f2", "f3"], row)) for row in x.tolist()]
            response = await client.post("/predict", json={"instances": rows})
            assert response.status == 200, await response.text()
            return await response.json()

    body = run(scenario())
    assert body["predictions"] == estimator.predict(x).tolist() and len(body["ids"]) == 3


def test_not_ready_while_the_server_is_down_and_requests_get_503(tmp_path):
    _, sidecar_root, _ = two_roots(tmp_path)

    async def scenario() -> None:
        async with sidecar(sidecar_root, "http://127.0.0.1:9", wait_ready=False) as (server, client):
            for _ in range(100):
                reason = (await (await client.get("/readyz")).json()).get("reason", "")
                if "unreachable" in reason:
                    break
                await asyncio.sleep(0.05)
            assert "the model server at http://127.0.0.1:9 is unreachable" in reason
            ready = await client.get("/v2/health/ready")
            assert ready.status == 503 and "unreachable" in (await ready.json())["error"]
            infer = await client.post("/v2/models/churn/infer", json={"inputs": [tensor([[1.0, 2.0, 3.0, 4.0]])]})
            assert infer.status == 503 and "error" in await infer.json()

    run(scenario())


def test_probabilities_become_the_classes_the_metadata_lists(tmp_path):
    _, sidecar_root, _ = two_roots(tmp_path, metadata={"classes": ["stay", "churn"], "servingOutput": "probabilities"})

    async def lightgbm_like(request: web.Request) -> web.Response:
        body = await request.json()
        rows = body["inputs"][0]["shape"][0]
        return web.json_response(
            {
                "model_name": "churn",
                "outputs": [{"name": "predict", "shape": [rows], "datatype": "FP64", "data": [0.2, 0.8][:rows]}],
            }
        )

    async def scenario() -> None:
        async with stand_in(lightgbm_like) as url, sidecar(sidecar_root, url) as (_, client):
            body = await (
                await client.post("/v2/models/churn/infer", json={"inputs": [tensor([[1.0] * 4, [2.0] * 4])]})
            ).json()
            assert body["outputs"][0]["data"] == [0.2, 0.8]  # the server's answer is passed through unchanged
            ids = body["outputs"][-1]["data"]
            answer = await client.post("/feedback", json={"feedback": [{"id": ids[1], "label": "churn"}]})
            assert (await answer.json())["accepted"] == 1
            wrong = await client.post("/feedback", json={"feedback": [{"id": ids[0], "label": "maybe"}]})
            assert wrong.status == 422  # classes from the metadata bound the labels
            metrics = await metrics_of(client)
            assert value(metrics, "mfl_feedback_correct_total", **OWN) == 1

    run(scenario())


@pytest.mark.parametrize(
    ("status", "answer", "expected", "words"),
    [
        (400, {"error": "bad tensor"}, 400, "bad tensor"),
        (500, {"error": "boom"}, 502, "failed (500): boom"),
        (200, {"outputs": [{"name": "predict", "shape": [5], "data": [1, 2, 3, 4, 5]}]}, 502, "each of the 1 rows"),
        (200, {"no": "outputs"}, 502, "without"),
    ],
)
def test_what_the_server_gets_wrong_reaches_the_client_in_the_protocols_shape(
    tmp_path, status, answer, expected, words
):
    _, sidecar_root, _ = two_roots(tmp_path)

    async def upstream(request: web.Request) -> web.Response:
        return web.json_response(answer, status=status)

    async def scenario() -> None:
        async with stand_in(upstream) as url, sidecar(sidecar_root, url) as (_, client):
            response = await client.post("/v2/models/churn/infer", json={"inputs": [tensor([[1.0] * 4])]})
            assert response.status == expected
            assert words in (await response.json())["error"]
            assert not (sidecar_root / "churn" / "predictions").exists() or not jsonl(
                sidecar_root / "churn" / "predictions"
            )

    run(scenario())


def test_a_version_without_features_is_not_served(tmp_path):
    _, sidecar_root, _ = two_roots(tmp_path, metadata={"features": None})

    async def never(request: web.Request) -> web.Response:
        raise AssertionError("not ready: never asked")

    async def scenario() -> None:
        async with stand_in(never) as url, sidecar(sidecar_root, url, wait_ready=False) as (_, client):
            for _ in range(100):
                reason = (await (await client.get("/readyz")).json()).get("reason", "")
                if "features" in reason:
                    return
                await asyncio.sleep(0.05)
            raise AssertionError(reason)

    run(scenario())


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"MFL_UPSTREAM_URL": "ftp://x"},
        {"MFL_UPSTREAM_URL": "http://h:1/path"},
        {"MFL_UPSTREAM_URL": "http://h:1", "MFL_UPSTREAM_TIMEOUT_SECONDS": "0"},
    ],
)
def test_bad_upstream_settings_are_refused(env):
    with pytest.raises(ConfigError):
        upstream_from_env(env, "churn")


def test_the_sidecar_imports_no_numpy():
    import subprocess
    import sys

    code = "import sys, mfl_server.sidecar; bad = {'numpy', 'sklearn', 'joblib'} & set(sys.modules); print(sorted(bad))"
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
    )
