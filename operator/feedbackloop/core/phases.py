"""The loop's phases and transitions, in one place, as a pure function.

    Invalid ──(spec fixed)──────────────────────────────────────────────▶ Pending
    Pending ──(no version yet)──▶ Retraining[Initial] ──(gate passes)──▶ Monitoring (version 1 serves)
    Monitoring ⇄ Breached                      (a rule fires for its `for` / recovers)
    Monitoring|Breached ──(breach, schedule or request; allowed by policy)──▶ Retraining
    Retraining ──(Job failed)──────────────▶ Monitoring|Breached       (Warning, failure backoff)
    Retraining ──(offline gate rejects)────▶ Monitoring|Breached       (recorded with the evidence)
    Retraining ──(offline gate passes)─────▶ Canary                    (canary Deployment created)
    Canary ──(analysis Successful after the last step, or promote request)──▶ Monitoring (promoted)
    Canary ──(analysis Failed, Error, Inconclusive at the deadline, or abort)──▶ Monitoring (rolled back)
    any ──(spec.paused)──▶ Paused: nothing new starts; a running Job is followed, a canary holds its step

`decide(world)` reads what the operator observed and returns the next status and the actions to take.
The adapters (engine.py) only observe and act; every decision is here and tested without a cluster.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field, replace
from typing import Any

from feedbackloop.core import conditions as cond
from feedbackloop.core import cron, inputdrift, resources
from feedbackloop.core.analysis import Phase as AnalysisPhase
from feedbackloop.core.api import ModelFeedbackLoopSpec, format_duration
from feedbackloop.core.canary import CanaryObservation, judge_canary, replica_split
from feedbackloop.core.credentials import Refusal
from feedbackloop.core.gate import offline_gate
from feedbackloop.core.monitoring import Health, Round, availability, judge, rule_state_to_status, rules_of
from feedbackloop.core.status import (
    CheckEvidence,
    InputDriftState,
    LoopStatus,
    Phase,
    RetrainingRun,
    RolloutState,
    Serving,
    TrainedOn,
    VersionRecord,
)
from feedbackloop.core.timeutil import format_time, parse_time

PENDING: Phase = "Pending"
INVALID: Phase = "Invalid"
MONITORING: Phase = "Monitoring"
BREACHED: Phase = "Breached"
RETRAINING: Phase = "Retraining"
CANARY: Phase = "Canary"
PAUSED: Phase = "Paused"
HISTORY_LIMIT = 10
REQUEST_ANNOTATIONS = ("retrain", "promote", "abort", "pause", "resume")
ANNOTATION_PREFIX = "feedbackloop.dev/"
AWAITING_CONFIRMATION = "AwaitingConfirmation"  # the Reconciling reason while confirmPromotion holds a canary


# --- what the operator observed ---------------------------------------------------------------------


@dataclass(frozen=True)
class JobObservation:
    name: str
    state: str  # Missing | Running | Succeeded | Failed
    message: str = ""
    summary: dict[str, Any] | None = None


@dataclass(frozen=True)
class ServingObservation:
    stable_version: int | None = None
    stable_ready: int = 0
    stable_replicas: int = 0
    canary_version: int | None = None
    canary_ready: int = 0
    canary_replicas: int = 0  # the canary Deployment's desired replicas (0: none observed)
    # What the Pods say, read only while a Deployment is not all ready (observe.py, pod_problems):
    canary_failure: str | None = None  # a failure that will not pass: a crash loop, an image that cannot be pulled
    canary_detail: str = ""  # why its Pods are not ready yet (states, termination messages, the last log lines)
    stable_detail: str = ""  # the same for the stable Deployment, shown in ServingReady


@dataclass(frozen=True)
class InvalidWorld:
    """A loop whose spec does not parse: only its status and what is wrong are known."""

    now: float
    name: str
    generation: int
    spec_error: str
    status: LoopStatus


@dataclass(frozen=True)
class World:
    """A loop with a valid spec, and everything observed about it this round."""

    now: float
    name: str
    generation: int
    spec: ModelFeedbackLoopSpec
    status: LoopStatus
    # The polls since the last reconcile, oldest first; None: not polled. `decide` judges them (monitoring.judge).
    samples: tuple[Round, ...] | None = None
    job: JobObservation | None = None  # the Job of status.retraining, when there is one
    serving: ServingObservation | None = None
    canary: CanaryObservation | None = None  # None: not analysed this round
    requests: dict[str, str] = field(default_factory=dict)  # annotation suffix -> value
    promotion_confirmed: bool | None = None  # rollout.confirmPromotion's answer this round; None: not asked
    promotion_refused: str | None = None  # why confirmPromotion's URL was not asked (the operator's egress policy)
    # Why no Pod or Job of this loop may be created or updated now (storage.s3's keys not bound to its endpoint).
    storage_refused: Refusal | None = None


# --- what the operator should do --------------------------------------------------------------------


@dataclass(frozen=True)
class EnsureStable:
    version: int


@dataclass(frozen=True)
class StartTraining:
    version: int
    parent_version: int | None
    trigger: str
    job_name: str
    # The run's startedAt: the trainer's `now` (its data window's end), the same in every Job of this version,
    # so a re-created Job has the inputs, and the content hash, of the one it replaces (resources.training_job).
    started_at: float | None = None
    engine: str = "Job"  # Job | Dask: the kind of object job_name names (status.retraining.engine)


@dataclass(frozen=True)
class EnsureCanary:
    version: int
    canary_replicas: int
    weight: int  # the HTTPRoute's canary weight: 0 until a canary Pod is ready (routed_weight)


@dataclass(frozen=True)
class RemoveCanary:
    pass


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


Action = EnsureStable | StartTraining | EnsureCanary | RemoveCanary | Event


@dataclass
class Decision:
    status: LoopStatus
    actions: list[Action] = field(default_factory=list)
    health: Health | None = None  # the rules as judged this round from status and the polls (None: no poll)

    def event(self, type_: str, reason: str, message: str) -> None:
        self.actions.append(Event(type_, reason, message))


# --- naming -----------------------------------------------------------------------------------------


def job_name(loop_name: str, version: int) -> str:
    """Deterministic, so a retried or restarted operator finds the Job it made instead of a twin; at most 63
    characters (the Job controller puts it in a label), and unique per loop even for long or dotted names."""
    return resources.safe_name(loop_name, f"-train-v{version}", pattern=resources.DNS1123_SUBDOMAIN)


# The dask-kubernetes operator names each worker (its Deployment, DASK_WORKER_NAME) <name>-default-worker-<10 hex>:
# 26 characters more, which must still fit a label value (63). The design's bound is 42; this one is within it.
MAX_DASK_JOB_NAME = 63 - len("-default-worker-") - 10


def dask_job_name(loop_name: str, version: int) -> str:
    """A DaskJob's name: deterministic as job_name, at most 37 characters and a DNS-1035 label (its scheduler
    Service is `<name>-scheduler`); the same as job_name whenever that fits (a short loop name)."""
    return resources.safe_name(loop_name, f"-train-v{version}", limit=MAX_DASK_JOB_NAME)


def run_job_name(loop_name: str, version: int, engine: str) -> str:
    """The name of a run's Job (engine Job) or DaskJob (engine Dask)."""
    return dask_job_name(loop_name, version) if engine == "Dask" else job_name(loop_name, version)


