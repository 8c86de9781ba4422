"""The pod runtime: plays the kubelet of one Node for the local control plane.

It registers a Node (Ready, untainted, heartbeats), watches the Pods the scheduler binds to it, and
runs every container as a local process in the Pod's own network namespace (a veth on the runtime's
bridge, a Pod IP from 10.244.0.0/24) and private mount namespace (volumes bind-mounted at their
mountPath). It writes Pod status as a kubelet does, so Deployments, Jobs, Services/Endpoints and
probes behave as on a real node, serves Prometheus http_sd for annotated Pods, and binds unbound
PersistentVolumeClaims to hostPath volumes (podruntime_storage), as there is no storage provisioner.

    python -m feedbackloop.localdev.podruntime --kubeconfig K --node-name mfl-node --workdir W --sd-port P

or `start_pod_runtime_process(kubeconfig, workdir)` (tests, `mfl demo`), or `PodRuntime(...).start()`.
Needs root (network namespaces, mounts) and `ip`/`unshare` (iproute2, util-linux).

Differences from a kubelet: no images (see podruntime_images.IMAGE_ENTRYPOINTS), containers share
the host's file system and PATH, no resource limits, no Service ClusterIPs and no route out of the Pod
subnet. Container output goes to `<workdir>/logs/<ns>_<pod>_<container>.log` (restarts append);
`kubectl logs [-f] [--tail]` reads it through a small kubelet endpoint on <bridge IP>:10250
(podruntime_logs), but `kubectl exec`, `attach`, `port-forward` and `logs --previous` do not work.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from kubernetes import watch
from kubernetes.client.rest import ApiException

from .netutil import LOOPBACK, free_port, http_request, wait_until
from .podruntime_api import KubeApi
from .podruntime_logs import KubeletLogServer
from .podruntime_net import IPAllocator, Network, Slot, acquire_slot, clean_abandoned_slots, other_slots_in_use
from .podruntime_node import EventRecorder, NodeAgent
from .podruntime_pod import PodWorker, RuntimeContext, grace_seconds
from .podruntime_sd import SdServer
from .podruntime_status import TERMINAL_PHASES
from .podruntime_storage import LocalProvisioner
from .podruntime_volumes import MountpointRegistry
from .process import TestbedError, TestbedUnavailable, tail

log = logging.getLogger("feedbackloop.localdev.podruntime")

DEFAULT_NODE = "mfl-node"
WATCH_SECONDS = 60
FORCED_DELETE_GRACE = 1.0  # a Pod removed without a graceful deletion (forced): kill fast
READY_FILE = "podruntime.ready.json"


def preflight() -> None:
    """Raise TestbedUnavailable when this machine cannot run Pods."""
    if os.geteuid() != 0:
        raise TestbedUnavailable("the pod runtime needs root (network namespaces, bind mounts)")
    missing = [tool for tool in ("ip", "unshare") if shutil.which(tool) is None]
    if missing:
        raise TestbedUnavailable(f"the pod runtime needs {', '.join(missing)} (apt-get install iproute2 util-linux)")


class PodRuntime:
    def __init__(self, kubeconfig: str | Path | None, workdir: str | Path, node_name: str = DEFAULT_NODE,
                 sd_port: int = 0, slot: int | None = None, restart_backoff: float = 10.0,
                 heartbeat_seconds: float = 10.0, shutdown_grace: float = 10.0, provision_volumes: bool = True) -> None:
        self.kubeconfig = str(kubeconfig) if kubeconfig else None
        self.workdir = Path(workdir).resolve()
        self.node_name = node_name
        self.requested_sd_port = sd_port
        self.requested_slot = slot
        self.restart_backoff = restart_backoff
        self.heartbeat_seconds = heartbeat_seconds
        self.shutdown_grace = shutdown_grace
        self.provision_volumes = provision_volumes
        self.workers: dict[str, PodWorker] = {}
        self.slot: Slot | None = None
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._listed = threading.Event()
        self._last_contact = 0.0
        self._slot_lock: IO[str] | None = None
        self._started = False

    # --- lifecycle -----------------------------------------------------------------------------------
    def start(self, timeout: float = 60.0) -> PodRuntime:
        preflight()
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "logs").mkdir(exist_ok=True)
        self.api = KubeApi(self.kubeconfig)
        self.slot, self._slot_lock = acquire_slot(self.requested_slot)
        self._started = True
        try:
            self._start_components(timeout)
        except BaseException:
            self.stop()
            raise
        log.info("pod runtime ready: node %s, bridge %s %s, pods on %s, sd %s", self.node_name, self.slot.bridge,
                 self.slot.gateway, self.slot.network, self.sd_url)
        return self

    def _start_components(self, timeout: float) -> None:
        assert self.slot is not None
        self.network = Network(self.slot)
        self.network.setup()
        clean_abandoned_slots(self.slot)
        self.log_server = KubeletLogServer(self.slot.gateway, self.workdir / "logs", self.workdir / "pki",
                                           self.node_name, self._pod_is_running)
        kubelet_port = self.log_server.port if self.log_server.start() else 0
        self.mountpoints = MountpointRegistry(self.workdir / "mountpoints.json")
        self.events = EventRecorder(self.api.client, self.node_name)
        self.node = NodeAgent(self.api.client, self.node_name, self.slot.gateway, str(self.slot.network),
                              self.heartbeat_seconds, kubelet_port)
        self.node.register()
        self.node.start()
        self.context = RuntimeContext(
            api=self.api, network=self.network, events=self.events, mountpoints=self.mountpoints,
            allocator=IPAllocator(self.slot.network, reserved={self.slot.gateway}), node_name=self.node_name,
            host_ip=self.slot.gateway, workdir=self.workdir, host_env=dict(os.environ),
            restart_backoff=self.restart_backoff)
        if self.provision_volumes:
            self.provisioner = LocalProvisioner(self.api, self.workdir, self.node_name)
            self.provisioner.start()
        threading.Thread(target=self._watch_loop, name="podruntime-watch", daemon=True).start()
        if not self._listed.wait(timeout):
            raise TestbedError(f"could not list the Pods of node {self.node_name} in {timeout:.0f}s")
        self.sd = SdServer(self.requested_sd_port, self.pod_snapshots, self.healthy, self.info)
        self.sd.start()
        self._ready_file().write_text(json.dumps(self.info()))

    def stop(self) -> None:
        """Stop every Pod's processes, remove the bridge and namespaces; the Pod objects stay."""
        if not self._started:
            return
        self._started = False
        self._stopping.set()
        self._ready_file().unlink(missing_ok=True)
        with self._lock:
            workers = list(self.workers.values())
        for worker in workers:
            worker.request_stop(min(grace_seconds(worker.pod), self.shutdown_grace), delete=False)
        for worker in workers:
            worker.join(self.shutdown_grace + 15)
        for component in ("provisioner", "sd", "log_server", "node", "events"):
            if hasattr(self, component):
                getattr(self, component).stop()
        if hasattr(self, "network"):
            self.network.teardown()
        if hasattr(self, "mountpoints") and self.slot and not other_slots_in_use(self.slot):
            self.mountpoints.remove_all()  # another runtime's containers may still mount them otherwise
        if self._slot_lock is not None:
            self._slot_lock.close()
            self._slot_lock = None
        self.api.close()
        log.info("pod runtime stopped")

    def __enter__(self) -> PodRuntime:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # --- queries -------------------------------------------------------------------------------------
    @property
    def sd_url(self) -> str:
        return f"http://{LOOPBACK}:{self.sd.port}/sd"

    def info(self) -> dict[str, Any]:
        """Where things are: served at /info and written to `<workdir>/podruntime.ready.json`."""
        assert self.slot is not None
        return {"pid": os.getpid(), "sdUrl": self.sd_url, "node": self.node_name, "slot": self.slot.index,
                "bridge": self.slot.bridge, "hostIP": self.slot.gateway, "podSubnet": str(self.slot.network),
                "workdir": str(self.workdir), "logs": str(self.workdir / "logs"),
                "volumes": str(self.workdir / "volumes")}

    def healthy(self) -> bool:
        return not self._stopping.is_set() and time.monotonic() - self._last_contact < 2 * WATCH_SECONDS + 30

    def pod_snapshots(self) -> list[dict[str, Any]]:
        with self._lock:
            return [worker.snapshot() for worker in self.workers.values() if not worker.finished.is_set()]

    def _pod_is_running(self, namespace: str, name: str) -> bool:
        with self._lock:
            return any(worker.key == f"{namespace}/{name}" and worker.running() and not worker.finished.is_set()
                       for worker in self.workers.values())

    def _ready_file(self) -> Path:
        return self.workdir / READY_FILE

    # --- watching Pods -------------------------------------------------------------------------------
    def _watch_loop(self) -> None:
        resource_version: str | None = None
        while not self._stopping.is_set():
            try:
                if resource_version is None:
                    resource_version = self._relist()
                resource_version = self._watch_from(resource_version)
            except ApiException as error:
                if error.status != 410:
                    log.warning("pod watch failed: %s %s", error.status, error.reason)
                    time.sleep(1.0)
                resource_version = None  # 410 Gone (or anything unexpected): list again
            except Exception as error:  # noqa: BLE001 - the API may be restarting; keep trying
                if not self._stopping.is_set():
                    log.warning("pod watch failed: %r", error)
                    time.sleep(1.0)
                resource_version = None

    def _relist(self) -> str:
        pods, resource_version = self.api.list_pods(self.node_name)
        self._last_contact = time.monotonic()
        present = {pod["metadata"]["uid"] for pod in pods}
        if not self._listed.is_set():
            with self.context.ip_lock:
                self.context.allocator.avoid({(pod.get("status") or {}).get("podIP") for pod in pods} - {None})
        for pod in pods:
            self._handle("ADDED", pod)
        with self._lock:
            vanished = [worker for uid, worker in self.workers.items() if uid not in present]
        for worker in vanished:
            worker.request_stop(FORCED_DELETE_GRACE, delete=False)
        if not self._listed.is_set():
            self._remove_stale_pod_dirs(present)
            self._listed.set()
        return resource_version

    def _watch_from(self, resource_version: str) -> str:
        stream = watch.Watch()
        for event in stream.stream(self.api.core.list_pod_for_all_namespaces,
                                   field_selector=f"spec.nodeName={self.node_name}",
                                   resource_version=resource_version, timeout_seconds=WATCH_SECONDS,
                                   allow_watch_bookmarks=True, deserialize=False,
                                   _request_timeout=WATCH_SECONDS + 30):
            if self._stopping.is_set():
                stream.stop()
                break
            self._last_contact = time.monotonic()
            pod = event["object"]
            resource_version = pod["metadata"].get("resourceVersion", resource_version)
            if event["type"] != "BOOKMARK":
                self._handle(event["type"], pod)
        self._last_contact = time.monotonic()
        return resource_version

    def _handle(self, kind: str, pod: dict[str, Any]) -> None:
        try:
            self._dispatch(kind, pod)
        except Exception:
            log.exception("pod %s/%s: could not handle %s", pod["metadata"].get("namespace"),
                          pod["metadata"].get("name"), kind)

    def _dispatch(self, kind: str, pod: dict[str, Any]) -> None:
        metadata = pod["metadata"]
        with self._lock:
            self._reap_finished()
            worker = self.workers.get(metadata["uid"])
            if worker is not None:
                worker.update(pod)
            if kind == "DELETED":
                if worker is not None:
                    worker.request_stop(FORCED_DELETE_GRACE, delete=False)
                return
            if metadata.get("deletionTimestamp"):
                if worker is not None:
                    worker.request_stop(grace_seconds(pod), delete=True)
                else:  # nothing runs for it here (finished before a runtime restart): let it go
                    threading.Thread(target=self.api.delete_pod_now, args=(pod,), daemon=True).start()
                return
            phase = (pod.get("status") or {}).get("phase")
            if worker is None and phase not in TERMINAL_PHASES and not self._stopping.is_set():
                worker = PodWorker(self.context, pod)
                self.workers[metadata["uid"]] = worker
                worker.start()

    def _reap_finished(self) -> None:
        for uid in [uid for uid, worker in self.workers.items() if worker.finished.is_set()]:
            del self.workers[uid]

    def _remove_stale_pod_dirs(self, present: set[str]) -> None:
        pods_dir = self.workdir / "pods"
        for folder in pods_dir.iterdir() if pods_dir.exists() else []:
            if folder.name.rsplit("_", 1)[-1] not in present:
                shutil.rmtree(folder, ignore_errors=True)


