"""The Open Inference Protocol: pure parsing and the reference server's V2 routes, driven as a client
written against MLServer's documentation would drive them."""

from __future__ import annotations

from typing import Any

import pytest

from mfl_server import v2
from mfl_server.errors import RequestError
from tests.server.test_app import (
    FEATURES,
    metrics_of,
    rows_of,
    run,
    server_config,
    serving,
    synthetic,
    value,
    write_model,
)


def tensor(rows: list[list[float]], name: str = "input-0") -> dict[str, Any]:
    return {"name": name, "shape": [len(rows), len(rows[0])], "datatype": "FP64", "data": rows}


def by_feature(rows: list[list[float]]) -> list[dict[str, Any]]:
    return [
        {"name": name, "shape": [len(rows)], "datatype": "FP64", "data": [row[i] for row in rows]}
        for i, name in enumerate(FEATURES)
    ]


# --- parsing -------------------------------------------------------------------------------------


def test_one_tensor_nested_or_flat_gives_the_same_rows():
    rows = [[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]]
    nested = v2.parse_infer({"inputs": [tensor(rows)]}, FEATURES, 10)
    flat = v2.parse_infer({"inputs": [{**tensor(rows), "data": [v for r in rows for v in r]}]}, FEATURES, 10)
    assert nested.rows == flat.rows == rows