def oom_message(what: str, limit: str | None, engine: str) -> str:
    """What a container killed for memory tells the user, plainly, with what to change."""
    at = f"limit {limit}" if limit else "no memory limit set: the node ran out"
    fixes = "raise spec.retraining.trainer.resources.limits.memory, shorten retraining.dataWindow"
    fixes += ", or raise spec.retraining.dask.workers" if engine == "Dask" else ", or use retraining.engine: Dask"
    return f"the {what} was killed for using more memory than its limit (OOMKilled, {at}): {fixes}"


def next_version(status: LoopStatus) -> int:
    seen = [status.get("currentVersion") or 0]
    seen += [h.get("version", 0) for h in status.get("history", [])]
    for running in (status.get("retraining"), status.get("candidate"), status.get("rollout")):
        if running:
            seen.append(running.get("version", 0))
    return max(seen) + 1


# --- policy: may we retrain now? --------------------------------------------------------------------


def retrain_blocker(spec: ModelFeedbackLoopSpec, status: LoopStatus, now: float, trigger: str) -> str:
    """Why a retraining may not start now ('' when it may). Manual requests skip the cooldown only."""
    retraining = spec.retraining
    if retraining is None or not retraining.enabled:
        return "retraining is disabled"
    if spec.paused:
        return "the loop is paused"
    if status.get("retraining") or status.get("rollout"):
        return "a retraining or rollout is in progress"
    backoff_until = parse_time(status.get("failureBackoffUntil"))
    if backoff_until and now < backoff_until and trigger != "Manual":
        return f"backing off after a failed retraining until {status['failureBackoffUntil']}"
    if trigger == "Initial":
        return ""
    serving = status.get("serving")
    if trigger == "Breach" and serving and rolling_out(serving, status.get("currentVersion")):
        # Until every replica serves the promoted version, the labels that breach are partly its predecessor's;
        # for rollout.readyTimeout at most: a version that never gets ready must not hold retraining forever.
        promoted = _promoted_at(status)
        if promoted is not None and now - promoted < spec.rollout.ready_timeout.seconds:
            return f"the stable Deployment is still rolling out version {status.get('currentVersion')}"
    # The cooldown runs from the last start, from the last outcome and from when the serving version was out on
    # every replica (a promotion needs time to show, and a slow rollout delays it).
    last = max(
        parse_time(status.get("lastRetrainAt")) or 0.0,
        parse_time((status.get("history") or [{}])[-1].get("at")) or 0.0,
        parse_time((serving or {}).get("since")) or 0.0,
    )
    cooldown = (
        breach_retry_wait(status, retraining.cooldown.seconds) if trigger == "Breach" else retraining.cooldown.seconds
    )
    if trigger == "Breach" and (status.get("history") or [{}])[-1].get("trigger") == "Refresh":
        # A refresh is the loop's own choice, not a response to trouble: it must not hold back the response to
        # a breach that follows (the efficacy benchmark lost 5 points on its abrupt stream to that cooldown).
        cooldown = 0.0
    if last and now - last < cooldown and trigger != "Manual":
        return f"cooldown: last retraining or outcome {now - last:.0f}s ago, cooldown {cooldown:.0f}s"
    recent = [t for t in status.get("retrainTimes", []) if now - (parse_time(t) or 0) < 86400]
    if len(recent) >= retraining.max_retrains_per_day:
        return f"daily budget used: {len(recent)} of maxRetrainsPerDay {retraining.max_retrains_per_day}"
    return ""


def _promoted_at(status: LoopStatus) -> float | None:
    """When the current version was promoted (None when it was adopted or is the first)."""
    last = (status.get("history") or [{}])[-1]
    if last.get("version") != status.get("currentVersion") or last.get("outcome") != "Promoted":
        return None
    return parse_time(last.get("at"))


def rolling_out(serving: Serving, current: int | None) -> bool:
    """The stable Deployment does not yet serve the current version on every replica (and never has)."""
    if serving.get("version") != current:
        return True
    return not serving.get("since") and (serving.get("readyReplicas") or 0) < (serving.get("replicas") or 0)


def breach_retry_wait(status: LoopStatus, cooldown: float) -> float:
    """The cooldown after a challenger the gate rejected while breached: half of it, then the whole after a
    second rejection in a row. The whole cooldown keeps a failing champion serving; retrying at once spends
    the budget on nearly the same labels (benchmarks/ml_efficacy.py measured an eighth, a quarter and half:
    half retrained least for the same recovery; docs/retraining.md)."""
    rejected = 0
    for record in reversed(status.get("history") or []):
        if record.get("outcome") != "Rejected" or record.get("trigger") != "Breach":
            break
        rejected += 1
    return cooldown / 2 if rejected == 1 else cooldown