# --- as a separate process -----------------------------------------------------------------------------
class PodRuntimeProcess:
    """The runtime as a child process (tests, `mfl demo`); its log is `<workdir>/podruntime.log`."""

    def __init__(self, kubeconfig: str | Path, workdir: str | Path, node_name: str = DEFAULT_NODE,
                 sd_port: int | None = None, extra_args: Sequence[str] = ()) -> None:
        self.kubeconfig = Path(kubeconfig)
        self.workdir = Path(workdir).resolve()
        self.node_name = node_name
        self.port = sd_port or free_port()
        self.extra_args = list(extra_args)
        self.log_path = self.workdir / "podruntime.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def sd_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}/sd"

    def start(self, timeout: float = 60.0) -> PodRuntimeProcess:
        """Start it and wait until it serves /healthz; raises TestbedUnavailable / TestbedError."""
        preflight()
        self.workdir.mkdir(parents=True, exist_ok=True)
        ready_file = self.workdir / READY_FILE
        ready_file.unlink(missing_ok=True)
        command = [sys.executable, "-m", "feedbackloop.localdev.podruntime", "--kubeconfig", str(self.kubeconfig),
                   "--node-name", self.node_name, "--workdir", str(self.workdir), "--sd-port", str(self.port),
                   *self.extra_args]
        with self.log_path.open("ab") as log_file:
            self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log_file,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        process = self.process

        def exited() -> None:
            if process.poll() is not None:
                raise TestbedError(f"pod runtime exited with code {process.returncode}:\n{self.log_tail()}")

        def serving() -> bool:
            ready = ready_file.exists() and json.loads(ready_file.read_text()).get("pid") == process.pid
            return ready and http_request(f"http://{LOOPBACK}:{self.port}/healthz", timeout=2.0)[0] == 200

        try:
            wait_until(serving, timeout=timeout, what="the pod runtime", on_poll=exited)
        except TimeoutError as error:
            self.stop()
            raise TestbedError(f"{error}\n{self.log_tail()}") from error
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM: the runtime stops its Pods' processes and removes its network; SIGKILL after `timeout`."""
        if self.process is not None:
            stop_pod_runtime_process(self.process, timeout)

    def info(self) -> dict[str, Any]:
        return json.loads(http_request(f"http://{LOOPBACK}:{self.port}/info", timeout=5.0)[1])

    def log_tail(self, lines: int = 40) -> str:
        return tail(self.log_path, lines)


