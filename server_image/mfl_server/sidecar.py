"""The feedback sidecar (`mfl-sidecar`): ground truth for any Open Inference Protocol server.

It runs in the same Pod as a V2 server (MLServer, KServe's runtimes, Triton, the reference server) and
takes the Pod's traffic: inference passes through to the server on the Pod's loopback, and on the way
back the sidecar signs one prediction id per row, logs the rows and predictions, and adds the ids as an
output tensor and a header. Labels come back to `POST /v2/models/{model}/feedback` (or `/feedback`) and
are recorded exactly once, as the reference server records them (mfl_server.base), so monitoring, the
offline gate and the canary analysis read the same `mfl_*` metrics and logs whatever serves the model.

The request body is forwarded as the client sent it (no re-encoding); the sidecar parses it only to
bound and log the rows. It imports no numpy or scikit-learn: its image holds aiohttp, prometheus-client,
orjson and uvloop, and for the object store + database mode minio and psycopg (mfl_server.base chooses).

Environment: the server's (docs/contracts.md) plus MFL_UPSTREAM_URL (the V2 server, e.g.
http://127.0.0.1:9000), MFL_UPSTREAM_MODEL (the model's name there; default MFL_MODEL_NAME) and
MFL_UPSTREAM_TIMEOUT_SECONDS (30).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from mfl_contracts import storage
from mfl_contracts.inputprofile import PROFILE_KEY, valid_profile

from . import jsonio, v2
from .base import FeedbackServer, api_endpoint, json_response, v2_answer
from .config import ConfigError, ServerConfig
from .errors import ModelLoadError, RequestError, bad_request, unprocessable
from .runner import run_main

log = logging.getLogger("mfl_server.sidecar")
UPSTREAM_CHECK_INTERVAL = 2.0  # seconds between readiness checks of the server behind the sidecar
MAX_UPSTREAM_ERROR_CHARS = 300
SERVING_OUTPUTS = ("labels", "probabilities")
TASKS = ("classification", "regression")


@dataclass(frozen=True)
class Upstream:
    url: str  # scheme://host:port, no trailing slash
    model: str
    timeout: float


def upstream_from_env(env: Mapping[str, str], model: str) -> Upstream:
    url = env.get("MFL_UPSTREAM_URL", "").strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path or parts.query:
        raise ConfigError(f"MFL_UPSTREAM_URL must be the V2 server's base URL like http://127.0.0.1:9000, got {url!r}")
    upstream_model = env.get("MFL_UPSTREAM_MODEL", "").strip() or model
    if not storage.valid_model_name(upstream_model) and not _plain_name(upstream_model):
        raise ConfigError(f"MFL_UPSTREAM_MODEL must be a model name, got {upstream_model!r}")
    try:
        timeout = float(env.get("MFL_UPSTREAM_TIMEOUT_SECONDS", "").strip() or 30)
    except ValueError:
        raise ConfigError("MFL_UPSTREAM_TIMEOUT_SECONDS must be a number") from None
    if not 0 < timeout <= 600:
        raise ConfigError("MFL_UPSTREAM_TIMEOUT_SECONDS must be > 0 and at most 600")
    return Upstream(url=url, model=upstream_model, timeout=timeout)


def _plain_name(name: str) -> bool:
    return 0 < len(name) <= 253 and all(ch.isalnum() or ch in "-_." for ch in name)


@dataclass(frozen=True)
class UpstreamModel:
    """The version the server behind the sidecar serves, as its metadata.json describes it."""

    version: int
    task: str
    features: list[str]
    classes: list[Any] | None
    serving_output: str  # labels | probabilities
    input_profile: dict[str, Any] | None = None  # the trainer's inputProfile, when it wrote a valid one


def read_metadata(version_dir: Path, version: int) -> UpstreamModel:
    path = version_dir / "metadata.json"
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelLoadError(f"{path} does not exist") from None
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"{path} is unreadable: {str(error)[:200]}") from None
    if not isinstance(metadata, dict):
        raise ModelLoadError(f"{path} is not a JSON object")
    features = metadata.get("features")
    if not isinstance(features, list) or not features or not all(isinstance(f, str) for f in features):
        raise ModelLoadError(f"{path} has no 'features' list: the sidecar logs rows by feature name")
    if len(set(features)) != len(features):
        raise ModelLoadError(f"{path} lists a feature twice")
    task = metadata.get("task") or "classification"
    if task not in TASKS:
        raise ModelLoadError(f"{path}: task must be one of {list(TASKS)}, got {str(task)[:40]!r}")
    if metadata.get("version") not in (None, version):
        raise ModelLoadError(f"{path} says version {metadata.get('version')!r}, expected {version}")
    classes = metadata.get("classes") if task == "classification" else None
    serving_output = metadata.get("servingOutput") or "labels"
    if serving_output not in SERVING_OUTPUTS:
        raise ModelLoadError(f"{path}: servingOutput must be one of {list(SERVING_OUTPUTS)}")
    if serving_output == "probabilities" and not (isinstance(classes, list) and len(classes) >= 2):
        raise ModelLoadError(f"{path}: servingOutput 'probabilities' needs the 'classes' list, in the model's order")
    listed = classes if isinstance(classes, list) else None
    return UpstreamModel(version, task, features, listed, serving_output, valid_profile(metadata.get(PROFILE_KEY)))


class SidecarServer(FeedbackServer):
    platform = "mfl-sidecar"

    def __init__(self, config: ServerConfig, upstream: Upstream) -> None:
        super().__init__(config)
        self.upstream = upstream
        self.upstream_problem: str | None = None  # why the server behind us cannot serve right now
        self._session: aiohttp.ClientSession | None = None

    def add_prediction_routes(self, app: web.Application) -> None:
        app.router.add_post("/predict", self.predict)
        app.router.add_post("/v2/models/{model}/infer", self.infer)
        app.router.add_post("/v2/models/{model}/versions/{version}/infer", self.infer)

    # --- lifecycle -----------------------------------------------------------------------------

    async def load(self) -> UpstreamModel:
        model = await asyncio.to_thread(read_metadata, self.config.version_dir, self.config.version)
        problem = await self._upstream_problem()
        if problem is not None:
            raise ModelLoadError(problem)
        return model

    def background_tasks(self) -> list[Awaitable[None]]:
        return [*super().background_tasks(), self.watch_upstream()]

    async def watch_upstream(self) -> None:
        """The Pod is ready only while the server behind the sidecar is: checked every few seconds."""
        while True:
            await asyncio.sleep(UPSTREAM_CHECK_INTERVAL)
            if self.model is None:
                continue
            problem = await self._upstream_problem()
            if problem != self.upstream_problem:
                if problem is None:
                    log.info("the model server is ready again")
                else:
                    log.error("not ready: %s", problem)
                self.upstream_problem = problem

    def unready_reason(self) -> str | None:
        return super().unready_reason() or self.upstream_problem

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
        await super().aclose()

    # --- endpoints -----------------------------------------------------------------------------

    @api_endpoint("infer")
    async def infer(self, request: web.Request) -> web.Response:
        model: UpstreamModel = self.check_v2_model(request)
        raw, body = await self._read_body(request)
        parsed = v2.parse_infer(body, model.features, self.config.max_batch)
        answer, _, ids = await self._predict_upstream(model, parsed.rows, raw)
        answer["outputs"].append(v2.id_output(ids))
        return v2_answer(answer, ids)

    @api_endpoint("predict")
    async def predict(self, request: web.Request) -> web.Response:
        """The reference server's own JSON route, translated to V2: existing clients keep working."""
        model: UpstreamModel = self.require_model()
        _, body = await self._read_body(request)
        rows = _rows_of_instances(body, model.features, self.config.max_batch)
        tensor = {"name": "input-0", "datatype": "FP64", "shape": [len(rows), len(rows[0])], "data": rows}
        translated = {"inputs": [tensor]}
        parsed = v2.parse_infer(translated, model.features, self.config.max_batch)  # bounds the values
        _, labels, ids = await self._predict_upstream(model, parsed.rows, jsonio.dumps(translated))
        return json_response({"predictions": labels, "ids": ids, "model": self.config.model, "version": model.version})

    # --- the server behind the sidecar ---------------------------------------------------------

    async def _predict_upstream(
        self, model: UpstreamModel, rows: list[list[Any]], raw: bytes
    ) -> tuple[dict[str, Any], list[Any], list[str]]:
        """The server's answer to `raw` (the rows' request), its labels and their ids, the rows logged."""
        answer = await self._infer_upstream(raw)
        labels = self._labels(answer, len(rows), model)
        ids = self.record_predictions(model, [dict(zip(model.features, row)) for row in rows], labels)
        return answer, labels, ids

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.upstream.timeout),
                connector=aiohttp.TCPConnector(limit=256, keepalive_timeout=30),
                json_serialize=lambda value: jsonio.dumps(value).decode(),
                skip_auto_headers=("User-Agent",),
            )
        return self._session

    async def _infer_upstream(self, raw: bytes) -> dict[str, Any]:
        url = f"{self.upstream.url}/v2/models/{self.upstream.model}/infer"
        try:
            async with self._client().post(url, data=raw, headers={"Content-Type": "application/json"}) as reply:
                text = await reply.read()
                status = reply.status
        except TimeoutError:
            raise RequestError(504, f"the model server did not answer within {self.upstream.timeout:g} s") from None
        except aiohttp.ClientError as error:
            raise RequestError(503, f"the model server is unreachable: {_short(error)}") from None
        if status != 200:
            raise _upstream_refusal(status, text)
        try:
            answer = jsonio.loads(text)
        except jsonio.DECODE_ERRORS:
            raise RequestError(502, "the model server answered with a body that is not JSON") from None
        if not isinstance(answer, dict) or not isinstance(answer.get("outputs"), list):
            raise RequestError(502, 'the model server answered without "outputs"')
        return answer

    def _labels(self, answer: dict[str, Any], rows: int, model: UpstreamModel) -> list[Any]:
        try:
            return v2.labels_from_response(answer, rows, model.classes, model.serving_output)
        except v2.UpstreamError as error:
            raise RequestError(502, f"the model server's answer cannot be read: {error}") from None

    async def _upstream_problem(self) -> str | None:
        url = f"{self.upstream.url}/v2/models/{self.upstream.model}/ready"
        try:
            async with self._client().get(url, timeout=aiohttp.ClientTimeout(total=5)) as reply:
                if reply.status == 200:
                    return None
                detail = _error_text(await reply.read())
                return f"the model server is not ready ({reply.status}{': ' + detail if detail else ''})"
        except (TimeoutError, aiohttp.ClientError) as error:
            return f"the model server at {self.upstream.url} is unreachable: {_short(error)}"

    async def _read_body(self, request: web.Request) -> tuple[bytes, Any]:
        raw = await request.read() if request.can_read_body else b""
        if not raw.strip():
            raise bad_request("empty body: expected a JSON object")
        try:
            return raw, jsonio.loads(raw)
        except jsonio.DECODE_ERRORS as error:
            raise bad_request(f"body is not valid JSON: {error}") from None