def test_one_tensor_per_feature_in_any_order():
    rows = [[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]]
    parsed = v2.parse_infer({"inputs": list(reversed(by_feature(rows))), "id": "r1"}, FEATURES, 10)
    assert parsed.rows == rows and parsed.request_id == "r1"


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ([], 400, "JSON object"),
        ({"inputs": []}, 422, "non-empty"),
        ({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP128", "data": [1, 2, 3, 4]}]}, 422, "datatype"),
        ({"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP64", "data": [1, 2, 3, 4]}]}, 422, "holds 8"),
        ({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP64", "data": [1, 2, 3]}]}, 422, "[rows, 4]"),
        ({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", "data": [1, 2, 3, "a"]}]}, 422, "finite"),
        ({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", "data": [1, 2, 3, 1e39]}]}, 422, "finite"),
        ({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", "data": [[[1, 2, 3, 4]]]}]}, 422, "nested"),
        ({"inputs": [{"name": "x", "shape": [-1, 4], "datatype": "FP64", "data": [1, 2, 3, 4]}]}, 422, "shape"),
        ({"inputs": [{"name": "x", "shape": [3, 4], "datatype": "FP64", "data": [0] * 12}]}, 413, "at most 2"),
        ({"inputs": by_feature([[1.0, 2.0, 3.0, 4.0]])[:3]}, 422, "'f3'"),
        ({"inputs": [tensor([[1.0, 2.0, 3.0, 4.0]])], "id": 7}, 422, '"id"'),
    ],
)
def test_bad_requests_get_the_protocol_error(body, status, words):
    with pytest.raises(RequestError) as raised:
        v2.parse_infer(body, FEATURES, 2)
    assert raised.value.status == status and words in raised.value.message


def test_labels_from_probabilities_follow_the_classes_order():
    binary = {"outputs": [{"name": "predict", "shape": [3], "datatype": "FP64", "data": [0.1, 0.5, 0.9]}]}
    assert v2.labels_from_response(binary, 3, ["no", "yes"], "probabilities") == ["no", "yes", "yes"]
    matrix = {
        "outputs": [
            {"name": "predict", "shape": [2, 3], "datatype": "FP64", "data": [[0.1, 0.2, 0.7], [0.6, 0.3, 0.1]]}
        ]
    }
    assert v2.labels_from_response(matrix, 2, [3, 5, 9], "probabilities") == [9, 3]
    labels = {"outputs": [{"name": "other", "shape": [2, 1], "datatype": "INT64", "data": [1, 0]}]}
    assert v2.labels_from_response(labels, 2, None) == [1, 0]


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"outputs": []},
        {"outputs": [{"name": "predict", "shape": [3], "data": [1, 2]}]},
        {"outputs": [{"name": "predict", "shape": [2, 2], "data": [1, 2, 3, 4]}]},
        {"outputs": [{"name": "predict", "shape": [2], "data": [{"a": 1}, 2]}]},
        {"outputs": [{"name": "predict", "shape": [2], "data": [float("nan"), 2]}]},
    ],
)
def test_unreadable_upstream_outputs_are_named(body):
    with pytest.raises(v2.UpstreamError):
        v2.labels_from_response(body, 2, None)


def test_the_ids_header_is_left_out_when_too_long():
    assert v2.ids_header(["a" * 47] * 10) == ",".join(["a" * 47] * 10)
    assert v2.ids_header(["a" * 47] * 200) is None


# --- the reference server ------------------------------------------------------------------------


def test_a_v2_client_gets_predictions_and_ids_and_its_labels_count_once(tmp_path):
    estimator = write_model(tmp_path)
    x, y = synthetic(8, seed=3)
    rows = x.tolist()

    async def scenario() -> None:
        async with serving(server_config(tmp_path)) as (_, client):
            assert (await client.get("/v2/health/live")).status == 200
            assert await (await client.get("/v2/health/ready")).json() == {"ready": True}
            assert (await client.get("/v2/models/churn/ready")).status == 200
            metadata = await (await client.get("/v2/models/churn")).json()
            assert metadata["name"] == "churn" and metadata["versions"] == ["1"]
            assert metadata["inputs"][0]["shape"] == [-1, 4]
            response = await client.post("/v2/models/churn/infer", json={"id": "req-1", "inputs": [tensor(rows)]})
            assert response.status == 200, await response.text()
            body = await response.json()
            assert body["model_name"] == "churn" and body["model_version"] == "1" and body["id"] == "req-1"
            predict, ids = body["outputs"]
            assert predict["name"] == "predict" and predict["shape"] == [8, 1] and predict["datatype"] == "INT64"
            assert predict["data"] == estimator.predict(x).tolist()
            assert ids["name"] == "mfl_prediction_id" and ids["datatype"] == "BYTES" and len(set(ids["data"])) == 8
            assert response.headers["mfl-prediction-ids"].split(",") == ids["data"]
            by_name = await client.post("/v2/models/churn/versions/1/infer", json={"inputs": by_feature(rows)})
            assert (await by_name.json())["outputs"][0]["data"] == predict["data"]
            labels = [{"id": i, "label": int(t)} for i, t in zip(ids["data"], y)]
            first = await client.post("/v2/models/churn/feedback", json={"feedback": labels})
            assert await first.json() == {"accepted": 8, "rejected": []}
            again = await client.post("/v2/models/churn/feedback", json={"feedback": labels})
            assert [r["reason"] for r in (await again.json())["rejected"]] == ["duplicate"] * 8
            metrics = await metrics_of(client)
            own = {"model": "churn", "version": "1", "track": "stable"}
            assert value(metrics, "mfl_feedback_total", **own) == 8
            assert value(metrics, "mfl_predictions_total", **own) == 16
            assert value(metrics, "mfl_http_requests_total", **own, endpoint="infer", code="200") == 2

    run(scenario())


def test_v2_routes_of_another_model_or_version_are_404_and_errors_keep_the_shape(tmp_path):
    write_model(tmp_path)

    async def scenario() -> None:
        async with serving(server_config(tmp_path)) as (_, client):
            for path in ("/v2/models/other/infer", "/v2/models/churn/versions/2/infer"):
                response = await client.post(path, json={"inputs": [tensor([[1.0, 2.0, 3.0, 4.0]])]})
                assert response.status == 404 and "error" in await response.json()
            assert (await client.get("/v2/models/other")).status == 404
            bad = await client.post("/v2/models/churn/infer", data=b"{not json")
            assert bad.status == 400 and "error" in await bad.json()
            wrong = await client.post("/v2/models/churn/infer", json={"inputs": [tensor([[1.0, 2.0]])]})
            assert wrong.status == 422 and "[rows, 4]" in (await wrong.json())["error"]

    run(scenario())


def test_legacy_rows_and_v2_rows_log_the_same_features(tmp_path):
    write_model(tmp_path)
    x, _ = synthetic(2, seed=4)

    async def scenario() -> tuple[list[Any], list[Any]]:
        async with serving(server_config(tmp_path)) as (_, client):
            legacy = await (await client.post("/predict", json={"instances": rows_of(x)})).json()
            modern = await (await client.post("/v2/models/churn/infer", json={"inputs": [tensor(x.tolist())]})).json()
            return legacy["predictions"], modern["outputs"][0]["data"]

    legacy, modern = run(scenario())
    assert legacy == modern


def test_the_reference_server_serves_a_lightgbm_version(tmp_path):
    """estimator lightgbm publishes LightGBM's scikit-learn estimator as model.joblib: the reference server
    (its image carries lightgbm) serves it on both routes, the same as MLServer's runtime serves model.txt."""
    from lightgbm import LGBMClassifier

    x, y = synthetic(400, seed=9)
    estimator = write_model(tmp_path, estimator=LGBMClassifier(n_estimators=20, verbose=-1).fit(x, y))
    rows = x[:16].tolist()

    async def scenario() -> list[Any]:
        async with serving(server_config(tmp_path)) as (_, client):
            response = await client.post("/v2/models/churn/infer", json={"inputs": [tensor(rows)]})
            assert response.status == 200, await response.text()
            return (await response.json())["outputs"][0]["data"]

    assert run(scenario()) == estimator.predict(x[:16]).tolist()