def retrain_trigger(world: World, status: LoopStatus, health: Health | None) -> tuple[str, str]:
    """(trigger, detail) of a wanted retraining, or ('', '')."""
    spec = world.spec
    if status.get("currentVersion") is None:
        return "Initial", "no model version serves yet"
    request = world.requests.get("retrain")
    if request and request != status.get("handledRequests", {}).get("retrain"):
        return "Manual", f"annotation {ANNOTATION_PREFIX}retrain={request}"
    if health is not None and health.breached:
        return "Breach", "breaching: " + ", ".join(health.breaching)
    if status.get("phase") == BREACHED:
        return "Breach", "still breached"
    slot = schedule_slot(spec, status, world.now)
    if slot is not None and spec.retraining is not None:
        late = f", {format_duration(world.now - slot)} late" if world.now - slot >= 120 else ""
        return "Schedule", f"schedule {spec.retraining.schedule!r} slot {format_time(slot)}{late}"
    refresh = refresh_due(spec, status, world.now)
    if refresh:
        return "Refresh", refresh
    return "", ""


def refresh_due(spec: ModelFeedbackLoopSpec, status: LoopStatus, now: float) -> str:
    """Why the serving version should be refreshed now ('' when not): it was promoted here (the last record),
    trained on the rows since a change, and the time since that change has grown `growth` times since its data
    ended; at most `maxInARow` refreshes after one change. One attempt per version: any record after its
    promotion (a rejected or failed refresh) ends its refreshes."""
    refresh = spec.retraining.refresh if spec.retraining else None
    history = status.get("history") or []
    if refresh is None or not history:
        return ""
    last = history[-1]
    if last.get("outcome") != "Promoted" or last.get("version") != status.get("currentVersion"):
        return ""
    trained_on = last.get("trainedOn") or {}
    since, until = parse_time(trained_on.get("since")), parse_time(trained_on.get("until"))
    if since is None or until is None or until <= since:
        return ""
    in_a_row = 0
    for record in reversed(history):
        if record.get("trigger") != "Refresh":
            break
        in_a_row += 1
    if in_a_row >= refresh.max_in_a_row:
        return ""
    due = since + refresh.growth * (until - since)
    if now < due:
        return ""
    return (
        f"version {last.get('version')} learned from {format_duration(until - since)} since the change at "
        f"{trained_on.get('since')}; {format_duration(now - since)} of rows exist now (growth {refresh.growth:g})"
    )


def _trained_on(summary: dict[str, Any], run: RetrainingRun) -> TrainedOn | None:
    since = summary.get("conceptSince")
    if not isinstance(since, (int, float)) or isinstance(since, bool) or not math.isfinite(since):
        return None
    return {"since": format_time(float(since)), "until": run.get("startedAt")}


def schedule_slot(spec: ModelFeedbackLoopSpec, status: LoopStatus, now: float) -> float | None:
    """The latest slot of retraining.schedule since the last one handled, or None. However far back: a slot
    missed while the operator was down, or a retraining or rollout ran, runs once after (CronJob's way; its
    startingDeadline in _maybe_start_training). With none handled yet, a minute back (_mark_schedule)."""
    retraining = spec.retraining
    if retraining is None or not retraining.schedule:
        return None
    handled = parse_time(status.get("handledRequests", {}).get("schedule"))
    since = handled if handled is not None else now - 60
    return cron.last_slot(retraining.schedule, since, now, retraining.time_zone)


def _mark_schedule(spec: ModelFeedbackLoopSpec, status: LoopStatus, now: str) -> None:
    """Where the schedule counts from: the first idle round with a schedule (not the loop's first training:
    its slots would fire the moment it ends); forgotten without one, so that adding it again counts anew."""
    handled = status.get("handledRequests")
    if spec.retraining is None or not spec.retraining.schedule:
        if handled and "schedule" in handled:
            del handled["schedule"]
    elif status.get("currentVersion") is not None and "schedule" not in (handled or {}):
        status.setdefault("handledRequests", {})["schedule"] = now


# --- the decision -----------------------------------------------------------------------------------


def decide(world: World | InvalidWorld) -> Decision:
    status = copy.deepcopy(world.status)
    decision = Decision(status)
    now_text = format_time(world.now) or ""
    if isinstance(world, InvalidWorld):
        _invalid(world, decision, now_text)
        return decision
    status["observedGeneration"] = world.generation
    if status.get("currentVersion") is None and world.spec.model.initial_version and not status.get("retraining"):
        status["currentVersion"] = world.spec.model.initial_version
        decision.event("Normal", "Adopted", f"serving registry version {status['currentVersion']} (initialVersion)")
    _handle_pause_requests(world, decision)
    _record_serving(world, decision)
    decision.health = _judge(world, status)
    if decision.health is not None:
        _record_health(world, decision, decision.health, now_text)
    _record_input_drift(world, decision, now_text)
    run, rollout = status.get("retraining"), status.get("rollout")
    if run:
        _follow_training(world, decision, run, now_text)
    elif rollout:
        _follow_canary(world, decision, rollout, now_text)
    current = status.get("currentVersion")
    if current is not None and world.serving is not None and not _decided(decision, EnsureStable):
        # Every round, not only on a version change: spec changes roll out and hand edits are undone
        # (act compares with the watch cache and writes only what drifted).
        decision.actions.append(EnsureStable(current))
    if not status.get("retraining") and not status.get("rollout"):
        _maybe_start_training(world, decision, now_text)
    _settle_phase(world, decision, now_text)
    if world.storage_refused is not None:
        _hold_pods(world, decision, world.storage_refused)
    return decision


POD_ACTIONS = (StartTraining, EnsureStable, EnsureCanary)  # what creates or updates Pods (RemoveCanary does not)


