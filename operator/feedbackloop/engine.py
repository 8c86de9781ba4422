"""The fleet engine: one asyncio task that polls, decides and acts for every loop.

Why one task and not a kopf timer or daemon per loop: a timer's interval is fixed at decoration (each
loop has its own `monitoring.interval`), and a daemon per loop costs a task per loop and a Prometheus
query per loop per rule. One engine over an in-memory view of all loops (fed by kopf's watch) polls
each template once for all due loops together, and writes status only when something changed.

The engine is the only writer of `status`. It keeps the status it last wrote, so a watch event that
lags behind its own write never makes it act twice; after a restart it starts from the status that
the API server holds.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import logging
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from . import api, canary_queries, cron, metrics, phases, promql, resources
from .api import ModelFeedbackLoopSpec, parse_duration
from .canary import CanaryObservation
from .kube import Kube, NotOurs
from .monitoring import RuleState, Sample, evaluate_rule, rule_state_from_status, rules_of, summarize
from .poller import FleetPoller, LoopQuery, PrometheusClients, endpoint_key, short_error

log = logging.getLogger(__name__)
ACTIVE_PHASES = (phases.RETRAINING, phases.CANARY)
# Fields that change with every poll; a change in them alone is written at most every `refresh` seconds.
VOLATILE_METRIC_FIELDS = ("value", "sampleTime", "message")


@dataclass
class Settings:
    tick_seconds: float = 1.0
    active_reconcile_seconds: float = 5.0  # Retraining/Canary loops: follow Jobs and canaries this often
    status_refresh_seconds: float = 300.0  # rewrite live metric values at most this often
    concurrency: int = 16
    job_extra_config: dict[str, Any] = field(default_factory=dict)  # e.g. labelNoise in tests


@dataclass
class LoopMemory:
    """What the engine remembers of one loop between cycles (never needed across restarts)."""

    next_poll: float = 0.0
    next_reconcile: float = 0.0
    next_analysis: float = 0.0
    written_status: dict[str, Any] | None = None
    written_at: float = 0.0
    parsed_generation: int | None = None
    spec: ModelFeedbackLoopSpec | None = None
    spec_error: str = ""
    dirty: bool = True
    seen_metadata: tuple | None = None


class Engine:
    def __init__(self, kube: Kube, settings: Settings | None = None, clients: PrometheusClients | None = None) -> None:
        self.kube = kube
        self.settings = settings or Settings()
        self.clients = clients or PrometheusClients()
        self.poller = FleetPoller(self.clients.query, concurrency=self.settings.concurrency)
        self.loops: dict[str, dict[str, Any]] = {}
        self.memory: dict[str, LoopMemory] = {}
        self.deployments: dict[str, dict[str, Any]] = {}  # namespace/name -> body, from the watch
        self.wake = asyncio.Event()
        self._semaphore = asyncio.Semaphore(self.settings.concurrency)
        self._secrets: dict[tuple[str, str, str], tuple[float, str]] = {}

    # --- fed by kopf's watch ----------------------------------------------------------------------
    def observe_loop(self, event_type: str | None, body: dict[str, Any]) -> None:
        key = f"{body['metadata']['namespace']}/{body['metadata']['name']}"
        if event_type == "DELETED":
            self.loops.pop(key, None)
            self.memory.pop(key, None)
            return
        self.loops[key] = body
        memory = self.memory.setdefault(key, LoopMemory())
        seen = (body["metadata"].get("generation"), body["metadata"].get("annotations"))
        if seen != memory.seen_metadata:  # a spec change or a request annotation: act now
            memory.seen_metadata = seen
            memory.dirty = True
            self.wake.set()

    def observe_deployment(self, event_type: str | None, body: dict[str, Any]) -> None:
        key = f"{body['metadata']['namespace']}/{body['metadata']['name']}"
        if event_type == "DELETED":
            self.deployments.pop(key, None)
        else:
            self.deployments[key] = body
        loop = (body["metadata"].get("labels") or {}).get(resources.LOOP_LABEL)
        if loop and f"{body['metadata']['namespace']}/{loop}" in self.memory:
            self.memory[f"{body['metadata']['namespace']}/{loop}"].dirty = True
            self.wake.set()

    # --- the cycle --------------------------------------------------------------------------------
    async def run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self.wake.wait(), timeout=self._sleep_seconds(time.time()))
            except TimeoutError:
                pass
            self.wake.clear()
            try:
                await self.cycle(time.time())
            except Exception:  # one bad cycle must not end the engine
                log.exception("engine cycle failed")

    def _sleep_seconds(self, now: float) -> float:
        """Until the next poll falls due (polls start on time, not on the next tick), at most a tick."""
        due = min((m.next_poll for m in self.memory.values() if m.spec is not None), default=now + 60)
        return min(self.settings.tick_seconds, max(0.01, due - now))

    async def cycle(self, now: float) -> None:
        due_poll, due = [], []
        for key, body in list(self.loops.items()):
            memory = self.memory.setdefault(key, LoopMemory())
            try:
                self._parse(body, memory)
            except Exception as error:  # one loop's spec must never stop the fleet's cycle
                log.exception("parsing the spec of %s failed", key)
                memory.spec, memory.spec_error = None, f"spec: {type(error).__name__}: {error}"
            active = self._phase(body, memory) in ACTIVE_PHASES
            poll = memory.spec is not None and now >= memory.next_poll
            if poll or memory.dirty or (active and now >= memory.next_reconcile):
                due.append(key)
            if poll:
                due_poll.append(key)
        samples = await self._poll(due_poll, now)
        metrics.LOOPS_DUE.set(len(due))
        await asyncio.gather(*(self._reconcile_guarded(key, samples.get(key), now) for key in due))
        metrics.observe_phases(self._phase(b, self.memory[k]) for k, b in self.loops.items())

    def _parse(self, body: dict[str, Any], memory: LoopMemory) -> None:
        generation = body["metadata"].get("generation")
        if generation == memory.parsed_generation:
            return
        memory.parsed_generation = generation
        try:
            spec = api.validate_spec(body.get("spec") or {})
            problems = [
                f"spec.monitoring.metrics[{i}].query: {p}"
                for i, rule in enumerate(spec.monitoring.metrics)
                for p in promql.check_template(rule.query) + promql.check_template(rule.samples_query or "")
            ]
            if spec.retraining and spec.retraining.schedule:
                try:
                    cron.parse(spec.retraining.schedule)
                except ValueError as error:
                    problems.append(f"spec.retraining.schedule: {error}")
            if problems:
                raise ValueError("; ".join(problems))
            memory.spec, memory.spec_error = spec, ""
        except (ValidationError, ValueError) as error:
            memory.spec, memory.spec_error = None, api.describe_validation_error(error)
        memory.next_poll = 0.0

    @staticmethod
    def _phase(body: dict[str, Any], memory: LoopMemory) -> str:
        status = memory.written_status if memory.written_status is not None else body.get("status") or {}
        return status.get("phase", phases.PENDING)

    def _status(self, body: dict[str, Any], memory: LoopMemory) -> dict[str, Any]:
        """The freshest status we know: our own last write, unless the object is newer than it."""
        if memory.written_status is not None:
            return copy.deepcopy(memory.written_status)
        return copy.deepcopy(body.get("status") or {})

    # --- polling ----------------------------------------------------------------------------------
    async def _poll(self, keys: list[str], now: float) -> dict[str, dict[str, RuleState]]:
        queries, unreachable = [], {}
        for key in keys:
            try:
                query = await self._loop_query(key, now)
            except Exception as error:  # isolated: this loop gets the error as no data, the fleet goes on
                log.exception("preparing the poll of %s failed", key)
                self.memory[key].next_poll = now + 30  # no hot loop on a loop that keeps failing
                spec = self.memory[key].spec
                rules = rules_of(spec.monitoring, spec.model.task) if spec is not None else []
                unreachable[key] = {r.name: Sample(None, now, error=f"{type(error).__name__}: {error}") for r in rules}
                continue
            if isinstance(query, LoopQuery):
                queries.append(query)
            else:
                unreachable[key] = query
        samples: dict[str, dict[str, Sample]] = dict(unreachable)
        if queries:
            polled, stats = await self.poller.poll(queries, now)
            metrics.record_poll(stats)
            samples.update(polled)
        evaluated = {}
        for key, per_rule in samples.items():
            memory = self.memory.get(key)
            if key not in self.loops or memory is None or memory.spec is None:
                continue  # deleted (or made invalid) while its poll was in flight
            try:
                evaluated[key] = self._evaluate(key, per_rule)
            except Exception:
                log.exception("evaluating the rules of %s failed", key)
        return evaluated

    async def _loop_query(self, key: str, now: float) -> LoopQuery | dict[str, Sample]:
        """What to ask Prometheus for one loop, or its samples already when its credentials fail."""
        body, memory = self.loops[key], self.memory[key]
        spec = memory.spec
        assert spec is not None
        if memory.next_poll:  # how late this poll is against its schedule
            metrics.POLL_LAG.observe(max(0.0, now - memory.next_poll))
        # Aligned to the interval's grid, so loops sharing an interval are polled (and batched) together.
        interval = parse_duration(spec.monitoring.interval)
        memory.next_poll = (now // interval + 1) * interval
        rules = rules_of(spec.monitoring, spec.model.task)
        try:
            endpoint = endpoint_key(spec.monitoring.prometheus, *await self._credentials(body, spec, now))
        except Exception as error:  # a missing Secret is no data with the reason, where users look
            message = f"cannot read the Prometheus credentials: {error}"
            return {rule.name: Sample(None, now, error=message) for rule in rules}
        status = self._status(body, memory)
        values = {
            "model": spec.model.name,
            "namespace": body["metadata"]["namespace"],
            "version": str(status.get("currentVersion") or ""),
            "track": "stable",
        }
        return LoopQuery(key, endpoint, values, rules)

    def _evaluate(self, key: str, samples: dict[str, Sample]) -> dict[str, RuleState]:
        spec = self.memory[key].spec
        assert spec is not None
        previous = {
            m.get("name"): rule_state_from_status(m)
            for m in self._status(self.loops[key], self.memory[key]).get("metrics", [])
        }
        return {
            rule.name: evaluate_rule(rule, previous.get(rule.name, RuleState()), samples[rule.name])
            for rule in rules_of(spec.monitoring, spec.model.task)
        }

    async def _credentials(
        self, body: dict[str, Any], spec: ModelFeedbackLoopSpec, now: float | None = None
    ) -> tuple[str | None, str | None]:
        prom = spec.monitoring.prometheus
        namespace = body["metadata"]["namespace"]
        token = ca_file = None
        if prom.bearer_token_secret_ref:
            token = await self._secret_key(namespace, prom.bearer_token_secret_ref, now)
        if prom.ca_bundle_secret_ref:
            ca_file = _ca_file(await self._secret_key(namespace, prom.ca_bundle_secret_ref, now))
        return token, ca_file

    async def _secret_key(self, namespace: str, ref: Any, now: float | None) -> str:
        """A Secret's key, cached for a minute: not an API read per loop per poll (rotation still lands)."""
        now = time.time() if now is None else now
        cache_key = (namespace, ref.name, ref.key)
        cached = self._secrets.get(cache_key)
        if cached and now - cached[0] < 60:
            return cached[1]
        try:
            value = await asyncio.to_thread(self.kube.read_secret_key, namespace, ref.name, ref.key)
        except Exception as error:
            raise RuntimeError(f"Secret {namespace}/{ref.name} key {ref.key!r}: {short_error(error)}") from error
        self._secrets[cache_key] = (now, value)
        return value

    # --- one loop ---------------------------------------------------------------------------------
    async def _reconcile_guarded(self, key: str, rule_states: dict[str, RuleState] | None, now: float) -> None:
        async with self._semaphore:
            try:
                await self._reconcile(key, rule_states, now)
            except Exception:
                metrics.RECONCILE_ERRORS.inc()
                log.exception("reconcile of %s failed", key)
                memory = self.memory.get(key)
                if memory is not None:
                    memory.next_reconcile = now + self.settings.active_reconcile_seconds

    async def _reconcile(self, key: str, rule_states: dict[str, RuleState] | None, now: float) -> None:
        body, memory = self.loops.get(key), self.memory.get(key)
        if body is None or memory is None:
            return
        memory.dirty = False
        memory.next_reconcile = now + self.settings.active_reconcile_seconds
        status = self._status(body, memory)
        spec = memory.spec
        world = phases.World(
            now=now,
            name=body["metadata"]["name"],
            generation=body["metadata"].get("generation", 0),
            spec=spec,
            spec_error=memory.spec_error,
            status=status,
            health=summarize(rule_states) if rule_states is not None else None,
            job=await self._observe_job(body, status) if spec else None,
            serving=self._observe_serving(body) if spec else None,
            canary=await self._observe_canary(body, spec, status, memory, now) if spec else None,
            requests=_requests(body),
        )
        decision = phases.decide(world)
        await self._act(body, spec, decision)
        await self._write_status(key, body, memory, status, decision.status, now)

    async def _observe_job(self, body: dict[str, Any], status: dict[str, Any]) -> phases.JobObservation | None:
        run = status.get("retraining")
        if not run:
            return None
        namespace = body["metadata"]["namespace"]
        job = await asyncio.to_thread(self.kube.read_job, namespace, run["jobName"])
        if job is None:
            return phases.JobObservation(run["jobName"], "Missing")
        conditions = {c["type"]: c for c in (job.get("status") or {}).get("conditions") or [] if c["status"] == "True"}
        if "Complete" not in conditions and "Failed" not in conditions:
            return phases.JobObservation(run["jobName"], "Running")
        message, reason = await asyncio.to_thread(self.kube.job_pod_termination, namespace, run["jobName"])
        summary = _parse_summary(message)
        if "Complete" in conditions:
            return phases.JobObservation(run["jobName"], "Succeeded", message, summary)
        failed = conditions["Failed"]
        detail = (summary or {}).get("error") or message or failed.get("message") or ""
        return phases.JobObservation(
            run["jobName"], "Failed", f"Job {failed.get('reason', 'Failed')}: {detail or reason}".strip(), summary
        )

    def _observe_serving(self, body: dict[str, Any]) -> phases.ServingObservation:
        namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
        stable = self.deployments.get(f"{namespace}/{resources.stable_name(name)}")
        canary = self.deployments.get(f"{namespace}/{resources.canary_name(name)}")
        return phases.ServingObservation(
            stable_version=_deployment_version(stable),
            stable_ready=_ready(stable),
            stable_replicas=(stable or {}).get("spec", {}).get("replicas") or 0,
            canary_version=_deployment_version(canary),
            canary_ready=_ready(canary),
        )

    async def _observe_canary(
        self, body: dict[str, Any], spec: ModelFeedbackLoopSpec, status: dict[str, Any], memory: LoopMemory, now: float
    ) -> CanaryObservation | None:
        rollout = status.get("rollout")
        if not rollout or now < memory.next_analysis:
            return None
        memory.next_analysis = now + parse_duration(spec.rollout.analysis.interval)
        token, ca_file = await self._credentials(body, spec)
        endpoint = endpoint_key(spec.monitoring.prometheus, token, ca_file)
        return await canary_queries.observe(
            self.clients.query, endpoint, spec, body["metadata"]["namespace"], status, rollout, now
        )

    # --- acting -----------------------------------------------------------------------------------
    async def _act(self, body: dict[str, Any], spec: ModelFeedbackLoopSpec | None, decision: phases.Decision) -> None:
        for action in decision.actions:
            try:
                await self._do(body, spec, action)
            except NotOurs as error:
                await asyncio.to_thread(self.kube.event, body, "Warning", "NameConflict", str(error))
                raise

    async def _do(self, body: dict[str, Any], spec: ModelFeedbackLoopSpec | None, action: phases.Action) -> None:
        namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
        if isinstance(action, phases.Event):
            metrics.EVENTS.labels(action.reason).inc()
            await asyncio.to_thread(self.kube.event, body, action.type, action.reason, action.message)
            return
        assert spec is not None
        if isinstance(action, phases.StartTraining):
            extra = {**self.settings.job_extra_config, **trainer_overrides(body)}
            job = resources.training_job(
                body, spec, action.job_name, action.version, action.parent_version, action.trigger, extra
            )
            await asyncio.to_thread(self.kube.create_job, body, job)
        elif isinstance(action, phases.EnsureStable):
            await self._ensure_serving(body, spec, action.version)
        elif isinstance(action, phases.EnsureCanary):
            desired = resources.server_deployment(body, spec, action.version, "canary", action.canary_replicas)
            if _drifted(self.deployments.get(f"{namespace}/{resources.canary_name(name)}"), desired):
                await asyncio.to_thread(self.kube.ensure_deployment, body, desired)
            if spec.rollout.traffic_routing.http_route:
                await self._ensure_route_services(body, spec)
                await asyncio.to_thread(
                    self.kube.set_route_weights, body, spec.rollout.traffic_routing.http_route.name, action.weight
                )
        elif isinstance(action, phases.RemoveCanary):
            await asyncio.to_thread(self.kube.delete_deployment, namespace, resources.canary_name(name))
            if spec.rollout.traffic_routing.http_route:
                await asyncio.to_thread(
                    self.kube.set_route_weights, body, spec.rollout.traffic_routing.http_route.name, 0
                )

    async def _ensure_serving(self, body: dict[str, Any], spec: ModelFeedbackLoopSpec, version: int) -> None:
        await asyncio.to_thread(self.kube.ensure_signing_secret, body)
        await asyncio.to_thread(self.kube.ensure_service, body, resources.service(body, spec))
        desired = resources.server_deployment(body, spec, version, "stable", spec.model.serving.replicas)
        key = f"{body['metadata']['namespace']}/{resources.stable_name(body['metadata']['name'])}"
        if _drifted(self.deployments.get(key), desired):
            await asyncio.to_thread(self.kube.ensure_deployment, body, desired)

    async def _ensure_route_services(self, body: dict[str, Any], spec: ModelFeedbackLoopSpec) -> None:
        for track in ("stable", "canary"):
            await asyncio.to_thread(self.kube.ensure_service, body, resources.service(body, spec, track))

    async def _write_status(
        self,
        key: str,
        body: dict[str, Any],
        memory: LoopMemory,
        before: dict[str, Any],
        after: dict[str, Any],
        now: float,
    ) -> None:
        changed = _significant(after) != _significant(before)
        stale = _values(after) != _values(before) and now - memory.written_at >= self.settings.status_refresh_seconds
        if memory.written_status is None and (body.get("status") or {}) != after:
            changed = True
        if not (changed or stale):
            return
        base = body.get("status") or {} if memory.written_status is None else before
        patch = _merge_patch(_without_empty_strings(base), _without_empty_strings(after))
        await asyncio.to_thread(self.kube.patch_status, body["metadata"]["namespace"], body["metadata"]["name"], patch)
        metrics.STATUS_WRITES.labels("change" if changed else "refresh").inc()
        memory.written_status = copy.deepcopy(after)
        memory.written_at = now


