"""Act: carry out a decision's actions against the Kubernetes API, idempotently.

Every action names what should exist (a Job by its deterministic name, a Deployment by its desired
body), so repeating one after a crash or a lagging watch event is harmless.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Callable
from typing import Any

from feedbackloop.core import phases, resources, sharding
from feedbackloop.core.api import ModelFeedbackLoopSpec
from feedbackloop.core.fleet import Fleet
from feedbackloop.core.status import LoopStatus
from feedbackloop.core.text import inert
from feedbackloop.runtime import metrics
from feedbackloop.runtime.kube import EngineUnavailable, KubeAPI, NotOurs
from feedbackloop.runtime.notify import Notifier

log = logging.getLogger(__name__)
TRAINER_OVERRIDES = "feedbackloop.dev/trainer-overrides"
KEEP_JOBS = 3  # training Jobs kept per loop: the running one and the two before it
ALLOWED_OVERRIDES = {"labelNoise", "seed", "recentWeight"}
EVENT_MESSAGE_LIMIT = 1024  # the API server's note limit is larger; kube.event cuts here as well


class Actor:
    def __init__(
        self,
        kube: KubeAPI,
        fleet: Fleet,
        job_extra_config: dict[str, Any],
        notifier: Notifier | None = None,
        shard: Callable[[], str | None] = lambda: None,
    ) -> None:
        """`shard()`: this replica's shard (sharding), labelled on the Deployments it writes: its watch selects them."""
        self.kube = kube
        self.fleet = fleet
        self.job_extra_config = job_extra_config
        self.notifier = notifier or Notifier()
        self.shard = shard

    async def act(self, body: dict[str, Any], spec: ModelFeedbackLoopSpec | None, decision: phases.Decision) -> None:
        for action in decision.actions:
            try:
                await self._do(body, spec, action, decision.status)
            except NotOurs as error:
                await self._event(body, "Warning", "NameConflict", str(error))
                raise

    async def _event(self, body: dict[str, Any], type_: str, reason: str, message: str) -> None:
        """Post an Event with its reason and message made inert: a message quotes what a tenant controls (a
        training failure, a Prometheus error, a refused Secret) and `kubectl describe` prints it raw."""
        await asyncio.to_thread(self.kube.event, body, type_, inert(reason, 128), inert(message, EVENT_MESSAGE_LIMIT))

    async def _do(
        self, body: dict[str, Any], spec: ModelFeedbackLoopSpec | None, action: phases.Action, status: LoopStatus
    ) -> None:
        if isinstance(action, phases.Event):
            metrics.EVENTS.labels(action.reason).inc()
            await self._event(body, action.type, action.reason, action.message)
            if spec is not None and spec.notifications:  # queued only: delivery never waits on a receiver
                self.notifier.publish(body, spec.notifications, action, status)
            return
        assert spec is not None, "only events are decided for a loop without a valid spec"
        if isinstance(action, phases.StartTraining):
            await self._start_training(body, spec, action, (status.get("rollout") or {}).get("version"))
        elif isinstance(action, phases.EnsureStable):
            await self._ensure_stable(body, spec, action.version)
        elif isinstance(action, phases.EnsureCanary):
            await self._ensure_canary(body, spec, action)
        elif isinstance(action, phases.RemoveCanary):
            await self._remove_canary(body, spec)

    async def _start_training(
        self, body: dict[str, Any], spec: ModelFeedbackLoopSpec, action: phases.StartTraining, canary: int | None
    ) -> None:
        """`canary`: a version on canary, which the trainer's version retention must keep (with the parent)."""
        extra = {**self.job_extra_config, **trainer_overrides(body)}
        build = resources.dask_job if action.engine == "Dask" else resources.training_job
        job = build(
            body,
            spec,
            action.job_name,
            action.version,
            action.parent_version,
            action.trigger,
            extra,
            canary,
            started_at=action.started_at,
        )
        if action.engine == "Dask":
            try:
                await asyncio.to_thread(self.kube.create_dask_job, body, job)
            except EngineUnavailable as error:  # not a crash loop: the next observation fails the run, saying so
                await self._event(body, "Warning", "EngineUnavailable", str(error))
                return
        else:
            await asyncio.to_thread(self.kube.create_job, body, job)
        # Finished Jobs and DaskJobs (and their Pods' logs) are kept for the last few versions, not forever.
        if action.version > KEEP_JOBS:
            await self._delete_old_run(body, action.version - KEEP_JOBS)

    async def _delete_old_run(self, body: dict[str, Any], version: int) -> None:
        """Best effort, whichever engine that version ran on (the spec may have changed since): housekeeping is
        never worth failing the retraining that just started."""
        namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
        try:
            await asyncio.to_thread(self.kube.delete_job, namespace, phases.job_name(name, version))
        except Exception as error:
            log.warning("could not delete the finished Job of version %d: %s", version, error)
        try:
            await asyncio.to_thread(self.kube.delete_dask_job, namespace, phases.dask_job_name(name, version))
        except Exception as error:  # EngineUnavailable included: no DaskJobs to delete
            log.debug("could not delete the finished DaskJob of version %d: %s", version, error)

    async def _ensure_stable(self, body: dict[str, Any], spec: ModelFeedbackLoopSpec, version: int) -> None:
        desired = resources.server_deployment(body, spec, version, "stable", spec.model.serving.replicas)
        if not drifted(self._observed(body, desired), desired):
            return  # decided every round: the common case costs no API call
        await asyncio.to_thread(self.kube.ensure_signing_secret, body)
        await asyncio.to_thread(self.kube.ensure_service, body, resources.service(body, spec))
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

    def _observed(self, body: dict[str, Any], desired: dict[str, Any]) -> dict[str, Any] | None:
        return self.fleet.deployments.get(f"{body['metadata']['namespace']}/{desired['metadata']['name']}")

    async def release_route(self, body: dict[str, Any], route_name: str) -> None:
        """A deleted loop's HTTPRoute sends nothing to its (garbage-collected) canary any more; best effort:
        the route may be gone too."""
        try:
            await asyncio.to_thread(self.kube.set_route_weights, body, route_name, 0)
        except Exception as error:
            log.warning("could not reset HTTPRoute %s of the deleted loop: %s", route_name, error)

    async def _ensure_deployment(self, body: dict[str, Any], desired: dict[str, Any]) -> None:
        """Write only when the fields we own differ from the watch cache, and say why when it existed."""
        observed = self._observed(body, desired)
        if not drifted(observed, desired):
            return
        shard = self.shard()
        if shard is not None:  # a write without it would take the Deployment out of this replica's watch
            desired["metadata"]["labels"][sharding.SHARD_LABEL] = shard
        desired["metadata"].setdefault("annotations", {})[APPLIED] = applied_hash(desired)
        await asyncio.to_thread(self.kube.ensure_deployment, body, desired)
        if observed is None:
            return
        name, changes = desired["metadata"]["name"], ", ".join(drift_of(observed, desired))
        if (observed["metadata"].get("annotations") or {}).get(APPLIED) == applied_hash(desired):
            # What we applied last is still what we want: someone else changed the object.
            message = f"Deployment {name} was changed by hand ({changes}); restored to what the loop says"
            await self._event(body, "Warning", "DriftCorrected", message)
        else:
            message = f"Deployment {name} updated to the spec: {changes}"
            await self._event(body, "Normal", "ServingUpdated", message)


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