def _hold_pods(world: World, decision: Decision, refusal: Refusal) -> None:
    """No Pod and no Job while the loop's storage credentials may not go where its Pods would send them: the
    Pods that run stay as they are, Ready=False and Stalled=True say why, and a Warning says so once."""
    decision.actions = [action for action in decision.actions if not isinstance(action, POD_ACTIONS)]
    before = cond.get(world.status.get("conditions", []), cond.READY) or {}
    if (before.get("reason"), before.get("message")) != (refusal.reason, refusal.message):
        decision.event("Warning", refusal.reason, refusal.message)
    decision.status["conditions"] = cond.apply_all(
        decision.status.get("conditions", []),
        [
            cond.ConditionUpdate(cond.READY, False, refusal.reason, refusal.message),
            cond.ConditionUpdate(cond.STALLED, True, refusal.reason, refusal.message),
        ],
        format_time(world.now) or "",
        world.generation,
    )


def _decided(decision: Decision, kind: type) -> bool:
    return any(isinstance(action, kind) for action in decision.actions)


def _invalid(world: InvalidWorld, decision: Decision, now: str) -> None:
    status = decision.status
    was_invalid = (
        status.get("phase") == INVALID
        and (cond.get(status.get("conditions", []), cond.READY) or {}).get("message") == world.spec_error
    )
    status["phase"] = INVALID
    status["observedGeneration"] = world.generation
    status["conditions"] = cond.apply_all(
        status.get("conditions", []),
        [
            cond.ConditionUpdate(cond.READY, False, "InvalidSpec", world.spec_error),
            cond.ConditionUpdate(cond.STALLED, True, "InvalidSpec", world.spec_error),
            cond.ConditionUpdate(cond.RECONCILING, False, "InvalidSpec", "waiting for a valid spec"),
        ],
        now,
        world.generation,
    )
    if not was_invalid:
        decision.event("Warning", "InvalidSpec", world.spec_error)


def _handle_pause_requests(world: World, decision: Decision) -> None:
    status = decision.status
    handled = status.setdefault("handledRequests", {})
    for name in ("pause", "resume"):
        value = world.requests.get(name)
        if value and handled.get(name) != value:
            handled[name] = value
            rollout = status.get("rollout")
            if rollout:
                rollout["paused"] = name == "pause"
                decision.event(
                    "Normal",
                    "RolloutPaused" if name == "pause" else "RolloutResumed",
                    f"canary of version {rollout['version']} {name}d by annotation",
                )


def _record_serving(world: World, decision: Decision) -> None:
    """The stable Deployment as observed, and since when every replica serves its version: a rolling update
    of a slow server (MLServer takes tens of seconds a Pod) keeps the old version answering meanwhile."""
    serving = world.serving
    if serving is None:
        return
    before = world.status.get("serving") or {}
    rolled_out = serving.stable_version is not None and 0 < serving.stable_replicas <= serving.stable_ready
    since = before.get("since") if before.get("version") == serving.stable_version else None
    witnessed = bool(before) and (
        before.get("version") != serving.stable_version or before.get("readyReplicas", 0) < before.get("replicas", 0)
    )
    if since is None and rolled_out and witnessed:  # the end of a rollout seen (not a first sight)
        since = format_time(world.now)
    decision.status["serving"] = {
        "version": serving.stable_version,
        "readyReplicas": serving.stable_ready,
        "replicas": serving.stable_replicas,
        "since": since,
    }


def _judge(world: World, status: LoopStatus) -> Health | None:
    """This round's health: the rules stepped from status by the polls since the last round (None: no poll)."""
    if world.samples is None:
        return None
    rules = rules_of(world.spec.monitoring, world.spec.model.task)
    return judge(rules, status.get("metrics", []), world.samples, status.get("currentVersion"))


def _record_health(world: World, decision: Decision, health: Health, now: str) -> None:
    status = decision.status
    status["metrics"] = [rule_state_to_status(name, s) for name, s in health.rules.items()]
    first = next(iter(health.rules.items()), None)
    status["summary"] = _summary(first)
    since = [s.breach_since for s in health.rules.values() if s.state == "Breaching" and s.breach_since]
    status["breachSince"] = format_time(min(since)) if since else None
    was_breached = cond.is_true(status.get("conditions", []), cond.BREACHED)
    if health.breached and not was_breached:
        decision.event("Warning", "BreachStarted", "; ".join(health.rules[n].message for n in health.breaching))
    elif not health.breached and was_breached:
        decision.event("Normal", "Recovered", "all metrics are within their thresholds again")
    had = cond.get(status.get("conditions", []), cond.METRICS_AVAILABLE) or {}
    reported = availability(health, had.get("reason") if had.get("status") == "False" else None, _promoted_at(status))
    if reported.event is not None:
        decision.event(*reported.event)
    status["conditions"] = cond.apply_all(
        status.get("conditions", []),
        [
            cond.ConditionUpdate(
                cond.BREACHED,
                health.breached,
                "ThresholdBreached" if health.breached else "WithinThresholds",
                "; ".join(health.rules[n].message for n in health.breaching) or "no rule fires",
            ),
            cond.ConditionUpdate(cond.METRICS_AVAILABLE, reported.available, reported.reason, reported.message),
        ],
        now,
        world.generation,
    )


def _record_input_drift(world: World, decision: Decision, now: str) -> None:
    """The InputDrift condition and its Events from this round's polls (monitoring.inputDrift); a warning
    only: nothing here breaches, retrains or promotes."""
    status, settings = decision.status, world.spec.monitoring.input_drift
    if settings is None:
        if status.get("inputDrift") is not None or cond.get(status.get("conditions", []), cond.INPUT_DRIFT):
            status["inputDrift"] = None  # the setting was removed: so is what it said
            status["conditions"] = [c for c in status.get("conditions", []) if c.get("type") != cond.INPUT_DRIFT]
        return
    if world.samples is None:
        return
    version = status.get("currentVersion")
    previous = status.get("inputDrift")
    if previous and previous.get("sampleTime") and _promoted_since(status, previous):
        previous = None  # a new version has a new profile: its predecessor's drift says nothing of it
    state, features = inputdrift.judge(settings, previous, world.samples, version)
    status["inputDrift"] = inputdrift.to_status(state, features)
    update = inputdrift.condition(settings, state, features, version)
    was = cond.get(status.get("conditions", []), cond.INPUT_DRIFT) or {}
    if update.status is True and was.get("status") != "True":
        decision.event("Warning", "InputDrift", update.message)
    elif update.status is False and was.get("status") == "True":
        decision.event("Normal", "InputDriftCleared", update.message)
    status["conditions"] = cond.apply(status.get("conditions", []), update, now, world.generation)


