"""Pod status as a kubelet writes it, from what the runtime knows about each container (pure).

The phase rules follow the kubelet's getPhase(): waiting containers keep a pod Pending, running ones
make it Running, and once every container stopped the restart policy decides between Running (it will
restart), Succeeded and Failed.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

TERMINAL_PHASES = ("Succeeded", "Failed")
OUR_CONDITIONS = ("Initialized", "Ready", "ContainersReady", "PodScheduled")
MESSAGE_LIMIT = 4096  # bytes of a termination message, as the kubelet caps it


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(value: str) -> datetime | None:
    try:
        return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return None


def utcnow() -> datetime:
    return datetime.now(UTC)


def exit_reason(exit_code: int) -> str:
    return "Completed" if exit_code == 0 else "Error"


def cap_message(raw: bytes) -> str:
    return raw[:MESSAGE_LIMIT].decode(errors="replace")


@dataclass
class Terminated:
    exit_code: int
    reason: str
    message: str = ""
    started_at: datetime | None = None
    finished_at: datetime | None = None
    container_id: str = ""

    def as_status(self) -> dict[str, Any]:
        status: dict[str, Any] = {"exitCode": self.exit_code, "reason": self.reason}
        if self.message:
            status["message"] = self.message
        if self.started_at:
            status["startedAt"] = rfc3339(self.started_at)
        status["finishedAt"] = rfc3339(self.finished_at or utcnow())
        if self.container_id:
            status["containerID"] = self.container_id
        return status


@dataclass
class ContainerView:
    """What the runtime knows about one container; exactly one of waiting/running/terminated holds."""

    name: str
    image: str
    restart_count: int = 0
    waiting_reason: str = "ContainerCreating"
    waiting_message: str = ""
    running_since: datetime | None = None
    terminated: Terminated | None = None
    last_terminated: Terminated | None = None
    ready: bool = False
    started: bool = False
    container_id: str = ""

    @property
    def state(self) -> str:
        if self.terminated is not None:
            return "terminated"
        return "running" if self.running_since is not None else "waiting"

    @property
    def succeeded(self) -> bool:
        return self.terminated is not None and self.terminated.exit_code == 0

    def set_waiting(self, reason: str, message: str = "") -> None:
        self.waiting_reason, self.waiting_message = reason, message
        self.running_since, self.terminated, self.ready, self.started = None, None, False, False

    def set_running(self, since: datetime, container_id: str) -> None:
        self.running_since, self.terminated, self.container_id = since, None, container_id
        self.ready = self.started = False

    def set_terminated(self, terminated: Terminated) -> None:
        self.terminated, self.running_since, self.ready, self.started = terminated, None, False, False

    def as_status(self) -> dict[str, Any]:
        status: dict[str, Any] = {
            "name": self.name, "image": self.image, "imageID": f"mfl-local://{self.image}",
            "ready": self.ready, "restartCount": self.restart_count, "started": self.started,
            "state": self._state(), "lastState": {},
        }
        if self.last_terminated is not None:
            status["lastState"] = {"terminated": self.last_terminated.as_status()}
        if self.container_id:
            status["containerID"] = self.container_id
        return status

    def _state(self) -> dict[str, Any]:
        if self.terminated is not None:
            return {"terminated": self.terminated.as_status()}
        if self.running_since is not None:
            return {"running": {"startedAt": rfc3339(self.running_since)}}
        waiting = {"reason": self.waiting_reason}
        if self.waiting_message:
            waiting["message"] = self.waiting_message
        return {"waiting": waiting}


@dataclass
class PodView:
    pod_ip: str = ""
    host_ip: str = ""
    start_time: datetime | None = None
    init: list[ContainerView] = field(default_factory=list)
    containers: list[ContainerView] = field(default_factory=list)
    failure: tuple[str, str] | None = None  # pod-level (reason, message), e.g. DeadlineExceeded


def init_failed(restart_policy: str, init: list[ContainerView]) -> bool:
    """An init container failed and will not be retried."""
    return restart_policy == "Never" and any(
        view.terminated is not None and view.terminated.exit_code != 0 for view in init)


def init_done(init: list[ContainerView]) -> bool:
    return all(view.succeeded for view in init)


def pod_phase(restart_policy: str, init: list[ContainerView], containers: list[ContainerView],
              failed: bool = False) -> str:
    if failed or init_failed(restart_policy, init):
        return "Failed"
    if not init_done(init):
        return "Pending"
    running = sum(view.state == "running" for view in containers)
    stopped = sum(view.state == "terminated" or (view.state == "waiting" and view.last_terminated is not None)
                  for view in containers)
    waiting = len(containers) - running - stopped
    succeeded = sum(view.succeeded for view in containers)
    if waiting > 0:
        return "Pending"
    if running > 0:
        return "Running"
    if restart_policy == "Always":
        return "Running"
    if stopped == succeeded:
        return "Succeeded"
    return "Failed" if restart_policy == "Never" else "Running"


def _condition(previous: Mapping[str, Mapping[str, Any]], kind: str, true: bool, now: datetime,
               reason: str = "", message: str = "") -> dict[str, Any]:
    status = "True" if true else "False"
    before = previous.get(kind) or {}
    condition: dict[str, Any] = {
        "type": kind, "status": status, "lastProbeTime": None,
        "lastTransitionTime": before.get("lastTransitionTime") if before.get("status") == status
        else rfc3339(now),
    }
    if not true and reason:
        condition["reason"] = reason
    if not true and message:
        condition["message"] = message
    return condition


def pod_conditions(pod: Mapping[str, Any], view: PodView, phase: str, now: datetime) -> list[dict[str, Any]]:
    existing = (pod.get("status") or {}).get("conditions") or []
    previous = {condition["type"]: condition for condition in existing}
    terminal = phase in TERMINAL_PHASES
    uninitialized = [c.name for c in view.init if not c.succeeded]
    unready = [c.name for c in view.containers if not c.ready]
    gates = [gate["conditionType"] for gate in pod.get("spec", {}).get("readinessGates") or []]
    open_gates = [gate for gate in gates if (previous.get(gate) or {}).get("status") != "True"]
    containers_ready = not unready and not terminal
    ready = containers_ready and not open_gates
    if terminal:
        reason, unready_message = "PodCompleted", ""
    else:
        reason, unready_message = "ContainersNotReady", f"containers with unready status: [{' '.join(unready)}]"
    gates_message = (f"corresponding condition of pod readiness gate \"{' '.join(open_gates)}\" "
                     "does not exist or is not True")
    ready_reason, ready_message = (reason, unready_message) if not containers_ready else (
        "ReadinessGatesNotReady", gates_message)
    conditions = [
        _condition(previous, "Initialized", not uninitialized, now,
                   "PodCompleted" if terminal else "ContainersNotInitialized",
                   "" if terminal else f"containers with incomplete status: [{' '.join(uninitialized)}]"),
        _condition(previous, "Ready", ready, now, ready_reason, ready_message),
        _condition(previous, "ContainersReady", containers_ready, now, reason, unready_message),
        dict(previous.get("PodScheduled") or _condition({}, "PodScheduled", True, now)),
    ]
    foreign = [condition for condition in existing if condition["type"] not in OUR_CONDITIONS]
    return conditions + foreign


def build_pod_status(pod: Mapping[str, Any], view: PodView, now: datetime | None = None) -> dict[str, Any]:
    """The status fields a kubelet owns, ready for a JSON merge patch (lists are replaced whole)."""
    now = now or utcnow()
    restart_policy = pod.get("spec", {}).get("restartPolicy", "Always")
    phase = pod_phase(restart_policy, view.init, view.containers, failed=view.failure is not None)
    status: dict[str, Any] = {
        "phase": phase,
        "conditions": pod_conditions(pod, view, phase, now),
        "containerStatuses": [container.as_status() for container in view.containers],
    }
    if view.init:
        status["initContainerStatuses"] = [container.as_status() for container in view.init]
    if view.host_ip:
        status["hostIP"] = view.host_ip
    if view.pod_ip:
        status["podIP"] = view.pod_ip
        status["podIPs"] = [{"ip": view.pod_ip}]
    if view.start_time:
        status["startTime"] = rfc3339(view.start_time)
    if view.failure:
        status["reason"], status["message"] = view.failure
    return status


# --- restart rules ----------------------------------------------------------------------------------
BACKOFF_RESET_SECONDS = 600  # a container that ran this long restarts without back-off again


def should_restart(restart_policy: str, exit_code: int) -> bool:
    return restart_policy == "Always" or (restart_policy == "OnFailure" and exit_code != 0)


def restart_delay(restarts_so_far: int, ran_for: float, base: float = 10.0, cap: float = 300.0) -> float:
    """The kubelet's CrashLoopBackOff: first restart at once, then base, 2*base, ... up to cap."""
    if restarts_so_far == 0 or ran_for >= BACKOFF_RESET_SECONDS:
        return 0.0
    return min(base * 2 ** (restarts_so_far - 1), cap)
