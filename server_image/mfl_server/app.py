"""The reference model server: aiohttp on one asyncio loop (docs/contracts.md, "Model server").

It serves its own JSON route (`POST /predict`) and the Open Inference Protocol (`POST
/v2/models/{model}/infer`): a client written for MLServer or KServe works against it unchanged, and gets
a signed prediction id per row (an output tensor and a header) to send ground truth with later.
Inference runs inline on the loop: a vectorised predict over a bounded batch takes well under a
millisecond to a few milliseconds, cheaper than handing it to a thread. Logs are appended before the
response is sent; SIGTERM stops listening, lets in-flight requests finish, then closes the logs.
What a label goes through (claims, logs, metrics) is mfl_server.base, shared with the feedback sidecar.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from aiohttp import web

from . import v2
from .base import FeedbackServer, api_endpoint, json_response, v2_answer
from .config import ServerConfig
from .inputs import build_batch, instances_of
from .model import LoadedModel, load_model
from .runner import run_main


class ModelServer(FeedbackServer):
    platform = "mfl-server"

    def add_prediction_routes(self, app: web.Application) -> None:
        app.router.add_post("/predict", self.predict)
        app.router.add_post("/v2/models/{model}/infer", self.infer)
        app.router.add_post("/v2/models/{model}/versions/{version}/infer", self.infer)

    async def load(self) -> LoadedModel:
        return await asyncio.to_thread(load_model, self.config.version_dir, self.config.version)

    @api_endpoint("predict")
    async def predict(self, request: web.Request) -> web.Response:
        model: LoadedModel = self.require_model()
        instances = instances_of(await self.read_json(request), self.config.max_batch)
        labels, ids = self._predict_rows(model, instances)
        return json_response({"predictions": labels, "ids": ids, "model": self.config.model, "version": model.version})

    @api_endpoint("infer")
    async def infer(self, request: web.Request) -> web.Response:
        model: LoadedModel = self.check_v2_model(request)
        # the values are checked once, by build_batch (numpy), not also value by value here
        parsed = v2.parse_infer(await self.read_json(request), model.features, self.config.max_batch, False)
        labels, ids = self._predict_rows(model, parsed.rows)
        return v2_answer(v2.infer_response(self.config.model, model.version, parsed.request_id, labels, ids), ids)

    def _predict_rows(self, model: LoadedModel, rows: list[Any]) -> tuple[list[Any], list[str]]:
        batch = build_batch(rows, model.schema)
        labels = model.predict(batch.matrix)
        return labels, self.record_predictions(model, batch.records, labels)


def _limit_inference_threads(config: ServerConfig) -> None:
    """Inference runs inline on the event loop with small batches: a team of OpenMP threads costs
    more to wake than it saves (HistGradientBoosting, one row: 1.7 ms with 2 threads, 0.7 ms with 1)
    and competes with the loop for the pod's CPU."""
    if config.inference_threads > 0:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=config.inference_threads)


def main() -> int:
    return run_main(ModelServer, _limit_inference_threads)


if __name__ == "__main__":
    sys.exit(main())
