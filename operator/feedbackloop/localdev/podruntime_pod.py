"""One Pod's life on the node, in its own thread: sandbox, init containers, containers, probes,
restarts, status writes, graceful termination. Nothing a Pod does can stop the runtime.
"""
from __future__ import annotations

import logging
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .podruntime_api import KubeApi, PodGone
from .podruntime_env import ConfigError, container_env, expand_argv
from .podruntime_images import ImageNotMapped, container_argv
from .podruntime_net import IPAllocator, Network, NetworkError
from .podruntime_node import EventRecorder
from .podruntime_probes import ProbeTracker, container_ports, run_probe
from .podruntime_proc import ContainerProcess, LaunchSpec, read_termination_message, run_once, start_process
from .podruntime_status import (
    OUR_CONDITIONS,
    TERMINAL_PHASES,
    ContainerView,
    PodView,
    Terminated,
    build_pod_status,
    exit_reason,
    init_done,
    parse_rfc3339,
    restart_delay,
    should_restart,
    utcnow,
)
from .podruntime_volumes import Mount, MountpointRegistry, container_mounts, missing_path_chain, prepare_volumes

log = logging.getLogger(__name__)

TICK = 0.2  # seconds between looks at processes, probes and status
CONFIG_RETRY = 2.0  # the kubelet retries a missing Secret/ConfigMap reference this often
DEFAULT_GRACE = 30
DEFAULT_TERMINATION_PATH = "/dev/termination-log"


@dataclass
class RuntimeContext:
    """What every pod worker shares: the API, the network, the node's identity and settings."""

    api: KubeApi
    network: Network
    allocator: IPAllocator
    events: EventRecorder
    mountpoints: MountpointRegistry
    node_name: str
    host_ip: str
    workdir: Path
    host_env: dict[str, str]
    restart_backoff: float = 10.0
    max_backoff: float = 300.0
    ip_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def logs_dir(self) -> Path:
        return self.workdir / "logs"


@dataclass
class ContainerSlot:
    spec: dict[str, Any]
    view: ContainerView
    restart_policy: str
    process: ContainerProcess | None = None
    probes: dict[str, ProbeTracker] = field(default_factory=dict)
    next_start: float | None = 0.0  # monotonic time of the next (re)start; None: never again
    runs: int = 0

    @property
    def name(self) -> str:
        return self.spec["name"]


def grace_seconds(pod: dict[str, Any]) -> float:
    deletion_grace = pod["metadata"].get("deletionGracePeriodSeconds")
    if deletion_grace is not None:
        return float(deletion_grace)
    spec_grace = pod["spec"].get("terminationGracePeriodSeconds")
    return float(DEFAULT_GRACE if spec_grace is None else spec_grace)


def restored_state(status: dict[str, Any]) -> Terminated | None:
    """What a container left behind in a previous runtime's status (after a runtime restart)."""
    state = status.get("state") or {}
    if "terminated" in state:
        done = state["terminated"]
        return Terminated(done.get("exitCode", 1), done.get("reason") or exit_reason(done.get("exitCode", 1)),
                          done.get("message", ""), finished_at=utcnow(), container_id=done.get("containerID", ""))
    if "running" in state:
        return Terminated(137, "ContainerStatusUnknown", "the pod runtime restarted and lost this container",
                          finished_at=utcnow(), container_id=status.get("containerID", ""))
    return None