def _promoted_since(status: LoopStatus, previous: InputDriftState) -> bool:
    promoted = _promoted_at(status)
    sampled = parse_time(previous.get("sampleTime"))
    return promoted is not None and sampled is not None and sampled <= promoted


def _summary(first: tuple[str, Any] | None) -> str:
    if first is None:
        return ""
    name, state = first
    if state.value is None or (isinstance(state.value, float) and math.isnan(state.value)):
        return f"{name}=n/a"
    return f"{name}={state.value:.3f}"


def _maybe_start_training(world: World, decision: Decision, now: str) -> None:
    spec, status = world.spec, decision.status
    trigger, detail = retrain_trigger(world, status, decision.health)
    if trigger != "Schedule":
        _mark_schedule(spec, status, now)
    if not trigger:
        return
    refused = world.storage_refused
    blocker = refused.message if refused is not None else retrain_blocker(spec, status, world.now, trigger)
    handled = status.setdefault("handledRequests", {})
    if trigger == "Manual":
        handled["retrain"] = world.requests["retrain"]
    if trigger == "Schedule":
        slot = schedule_slot(spec, status, world.now) or world.now
        handled["schedule"] = format_time(slot) or now
        deadline = spec.retraining.starting_deadline if spec.retraining else None
        if deadline is not None and world.now - slot > deadline.seconds:
            blocker = blocker or f"{detail}: later than startingDeadline {deadline}"
    if blocker:
        if trigger in ("Manual", "Schedule"):
            decision.event("Warning", "RetrainSkipped", f"{trigger} retraining not started: {blocker}")
        status["retrainBlockedBy"] = blocker
        return
    status.pop("retrainBlockedBy", None)
    version = next_version(status)
    engine = spec.retraining.engine if spec.retraining else "Job"
    name = run_job_name(world.name, version, engine)
    status["retraining"] = {
        "version": version,
        "jobName": name,
        "engine": engine,
        "trigger": trigger,
        "startedAt": now,
        "parentVersion": status.get("currentVersion"),
    }
    status["lastRetrainAt"] = now
    status["retrainTimes"] = [t for t in status.get("retrainTimes", []) if world.now - (parse_time(t) or 0) < 86400] + [
        now
    ]
    decision.actions.append(
        StartTraining(version, status.get("currentVersion"), trigger, name, parse_time(now), engine)
    )
    kind = "DaskJob" if engine == "Dask" else "Job"
    _training_condition(world, decision, now, None, "Started", f"version {version} ({trigger}), {kind} {name}")
    decision.event("Normal", "RetrainingStarted", f"version {version} ({trigger}: {detail}), {kind} {name}")


def _follow_training(world: World, decision: Decision, run: RetrainingRun, now: str) -> None:
    status, spec = decision.status, world.spec
    job = world.job
    if job is None or job.state == "Running":
        return
    if job.state == "Missing":  # created-then-lost, or status written before a crash: create it again
        if spec.retraining is None or not spec.retraining.enabled:
            _abandon_training(world, decision, run, now)
            return
        decision.actions.append(
            StartTraining(
                run["version"],
                run.get("parentVersion"),
                run["trigger"],
                run["jobName"],
                parse_time(run.get("startedAt")),
                run.get("engine") or "Job",
            )
        )
        return
    status["retraining"] = None
    if job.state == "Failed" or not (job.summary or {}).get("ok"):
        message = job.message or (job.summary or {}).get("error", "the trainer failed")
        backoff = spec.retraining.failure_backoff.seconds if spec.retraining else 600.0
        status["failureBackoffUntil"] = format_time(world.now + backoff)
        _remember(status, run["version"], run["trigger"], "TrainingFailed", now, message[:512])
        decision.event("Warning", "RetrainingFailed", f"version {run['version']}: {message[:512]}")
        status["lastFailure"] = message[:512]
        _training_condition(world, decision, now, False, "TrainingFailed", f"version {run['version']}: {message}")
        return
    status.pop("failureBackoffUntil", None)
    status.pop("lastFailure", None)
    summary = job.summary or {}
    # A refresh, as a breach, must beat the serving version: a version no better is not worth a rollout.
    must_beat = run.get("trigger") in ("Breach", "Refresh")
    gate = offline_gate(spec, summary, first_version=run.get("parentVersion") is None, breached=must_beat)
    revived = summary.get("revivedFrom")
    if isinstance(revived, int) and not isinstance(revived, bool):  # the trainer found a past version better
        gate = replace(gate, message=f"version {revived}'s model revived; {gate.message}")
    trained_on = _trained_on(summary, run)
    status["candidate"] = {
        "version": run["version"],
        "challenger": _numbers(summary.get("challenger")),
        "champion": _numbers(summary.get("champion")),
        "gate": gate.message,
        "trainedOn": trained_on,
    }
    _training_condition(
        world,
        decision,
        now,
        gate.passed,
        "GatePassed" if gate.passed else "CandidateRejected",
        f"version {run['version']}: {gate.message}",
    )
    if not gate.passed:
        _remember(status, run["version"], run["trigger"], "Rejected", now, gate.message, summary, trained_on=trained_on)
        decision.event("Warning", "CandidateRejected", f"version {run['version']}: {gate.message}")
        status["candidate"] = None
        return
    if run.get("parentVersion") is None or status.get("currentVersion") is None:
        _promote(world, decision, run["version"], run["trigger"], now, f"first version: {gate.message}", summary)
        return
    decision.event("Normal", "CandidatePassedGate", f"version {run['version']}: {gate.message}")
    _start_canary(world, decision, run["version"], run["trigger"], now, gate.superior, gate.p_value)


