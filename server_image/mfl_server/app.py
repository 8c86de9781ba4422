"""The reference model server: aiohttp on one asyncio loop (docs/contracts.md, "Model server").

Inference runs inline on the loop: a vectorised predict over a bounded batch takes well under a
millisecond to a few milliseconds, cheaper than handing it to a thread. Logs are appended before the
response is sent; SIGTERM stops listening, lets in-flight requests finish, then closes the logs.
A label is recorded once across replicas and restarts: its claim on the shared store (mfl_server.claims)
comes first, then the log line, then the metrics. Claims are file creates, a round trip each on a
network volume, so a request's claims run on a few threads at once, off the loop that serves /predict
(on local ext4 and one core, threads and inline creates measured the same).
The server is not ready while the store cannot be written: a failed write says so at once, a probe
every few seconds says when it can again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from functools import wraps
from typing import Any

from aiohttp import web

from mfl_contracts import storage

from . import feedback as fb
from . import jsonio
from .claims import ClaimStore
from .config import ConfigError, ServerConfig, from_env
from .errors import RequestError, bad_request, too_large
from .ids import IdSigner
from .inputs import build_batch, instances_of
from .metrics import CONTENT_TYPE, ServerMetrics
from .model import LoadedModel, ModelLoadError, load_model
from .store import DailyJsonl, process_file_name

log = logging.getLogger("mfl_server")
SHUTDOWN_TIMEOUT = 20.0  # seconds for in-flight requests; the pod's grace period is 30
SWEEP_INTERVAL = 3600.0  # seconds between deletions of expired claims
CLAIM_THREADS = 8  # file creates in flight per request
Handler = Callable[["ModelServer", web.Request], Awaitable[web.Response]]


def json_response(value: Any, status: int = 200) -> web.Response:
    return web.Response(body=jsonio.dumps(value), status=status, content_type="application/json")


def error_response(status: int, message: str) -> web.Response:
    return json_response({"error": message}, status)


def api_endpoint(name: str) -> Callable[[Handler], Handler]:
    """Turns errors into JSON responses and counts every outcome in mfl_http_requests_total."""

    def decorate(handler: Handler) -> Handler:
        @wraps(handler)
        async def run(self: ModelServer, request: web.Request) -> web.Response:
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
            if name == "predict":
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


class ModelServer:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.metrics = ServerMetrics(config.model, config.version, config.track)
        self.signer = IdSigner(config.signing_key, config.model)
        self.model: LoadedModel | None = None
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
        app.router.add_post("/predict", self.predict)
        app.router.add_post("/feedback", self.feedback)
        app.router.add_get("/metrics", self.metrics_text)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        return app

    # --- lifecycle ---------------------------------------------------------------------------

    async def load_until_ready(self) -> None:
        """Retries a missing or unreadable artifact or store; logs each new reason once."""
        while self.model is None:
            try:
                await asyncio.to_thread(self._check_store)
                model = await asyncio.to_thread(load_model, self.config.version_dir, self.config.version)
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

    def _ready(self, model: LoadedModel) -> None:
        self.confusion_labels = fb.ConfusionLabels(model.classes)
        self.model = model
        log.info(
            "ready: model %s version %d (%s, %d features) on track %s",
            self.config.model,
            model.version,
            model.task,
            len(model.schema.features),
            self.config.track,
        )

    def close(self) -> None:
        self._claim_threads.shutdown(wait=True)
        self.predictions_log.close()
        self.feedback_log.close()

    # --- endpoints -----------------------------------------------------------------------------

    @api_endpoint("predict")
    async def predict(self, request: web.Request) -> web.Response:
        model = self._require_model()
        instances = instances_of(await self._read_json(request), self.config.max_batch)
        batch = build_batch(instances, model.schema)
        labels = model.predict(batch.matrix)
        ts = time.time()
        ids = self.signer.sign_batch(model.version, self.config.track, labels, ts)
        lines = b"".join(
            _prediction_line(row_id, ts, model.version, self.config.track, record, label)
            for row_id, record, label in zip(ids, batch.records, labels)
        )
        self._append(self.predictions_log, lines, ts, "predictions")
        self.metrics.count_predictions(len(labels))
        return json_response({"predictions": labels, "ids": ids, "model": self.config.model, "version": model.version})

    @api_endpoint("feedback")
    async def feedback(self, request: web.Request) -> web.Response:
        model = self._require_model()
        entries = fb.entries_of(await self._read_json(request), self.config.max_batch)
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
        return json_response({"status": "alive"})

    async def readyz(self, request: web.Request) -> web.Response:
        if self.shutting_down:
            return json_response({"status": "not ready", "reason": "shutting down"}, 503)
        if self.model is None:
            return json_response({"status": "not ready", "reason": self.not_ready_reason}, 503)
        if self.store_problem is not None:
            return json_response({"status": "not ready", "reason": self.store_problem}, 503)
        return json_response(
            {"status": "ready", "model": self.config.model, "version": self.model.version, "track": self.config.track}
        )

    # --- helpers -------------------------------------------------------------------------------

    def _require_model(self) -> LoadedModel:
        if self.model is None:
            raise RequestError(503, f"not ready: {self.not_ready_reason}")
        return self.model

    async def _read_json(self, request: web.Request) -> Any:
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
        chunks = _chunks(items, CLAIM_THREADS)
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


def _chunks(items: list[Any], count: int) -> list[list[Any]]:
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


async def serve(config: ServerConfig, stop: asyncio.Event | None = None) -> None:
    """Runs until SIGTERM/SIGINT (or ``stop`` is set), then shuts down gracefully."""
    server = ModelServer(config)
    runner = web.AppRunner(server.web_app(), handle_signals=False, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT)
    await runner.setup()
    stop = stop or asyncio.Event()
    _on_signals(stop)
    loader = asyncio.create_task(server.load_until_ready())
    watcher = asyncio.create_task(server.watch_store())
    try:
        await web.TCPSite(runner, config.host, config.port, backlog=1024).start()
        log.info(
            "listening on %s:%d (json: %s, event loop: %s)",
            config.host,
            config.port,
            jsonio.BACKEND,
            type(asyncio.get_running_loop()).__module__.split(".")[0],
        )
        await stop.wait()
        log.info("stopping: no longer ready, finishing in-flight requests")
        server.shutting_down = True
        await asyncio.sleep(config.shutdown_delay)  # let endpoints drop this pod before we stop listening
        await _drain(runner, server)
    finally:
        loader.cancel()
        watcher.cancel()
        await runner.cleanup()  # closes idle connections, cancels what is left
        server.close()
    log.info("stopped")


async def _drain(runner: web.AppRunner, server: ModelServer) -> None:
    """Stop accepting, then let running handlers finish before aiohttp closes their connections.

    aiohttp's own cleanup stops reading from every connection at once, so a request whose body was
    still arriving would never complete; waiting here first lets it.
    """
    for site in list(runner.sites):
        await site.stop()
    if not await server.in_flight.wait_idle(SHUTDOWN_TIMEOUT):
        log.error("%d requests still running after %.0f s; cancelling them", server.in_flight.count, SHUTDOWN_TIMEOUT)


def _on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed (less per-request overhead), unless MFL_EVENT_LOOP=asyncio."""
    if os.environ.get("MFL_EVENT_LOOP", "").lower() == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def _limit_inference_threads(threads: int) -> None:
    """Inference runs inline on the event loop with small batches: a team of OpenMP threads costs
    more to wake than it saves (HistGradientBoosting, one row: 1.7 ms with 2 threads, 0.7 ms with 1)
    and competes with the loop for the pod's CPU."""
    if threads > 0:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=threads)


def main() -> int:
    logging.basicConfig(
        level=os.environ.get("MFL_LOG_LEVEL", "INFO").upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        config = from_env()
    except ConfigError as error:
        log.error("configuration: %s", error)
        return 2
    _limit_inference_threads(config.inference_threads)
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(serve(config))
    except OSError as error:  # e.g. the port is taken
        log.error("cannot serve on %s:%d: %s", config.host, config.port, error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