class PodWorker(threading.Thread):
    def __init__(self, context: RuntimeContext, pod: dict[str, Any]) -> None:
        metadata = pod["metadata"]
        super().__init__(name=f"pod-{metadata['namespace']}/{metadata['name']}", daemon=True)
        self.ctx = context
        self.pod = pod
        self.uid: str = metadata["uid"]
        self.key = f"{metadata['namespace']}/{metadata['name']}"
        self.pod_dir = context.workdir / "pods" / f"{metadata['namespace']}_{metadata['name']}_{self.uid}"
        self.host_network = bool(pod["spec"].get("hostNetwork"))
        self.netns: str | None = None
        self.veth = ""
        self.pod_ip = ""
        self.volumes: dict[str, Path] | None = None
        self.start_time = utcnow()
        self.failure: tuple[str, str] | None = None
        self.last_status: dict[str, Any] | None = None
        self.finished = threading.Event()
        self._wake = threading.Event()
        self._stop_grace: float | None = None
        self._delete_after_stop = False
        self._gone = False
        self._publish_after = 0.0  # monotonic; status writes pause a little after a failure
        policy = pod["spec"].get("restartPolicy", "Always")
        init_policy = "Never" if policy == "Never" else "OnFailure"
        self.init = [self._slot(c, init_policy) for c in pod["spec"].get("initContainers") or []]
        self.containers = [self._slot(c, policy) for c in pod["spec"]["containers"]]
        self._adopt_previous_status()

    # --- called from the runtime's threads ---------------------------------------------------------
    def update(self, pod: dict[str, Any]) -> None:
        self.pod = pod

    def request_stop(self, grace: float, delete: bool) -> None:
        """Stop the containers (SIGTERM, SIGKILL after `grace`); `delete`: then delete the Pod object."""
        self._delete_after_stop = self._delete_after_stop or delete
        self._stop_grace = grace if self._stop_grace is None else min(grace, self._stop_grace)
        self._wake.set()

    def snapshot(self) -> dict[str, Any]:
        """The Pod as this node last reported it (for service discovery)."""
        return {**self.pod, "status": self.last_status or self.pod.get("status") or {}}

    # --- the thread ----------------------------------------------------------------------------------
    def run(self) -> None:
        try:
            self._live()
        except Exception:
            log.exception("pod %s: worker failed", self.key)
        finally:
            self._shut_down()
            self.finished.set()

    def _live(self) -> None:
        torn_down = False
        while self._stop_grace is None and not self._gone:
            try:
                self._tick()
                if self._terminal() and not torn_down and not self.running():
                    self._release_network()  # like a kubelet killing the sandbox of a finished pod
                    torn_down = True
            except Exception:
                log.exception("pod %s: unexpected error, retrying", self.key)
                self._wake.wait(1.0)
            self._wake.wait(TICK if not torn_down else 5.0)
            self._wake.clear()

    def _tick(self) -> None:
        if self.volumes is None and self._nothing_to_run():
            self.volumes = {}  # e.g. a Never pod adopted after a runtime restart: no sandbox needed
        elif self.volumes is None:
            self._try_sandbox()
        else:
            self._step()
        if time.monotonic() >= self._publish_after:
            self._publish()

    # --- sandbox -------------------------------------------------------------------------------------
    def _try_sandbox(self) -> None:
        try:
            if not self.pod_ip:
                self._create_network()
            self.volumes = prepare_volumes(self.pod, self.pod_dir, self.ctx.workdir, self.ctx.api,
                                           self.pod_ip, self.ctx.host_ip)
            self._write_hosts_file()
        except Exception as error:  # noqa: BLE001 - config, network, file system or API trouble: retry
            reason = "CreateContainerConfigError" if isinstance(error, ConfigError) else "ContainerCreating"
            for slot in self.init + self.containers:
                if slot.process is None and slot.view.state == "waiting":
                    slot.view.set_waiting(reason, str(error))
            log.warning("pod %s: sandbox not ready: %s", self.key, error)
            self._wake.wait(CONFIG_RETRY)

    def _create_network(self) -> None:
        if self.host_network:
            self.pod_ip = self.ctx.host_ip
            return
        with self.ctx.ip_lock:
            ip = self.ctx.allocator.allocate(self.uid)
        try:
            self.netns, self.veth = self.ctx.network.create_pod(self.uid, ip)
        except NetworkError:
            with self.ctx.ip_lock:
                self.ctx.allocator.release(self.uid)
            raise
        self.pod_ip = ip

    def _release_network(self) -> None:
        if self.netns or self.veth:
            self.ctx.network.delete_pod(self.netns or "", self.veth)
        if not self.host_network:
            with self.ctx.ip_lock:
                self.ctx.allocator.release(self.uid)
        self.netns, self.veth = None, ""

    def _hostname(self) -> str:
        return "" if self.host_network else (self.pod["spec"].get("hostname") or self.pod["metadata"]["name"])[:63]

    def _write_hosts_file(self) -> None:
        lines = ["# Kubernetes-managed hosts file (feedbackloop local pod runtime).",
                 "127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
        if self._hostname():
            lines.append(f"{self.pod_ip}\t{self._hostname()}")
        self.pod_dir.mkdir(parents=True, exist_ok=True)
        (self.pod_dir / "hosts").write_text("\n".join(lines) + "\n")

    # --- containers ----------------------------------------------------------------------------------
    def _slot(self, spec: dict[str, Any], policy: str) -> ContainerSlot:
        return ContainerSlot(spec, ContainerView(spec["name"], spec.get("image", "")), policy)

    def _adopt_previous_status(self) -> None:
        """After a runtime restart: containers that ran before are lost; apply the restart policy."""
        status = self.pod.get("status") or {}
        if status.get("startTime"):
            self.start_time = parse_rfc3339(status["startTime"]) or self.start_time
        previous = {s["name"]: s for s in (status.get("initContainerStatuses") or [])
                    + (status.get("containerStatuses") or [])}
        for slot in self.init + self.containers:
            before = previous.get(slot.name)
            terminated = restored_state(before) if before else None
            if terminated is not None:
                slot.view.restart_count = before.get("restartCount", 0)
                slot.runs = 1
                self._after_exit(slot, terminated, ran_for=0.0, adopting=True)

    def _step(self) -> None:
        now = time.monotonic()
        self._check_deadline()
        if not init_done([slot.view for slot in self.init]):
            current = next(slot for slot in self.init if not slot.view.succeeded)
            self._step_container(current, now, probes=False)
            return
        for slot in self.containers:
            self._step_container(slot, now, probes=True)

    def _step_container(self, slot: ContainerSlot, now: float, probes: bool) -> None:
        if slot.process is not None:
            code = slot.process.poll()
            if code is None:
                slot.process.enforce_deadline()
                if probes and slot.process.kill_deadline is None:
                    self._probe(slot, now)
                return
            self._on_exit(slot, code)
        if slot.next_start is not None and now >= slot.next_start and self.failure is None:
            self._start(slot)

    def _start(self, slot: ContainerSlot) -> None:
        try:
            env = container_env(self.pod, slot.spec, pod_ip=self.pod_ip, host_ip=self.ctx.host_ip,
                                reader=self.ctx.api, host_env=self.ctx.host_env,
                                hostname=self._hostname() or self.ctx.node_name)
            argv = expand_argv(container_argv(slot.spec), env)
            mounts = self._mounts(slot)
        except ImageNotMapped as error:
            self._cannot_start(slot, error.reason, str(error))
            return
        except ConfigError as error:
            self._retry_start(slot, error.reason, str(error))
            return
        except OSError as error:  # e.g. a mountPath that cannot be created on the host
            self._cannot_start(slot, "StartError", f"cannot prepare the container: {error}")
            return
        except Exception as error:  # noqa: BLE001 - e.g. the API is briefly unreachable
            self._retry_start(slot, "ContainerCreating", f"cannot prepare the container: {error!r}")
            return
        spec = LaunchSpec(argv, env, mounts, slot.spec.get("workingDir") or "", self._hostname())
        launch_dir = self.pod_dir / "launch"
        self._termination_file(slot).write_bytes(b"")
        spec.write(launch_dir / f"{slot.name}.probe.json", launch_dir / f"{slot.name}.probe.error")
        log_path = self.ctx.logs_dir / f"{self.pod['metadata']['namespace']}_{self.pod['metadata']['name']}_{slot.name}.log"
        try:
            slot.process = start_process(self.netns, spec, launch_dir / f"{slot.name}.json", log_path)
        except OSError as error:
            self._cannot_start(slot, "StartError", f"cannot start the container: {error}")
            return
        if slot.runs:
            slot.view.restart_count += 1
        slot.runs += 1
        slot.view.set_running(slot.process.started_at, f"mfl://{self.uid[:8]}-{slot.name}-{slot.runs}")
        self._arm_probes(slot)
        self._event("Normal", "Started", f"Started container {slot.name} (pid {slot.process.pid})", slot)
        log.info("pod %s: started %s (pid %s) at %s", self.key, slot.name, slot.process.pid, self.pod_ip)

    def _cannot_start(self, slot: ContainerSlot, reason: str, message: str) -> None:
        """The container fails without running (exit code 128); its restart policy decides what next."""
        self._event("Warning", "Failed", f"Error: {reason}: {message}", slot)
        self._after_exit(slot, Terminated(128, reason, message, finished_at=utcnow()), ran_for=0.0)

    def _retry_start(self, slot: ContainerSlot, reason: str, message: str) -> None:
        """Wait and try again, as the kubelet does for a missing Secret or ConfigMap."""
        if slot.view.waiting_reason != reason or slot.view.waiting_message != message:
            self._event("Warning", "Failed", f"Error: {message}", slot)
        slot.view.set_waiting(reason, message)
        slot.next_start = time.monotonic() + CONFIG_RETRY

    def _mounts(self, slot: ContainerSlot) -> list[Mount]:
        mounts = container_mounts(slot.spec, self.volumes or {})
        path = slot.spec.get("terminationMessagePath") or DEFAULT_TERMINATION_PATH
        mounts.append(Mount(str(self._termination_file(slot)), path, is_file=True))
        if not self.host_network:
            mounts.append(Mount(str(self.pod_dir / "hosts"), "/etc/hosts", is_file=True))
        targets = [m.target for m in mounts]
        for mount in mounts:  # create missing host mount points, except those inside another volume
            nested = any(mount.target.startswith(other.rstrip("/") + "/") for other in targets if other != mount.target)
            if not nested and missing_path_chain(mount.target):
                self.ctx.mountpoints.ensure(mount.target, mount.is_file)
        return mounts

    def _termination_file(self, slot: ContainerSlot) -> Path:
        path = self.pod_dir / "termination" / slot.name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def _on_exit(self, slot: ContainerSlot, code: int) -> None:
        process = slot.process
        assert process is not None
        slot.process = None
        start_error = process.start_error() if code == 128 else None
        if start_error:
            reason, message = "StartError", start_error
        else:
            reason, message = exit_reason(code), read_termination_message(self._termination_file(slot))
            if not message.strip() and code != 0 and slot.spec.get("terminationMessagePolicy") == "FallbackToLogsOnError":
                message = process.log_tail()
        terminated = Terminated(code, reason, message, process.started_at, utcnow(), slot.view.container_id)
        log.info("pod %s: %s exited with %s (%s)", self.key, slot.name, code, reason)
        self._after_exit(slot, terminated, ran_for=time.monotonic() - process.started_monotonic)

    def _after_exit(self, slot: ContainerSlot, terminated: Terminated, ran_for: float,
                    adopting: bool = False) -> None:
        if not should_restart(slot.restart_policy, terminated.exit_code) or self.failure is not None:
            slot.view.set_terminated(terminated)
            slot.next_start = None
            return
        delay = 0.0 if adopting else restart_delay(slot.view.restart_count, ran_for,
                                                   self.ctx.restart_backoff, self.ctx.max_backoff)
        slot.view.last_terminated = terminated
        slot.next_start = time.monotonic() + delay
        meta = self.pod["metadata"]
        message = (f"back-off {delay:.0f}s restarting failed container={slot.name} "
                   f"pod={meta['name']}_{meta['namespace']}({self.uid})")
        slot.view.set_waiting("CrashLoopBackOff" if delay else "ContainerCreating", message if delay else "")
        if delay:
            self._event("Warning", "BackOff", "Back-off restarting failed container", slot)

    # --- probes --------------------------------------------------------------------------------------
    def _arm_probes(self, slot: ContainerSlot) -> None:
        started = time.monotonic()
        slot.probes = {kind: ProbeTracker(kind, slot.spec[f"{kind}Probe"], started)
                       for kind in ("startup", "liveness", "readiness") if slot.spec.get(f"{kind}Probe")}
        slot.view.started = "startup" not in slot.probes
        slot.view.ready = slot.view.started and "readiness" not in slot.probes

    def _probe(self, slot: ContainerSlot, now: float) -> None:
        startup = slot.probes.get("startup")
        if startup is not None and not startup.passing:
            self._check(slot, startup, now)
            if startup.failed:
                self._kill(slot, "Startup probe failed")
            slot.view.started = startup.passing
            return
        slot.view.started = True
        for kind in ("liveness", "readiness"):
            tracker = slot.probes.get(kind)
            if tracker is not None:
                self._check(slot, tracker, now)
        liveness, readiness = slot.probes.get("liveness"), slot.probes.get("readiness")
        if liveness is not None and liveness.failed:
            self._kill(slot, "Liveness probe failed")
            return
        slot.view.ready = readiness.passing if readiness is not None else True

    def _check(self, slot: ContainerSlot, tracker: ProbeTracker, now: float) -> None:
        if not tracker.due(now):
            return
        probe_spec = self.pod_dir / "launch" / f"{slot.name}.probe.json"
        ok, message = run_probe(tracker.spec, self.pod_ip, container_ports(slot.spec), tracker.settings.timeout,
                                lambda argv, timeout: run_once(self.netns, probe_spec, argv, timeout))
        tracker.record(ok, time.monotonic())
        if not ok and tracker.failures == 1:  # one event per failure streak, not one per period
            self._event("Warning", "Unhealthy", f"{tracker.kind.capitalize()} probe failed: {message}", slot)

    def _kill(self, slot: ContainerSlot, why: str) -> None:
        if slot.process is not None:
            self._event("Normal", "Killing", f"Container {slot.name} failed: {why}, will be restarted", slot)
            slot.process.terminate(grace_seconds(self.pod))

    def _check_deadline(self) -> None:
        deadline = self.pod["spec"].get("activeDeadlineSeconds")
        if deadline is None or self.failure is not None:
            return
        if (utcnow() - self.start_time).total_seconds() >= float(deadline):
            self.failure = ("DeadlineExceeded", "Pod was active on the node longer than the specified deadline")
            self._event("Normal", "DeadlineExceeded", self.failure[1])
            for slot in self.init + self.containers:
                if slot.process is not None:
                    slot.process.terminate(grace_seconds(self.pod))

    # --- status ----------------------------------------------------------------------------------------
    def _view(self) -> PodView:
        return PodView(self.pod_ip, self.ctx.host_ip, self.start_time, [s.view for s in self.init],
                       [s.view for s in self.containers], self.failure)

    def _status_base(self) -> dict[str, Any]:
        """The pod with our last conditions (so transition times stay put) and others' conditions."""
        api_conditions = (self.pod.get("status") or {}).get("conditions") or []
        if self.last_status is None:
            return self.pod
        ours = [c for c in self.last_status["conditions"] if c["type"] in OUR_CONDITIONS]
        foreign = [c for c in api_conditions if c["type"] not in OUR_CONDITIONS]
        return {**self.pod, "status": {"conditions": ours + foreign}}

    def _publish(self) -> None:
        status = build_pod_status(self._status_base(), self._view())
        if status == self.last_status:
            return
        try:
            self.ctx.api.patch_pod_status(self.pod, status)
            self.last_status = status
        except PodGone:
            log.info("pod %s is gone", self.key)
            self._gone = True
        except Exception as error:  # noqa: BLE001 - retried shortly
            log.warning("pod %s: status write failed: %s", self.key, error)
            self._publish_after = time.monotonic() + 2.0

    def _nothing_to_run(self) -> bool:
        return all(slot.next_start is None for slot in self.init + self.containers)

    def running(self) -> bool:
        return any(slot.process is not None for slot in self.init + self.containers)

    def _terminal(self) -> bool:
        return (self.last_status or {}).get("phase") in TERMINAL_PHASES

    # --- the end -----------------------------------------------------------------------------------------
    def _shut_down(self) -> None:
        grace = self._stop_grace if self._stop_grace is not None else 0.0
        try:
            self._stop_processes(grace)
        finally:
            self._release_network()
            shutil.rmtree(self.pod_dir, ignore_errors=True)
        if self._delete_after_stop and not self._gone:
            try:
                self.ctx.api.delete_pod_now(self.pod)
                log.info("pod %s: deleted after its containers stopped", self.key)
            except Exception as error:  # noqa: BLE001
                log.warning("pod %s: final delete failed: %s", self.key, error)

    def _stop_processes(self, grace: float) -> None:
        running = [slot for slot in self.init + self.containers if slot.process is not None]
        for slot in running:
            assert slot.process is not None
            slot.process.kill_deadline = None
            slot.process.terminate(grace)
            self._event("Normal", "Killing", f"Stopping container {slot.name}", slot)
        deadline = time.monotonic() + grace + 5.0
        while running and time.monotonic() < deadline:
            for slot in list(running):
                assert slot.process is not None
                slot.process.enforce_deadline()
                if slot.process.poll() is not None:
                    running.remove(slot)
            time.sleep(0.05)

    def _event(self, type_: str, reason: str, message: str, slot: ContainerSlot | None = None) -> None:
        self.ctx.events.record(self.pod, type_, reason, message, slot.name if slot else None)