def _abandon_training(world: World, decision: Decision, run: RetrainingRun, now: str) -> None:
    """The Job is gone and spec.retraining was removed (or disabled): there is nothing to create it from, and
    no retraining may start. The run ends as failed (its version is never reused) and the loop settles."""
    status = decision.status
    removed = "removed" if world.spec.retraining is None else "disabled (enabled: false)"
    message = (
        f"version {run['version']}: its Job {run['jobName']} is gone and spec.retraining was {removed}: the "
        "retraining is abandoned; set spec.retraining (enabled) to train again"
    )
    status["retraining"] = None
    _remember(status, run["version"], run["trigger"], "TrainingFailed", now, message)
    _training_condition(world, decision, now, False, "RetrainingRemoved", message)
    decision.event("Warning", "RetrainingFailed", message)


def _training_condition(
    world: World, decision: Decision, now: str, outcome: bool | None, reason: str, message: str
) -> None:
    """`Retraining`: Unknown while a Job runs, then True (a candidate passed) or False (failed, rejected)."""
    decision.status["conditions"] = cond.apply(
        decision.status.get("conditions", []),
        cond.ConditionUpdate(cond.RETRAINING, outcome, reason, message[:1024]),
        now,
        world.generation,
    )


def _numbers(values: Any) -> dict[str, float]:
    if not isinstance(values, dict):
        return {}
    return {k: round(float(v), 6) for k, v in values.items() if isinstance(v, (int, float))}


def _start_canary(
    world: World,
    decision: Decision,
    version: int,
    trigger: str,
    now: str,
    offline_superior: bool = False,
    p_value: float | None = None,
) -> None:
    spec = world.spec
    first = spec.rollout.steps[0]
    replicas, weight = replica_split(spec.model.serving.replicas, first.weight)
    decision.status["rollout"] = {
        "version": version,
        "trigger": trigger,
        "step": 0,
        "weight": weight,
        "startedAt": now,
        "stepStartedAt": now,
        "analysisPhase": "Running",
        "consecutiveErrors": 0,
        "evidence": [],
        "paused": False,
        "offlineSuperior": offline_superior,
        "offlinePValue": p_value if offline_superior else None,
        "notReadySince": now,
    }
    decision.actions.append(EnsureCanary(version, replicas, routed_weight(world, version, weight)))
    decision.event("Normal", "CanaryStarted", f"version {version} at {weight}% ({replicas} replica(s))")


def _follow_canary(world: World, decision: Decision, rollout: RolloutState, now: str) -> None:
    spec, status = world.spec, decision.status
    handled = status.setdefault("handledRequests", {})
    for name in ("promote", "abort"):
        value = world.requests.get(name)
        if value and handled.get(name) != value:
            handled[name] = value
            if name == "promote":
                _promote(
                    world,
                    decision,
                    rollout["version"],
                    rollout.get("trigger") or "Manual",
                    now,
                    "promoted by annotation",
                )
            else:
                _roll_back(world, decision, rollout, now, "aborted by annotation")
            return
    if _canary_cannot_serve(world, decision, rollout, now):
        return
    replicas, weight = replica_split(spec.model.serving.replicas, spec.rollout.steps[rollout["step"]].weight)
    decision.actions.append(
        EnsureCanary(rollout["version"], replicas, routed_weight(world, rollout["version"], weight))
    )
    if world.canary is None:
        return
    # Ended early when undecidable only at its last weight (the label rate will not grow), and never when shown
    # superior offline: that canary is promoted after its last step without waiting for its own labels.
    may_end_early = rollout["step"] + 1 >= len(spec.rollout.steps) and not rollout.get("offlineSuperior")
    verdict = judge_canary(spec.rollout.analysis, spec.model.task, rollout, world.canary, world.now, may_end_early)
    rollout.update(verdict.rollout_fields)
    if verdict.phase in (AnalysisPhase.FAILED, AnalysisPhase.ERROR):
        _roll_back(world, decision, rollout, now, verdict.message)
        return
    if verdict.phase is AnalysisPhase.INCONCLUSIVE:
        if spec.rollout.analysis.on_inconclusive == "promote":
            _promote(
                world,
                decision,
                rollout["version"],
                rollout.get("trigger", ""),
                now,
                f"inconclusive, promoted as configured: {verdict.message}",
            )
        else:
            _roll_back(world, decision, rollout, now, f"inconclusive: {verdict.message}")
        return
    if rollout.get("paused") or spec.paused:
        return
    step_started = parse_time(rollout.get("stepStartedAt")) or world.now
    if world.now - step_started < step_pause(spec, rollout, rollout["step"]):
        return
    if rollout["step"] + 1 < len(spec.rollout.steps):
        rollout["step"] += 1
        rollout["stepStartedAt"] = now
        replicas, weight = replica_split(spec.model.serving.replicas, spec.rollout.steps[rollout["step"]].weight)
        rollout["weight"] = weight
        decision.actions.append(
            EnsureCanary(rollout["version"], replicas, routed_weight(world, rollout["version"], weight))
        )
        decision.event(
            "Normal",
            "CanaryStep",
            f"version {rollout['version']} step {rollout['step'] + 1}: {weight}% ({replicas} replica(s))",
        )
    elif _may_promote(rollout, verdict.phase) and not _promotion_held(world, decision, rollout, now):
        _promote(world, decision, rollout["version"], rollout.get("trigger", ""), now, _promotion_reason(verdict))


def _canary_cannot_serve(world: World, decision: Decision, rollout: RolloutState, now: str) -> bool:
    """Roll back a candidate whose Pods cannot serve, without waiting out its analysis: at once on a failure
    that will not pass (a crash loop, an image that cannot be pulled), or when they are not all ready within
    rollout.readyTimeout (a runtime that cannot load the model file stays unready). Unready Pods take no
    traffic, so it never served. Judged only once the canary Deployment of this version is observed."""
    serving = world.serving
    if serving is None or serving.canary_version != rollout["version"]:
        return False
    if serving.canary_failure:
        _fail_canary(world, decision, rollout, now, f"canary Pods failed before serving: {serving.canary_failure}")
        return True
    if serving.canary_replicas and serving.canary_ready >= serving.canary_replicas:
        if rollout.get("notReadySince") is not None:
            rollout["notReadySince"] = None  # null: the merge patch removes it
        return False
    since = parse_time(rollout.get("notReadySince"))
    if since is None:
        rollout["notReadySince"] = now
        return False
    timeout = world.spec.rollout.ready_timeout
    if world.now - since < timeout.seconds:
        return False
    detail = serving.canary_detail or f"{serving.canary_ready}/{serving.canary_replicas} ready"
    _fail_canary(
        world, decision, rollout, now, f"canary Pods not ready within rollout.readyTimeout ({timeout}): {detail}"
    )
    return True


