"""What the reference server and the feedback sidecar share: signed ids, the prediction and feedback logs,
exactly-once labels, the metrics, readiness and the protocol's routes (docs/contracts.md, "Model server").

A subclass says how a version is loaded (`load`) and how rows are predicted (its /predict and V2 infer
routes); everything a label goes through is here, once. No numpy or scikit-learn is imported here: the
sidecar's image has neither.

A label is recorded once across replicas and restarts: its claim on the shared store (mfl_server.claims)
comes first, then the log line, then the metrics. Claims are file creates, a round trip each on a
network volume, so a request's claims run on a few threads at once, off the loop that serves predictions
(on local ext4 and one core, threads and inline creates measured the same).
The server is not ready while the store cannot be written: a failed write says so at once, a probe
every few seconds says when it can again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from functools import wraps
from typing import Any, Protocol

from aiohttp import web

from mfl_contracts import storage

from . import feedback as fb
from . import jsonio, v2
from .claims import ClaimStore
from .config import ServerConfig
from .errors import ModelLoadError, RequestError, bad_request, too_large
from .ids import IdSigner
from .metrics import CONTENT_TYPE, ServerMetrics
from .store import DailyJsonl, process_file_name

log = logging.getLogger("mfl_server")
SWEEP_INTERVAL = 3600.0  # seconds between deletions of expired claims
CLAIM_THREADS = 8  # file creates in flight per request
PREDICTION_ENDPOINTS = ("predict", "infer")  # their latency is mfl_prediction_latency_seconds
Handler = Callable[[Any, web.Request], Awaitable[web.Response]]


class ServedModel(Protocol):
    """What the feedback side needs to know of the version being served."""

    version: int
    task: str
    classes: list[Any] | None

    @property
    def features(self) -> list[str]: ...


def json_response(value: Any, status: int = 200) -> web.Response:
    return web.Response(body=jsonio.dumps(value), status=status, content_type="application/json")


def error_response(status: int, message: str) -> web.Response:
    return json_response({"error": message}, status)


def api_endpoint(name: str) -> Callable[[Handler], Handler]:
    """Turns errors into the protocol's error shape and counts every outcome in mfl_http_requests_total."""

    def decorate(handler: Handler) -> Handler:
        @wraps(handler)
        async def run(self: FeedbackServer, request: web.Request) -> web.Response:
            started = time.perf_counter()
            self.in_flight.enter()
            try:
                response = await handler(self, request)
            except RequestError as error:
                response = error_response(error.status, error.message)
            except Exception:
                log.exception("%s failed", name)
                response = error_response(500, f"internal error in /{name}; see the server log")
            finally:
                self.in_flight.leave()
            if self.shutting_down:
                response.force_close()  # no keep-alive: the client reconnects to another replica
            self.metrics.count_request(name, response.status)
            if name in PREDICTION_ENDPOINTS:
                self.metrics.observe_latency(time.perf_counter() - started)
            return response

        return run

    return decorate


class InFlight:
    """Counts API handlers running, so shutdown can wait for them before closing connections."""

    def __init__(self) -> None:
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> None:
        self.count += 1
        self._idle.clear()

    def leave(self) -> None:
        self.count -= 1
        if self.count == 0:
            self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except TimeoutError:
            return False