def _rows_of_instances(body: Any, features: list[str], max_batch: int) -> list[list[Any]]:
    if not isinstance(body, dict):
        raise bad_request('body must be a JSON object like {"instances": [...]}')
    instances = body.get("instances")
    if not isinstance(instances, list) or not instances:
        raise unprocessable('"instances" must be a non-empty list of rows')
    if len(instances) > max_batch:
        raise RequestError(413, f"batch too large: {len(instances)} rows, at most {max_batch} per request")
    rows = []
    for index, row in enumerate(instances):
        if isinstance(row, dict):
            missing = [name for name in features if name not in row]
            if missing:
                raise unprocessable(f"row {index}: missing feature {', '.join(repr(m) for m in missing[:5])}")
            rows.append([row[name] for name in features])
        elif isinstance(row, list) and len(row) == len(features):
            rows.append(row)
        else:
            raise unprocessable(f"row {index} must be an object of the {len(features)} features or a list of them")
    return rows


def _upstream_refusal(status: int, text: bytes) -> RequestError:
    """The server's own 4xx reaches the client as it was (the request was the client's); a 5xx is a 502."""
    detail = _error_text(text) or f"status {status}"
    if 400 <= status < 500:
        return RequestError(status, detail)
    return RequestError(502, f"the model server failed ({status}): {detail}")


def _error_text(text: bytes) -> str:
    try:
        body = json.loads(text)
    except ValueError:
        return text[:MAX_UPSTREAM_ERROR_CHARS].decode("utf-8", "replace").strip()
    if isinstance(body, dict):
        detail = body.get("error") or body.get("detail") or body
        return str(detail)[:MAX_UPSTREAM_ERROR_CHARS]
    return str(body)[:MAX_UPSTREAM_ERROR_CHARS]


def _short(error: BaseException) -> str:
    return (str(error) or type(error).__name__)[:MAX_UPSTREAM_ERROR_CHARS]


def make_sidecar(config: ServerConfig) -> SidecarServer:
    return SidecarServer(config, upstream_from_env(os.environ, config.model))


def main() -> int:
    return run_main(make_sidecar, lambda config: None)


if __name__ == "__main__":
    sys.exit(main())