def routed_weight(world: World, version: int, weight: int) -> int:
    """The weight an HTTPRoute gives the canary: none while no canary Pod of this version is ready, so a gateway
    never sends requests to a Service without endpoints (replica-ratio routing needs nothing: unready Pods get
    no traffic). Unknown serving (not observed) keeps the step's weight."""
    serving = world.serving
    if serving is None:
        return weight
    return weight if serving.canary_version == version and serving.canary_ready > 0 else 0


MIN_PAUSE_SHARE = 0.25  # an offline-superior canary still holds each weight for a quarter of its pause
MIN_PAUSE_LOOKS = 2  # and at least two analysis looks: time for a crash, 5xx or latency check to fire


def step_pause(spec: ModelFeedbackLoopSpec, rollout: RolloutState, step: int) -> float:
    """How long a canary holds `step`: its pause; for a challenger the gate showed superior, shorter as the
    evidence is stronger. Scaled by log(alpha) / log(p) (1 at p = alpha, 1/2 at alpha squared), at least a
    quarter of the pause and two analysis intervals: the blast-radius checks keep their looks at every weight,
    only the wait for labels the holdout already gave is cut (issue 24)."""
    pause = spec.rollout.steps[step].pause.seconds
    p_value = rollout.get("offlinePValue")
    gate = spec.retraining.gate if spec.retraining else None
    if (
        not rollout.get("offlineSuperior")
        or p_value is None
        or gate is None
        or not 0 < p_value < gate.superiority_alpha
    ):
        return pause
    scale = max(MIN_PAUSE_SHARE, math.log(gate.superiority_alpha) / math.log(p_value))
    floor = MIN_PAUSE_LOOKS * spec.rollout.analysis.interval.seconds
    return min(pause, max(pause * scale, floor))


def canary_ready_overdue(spec: ModelFeedbackLoopSpec, rollout: RolloutState | None, now: float) -> bool:
    """Whether a canary's Pods have been unready for rollout.readyTimeout: observe.py then reads their last
    log lines (the runtime's own words) for the rollback's message."""
    since = parse_time((rollout or {}).get("notReadySince"))
    return since is not None and now - since >= spec.rollout.ready_timeout.seconds


def _fail_canary(world: World, decision: Decision, rollout: RolloutState, now: str, message: str) -> None:
    _roll_back(world, decision, rollout, now, message)
    _training_condition(world, decision, now, False, "CanaryNotReady", f"version {rollout['version']}: {message}")


def _may_promote(rollout: RolloutState, phase: AnalysisPhase) -> bool:
    """Passed its analysis; or shown better than a breached champion offline, not failing, and seen serving
    at the last look (its requests counted, no query errors): a collapsing champion is not kept serving for
    another label delay to prove what the holdout showed, but a canary nobody can see (a Prometheus outage)
    is not promoted."""
    if phase is AnalysisPhase.SUCCESSFUL:
        return True
    evidence = rollout.get("evidence") or []
    no_errors = all(e.get("decision") != "Error" for e in evidence)
    serving = any(e.get("name") == "availability" and (e.get("values") or {}) for e in evidence)
    return bool(rollout.get("offlineSuperior")) and phase is AnalysisPhase.RUNNING and no_errors and serving


def _ready(rollout: RolloutState) -> str:
    if rollout.get("analysisPhase") == AnalysisPhase.SUCCESSFUL.value:
        return "passed its analysis"
    return "beat the breached champion offline and its analysis is not failing"


def _promotion_reason(verdict: Any) -> str:
    if verdict.phase is AnalysisPhase.SUCCESSFUL:
        return str(verdict.message)
    return (
        f"better than the breached champion on the post-change holdout; canary analysis not failing ({verdict.message})"
    )


def awaiting_promotion(spec: ModelFeedbackLoopSpec, rollout: RolloutState, now: float) -> bool:
    """The canary passed its analysis, at its last step, after that step's pause: it would be promoted now.
    When rollout.confirmPromotion is set, this is when the operator asks (observe.py) and holds (below)."""
    last = len(spec.rollout.steps) - 1
    phase = rollout.get("analysisPhase") or AnalysisPhase.RUNNING.value
    if phase not in {p.value for p in AnalysisPhase} or not _may_promote(rollout, AnalysisPhase(phase)):
        return False
    if rollout.get("step") != last:
        return False
    if rollout.get("paused") or spec.paused:
        return False
    step_started = parse_time(rollout.get("stepStartedAt")) or now
    return now - step_started >= step_pause(spec, rollout, last)


def _promotion_held(world: World, decision: Decision, rollout: RolloutState, now: str) -> bool:
    """Whether confirmPromotion holds a canary that passed: until its webhook answers 2xx, at most until
    analysis.maxDuration from the canary's start, when it is rolled back (no answer is no approval)."""
    gate = world.spec.rollout.confirm_promotion
    if gate is None or world.promotion_confirmed:
        return False
    url = gate.shown()
    started = parse_time(rollout.get("startedAt")) or world.now
    if world.now - started >= world.spec.rollout.analysis.max_duration.seconds:
        _roll_back(world, decision, rollout, now, f"promotion not confirmed by {url} within analysis.maxDuration")
        return True
    return True  # the hold's condition and its one Event: _settle_phase