class FeedbackServer:
    """The shared part; subclasses implement `load` and their prediction routes (`add_prediction_routes`)."""

    platform = "mfl-server"

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.metrics = ServerMetrics(config.model, config.version, config.track)
        self.signer = IdSigner(config.signing_key, config.model)
        self.model: Any = None  # a ServedModel once loaded
        self.confusion_labels = fb.ConfusionLabels(None)
        self.not_ready_reason = "the model is loading"
        self.shutting_down = False
        self.in_flight = InFlight()
        self.store_problem: str | None = None  # why the artifact store cannot be written right now
        file_name = process_file_name()
        root, model = config.storage_root, config.model
        self.predictions_log = DailyJsonl(storage.predictions_dir(root, model), file_name)
        self.feedback_log = DailyJsonl(storage.feedback_dir(root, model), file_name)
        self.claims = ClaimStore(storage.feedback_claims_dir(root, model), file_name.removesuffix(".jsonl"))
        self._claim_threads = ThreadPoolExecutor(CLAIM_THREADS, thread_name_prefix="mfl-claims")

    def web_app(self) -> web.Application:
        app = web.Application(client_max_size=self.config.max_body_bytes)
        self.add_prediction_routes(app)
        model = "/v2/models/{model}"
        app.router.add_post("/feedback", self.feedback)
        app.router.add_post(model + "/feedback", self.v2_feedback)
        app.router.add_get("/metrics", self.metrics_text)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/v2", self.v2_server_metadata)
        app.router.add_get("/v2/health/live", self.healthz)
        app.router.add_get("/v2/health/ready", self.v2_ready)
        app.router.add_get(model, self.v2_model_metadata)
        app.router.add_get(model + "/versions/{version}", self.v2_model_metadata)
        app.router.add_get(model + "/ready", self.v2_ready)
        app.router.add_get(model + "/versions/{version}/ready", self.v2_ready)
        return app

    def add_prediction_routes(self, app: web.Application) -> None:
        raise NotImplementedError

    # --- lifecycle ---------------------------------------------------------------------------

    async def load(self) -> ServedModel:
        """The version to serve; raises ModelLoadError (or OSError) with the reason it cannot yet."""
        raise NotImplementedError

    async def load_until_ready(self) -> None:
        """Retries a missing or unreadable artifact or store; logs each new reason once."""
        while self.model is None:
            try:
                await asyncio.to_thread(self._check_store)
                model = await self.load()
            except OSError as error:
                self._not_ready(f"the artifact store is not writable: {error}")
            except ModelLoadError as error:
                self._not_ready(str(error))
            except Exception as error:
                self._not_ready(f"unexpected error loading the model: {type(error).__name__}: {error}")
            else:
                self._ready(model)
                return
            await asyncio.sleep(self.config.reload_interval)

    def _check_store(self) -> None:
        """Predictions that cannot be logged cannot be acknowledged: not ready until they can."""
        self.predictions_log.check_writable()
        self.feedback_log.check_writable()
        self.claims.probe()

    async def watch_store(self) -> None:
        """Probes the store every few seconds (not ready while it fails) and deletes expired claims hourly."""
        next_sweep = 0.0
        while True:
            await asyncio.sleep(self.config.store_check_interval)
            try:
                await asyncio.to_thread(self._check_store)
            except OSError as error:
                self._store_failed(f"the artifact store is not writable: {_reason(error)}")
                continue
            if self.store_problem is not None:
                log.info("the artifact store is writable again: ready")
                self.store_problem = None
            if time.monotonic() >= next_sweep:
                next_sweep = time.monotonic() + SWEEP_INTERVAL
                await self._sweep_claims()

    async def _sweep_claims(self) -> None:
        try:
            swept = await asyncio.to_thread(self.claims.sweep, time.time(), self.config.feedback_max_age)
        except OSError as error:
            log.warning("cannot delete expired feedback claims in %s: %s", self.claims.folder, _reason(error))
            return
        if swept:
            log.info("deleted expired feedback claims: %s", ", ".join(swept))

    def _store_failed(self, reason: str) -> None:
        if reason != self.store_problem:
            log.error("not ready: %s", reason)
        self.store_problem = reason

    def _not_ready(self, reason: str) -> None:
        if reason != self.not_ready_reason:
            log.error("not ready: %s", reason)
        self.not_ready_reason = reason

    def _ready(self, model: ServedModel) -> None:
        self.confusion_labels = fb.ConfusionLabels(model.classes)
        self.model = model
        log.info(
            "ready: model %s version %d (%s, %d features) on track %s",
            self.config.model,
            model.version,
            model.task,
            len(model.features),
            self.config.track,
        )

    def unready_reason(self) -> str | None:
        """Why this replica must not take traffic now, or None."""
        if self.shutting_down:
            return "shutting down"
        if self.model is None:
            return self.not_ready_reason
        return self.store_problem

    def background_tasks(self) -> list[Awaitable[None]]:
        """What runs beside the routes while the process serves (cancelled at shutdown)."""
        return [self.load_until_ready(), self.watch_store()]

    def close(self) -> None:
        self._claim_threads.shutdown(wait=True)
        self.predictions_log.close()
        self.feedback_log.close()

    async def aclose(self) -> None:
        self.close()

    # --- predictions -------------------------------------------------------------------------

    def record_predictions(self, model: ServedModel, records: list[dict[str, Any]], labels: list[Any]) -> list[str]:
        """Signs one id per prediction and logs the rows; nothing is answered that is not logged."""
        ts = time.time()
        ids = self.signer.sign_batch(model.version, self.config.track, labels, ts)
        version, track = model.version, self.config.track
        lines = b"".join(
            _prediction_line(row_id, ts, version, track, record, label)
            for row_id, record, label in zip(ids, records, labels)
        )
        self._append(self.predictions_log, lines, ts, "predictions")
        self.metrics.count_predictions(len(labels))
        return ids

    def check_v2_model(self, request: web.Request) -> ServedModel:
        """404 for another model's or another version's route (the protocol's answer), 503 until loaded."""
        name = request.match_info.get("model")
        if name != self.config.model:
            raise v2.not_found(f"model {str(name)[:60]!r} is not served here; this server serves {self.config.model!r}")
        model = self.require_model()
        version = request.match_info.get("version")
        if version is not None and version != str(model.version):
            raise v2.not_found(
                f"version {version[:20]!r} of {self.config.model!r} is not served here (version {model.version} is)"
            )
        return model

    # --- endpoints -----------------------------------------------------------------------------

    @api_endpoint("feedback")
    async def feedback(self, request: web.Request) -> web.Response:
        return await self._record_feedback(request)

    @api_endpoint("feedback")
    async def v2_feedback(self, request: web.Request) -> web.Response:
        self.check_v2_model(request)
        return await self._record_feedback(request)

    async def _record_feedback(self, request: web.Request) -> web.Response:
        model = self.require_model()
        entries = fb.entries_of(await self.read_json(request), self.config.max_batch)
        ts = time.time()
        rules = fb.LabelRules.for_model(model.task, model.classes, ts, self.config.feedback_max_age)
        valid, rejected = fb.review(entries, self.signer.verify, rules)
        accepted, duplicates = await self._claim(valid)
        try:
            self._append(self.feedback_log, b"".join(_feedback_line(item, ts) for item in accepted), ts, "feedback")
        except RequestError:
            self._release(accepted)
            raise
        for item in accepted:
            self._score(item, model.task)
        rejected = sorted(rejected + duplicates, key=lambda entry: entry.index)
        for entry in rejected:
            self.metrics.count_rejected(entry.reason)
        body: dict[str, Any] = {"accepted": len(accepted), "rejected": [entry.as_json() for entry in rejected]}
        refusal = fb.refusal(len(accepted), rejected)
        if refusal:
            return json_response({"error": refusal, **body}, 422)
        return json_response(body)

    async def metrics_text(self, request: web.Request) -> web.Response:
        response = web.Response(body=self.metrics.exposition())
        response.headers["Content-Type"] = CONTENT_TYPE
        return response

    async def healthz(self, request: web.Request) -> web.Response:
        return json_response({"status": "alive", "live": True})

    async def readyz(self, request: web.Request) -> web.Response:
        reason = self.unready_reason()
        if reason is not None:
            return json_response({"status": "not ready", "reason": reason}, 503)
        return json_response(
            {"status": "ready", "model": self.config.model, "version": self.model.version, "track": self.config.track}
        )

    async def v2_ready(self, request: web.Request) -> web.Response:
        name = request.match_info.get("model")
        if name is not None and name != self.config.model:
            return error_response(404, f"model {name[:60]!r} is not served here")
        reason = self.unready_reason()
        if reason is not None:
            return json_response({"ready": False, "error": f"not ready: {reason}"}, 503)
        return json_response({"ready": True})

    async def v2_server_metadata(self, request: web.Request) -> web.Response:
        return json_response({"name": self.platform, "version": "0.1.0", "extensions": ["mfl-feedback"]})

    async def v2_model_metadata(self, request: web.Request) -> web.Response:
        try:
            model = self.check_v2_model(request)
        except RequestError as error:
            return error_response(error.status, error.message)
        return json_response(
            v2.model_metadata(
                self.config.model,
                model.version,
                self.platform,
                model.features,
                task=model.task,
                classes=model.classes,
            )
        )

    # --- helpers -------------------------------------------------------------------------------

    def require_model(self) -> Any:
        if self.model is None:
            raise RequestError(503, f"not ready: {self.not_ready_reason}")
        return self.model

    async def read_json(self, request: web.Request) -> Any:
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise too_large(f"body larger than {self.config.max_body_bytes} bytes") from None
        if not raw.strip():
            raise bad_request("empty body: expected a JSON object")
        try:
            return jsonio.loads(raw)
        except jsonio.DECODE_ERRORS as error:
            raise bad_request(f"body is not valid JSON: {error}") from None

    def _append(self, log_file: DailyJsonl, data: bytes, ts: float, what: str) -> None:
        """Nothing is acknowledged that is not in the store: a failed write fails the request."""
        try:
            log_file.append(data, ts)
        except OSError as error:
            raise self._write_failed(what, log_file.folder, error) from error

    async def _claim(self, items: list[fb.Accepted]) -> tuple[list[fb.Accepted], list[fb.Rejected]]:
        """Labels whose claim this request created, and the ones someone recorded before."""
        loop = asyncio.get_running_loop()
        chunks = chunks_of(items, CLAIM_THREADS)
        outcomes = await asyncio.gather(
            *(
                loop.run_in_executor(
                    self._claim_threads, self.claims.claim_all, [(item.id, item.ref.ts) for item in chunk]
                )
                for chunk in chunks
            )
        )
        claimed: list[fb.Accepted] = []
        duplicates: list[fb.Rejected] = []
        for chunk, (won, _) in zip(chunks, outcomes):  # a chunk that failed won fewer than it holds
            claimed += [item for item, created in zip(chunk, won) if created]
            duplicates += [fb.duplicate(item.index, item.id) for item, created in zip(chunk, won) if not created]
        error = next((failure for _, failure in outcomes if failure is not None), None)
        if error is not None:
            self._release(claimed)
            raise self._write_failed("feedback", self.claims.folder, error) from error
        return claimed, duplicates

    def _release(self, items: list[fb.Accepted]) -> None:
        """Claims of labels that were not recorded, so the client's retry can record them."""
        kept = sum(not self.claims.release(item.id, item.ref.ts) for item in items)
        if kept:
            log.error("%d feedback claims could not be released: those labels stay unrecorded", kept)

    def _write_failed(self, what: str, folder: Any, error: OSError) -> RequestError:
        """503: the client may retry, on another replica; this one is not ready until a probe writes."""
        log.error("cannot write %s to %s: %s", what, folder, error)
        self._store_failed(f"the artifact store is not writable: {_reason(error)}")
        return RequestError(503, f"cannot record {what} in the artifact store ({_reason(error)}); retry later")

    def _score(self, item: fb.Accepted, task: str) -> None:
        ref = item.ref
        if task == "regression":
            self.metrics.count_regression(ref.version, ref.track, fb.abs_error(ref.label, item.label))
            return
        self.metrics.count_classification(
            ref.version,
            ref.track,
            fb.is_correct(ref.label, item.label),
            self.confusion_labels.actual(item.label),
            fb.label_key(ref.label),
        )