def start_pod_runtime_process(kubeconfig: str | Path, workdir: str | Path, node_name: str = DEFAULT_NODE,
                              sd_port: int | None = None, timeout: float = 60.0,
                              extra_args: Sequence[str] = ()) -> tuple[subprocess.Popen[bytes], str]:
    """Start `python -m feedbackloop.localdev.podruntime` and wait until it serves; (process, sd URL).

    Stop it with `stop_pod_runtime_process(process)`. Raises TestbedUnavailable / TestbedError.
    """
    runtime = PodRuntimeProcess(kubeconfig, workdir, node_name, sd_port, extra_args).start(timeout)
    assert runtime.process is not None
    return runtime.process, runtime.sd_url


def stop_pod_runtime_process(process: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m feedbackloop.localdev.podruntime", description=__doc__.split("\n")[0])
    parser.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"))
    parser.add_argument("--node-name", default=DEFAULT_NODE)
    parser.add_argument("--workdir", required=True, help="logs, volumes and pod folders go here")
    parser.add_argument("--sd-port", type=int, default=0, help="port of /sd and /healthz on 127.0.0.1 (0: any)")
    parser.add_argument("--slot", type=int, default=None, help="network slot 0-3 (default: the first free one)")
    parser.add_argument("--restart-backoff", type=float, default=10.0, help="first CrashLoopBackOff delay (s)")
    parser.add_argument("--no-provisioner", action="store_true",
                        help="do not create hostPath PersistentVolumes for unbound claims")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    runtime = PodRuntime(args.kubeconfig, args.workdir, args.node_name, args.sd_port, args.slot, args.restart_backoff,
                         provision_volumes=not args.no_provisioner)
    try:
        runtime.start()
    except TestbedError as error:
        log.error("%s", error)
        return 2
    print(f"pod runtime ready: sd={runtime.sd_url}", flush=True)
    try:
        while not stop.wait(0.2):
            pass
    finally:
        runtime.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