def _promote(
    world: World,
    decision: Decision,
    version: int,
    trigger: str,
    now: str,
    message: str,
    summary: dict[str, Any] | None = None,
) -> None:
    status = decision.status
    evidence = (status.get("rollout") or {}).get("evidence") or []
    trained_on = (status.get("candidate") or {}).get("trainedOn")
    status["currentVersion"] = version
    status["rollout"] = None
    status["candidate"] = None
    # A new version is a new subject: its rules start afresh instead of inheriting the old one's breach.
    # No value and no sample time either: the predecessor's are not this version's (no data of its own yet is
    # awaited, never a warning: monitoring.availability).
    status["metrics"] = [
        {
            **m,
            "state": "NoData",
            "value": None,
            "sampleTime": None,
            "breachSince": None,
            "message": f"version {version}: waiting for its own data",
        }
        for m in status.get("metrics", [])
    ]
    status["breachSince"] = None
    status["conditions"] = cond.apply(
        status.get("conditions", []),
        cond.ConditionUpdate(cond.BREACHED, False, "NewVersion", f"version {version} promoted; judged on its own data"),
        now,
        world.generation,
    )
    decision.actions += [EnsureStable(version), RemoveCanary()]
    _remember(status, version, trigger, "Promoted", now, message, summary, evidence, trained_on)
    decision.event("Normal", "Promoted", f"version {version} now serves as stable: {message}")


def _roll_back(world: World, decision: Decision, rollout: RolloutState, now: str, message: str) -> None:
    status = decision.status
    status["rollout"] = None
    status["candidate"] = None
    decision.actions.append(RemoveCanary())
    _remember(
        status,
        rollout["version"],
        rollout.get("trigger", ""),
        "RolledBack",
        now,
        message,
        None,
        rollout.get("evidence"),
    )
    decision.event(
        "Warning",
        "RolledBack",
        f"version {rollout['version']}: {message}; stable version {status.get('currentVersion')} untouched",
    )


def _remember(
    status: LoopStatus,
    version: int,
    trigger: str,
    outcome: str,
    now: str,
    message: str,
    summary: dict[str, Any] | None = None,
    evidence: list[CheckEvidence] | None = None,
    trained_on: TrainedOn | None = None,
) -> None:
    record: VersionRecord = {
        "version": version,
        "trigger": trigger,
        "outcome": outcome,
        "at": now,
        "message": message[:512],
        "metrics": _numbers((summary or {}).get("challenger")),
    }
    if evidence:
        record["evidence"] = evidence[:6]
    if trained_on:
        record["trainedOn"] = trained_on
    status["history"] = ([*status.get("history", []), record])[-HISTORY_LIMIT:]


def _settle_phase(world: World, decision: Decision, now: str) -> None:
    """Phase and the summary conditions (Ready, Reconciling, Stalled) from the state reached."""
    spec, status = world.spec, decision.status
    breached = cond.is_true(status.get("conditions", []), cond.BREACHED)
    if status.get("retraining"):
        phase = RETRAINING
    elif status.get("rollout"):
        phase = CANARY
    elif spec.paused:
        phase = PAUSED
    elif status.get("currentVersion") is None:
        phase = PENDING
    else:
        phase = BREACHED if breached else MONITORING
    status["phase"] = phase
    serving = world.serving
    serving_ready = bool(
        serving
        and serving.stable_version == status.get("currentVersion")
        and serving.stable_replicas
        and serving.stable_ready >= serving.stable_replicas
    )
    updates = [cond.ConditionUpdate(cond.STALLED, False, "Progressing", "")]
    rollout = status.get("rollout")
    gate = spec.rollout.confirm_promotion
    if phase == CANARY and rollout and gate and awaiting_promotion(spec, rollout, world.now):
        message = f"version {rollout['version']} {_ready(rollout)}; waiting for {gate.shown()} to confirm"
        if world.promotion_refused:
            message += f" (not asked: {world.promotion_refused})"
        updates.append(cond.ConditionUpdate(cond.RECONCILING, True, AWAITING_CONFIRMATION, message))
        held = cond.get(world.status.get("conditions", []), cond.RECONCILING)
        if (held or {}).get("reason") != AWAITING_CONFIRMATION:  # once per hold, however it began
            decision.event(
                "Normal",
                "PromotionAwaitingConfirmation",
                f"version {rollout['version']} {_ready(rollout)}; asking {gate.shown()} to confirm its promotion",
            )
    elif phase in (RETRAINING, CANARY):
        work = status.get("retraining") or status.get("rollout") or {}
        updates.append(cond.ConditionUpdate(cond.RECONCILING, True, phase, f"version {work.get('version')}"))
    elif status.get("currentVersion") is not None and not serving_ready:
        updates.append(
            cond.ConditionUpdate(
                cond.RECONCILING, True, "RollingOut", f"waiting for version {status['currentVersion']} to be ready"
            )
        )
    else:
        updates.append(cond.ConditionUpdate(cond.RECONCILING, False, "Reconciled", ""))
    if status.get("currentVersion") is None:
        ready = cond.ConditionUpdate(
            cond.READY, False, "NoModelVersion", status.get("lastFailure") or "training the first version"
        )
    elif not serving_ready:
        ready = cond.ConditionUpdate(
            cond.READY, False, "ServingNotReady", f"stable Deployment not ready for version {status['currentVersion']}"
        )
    elif breached:
        ready = cond.ConditionUpdate(cond.READY, False, "Breached", status.get("summary", ""))
    else:
        ready = cond.ConditionUpdate(cond.READY, True, phase, f"version {status['currentVersion']} serving")
    updates.append(ready)
    updates.append(
        cond.ConditionUpdate(
            cond.SERVING_READY,
            serving_ready,
            "DeploymentReady" if serving_ready else "DeploymentNotReady",
            _serving_message(serving, serving_ready),
        )
    )
    status["conditions"] = cond.apply_all(status.get("conditions", []), updates, now, world.generation)


def _serving_message(serving: ServingObservation | None, ready: bool = True) -> str:
    if serving is None:
        return "not observed yet"
    message = f"version {serving.stable_version}: {serving.stable_ready}/{serving.stable_replicas} ready"
    return f"{message}: {serving.stable_detail}"[:1024] if serving.stable_detail and not ready else message
