"""Operator replicas on the test bed: kill one, cut one off from the API server, read what each one believes,
and keep every container's log across restarts.

- `kill_replica` SIGKILLs a replica's container (as `Cluster.kill_container`) and, by default, force-deletes its
  Pod at once, as the loss of its node would: its name (its identity and Lease) never comes back, so the
  other replicas have to take over (a container restarted in the same Pod would resume its own Lease).
- `Partition` drops a Pod's packets to the API server (an iptables rule on the node's INPUT chain: the API
  server listens on the node's address, and the ClusterIP 10.96.0.1:443 is DNATed to it by kube-proxy before
  INPUT, so one rule covers both paths). Its chain is named KUBE-*: the node's teardown (`mfl testbed down`)
  removes it even after a crashed run, so a reused Pod IP is never cut off by a rule left behind.
- `replica_metrics` reads one replica's /metrics from the node (the Pod IP, not through the API server: it
  answers while the replica is partitioned).
- `PodLogKeeper` copies the kubelet's container logs (/var/log/pods/<ns>_<pod>_<uid>/<container>/<n>.log) of
  a namespace's Pods into the test bed's log folder as they appear and grow: the kubelet keeps only the
  current and the previous container's log of a Pod, and none once the Pod is gone.
"""

from __future__ import annotations

import json
import re
import shutil
import threading
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from mfl_testbed import node as node_module
from mfl_testbed.process import TestbedError

POD_LOGS = Path("/var/log/pods")  # the kubelet's (1.20: not configurable)
PARTITION_CHAIN = "KUBE-MFL-TEST-PARTITION"  # KUBE-*: node.teardown removes it (see the module's docstring)
METRICS_PORT = 8000  # manifests/operator.yaml


# ---- kill -----------------------------------------------------------------------------------------------


def kill_replica(kubectl: Callable[..., Any], namespace: str, pod: str, forget: bool = True) -> None:
    """SIGKILL the Pod's (only) container; `forget`: force-delete the Pod right after (its node lost: the
    Deployment replaces it under a new name, the kubelet kills a container it restarted meanwhile)."""
    found = json.loads(kubectl("get", "pod", pod, "-n", namespace, "-o", "json").stdout)
    [container] = found["status"]["containerStatuses"]
    node_module.ctr("tasks", "kill", "-s", "SIGKILL", container["containerID"].split("://", 1)[1])
    if forget:
        kubectl("delete", "pod", pod, "-n", namespace, "--grace-period=0", "--force", "--wait=false", check=False)


# ---- partition ------------------------------------------------------------------------------------------


def api_server_port(server_url: str) -> int:
    """The API server's port on the node (ControlPlane.server, https://<node IP>:<port>)."""
    port = urlsplit(server_url).port
    if port is None:
        raise TestbedError(f"no port in the API server's URL {server_url}")
    return port


class Partition:
    """`with Partition(pod_ip, port):` drops what the Pod sends to the API server (both its ClusterIP and the
    node's address); `heal()` (or leaving the block) removes the rule. Only one at a time."""

    def __init__(self, pod_ip: str, api_port: int) -> None:
        self.rule = ["-s", pod_ip, "-p", "tcp", "--dport", str(api_port), "-j", "DROP"]
        self.active = False

    def cut(self) -> Partition:
        node_module.run("iptables", "-w", "-N", PARTITION_CHAIN, check=False)  # exists already: fine
        node_module.run("iptables", "-w", "-F", PARTITION_CHAIN)
        node_module.run("iptables", "-w", "-A", PARTITION_CHAIN, *self.rule)
        self.active = True
        node_module.run("iptables", "-w", "-I", "INPUT", "1", "-j", PARTITION_CHAIN)
        return self

    def heal(self) -> None:
        if not self.active:
            return
        for _ in range(10):  # every jump to the chain (one, unless a cut ran twice)
            if f"-j {PARTITION_CHAIN}" not in node_module.run("iptables", "-w", "-S", "INPUT", check=False):
                break
            node_module.run("iptables", "-w", "-D", "INPUT", "-j", PARTITION_CHAIN, check=False)
        node_module.run("iptables", "-w", "-F", PARTITION_CHAIN, check=False)
        node_module.run("iptables", "-w", "-X", PARTITION_CHAIN, check=False)
        self.active = False

    def __enter__(self) -> Partition:
        return self.cut()

    def __exit__(self, *_: object) -> None:
        self.heal()