TRAINER_OVERRIDES = "feedbackloop.dev/trainer-overrides"
ALLOWED_OVERRIDES = {"labelNoise", "seed", "recentWeight"}


def trainer_overrides(body: dict[str, Any]) -> dict[str, Any]:
    """Rehearsal hook: `feedbackloop.dev/trainer-overrides: '{"labelNoise": 0.4}'` trains a deliberately bad
    candidate, to rehearse the canary's rollback on a real cluster. Only these keys pass: ALLOWED_OVERRIDES."""
    import json

    text = (body["metadata"].get("annotations") or {}).get(TRAINER_OVERRIDES)
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        log.warning("ignoring %s: not JSON", TRAINER_OVERRIDES)
        return {}
    return {k: v for k, v in value.items() if k in ALLOWED_OVERRIDES} if isinstance(value, dict) else {}


def _requests(body: dict[str, Any]) -> dict[str, str]:
    annotations = body["metadata"].get("annotations") or {}
    return {
        name: annotations[phases.ANNOTATION_PREFIX + name]
        for name in phases.REQUEST_ANNOTATIONS
        if annotations.get(phases.ANNOTATION_PREFIX + name)
    }


def _parse_summary(message: str) -> dict[str, Any] | None:
    for line in reversed(message.strip().splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


def _deployment_version(deployment: dict[str, Any] | None) -> int | None:
    if not deployment:
        return None
    label = (deployment["metadata"].get("labels") or {}).get(resources.VERSION_LABEL)
    return int(label) if label and label.isdigit() else None


def _ready(deployment: dict[str, Any] | None) -> int:
    if not deployment:
        return 0
    status = deployment.get("status") or {}
    observed = status.get("observedGeneration") == deployment["metadata"].get("generation")
    updated = status.get("updatedReplicas") or 0
    return min(status.get("readyReplicas") or 0, updated) if observed else 0


def _drifted(observed: dict[str, Any] | None, desired: dict[str, Any]) -> bool:
    """Whether the fields we own differ (the watch cache saves a write per reconcile)."""
    if observed is None:
        return True

    def owned(d: dict[str, Any]) -> tuple:
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


def _values(status: dict[str, Any]) -> list[Any]:
    """The live metric values (a new sample time alone is not worth a write)."""
    return [m.get("value") for m in status.get("metrics", [])]


def _significant(status: dict[str, Any]) -> Any:
    """The status without what changes on every poll."""
    trimmed = {k: v for k, v in status.items() if k not in ("summary",)}
    trimmed["metrics"] = [
        {k: v for k, v in m.items() if k not in VOLATILE_METRIC_FIELDS} for m in status.get("metrics", [])
    ]
    trimmed["conditions"] = [{k: v for k, v in c.items() if k != "message"} for c in status.get("conditions", [])]
    return trimmed


def _without_empty_strings(value: Any) -> Any:
    """Drop "" values: an empty string is the same as an absent field for every reader, and the local
    1.20 test control plane (built with a newer Go) decodes "" in custom resources as null and refuses it."""
    if isinstance(value, dict):
        return {k: _without_empty_strings(v) for k, v in value.items() if v != ""}
    if isinstance(value, list):
        return [_without_empty_strings(v) for v in value]
    return value


def _merge_patch(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """A JSON merge patch turning `before` into `after` (keys gone become null)."""
    patch: dict[str, Any] = {k: None for k in before if k not in after}
    for key, value in after.items():
        if before.get(key) != value:
            patch[key] = value
    return patch


_CA_FILES: dict[str, str] = {}


def _ca_file(pem: str) -> str:
    digest = hashlib.sha256(pem.encode()).hexdigest()[:16]
    if digest not in _CA_FILES:
        # Kept open-ended on purpose: the file must outlive this call (the HTTP client reads it later).
        handle = tempfile.NamedTemporaryFile("w", prefix=f"mfl-ca-{digest}-", suffix=".pem", delete=False)  # noqa: SIM115
        handle.write(pem)
        handle.close()
        _CA_FILES[digest] = handle.name
    return _CA_FILES[digest]