APPLIED = "feedbackloop.dev/applied"  # hash of what the operator last applied to a Deployment


def owned(deployment: dict[str, Any]) -> dict[str, Any]:
    """The fields of a server Deployment the operator owns (and restores when someone changes them): of every
    container (the server, and the feedback sidecar in V2 mode), and the hash of the whole pod template it
    built, so that any spec change (placement, probes, a container added or removed) rolls out."""
    spec = deployment.get("spec", {})
    containers = spec.get("template", {}).get("spec", {}).get("containers") or [{}]
    annotations = deployment["metadata"].get("annotations") or {}
    return {
        "replicas": spec.get("replicas"),
        "image": ", ".join(str(c.get("image")) for c in containers),
        "version": (deployment["metadata"].get("labels") or {}).get(resources.VERSION_LABEL),
        # Not resources: the API server normalizes quantities (0.5 -> 500m), which would look like drift.
        "env": sorted(
            (str(c.get("name")), str(e.get("name")), e.get("value")) for c in containers for e in c.get("env") or []
        ),
        "template": annotations.get(resources.TEMPLATE_ANNOTATION),
    }


def drifted(observed: dict[str, Any] | None, desired: dict[str, Any]) -> bool:
    """Whether the fields we own differ (the watch cache saves a write per reconcile)."""
    return observed is None or owned(observed) != owned(desired)


def drift_of(observed: dict[str, Any], desired: dict[str, Any]) -> list[str]:
    before, after = owned(observed), owned(desired)
    return [
        f"{key} {before[key]} -> {after[key]}" if key in ("replicas", "image", "version") else f"{key} changed"
        for key in after
        if before[key] != after[key]
    ]


def applied_hash(deployment: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(owned(deployment), sort_keys=True).encode()).hexdigest()[:16]