# ---- what a replica believes ----------------------------------------------------------------------------

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def parse_metrics(text: str, names: Iterable[str]) -> dict[str, float]:
    """The sum over label sets of each of `names` in a Prometheus text exposition (absent: not in the result)."""
    wanted, found = set(names), {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match and match.group(1) in wanted:
            try:
                found[match.group(1)] = found.get(match.group(1), 0.0) + float(match.group(3))
            except ValueError:
                continue
    return found


def replica_metrics(pod_ip: str, port: int = METRICS_PORT, timeout: float = 0.4) -> dict[str, float] | None:
    """mfl_operator_replica_lease (1 while it acts on its shard), mfl_operator_leader (1 while it coordinates)
    and mfl_operator_loops (summed: the loops its engine holds) of one replica; None when it does not answer."""
    try:
        with urllib.request.urlopen(f"http://{pod_ip}:{port}/metrics", timeout=timeout) as answer:  # noqa: S310
            text = answer.read().decode(errors="replace")
    except OSError:
        return None
    return parse_metrics(text, ("mfl_operator_replica_lease", "mfl_operator_leader", "mfl_operator_loops"))


# ---- logs -----------------------------------------------------------------------------------------------


class PodLogKeeper(threading.Thread):
    """Copies every container log of `namespace`'s Pods to `target/<pod>/<container>/<file>` every `interval`
    seconds (a file whose size or mtime changed), until `stop()` (which copies once more). Files last written
    before `since` (a Unix time) are left out: the kubelet leaves the folders of an earlier test bed's Pods."""

    def __init__(
        self, namespace: str, target: Path, root: Path = POD_LOGS, interval: float = 0.5, since: float = 0.0
    ) -> None:
        super().__init__(name=f"pod-logs-{namespace}", daemon=True)
        self.namespace, self.target, self.root, self.interval = namespace, Path(target), Path(root), interval
        self.since = since
        self._seen: dict[Path, tuple[int, int]] = {}
        self._stopped = threading.Event()
        self._lock = threading.Lock()

    def run(self) -> None:
        while not self._stopped.wait(self.interval):
            self.copy()

    def stop(self) -> None:
        self._stopped.set()
        if self.is_alive():
            self.join(5)
        self.copy()

    def copy(self) -> None:
        with self._lock:
            for pod_dir in self.root.glob(f"{self.namespace}_*"):
                pod = pod_dir.name.split("_")[1] if pod_dir.name.count("_") >= 2 else pod_dir.name
                for source in pod_dir.glob("*/*.log*"):
                    try:
                        stat = source.stat()
                    except OSError:
                        continue
                    key = (stat.st_size, stat.st_mtime_ns)
                    if self._seen.get(source) == key or stat.st_mtime < self.since:
                        continue
                    destination = self.target / pod / source.parent.name / source.name
                    destination.parent.mkdir(parents=True, exist_ok=True)
                    try:
                        shutil.copyfile(source, destination)
                    except OSError:  # rotated or removed meanwhile: the next pass sees what is left
                        continue
                    self._seen[source] = key

    def files(self) -> list[Path]:
        """The kept logs, by Pod, container and container start (the kubelet numbers them 0, 1, ...)."""

        def order(path: Path) -> tuple[str, str, int, str]:
            number = path.name.split(".", 1)[0]
            return path.parts[-3], path.parts[-2], int(number) if number.isdigit() else -1, path.name

        return sorted(self.target.glob("*/*/*.log*"), key=order) if self.target.exists() else []

    def text(self, lines: int | None = None) -> str:
        """Every kept log (the last `lines` of each), under a header naming Pod, container and start."""
        parts = []
        for path in self.files():
            content = path.read_text(errors="replace").splitlines()
            shown = content[-lines:] if lines else content
            header = f"----- {path.parts[-3]}/{path.parts[-2]} start {path.name} ({len(content)} lines) -----"
            parts.append("\n".join([header, *(cri_message(line) for line in shown)]))
        return "\n".join(parts)


def cri_message(line: str) -> str:
    """A CRI log line ("<time> <stream> <F|P> <message>") as "<time> <message>"."""
    fields = line.split(" ", 3)
    return f"{fields[0]} {fields[3]}" if len(fields) == 4 and fields[2] in ("F", "P") else line
