"""What the reference server and the feedback sidecar share: signed ids, the prediction and feedback logs,
exactly-once labels, the metrics, readiness and the protocol's routes (docs/contracts.md, "Model server").

A subclass says how a version is loaded (`load`) and how rows are predicted (its /predict and V2 infer
routes); everything a label goes through is here, once. No numpy or scikit-learn is imported here: the
sidecar's image has neither.

A label is recorded once across replicas and restarts by the server's label recorder (mfl_server.labels):
on a volume its claim file comes first, then the log line; with a database (MFL_DATABASE_URL) one INSERT
for the requests queued meanwhile (group commit, mfl_server.ledger_labels). The metrics move only for what
was recorded, after it was.
Predictions are logged to daily JSON-lines files on the volume, or to gzip segments in an object store
(MFL_S3_BUCKET, mfl_server.segments).
The server is not ready while the store or the database cannot be written: a failed write says so at
once, a probe every few seconds says when it can again. An hourly sweep deletes expired claims and, with
MFL_RETENTION_LOG_SECONDS, log days and ledger partitions past retention (mfl_server.retention).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
from collections.abc import Awaitable, Callable
from datetime import date
from functools import wraps
from typing import Any, Protocol, TypeVar

from aiohttp import web

from mfl_contracts import storage

from . import feedback as fb
from . import jsonio, retention, v2
from .config import ServerConfig
from .errors import ModelLoadError, RequestError, StoreFailure, bad_request, too_large
from .ids import IdSigner
from .labels import ARTIFACT_STORE, LabelRecorder, VolumeLabels, os_reason
from .labels import chunks_of as chunks_of  # re-exported: the tests import it from here
from .metrics import CONTENT_TYPE, ServerMetrics
from .segments import SegmentLog
from .store import DailyJsonl, process_file_name

log = logging.getLogger("mfl_server")
SWEEP_INTERVAL = 3600.0  # seconds between deletions of expired claims, partitions and log days
LOG_FOLDERS = ("predictions", "feedback")  # <model>/<folder>/date=YYYY-MM-DD/...: what retention deletes
PREDICTION_ENDPOINTS = ("predict", "infer")  # their latency is mfl_prediction_latency_seconds
Handler = Callable[[Any, web.Request], Awaitable[web.Response]]
T = TypeVar("T")


class ServedModel(Protocol):
    """What the feedback side needs to know of the version being served."""

    version: int
    task: str
    classes: list[Any] | None

    @property
    def features(self) -> list[str]: ...

    @property
    def input_profile(self) -> dict[str, Any] | None: ...


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


def object_store(config: ServerConfig) -> Any:
    """The bucket of the s3 mode (mfl_contracts.objectstore.S3Store), else None (everything on the volume)."""
    if config.s3 is None:
        return None
    from mfl_contracts.objectstore import S3Store

    return S3Store(config.s3)


def prediction_log(config: ServerConfig, objects: Any, file_name: str) -> DailyJsonl | SegmentLog:
    if objects is None:
        return DailyJsonl(storage.predictions_dir(config.storage_root, config.model), file_name)
    prefix = f"{config.model}/predictions"
    return SegmentLog(objects, prefix, config.log_flush_bytes, config.log_flush_seconds)


def label_recorder(config: ServerConfig, file_name: str) -> LabelRecorder:
    """The ledger when there is a database (imported only then: psycopg), else claims and the feedback log."""
    if config.database_url:
        from .ledger_labels import LedgerLabels

        return LedgerLabels(config.database_url, config.model, config.feedback_max_age, config.retention_log_seconds)
    root, model = config.storage_root, config.model
    claims, feedback = storage.feedback_claims_dir(root, model), storage.feedback_dir(root, model)
    return VolumeLabels(claims, feedback, file_name, config.feedback_max_age)


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
            async with asyncio.timeout(timeout):
                await self._idle.wait()
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
        self.store_problem: str | None = None  # why the store or the database cannot be written right now
        file_name = process_file_name()
        self.objects: Any = object_store(config)  # an ArtifactStore in s3 mode, else None
        self.predictions_log: DailyJsonl | SegmentLog = prediction_log(config, self.objects, file_name)
        self.labels: LabelRecorder = label_recorder(config, file_name)
        # The volume's feedback log (None with a database: the ledger is the feedback log).
        self.feedback_log = self.labels.log if isinstance(self.labels, VolumeLabels) else None
        self._log_days_checked: date | None = None  # object store: the newest day a sweep emptied

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
                await self._probe_stores()
                model = await self.load()
            except StoreFailure as failure:
                self._not_ready(failure.problem)
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

    async def _probe_stores(self) -> None:
        """Predictions that cannot be logged and labels that cannot be recorded cannot be acknowledged: not
        ready until they can (StoreFailure says why)."""
        try:
            await asyncio.to_thread(self.predictions_log.check_writable)
        except OSError as error:
            raise StoreFailure(ARTIFACT_STORE, "not writable", str(error)) from error
        await self.labels.probe(time.time())

    async def watch_store(self) -> None:
        """Probes the stores every few seconds (not ready while one fails) and sweeps what expired hourly."""
        next_sweep = 0.0
        while True:
            await asyncio.sleep(self.config.store_check_interval)
            try:
                await self._probe_stores()
            except StoreFailure as failure:
                self._store_failed(failure.problem)
                continue
            if self.store_problem is not None:
                log.info("the artifact store and the label store are writable again: ready")
                self.store_problem = None
            if time.monotonic() >= next_sweep:
                next_sweep = time.monotonic() + SWEEP_INTERVAL
                await self.sweep(time.time())

    async def sweep(self, now: float) -> None:
        """Expired claims or ledger partitions, then log days past MFL_RETENTION_LOG_SECONDS (if set)."""
        swept = await self.labels.sweep(now)
        if swept:
            log.info("deleted expired labels' days: %s", ", ".join(swept))
        keep = self.config.retention_log_seconds
        if keep <= 0:
            return
        deleted = await asyncio.to_thread(self._sweep_logs, now, keep)
        if deleted:
            log.info("deleted log days past retention: %s", ", ".join(deleted))

    def _sweep_logs(self, now: float, keep: float) -> list[str]:
        if self.objects is None:
            return self._sweep_log_folders(now, keep)
        return self._sweep_log_objects(now, keep)

    def _sweep_log_folders(self, now: float, keep: float) -> list[str]:
        """Day folders on the volume; several replicas may delete the same one at once."""
        deleted = []
        for name in LOG_FOLDERS:
            folder = storage.model_dir(self.config.storage_root, self.config.model) / name
            try:
                days = os.listdir(folder)
            except OSError:
                continue
            for day in retention.expired_day_names(days, now, keep):
                shutil.rmtree(folder / day, ignore_errors=True)
                deleted.append(f"{name}/{day}")
        return deleted

    def _sweep_log_objects(self, now: float, keep: float) -> list[str]:
        """Objects under the expired days' prefixes; the days checked are remembered only when all went."""
        span = retention.days_to_check(now, keep, self._log_days_checked)
        if span is None:
            return []
        deleted = []
        try:
            for folder in LOG_FOLDERS:
                for prefix in retention.day_prefixes(*span):
                    keys = [info.key for info in self.objects.list(f"{self.config.model}/{folder}/{prefix}")]
                    if keys:
                        self.objects.delete(keys)
                        deleted.append(f"{folder}/{prefix.rstrip('/')}* ({len(keys)} objects)")
        except Exception as error:  # the store's error names it and why; the next sweep tries again
            log.warning("cannot delete log objects past retention: %s", error)
            return deleted
        self._log_days_checked = span[1]
        return deleted

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
        if self.config.input_drift:
            self.metrics.watch_inputs(model.input_profile)
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
        tasks: list[Awaitable[None]] = [self.load_until_ready(), self.watch_store()]
        if isinstance(self.predictions_log, SegmentLog):
            tasks.append(self.predictions_log.run())
        return tasks

    def close(self) -> None:
        """Synchronous part of the shutdown (tests, volume mode); ``aclose`` also closes the database pool."""
        self.labels.close()
        self.predictions_log.close()

    async def aclose(self) -> None:
        await self.labels.aclose()
        await asyncio.to_thread(self.predictions_log.close)  # s3: uploads the last segments

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
        self.metrics.count_inputs(records)
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
        rules = fb.LabelRules.for_model(
            model.task, model.classes, ts, self.config.feedback_max_age, self.config.feedback_clock_margin
        )
        valid, rejected = fb.review(entries, self.signer.verify, rules)
        accepted, duplicates = await _shielded(self._record_labels(valid, ts, model.task))
        rejected = sorted(rejected + duplicates, key=lambda entry: entry.index)
        for entry in rejected:
            self.metrics.count_rejected(entry.reason)
        body: dict[str, Any] = {"accepted": len(accepted), "rejected": [entry.as_json() for entry in rejected]}
        refusal = fb.refusal(len(accepted), rejected)
        if refusal:
            return json_response({"error": refusal, **body}, 422)
        return json_response(body)

    async def _record_labels(
        self, valid: list[fb.Accepted], ts: float, task: str
    ) -> tuple[list[fb.Accepted], list[fb.Rejected]]:
        """Records, then scores what was recorded: run shielded, so that a handler cancelled half-way (its
        client went away, the shutdown's last resort) never leaves a claimed or committed label uncounted
        or, on a volume, claimed but not logged."""
        try:
            accepted, duplicates = await self.labels.record(valid, ts)
        except StoreFailure as failure:
            raise self._refused("feedback", failure) from failure
        for item in accepted:
            self._score(item, task)
        return accepted, duplicates

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

    def _append(self, log_file: DailyJsonl | SegmentLog, data: bytes, ts: float, what: str) -> None:
        """Nothing is acknowledged that is not in the store (or, s3, in a bounded upload buffer)."""
        try:
            log_file.append(data, ts)
        except OSError as error:
            log.error("cannot write %s to %s: %s", what, log_file.folder, error)
            raise self._refused(what, StoreFailure(ARTIFACT_STORE, "not writable", os_reason(error))) from error
        except StoreFailure as failure:
            raise self._refused(what, failure) from failure

    def _refused(self, what: str, failure: StoreFailure) -> RequestError:
        """503: the client may retry, on another replica; this one is not ready until a probe writes."""
        self._store_failed(failure.problem)
        return RequestError(503, failure.request_message(what))

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


async def _shielded(work: Awaitable[T]) -> T:
    """``work`` runs to its end even if the caller is cancelled; its outcome then goes unread, on purpose."""
    task = asyncio.ensure_future(work)
    task.add_done_callback(_read_outcome)
    return await asyncio.shield(task)


def _read_outcome(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # read: no "exception was never retrieved" for a request nobody waits for


def v2_answer(body: dict[str, Any], ids: list[str]) -> web.Response:
    """A V2 infer response with the ids as an output tensor and, when short enough, a header."""
    response = json_response(body)
    header = v2.ids_header(ids)
    if header is not None:
        response.headers[v2.IDS_HEADER] = header
    return response


def _prediction_line(row_id: str, ts: float, version: int, track: str, features: dict[str, Any], label: Any) -> bytes:
    return (
        jsonio.dumps(
            {"id": row_id, "ts": ts, "version": version, "track": track, "features": features, "prediction": label}
        )
        + b"\n"
    )