def v2_answer(body: dict[str, Any], ids: list[str]) -> web.Response:
    """A V2 infer response with the ids as an output tensor and, when short enough, a header."""
    response = json_response(body)
    header = v2.ids_header(ids)
    if header is not None:
        response.headers[v2.IDS_HEADER] = header
    return response


def chunks_of(items: list[Any], count: int) -> list[list[Any]]:
    """At most ``count`` contiguous, non-empty parts of nearly equal size."""
    size = -(-len(items) // count) if items else 1
    return [items[start : start + size] for start in range(0, len(items), size)]


def _reason(error: OSError) -> str:
    return error.strerror or str(error) or type(error).__name__


def _prediction_line(row_id: str, ts: float, version: int, track: str, features: dict[str, Any], label: Any) -> bytes:
    return (
        jsonio.dumps(
            {"id": row_id, "ts": ts, "version": version, "track": track, "features": features, "prediction": label}
        )
        + b"\n"
    )


def _feedback_line(item: fb.Accepted, ts: float) -> bytes:
    ref = item.ref
    return (
        jsonio.dumps(
            {
                "id": item.id,
                "ts": ts,
                "label": item.label,
                "version": ref.version,
                "track": ref.track,
                "prediction": ref.label,
                "predictionTs": ref.ts,
            }
        )
        + b"\n"
    )
