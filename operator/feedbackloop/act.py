"""Act: carry out a decision's actions against the Kubernetes API, idempotently.

Every action names what should exist (a Job by its deterministic name, a Deployment by its desired
body), so repeating one after a crash or a lagging watch event is harmless.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from . import metrics, phases, resources
from .api import ModelFeedbackLoopSpec
from .fleet import Fleet
from .kube import KubeAPI, NotOurs

log = logging.getLogger(__name__)
TRAINER_OVERRIDES = "feedbackloop.dev/trainer-overrides"
ALLOWED_OVERRIDES = {"labelNoise", "seed", "recentWeight"}


class Actor:
    def __init__(self, kube: KubeAPI, fleet: Fleet, job_extra_config: dict[str, Any]) -> None:
        self.kube = kube
        self.fleet = fleet
        self.job_extra_config = job_extra_config

    async def act(self, body: dict[str, Any], spec: ModelFeedbackLoopSpec | None, decision: phases.Decision) -> None:
        for action in decision.actions:
            try:
                await self._do(body, spec, action)
            except NotOurs as error:
                await asyncio.to_thread(self.kube.event, body, "Warning", "NameConflict", str(error))
                raise

    async def _do(self, body: dict[str, Any], spec: ModelFeedbackLoopSpec | None, action: phases.Action) -> None:
        if isinstance(action, phases.Event):
            metrics.EVENTS.labels(action.reason).inc()
            await asyncio.to_thread(self.kube.event, body, action.type, action.reason, action.message)
            return
        assert spec is not None, "only events are decided for a loop without a valid spec"
        if isinstance(action, phases.StartTraining):
            await self._start_training(body, spec, action)
        elif isinstance(action, phases.EnsureStable):
            await self._ensure_stable(body, spec, action.version)
        elif isinstance(action, phases.EnsureCanary):
            await self._ensure_canary(body, spec, action)
        elif isinstance(action, phases.RemoveCanary):
            await self._remove_canary(body, spec)

    async def _start_training(
        self, body: dict[str, Any], spec: ModelFeedbackLoopSpec, action: phases.StartTraining
    ) -> None:
        extra = {**self.job_extra_config, **trainer_overrides(body)}
        job = resources.training_job(
            body, spec, action.job_name, action.version, action.parent_version, action.trigger, extra
        )
        await asyncio.to_thread(self.kube.create_job, body, job)

    async def _ensure_stable(self, body: dict[str, Any], spec: ModelFeedbackLoopSpec, version: int) -> None:
        await asyncio.to_thread(self.kube.ensure_signing_secret, body)
        await asyncio.to_thread(self.kube.ensure_service, body, resources.service(body, spec))
        desired = resources.server_deployment(body, spec, version, "stable", spec.model.serving.replicas)
        await self._ensure_deployment(body, desired)

    async def _ensure_canary(
        self, body: dict[str, Any], spec: ModelFeedbackLoopSpec, action: phases.EnsureCanary
    ) -> None:
        desired = resources.server_deployment(body, spec, action.version, "canary", action.canary_replicas)
        await self._ensure_deployment(body, desired)
        route = spec.rollout.traffic_routing.http_route
        if route:
            for track in ("stable", "canary"):
                await asyncio.to_thread(self.kube.ensure_service, body, resources.service(body, spec, track))
            await asyncio.to_thread(self.kube.set_route_weights, body, route.name, action.weight)

    async def _remove_canary(self, body: dict[str, Any], spec: ModelFeedbackLoopSpec) -> None:
        namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
        await asyncio.to_thread(self.kube.delete_deployment, namespace, resources.canary_name(name))
        route = spec.rollout.traffic_routing.http_route
        if route:
            await asyncio.to_thread(self.kube.set_route_weights, body, route.name, 0)

    async def _ensure_deployment(self, body: dict[str, Any], desired: dict[str, Any]) -> None:
        """Write only when the fields we own differ from the watch cache: saves a write per reconcile."""
        observed = self.fleet.deployments.get(f"{body['metadata']['namespace']}/{desired['metadata']['name']}")
        if drifted(observed, desired):
            await asyncio.to_thread(self.kube.ensure_deployment, body, desired)


def trainer_overrides(body: dict[str, Any]) -> dict[str, Any]:
    """Rehearsal hook: `feedbackloop.dev/trainer-overrides: '{"labelNoise": 0.4}'` trains a deliberately bad
    candidate, to rehearse the canary's rollback on a real cluster. Only these keys pass: ALLOWED_OVERRIDES."""
    text = (body["metadata"].get("annotations") or {}).get(TRAINER_OVERRIDES)
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        log.warning("ignoring %s: not JSON", TRAINER_OVERRIDES)
        return {}
    return {k: v for k, v in value.items() if k in ALLOWED_OVERRIDES} if isinstance(value, dict) else {}


def drifted(observed: dict[str, Any] | None, desired: dict[str, Any]) -> bool:
    """Whether the fields we own differ."""
    if observed is None:
        return True

    def owned(d: dict[str, Any]) -> tuple[Any, ...]:
        spec = d.get("spec", {})
        container = spec.get("template", {}).get("spec", {}).get("containers", [{}])[0]
        env = {e.get("name"): e.get("value") for e in container.get("env") or []}
        return (
            spec.get("replicas"),
            container.get("image"),
            env.get("MFL_MODEL_VERSION"),
            (d["metadata"].get("labels") or {}).get(resources.VERSION_LABEL),
            tuple(sorted(env.items())),
        )

    return owned(observed) != owned(desired)
