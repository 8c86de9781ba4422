"""Observe: everything a decision needs about one loop, gathered into a `phases.World`.

From the watch cache (the loop, its Deployments), the Kubernetes API (the training Job and its Pod's
termination message, Secrets) and Prometheus (the fleet poll of the monitoring rules, the canary's
counts). Nothing here decides; failures become observations (no data, a missing Job) for `decide`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from feedbackloop.core import credentials, inputdrift, phases, promql, resources
from feedbackloop.core.api import ModelFeedbackLoopSpec
from feedbackloop.core.canary import CanaryObservation
from feedbackloop.core.credentials import Refusal, token_refusal
from feedbackloop.core.fleet import Fleet, LoopMemory, stable_list_due, stable_listed
from feedbackloop.core.monitoring import Round, Sample
from feedbackloop.core.status import LoopStatus
from feedbackloop.core.tenancy import tenant_of
from feedbackloop.runtime import canary_queries, egress_net, metrics, notify
from feedbackloop.runtime.kube import EngineUnavailable, KubeAPI
from feedbackloop.runtime.poller import FleetPoller, LoopQuery, endpoint_key, short_error

log = logging.getLogger(__name__)
SECRET_CACHE_SECONDS = 60  # not an API read per loop per poll; a rotated Secret still lands within this
FAILED_POLL_BACKOFF_SECONDS = 30


class Observer:
    def __init__(self, kube: KubeAPI, fleet: Fleet, poller: FleetPoller) -> None:
        self.kube = kube
        self.fleet = fleet
        self.poller = poller
        self._secrets: dict[tuple[str, str, str], tuple[float, tuple[str, dict[str, str]]]] = {}
        self._bound: dict[tuple[str, str, str], float] = {}  # (namespace, Secret, endpoint) -> when found bound
        self.confirm = notify.confirm_promotion  # rollout.confirmPromotion's webhook (a fake in tests)
        self.read_secret = notify.kube_secret_reader(kube)  # its Secrets, read at each look: never cached

    # --- the fleet poll -------------------------------------------------------------------------------
    async def poll(self, keys: list[str], now: float) -> dict[str, Round]:
        """Each due loop's samples, by rule: one query per template for all loops, each loop isolated.

        Samples only: whether they make a breach is judged by `phases.decide`, from the status it reads then.
        """
        queries: list[LoopQuery] = []
        samples: dict[str, dict[str, Sample]] = {}
        versions: dict[str, int | None] = {}
        for key in keys:
            try:
                query = await self._loop_query(key, now)
            except Exception as error:  # isolated: this loop gets the error as no data, the fleet goes on
                log.exception("preparing the poll of %s failed", key)
                self.fleet.memory[key].next_poll = now + FAILED_POLL_BACKOFF_SECONDS  # no hot loop
                samples[key] = self._all_failed(self.fleet.memory[key].spec, now, f"{type(error).__name__}: {error}")
                continue
            versions[key] = self.fleet.status(key).get("currentVersion")
            if isinstance(query, LoopQuery):
                queries.append(query)
            else:
                samples[key] = query
        if queries:
            polled, stats = await self.poller.poll(queries, now)
            metrics.record_poll(stats)
            samples.update(polled)
            await asyncio.gather(*(self._input_drift_breakdown(query, samples) for query in queries))
        return {
            key: {name: replace(sample, version=versions.get(key)) for name, sample in per_rule.items()}
            for key, per_rule in samples.items()
            if key in self.fleet.loops  # not deleted while its poll was in flight
        }

    async def _input_drift_breakdown(self, query: LoopQuery, samples: dict[str, dict[str, Sample]]) -> None:
        """Which features moved: asked only of a loop whose largest PSI is above its threshold (one query)."""
        memory = self.fleet.memory.get(query.key)  # gone: deleted while its poll was in flight
        spec = memory.spec if memory is not None else None
        settings = spec.monitoring.input_drift if spec is not None else None
        sample = samples.get(query.key, {}).get(inputdrift.RULE_NAME)
        if settings is None or sample is None or not inputdrift.worth_a_breakdown(settings, sample):
            return
        template = inputdrift.breakdown_query(settings)
        try:
            series = await self.poller.breakdown(
                query.endpoint, promql.render(template, query.values), tenant_of(query.key)
            )
        except Exception as error:  # the condition then names no feature; the check itself stands
            log.info("input-drift breakdown of %s failed: %s", query.key, short_error(error))
            return
        samples[query.key][inputdrift.RULE_NAME] = replace(sample, breakdown=inputdrift.ranked(series))

    @staticmethod
    def _all_failed(spec: ModelFeedbackLoopSpec | None, now: float, error: str) -> dict[str, Sample]:
        rules = inputdrift.polled_rules(spec) if spec is not None else []
        return {rule.name: Sample(None, now, error=error) for rule in rules}

    async def _loop_query(self, key: str, now: float) -> LoopQuery | dict[str, Sample]:
        """What to ask Prometheus for one loop, or its samples already when its credentials fail."""
        body, memory = self.fleet.loops[key], self.fleet.memory[key]
        spec = memory.spec
        assert spec is not None
        if memory.next_poll:  # how late this poll is against its schedule
            metrics.POLL_LAG.observe(max(0.0, now - memory.next_poll))
        # Aligned to the interval's grid, so loops sharing an interval are polled (and batched) together.
        interval = spec.monitoring.interval.seconds
        memory.next_poll = (now // interval + 1) * interval
        try:
            endpoint = endpoint_key(spec.monitoring.prometheus, *await self.credentials(body, spec, now))
        except Exception as error:  # a missing Secret is no data with the reason, where users look
            return self._all_failed(spec, now, f"cannot read the Prometheus credentials: {error}")
        status = self.fleet.status(key)
        values = {
            "model": spec.model.name,
            "namespace": body["metadata"]["namespace"],
            "version": str(status.get("currentVersion") or ""),
            "track": "stable",
        }
        return LoopQuery(key, endpoint, values, inputdrift.polled_rules(spec))

    # --- one loop's world -----------------------------------------------------------------------------
    async def world(
        self, key: str, status: LoopStatus, polls: Sequence[Round] | None, now: float
    ) -> phases.World | phases.InvalidWorld:
        body, memory = self.fleet.loops[key], self.fleet.memory[key]
        name, generation = body["metadata"]["name"], body["metadata"].get("generation", 0)
        spec = memory.spec
        if spec is None:
            return phases.InvalidWorld(now, name, generation, memory.spec_error, status)
        canary = await self._canary(body, spec, status, memory, now)
        storage_refused = await self.storage_refusal(body, spec, now)
        confirmed, refused = await self._confirmation(body, spec, status, now) if canary is not None else (None, None)
        return phases.World(
            now=now,
            name=name,
            generation=generation,
            spec=spec,
            status=status,
            samples=tuple(polls) if polls is not None else None,
            job=await self._job(body, spec, status),
            serving=await self._serving(body, spec, status, memory, now),
            canary=canary,
            requests=requests_of(body),
            promotion_confirmed=confirmed,
            promotion_refused=refused,
            storage_refused=storage_refused,
        )

    async def _job(
        self, body: dict[str, Any], spec: ModelFeedbackLoopSpec, status: LoopStatus
    ) -> phases.JobObservation | None:
        run = status.get("retraining")
        if not run:
            return None
        if run.get("engine") == "Dask":
            return await self._dask_job(body, spec, run["jobName"])
        namespace = body["metadata"]["namespace"]
        job = await asyncio.to_thread(self.kube.read_job, namespace, run["jobName"])
        if job is None:
            return phases.JobObservation(run["jobName"], "Missing")
        conditions = {c["type"]: c for c in (job.get("status") or {}).get("conditions") or [] if c["status"] == "True"}
        if "Complete" not in conditions and "Failed" not in conditions:
            return phases.JobObservation(run["jobName"], "Running")
        message, reason = await asyncio.to_thread(self.kube.job_pod_termination, namespace, run["jobName"])
        summary = parse_summary(message)
        if "Complete" in conditions:
            return phases.JobObservation(run["jobName"], "Succeeded", message, summary)
        failed = conditions["Failed"]
        if oom_killed(reason):
            return phases.JobObservation(run["jobName"], "Failed", oom_text(spec, "trainer", "Job"), summary)
        detail = (summary or {}).get("error") or message or failed.get("message") or ""
        return phases.JobObservation(
            run["jobName"], "Failed", f"Job {failed.get('reason', 'Failed')}: {detail or reason}".strip(), summary
        )

    async def _dask_job(self, body: dict[str, Any], spec: ModelFeedbackLoopSpec, name: str) -> phases.JobObservation:
        """A run on engine Dask: its DaskJob's status.jobStatus, the runner Pod's termination message once it
        ended. DaskJobs not served (no dask-kubernetes operator) or not allowed: a failed run saying so."""
        namespace = body["metadata"]["namespace"]
        try:
            job = await asyncio.to_thread(self.kube.read_dask_job, namespace, name)
        except EngineUnavailable as error:
            return phases.JobObservation(name, "Failed", str(error))
        if job is None:
            return phases.JobObservation(name, "Missing")
        state = DASK_JOB_STATES.get(str((job.get("status") or {}).get("jobStatus") or ""), "Running")
        if state == "Running":
            return phases.JobObservation(name, "Running")
        message, reason = await asyncio.to_thread(self.kube.dask_runner_termination, namespace, name)
        summary = parse_summary(message)
        if state == "Succeeded":
            return phases.JobObservation(name, "Succeeded", message, summary)
        if oom_killed(reason):
            return phases.JobObservation(name, "Failed", oom_text(spec, "trainer (the Dask runner)", "Dask"), summary)
        detail = (summary or {}).get("error") or message or reason or "its runner Pod failed"
        return phases.JobObservation(name, "Failed", f"DaskJob Failed: {detail}".strip(), summary)

    async def _serving(
        self, body: dict[str, Any], spec: ModelFeedbackLoopSpec, status: LoopStatus, memory: LoopMemory, now: float
    ) -> phases.ServingObservation:
        """The Deployments from the watch cache; their Pods (one list call) only while one is not all ready (the
        stable one's on a schedule: core.fleet.stable_list_due)."""
        namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
        stable = self.fleet.deployments.get(f"{namespace}/{resources.stable_name(name)}")
        canary = self.fleet.deployments.get(f"{namespace}/{resources.canary_name(name)}")
        stable_detail, canary_failure, canary_detail = "", None, ""
        if stable is None or all_ready(stable):
            memory.stable_diagnosis = None
        else:
            stable_detail = await self._stable_detail(namespace, name, stable, memory, now)
        rollout = status.get("rollout")
        if (
            canary is not None
            and rollout
            and deployment_version(canary) == rollout.get("version")
            and not all_ready(canary)
        ):
            logs = phases.canary_ready_overdue(spec, rollout, now)  # the rollback's message: the runtime's words
            canary_failure, canary_detail = await self._pod_problems(namespace, name, "canary", canary, logs=logs)
        return phases.ServingObservation(
            stable_version=deployment_version(stable),
            stable_ready=ready_replicas(stable),
            stable_replicas=desired_replicas(stable),
            canary_version=deployment_version(canary),
            canary_ready=ready_replicas(canary),
            canary_replicas=desired_replicas(canary),
            canary_failure=canary_failure,
            canary_detail=canary_detail,
            stable_detail=stable_detail,
        )

    async def _stable_detail(
        self, namespace: str, name: str, stable: dict[str, Any], memory: LoopMemory, now: float
    ) -> str:
        """Why the stable Deployment is not all ready, listed on core.fleet's schedule (not at every poll)."""
        version = str(stable["metadata"].get("resourceVersion") or "")
        diagnosis = memory.stable_diagnosis
        if diagnosis is not None and not stable_list_due(diagnosis, version, now):
            return diagnosis.detail
        failure, detail = await self._pod_problems(namespace, name, "stable", stable, logs=False)
        detail = failure or detail  # a crash loop of the stable track is its explanation, not a rollback
        memory.stable_diagnosis = stable_listed(diagnosis, version, detail, now)
        return detail

    async def _pod_problems(
        self, namespace: str, name: str, track: str, deployment: dict[str, Any], logs: bool
    ) -> tuple[str | None, str]:
        """(failure, detail) of a Deployment's Pods (pod_problems), with the last log lines of the first unready
        Pod's runtime when `logs`. Best effort: a failed read is a detail, never a failed reconcile."""
        selector = f"{resources.LOOP_LABEL}={resources.loop_label(name)},{resources.TRACK_LABEL}={track}"
        try:
            pods = await asyncio.to_thread(self.kube.list_pods, namespace, selector)
        except Exception as error:
            return None, f"cannot list its Pods: {short_error(error)}"
        pods = [p for p in pods if pod_version(p) == deployment_version(deployment)]
        failure, detail = pod_problems(pods, deployment)
        if not logs or failure is not None:
            return failure, detail
        for pod_name, container in log_targets(pods):
            try:
                text = await asyncio.to_thread(self.kube.pod_log_tail, namespace, pod_name, container, LOG_LINES)
            except Exception as error:
                log.info("cannot read the log of %s/%s container %s: %s", namespace, pod_name, container, error)
                continue
            lines = last_lines(text)
            if lines:
                detail = f"{detail}; {container} logged: {lines}" if detail else f"{container} logged: {lines}"
        return None, detail

    async def _canary(
        self, body: dict[str, Any], spec: ModelFeedbackLoopSpec, status: LoopStatus, memory: LoopMemory, now: float
    ) -> CanaryObservation | None:
        rollout = status.get("rollout")
        if not rollout or now < memory.next_analysis:
            return None
        memory.next_analysis = now + spec.rollout.analysis.interval.seconds
        endpoint = endpoint_key(spec.monitoring.prometheus, *await self.credentials(body, spec))
        return await canary_queries.observe(
            self.poller.run, endpoint, spec, body["metadata"]["namespace"], status, rollout, now
        )

    async def _confirmation(
        self, body: dict[str, Any], spec: ModelFeedbackLoopSpec, status: LoopStatus, now: float
    ) -> tuple[bool | None, str | None]:
        """Asked at the looks (the analysis interval) of a canary that passed and waits for its promotion:
        (the answer, None), or (False, why it was not asked) when the egress policy refuses its address or a
        Secret it names (urlFrom, headers' valueFrom; read at each look, from the loop's namespace) is unusable."""
        gate, rollout = spec.rollout.confirm_promotion, status.get("rollout")
        if gate is None or not rollout or not phases.awaiting_promotion(spec, rollout, now):
            return None, None
        try:
            url, headers = await notify.resolve(gate, body["metadata"]["namespace"], self.read_secret)
            payload = notify.promotion_request(body, dict(status), now)
            return await self.confirm(url, payload, headers, shown=gate.shown()), None
        except (egress_net.EgressRefused, notify.SecretUnusable) as error:
            return False, str(error)

    # --- credentials ----------------------------------------------------------------------------------
    async def credentials(
        self, body: dict[str, Any], spec: ModelFeedbackLoopSpec, now: float | None = None
    ) -> tuple[str | None, str | None]:
        prom = spec.monitoring.prometheus
        namespace = body["metadata"]["namespace"]
        token = ca_file = None
        if prom.bearer_token_secret_ref:
            ref = prom.bearer_token_secret_ref
            token, annotations = await self._secret_key(namespace, ref, now)
            refusal = token_refusal(prom.url, prom.insecure_skip_verify, f"{namespace}/{ref.name}", annotations)
            if refusal:
                raise PermissionError(refusal)
        if prom.ca_bundle_secret_ref:  # a CA bundle is public: it verifies the server, it is never sent
            ca_file = ca_file_of((await self._secret_key(namespace, prom.ca_bundle_secret_ref, now))[0])
        return token, ca_file

    async def storage_refusal(self, body: dict[str, Any], spec: ModelFeedbackLoopSpec, now: float) -> Refusal | None:
        """Whether the object store keys of an s3 loop may go to its endpoint (credentials.s3_refusal), read
        before any Pod of it is created or updated. A binding found holds for SECRET_CACHE_SECONDS; a refusal is
        read again at the next reconcile, so annotating the Secret takes effect at once."""
        s3 = spec.model.storage.s3
        if s3 is None:
            return None
        namespace, secret = body["metadata"]["namespace"], s3.credentials_secret
        cache_key = (namespace, secret, s3.endpoint)
        if now - self._bound.get(cache_key, -SECRET_CACHE_SECONDS) < SECRET_CACHE_SECONDS:
            return None
        try:
            found = await asyncio.to_thread(self.kube.read_secret_metadata, namespace, secret)
        except Exception as error:
            return credentials.unreadable(namespace, secret, short_error(error))
        annotations, keys = found if found is not None else (None, [])
        refusal = credentials.s3_refusal(s3.endpoint, namespace, secret, annotations, keys)
        if refusal is None:
            self._bound[cache_key] = now
        else:
            self._bound.pop(cache_key, None)
        return refusal

    async def _secret_key(self, namespace: str, ref: Any, now: float | None) -> tuple[str, dict[str, str]]:
        now = time.time() if now is None else now
        cache_key = (namespace, ref.name, ref.key)
        cached = self._secrets.get(cache_key)
        if cached and now - cached[0] < SECRET_CACHE_SECONDS:
            return cached[1]
        try:
            value = await asyncio.to_thread(self.kube.read_secret_key, namespace, ref.name, ref.key)
        except Exception as error:
            raise RuntimeError(f"Secret {namespace}/{ref.name} key {ref.key!r}: {short_error(error)}") from error
        self._secrets[cache_key] = (now, value)
        return value


def requests_of(body: dict[str, Any]) -> dict[str, str]:
    """The user's request annotations (retrain, promote, abort, pause, resume) on the loop."""
    annotations = body["metadata"].get("annotations") or {}
    return {
        name: annotations[phases.ANNOTATION_PREFIX + name]
        for name in phases.REQUEST_ANNOTATIONS
        if annotations.get(phases.ANNOTATION_PREFIX + name)
    }


# DaskJob status.jobStatus (dask-kubernetes) -> JobObservation.state; anything else (none yet, JobCreated,
# ClusterCreated, Running) is Running.
DASK_JOB_STATES = {"Successful": "Succeeded", "Failed": "Failed"}


def oom_killed(reason: str) -> bool:
    """Whether a termination reason ("<reason> (exit code <n>)") says the kernel killed it for memory."""
    return reason.startswith("OOMKilled")


def oom_text(spec: ModelFeedbackLoopSpec, what: str, engine: str) -> str:
    limit = spec.retraining.trainer.resources.limits.memory if spec.retraining else None
    return phases.oom_message(what, limit, engine)


def parse_summary(message: str) -> dict[str, Any] | None:
    """The trainer's JSON summary: the last JSON object line of its termination message."""
    for line in reversed(message.strip().splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


def deployment_version(deployment: dict[str, Any] | None) -> int | None:
    if not deployment:
        return None
    label = (deployment["metadata"].get("labels") or {}).get(resources.VERSION_LABEL)
    return int(label) if label and label.isdigit() else None


def desired_replicas(deployment: dict[str, Any] | None) -> int:
    return int((deployment or {}).get("spec", {}).get("replicas") or 0)


def all_ready(deployment: dict[str, Any]) -> bool:
    return ready_replicas(deployment) >= desired_replicas(deployment)


# --- what a Deployment's Pods say -------------------------------------------------------------------------

CRASH_LOOP_RESTARTS = 3  # a container that failed this often is crash-looping, not starting slowly
# Waiting reasons that do not pass by waiting: the image cannot be pulled, or the container cannot be made.
FAILED_WAITING = (
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
    "CreateContainerConfigError",
    "CreateContainerError",
)
LOG_LINES = 20  # read from the end of a container's log
LOG_KEEP = 3  # of which the last non-empty lines go into the message
MESSAGE_LIMIT = 300  # characters of one termination message or log excerpt: the end of each fits in history (512)


def pod_version(pod: dict[str, Any]) -> int | None:
    label = (pod.get("metadata", {}).get("labels") or {}).get(resources.VERSION_LABEL)
    return int(label) if label and label.isdigit() else None


def pod_problems(pods: list[dict[str, Any]], deployment: dict[str, Any] | None = None) -> tuple[str | None, str]:
    """(failure, detail) from Pods as the API serves them (camelCase JSON). `failure`: the first container that
    will not start by waiting (FAILED_WAITING, or CRASH_LOOP_RESTARTS restarts with a failed last run), with
    the runtime's termination message (terminationMessagePolicy FallbackToLogsOnError makes a crashed runtime's
    last log lines that message). `detail`: why the first unready Pod is not ready, whatever the cause."""
    live = [p for p in pods if not p.get("metadata", {}).get("deletionTimestamp")]
    for pod in live:
        for status in _container_statuses(pod):
            failure = _container_failure(status)
            if failure:
                return f"Pod {pod['metadata'].get('name')}: {failure}", ""
    for pod in live:
        reasons = _unready_reasons(pod)
        if reasons:
            return None, f"Pod {pod['metadata'].get('name')}: " + "; ".join(reasons)
    replica_failure = _deployment_condition(deployment, "ReplicaFailure", "True")
    if not live and replica_failure:
        return None, f"no Pods: {replica_failure}"
    return None, "" if live else "no Pods yet"


def _container_statuses(pod: dict[str, Any]) -> list[dict[str, Any]]:
    status = pod.get("status") or {}
    return [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]


def _container_failure(status: dict[str, Any]) -> str | None:
    name, restarts = status.get("name"), int(status.get("restartCount") or 0)
    waiting = (status.get("state") or {}).get("waiting") or {}
    if waiting.get("reason") in FAILED_WAITING:
        return f"container {name} {waiting['reason']}: {_clip(waiting.get('message') or '')}".rstrip(": ")
    last = (status.get("lastState") or {}).get("terminated") or {}
    current = (status.get("state") or {}).get("terminated") or {}
    failed = current if current.get("exitCode") else last
    if restarts >= CRASH_LOOP_RESTARTS and failed.get("exitCode") and not status.get("ready"):
        return f"container {name} restarted {restarts} times, last exit {_termination(failed)}"
    return None


def _unready_reasons(pod: dict[str, Any]) -> list[str]:
    status = pod.get("status") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    scheduled = conditions.get("PodScheduled") or {}
    if scheduled.get("status") == "False":
        return [f"not scheduled: {scheduled.get('reason') or 'Pending'}: {_clip(scheduled.get('message') or '')}"]
    reasons = []
    for container in _container_statuses(pod):
        if container.get("ready") or ((container.get("state") or {}).get("terminated") or {}).get("reason") == (
            "Completed"
        ):
            continue
        state = container.get("state") or {}
        if state.get("waiting"):
            waiting = state["waiting"]
            text = f"container {container.get('name')} waiting: {waiting.get('reason') or 'unknown'}"
            text += f": {_clip(waiting['message'])}" if waiting.get("message") else ""
        elif state.get("terminated"):
            text = f"container {container.get('name')} exited {_termination(state['terminated'])}"
        else:
            text = f"container {container.get('name')} running, not ready"
        last = (container.get("lastState") or {}).get("terminated")
        restarts = int(container.get("restartCount") or 0)
        if last and not state.get("terminated"):
            text += f" (restarted {restarts} times, last exit {_termination(last)})"
        reasons.append(text)
    if not reasons and conditions.get("Ready", {}).get("status") == "False":
        reasons.append(
            f"not ready: {_clip(conditions['Ready'].get('message') or conditions['Ready'].get('reason') or '')}"
        )
    return reasons


def _termination(terminated: dict[str, Any]) -> str:
    text = f"{terminated.get('reason') or 'Error'} (exit code {terminated.get('exitCode')})"
    message = _clip(" ".join((terminated.get("message") or "").split()), tail=True)
    return f"{text}: {message}" if message else text


def _deployment_condition(deployment: dict[str, Any] | None, type_: str, value: str) -> str:
    for condition in ((deployment or {}).get("status") or {}).get("conditions") or []:
        if condition.get("type") == type_ and condition.get("status") == value:
            return _clip(f"{condition.get('reason')}: {condition.get('message') or ''}")
    return ""


def _clip(text: str, tail: bool = False) -> str:
    """At most MESSAGE_LIMIT characters; of a log or termination message its end, where the error is."""
    text = text.strip()
    if len(text) <= MESSAGE_LIMIT:
        return text
    return "..." + text[-MESSAGE_LIMIT:] if tail else text[:MESSAGE_LIMIT] + "..."


def log_targets(pods: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(Pod, container) whose log explains the first unready Pod: its runtime (the container named `server`,
    which has no readiness probe of its own in V2 mode), then each unready container."""
    for pod in pods:
        if pod.get("metadata", {}).get("deletionTimestamp"):
            continue
        statuses = (pod.get("status") or {}).get("containerStatuses") or []
        unready = [s.get("name") for s in statuses if not s.get("ready") and "running" in (s.get("state") or {})]
        if not unready:
            continue
        names = [s.get("name") for s in statuses]
        ordered = (["server"] if "server" in names else []) + [n for n in unready if n != "server"]
        return [(pod["metadata"]["name"], str(name)) for name in ordered]
    return []


def last_lines(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return _clip(" | ".join(lines[-LOG_KEEP:]), tail=True)


def ready_replicas(deployment: dict[str, Any] | None) -> int:
    """Ready replicas of the current pod template only (a rollout in progress counts its new Pods).

    readyReplicas counts the old template's Pods too: while a rolling update holds one old ready Pod and one
    new Pod still starting, it says 2 of 2 (seen with MLServer, whose Pods start in tens of seconds). The
    Pods of older templates are status.replicas - updatedReplicas; at least the rest of the ready ones are
    new, as `kubectl rollout status` reasons."""
    if not deployment:
        return 0
    status = deployment.get("status") or {}
    if status.get("observedGeneration") != deployment["metadata"].get("generation"):
        return 0
    updated = status.get("updatedReplicas") or 0
    older = max(0, (status.get("replicas") or 0) - updated)
    return max(0, min((status.get("readyReplicas") or 0) - older, updated))


_CA_FILES: dict[str, str] = {}


def ca_file_of(pem: str) -> str:
    """A file holding `pem` (the HTTP client takes a path), one per distinct bundle."""
    digest = hashlib.sha256(pem.encode()).hexdigest()[:16]
    if digest not in _CA_FILES:
        # Kept open-ended on purpose: the file must outlive this call (the HTTP client reads it later).
        handle = tempfile.NamedTemporaryFile("w", prefix=f"mfl-ca-{digest}-", suffix=".pem", delete=False)  # noqa: SIM115
        handle.write(pem)
        handle.close()
        _CA_FILES[digest] = handle.name
    return _CA_FILES[digest]
