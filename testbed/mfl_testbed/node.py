"""A real Kubernetes node on this machine: containerd + runc + CNI bridge + kubelet + kube-proxy.

The kubelet and kube-proxy (1.20.2) come from the same Debian source tree as the control plane
(`build-control-plane.sh`); containerd, runc and the CNI plugins are Debian's. Images come from
OCI archives (`images.py`): there is no registry. Recipe and pitfalls: shared/notes/real-node.md.

A node changes the machine: a bridge, iptables chains (kube-proxy and the kubelet), kernel
tunables, mounts and network namespaces. Everything it changes is recorded in a state file
(`STATE_DIR/state.json`) before it is changed, so `teardown()` — or `mfl testbed down` from
another process, after a crash or `mfl demo --keep` — restores the machine.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from mfl_testbed.netutil import free_ports, wait_until
from mfl_testbed.process import (
    ManagedProcess,
    TestbedError,
    TestbedUnavailable,
    cache_dir,
    tail,
    wait_for_process,
)

NODE_NAME = "mfl-node"
BRIDGE = "mflbr0"
NODE_IP = "10.245.0.1"
POD_CIDR = "10.245.0.0/24"
SERVICE_CIDR = "10.96.0.0/16"
CLUSTER_DOMAIN = "cluster.local"  # mfl_testbed.dns serves it
PAUSE_IMAGE = "k8s.gcr.io/pause:3.2"
STATE_DIR = Path("/run/mfl-testbed")
SOCKET = STATE_DIR / "containerd" / "containerd.sock"
NAMESPACE = "k8s.io"  # containerd namespace the CRI plugin uses
# Kernel tunables the kubelet (overcommit, panic) and kube-proxy (route_localnet, forwarding) change.
SYSCTLS = (
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
    "net/ipv4/ip_forward",
    "net/ipv4/conf/all/route_localnet",
    "net/bridge/bridge-nf-call-iptables",
)
REQUIRED_COMMANDS = {
    "containerd": "containerd",
    "runc": "runc",
    "ctr": "containerd",
    "ip": "iproute2",
    "iptables": "iptables",
    "iptables-save": "iptables",
}
CNI_BIN = Path("/usr/lib/cni")


def missing_packages() -> list[str]:
    """Debian packages the node needs and this machine lacks."""
    missing = {package for command, package in REQUIRED_COMMANDS.items() if shutil.which(command) is None}
    if not (CNI_BIN / "bridge").exists():
        missing.add("containernetworking-plugins")
    return sorted(missing)


def run(*args: str, check: bool = True, timeout: float = 60.0, input: str | None = None) -> str:  # noqa: A002
    result = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, check=False, input=input)
    if check and result.returncode != 0:
        raise TestbedError(f"{' '.join(args)} failed ({result.returncode}): {result.stderr.strip()[:500]}")
    return result.stdout


def ctr(*args: str, check: bool = True, timeout: float = 120.0) -> str:
    return run("ctr", f"--address={SOCKET}", "-n", NAMESPACE, *args, check=check, timeout=timeout)


def image_digests() -> dict[str, str]:
    """containerd's image references and the digest each one names."""
    lines = ctr("images", "ls").splitlines()[1:]
    return {line.split()[0]: line.split()[2] for line in lines if len(line.split()) >= 3}


# ---- the state file: what to undo, written before it is done -----------------------------------


def read_state() -> dict[str, Any]:
    try:
        return json.loads((STATE_DIR / "state.json").read_text())
    except (OSError, ValueError):
        return {}


def write_state(state: dict[str, Any]) -> None:
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    path = STATE_DIR / "state.json"
    path.with_suffix(".tmp").write_text(json.dumps(state, indent=1))
    path.with_suffix(".tmp").replace(path)


def record(**changes: Any) -> None:
    state = read_state()
    for key, value in changes.items():
        if key == "pids":
            state.setdefault("pids", {}).update(value)
        else:
            state[key] = value
    write_state(state)


# ---- the node -----------------------------------------------------------------------------------


class Node:
    """containerd, kubelet and kube-proxy for the control plane behind `admin_kubeconfig`.

    `workdir` holds the kubelet's root, logs and configs; it must be traversable by the images'
    non-root user (hostPath volumes under it are read by uid 65532), so callers pass a 0755 folder.
    """

    def __init__(
        self, workdir: Path, bin_dir: Path, admin_kubeconfig: Path, node_kubeconfig: Path, images: Iterable[Path] = ()
    ) -> None:
        self.workdir = Path(workdir)
        self.bin_dir = bin_dir
        self.admin_kubeconfig = admin_kubeconfig
        self.node_kubeconfig = node_kubeconfig
        self.images = list(images)
        self.logs_dir = self.workdir / "logs"
        self.containerd_root = cache_dir() / "containerd"  # images survive between runs
        self._processes: list[ManagedProcess] = []

    # ---- lifecycle -------------------------------------------------------------------------

    def prepare_network(self) -> None:
        """Checks, the saved kernel tunables and the bridge: the control plane listens on its address."""
        if os.geteuid() != 0:
            raise TestbedUnavailable("a real node needs root (containerd, bridges, iptables)")
        if missing := missing_packages():
            raise TestbedUnavailable(f"missing Debian packages for the node: apt-get install {' '.join(missing)}")
        for binary in ("kubelet", "kube-proxy"):
            if not os.access(self.bin_dir / binary, os.X_OK):
                raise TestbedUnavailable(f"{binary} not found in {self.bin_dir}: run build-control-plane.sh")
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self._save_sysctls()
        self._network()

    def start_runtime(self, timeout: float = 600.0) -> None:
        """containerd, and the images imported into it (skipped when it has them already)."""
        self._start_containerd(time.monotonic() + timeout)
        self._import_images()

    def join(self, timeout: float = 120.0) -> None:
        """kubelet (until the node is Ready and untainted) and kube-proxy."""
        self._start_kubelet(time.monotonic() + timeout)
        self._start_kube_proxy()

    def detach(self) -> None:
        """Leave the node running when this process exits (`mfl demo --keep`)."""
        self._processes.clear()

    def stop(self) -> list[str]:
        """Stop the node's processes and undo every change it made to the machine; returns leftovers."""
        for process in reversed(self._processes):
            process.stop()
        self._processes.clear()
        return teardown()

    def log_tails(self, lines: int = 20) -> str:
        logs = sorted(self.logs_dir.glob("*.log")) if self.logs_dir.exists() else []
        return "\n".join(f"----- {log.name} -----\n{tail(log, lines)}" for log in logs)

    # ---- steps -----------------------------------------------------------------------------

    def _spawn(self, name: str, args: list[str]) -> ManagedProcess:
        process = ManagedProcess(name, args, self.logs_dir / f"{name}.log", cwd=self.workdir)
        process.start()
        self._processes.append(process)
        record(pids={name: process.pid})
        return process

    def _save_sysctls(self) -> None:
        state = read_state()
        if "sysctls" in state:  # an earlier node did not tear down: keep the original values
            return
        values = {}
        for key in SYSCTLS:
            path = Path("/proc/sys") / key
            if path.exists():
                values[key] = path.read_text().strip()
        record(sysctls=values)

    def _network(self) -> None:
        """Our own bridge; its address is the node IP (the kubelet refuses loopback node IPs)."""
        record(bridge=BRIDGE)
        if run("ip", "link", "show", BRIDGE, check=False) == "":
            run("ip", "link", "add", BRIDGE, "type", "bridge")
        if f"{NODE_IP}/" not in run("ip", "addr", "show", "dev", BRIDGE):
            run("ip", "addr", "add", f"{NODE_IP}/24", "dev", BRIDGE)
        run("ip", "link", "set", BRIDGE, "up")
        # Pod -> ClusterIP -> Pod: the Pod routes the Service range to the node, kube-proxy DNATs it to a Pod on
        # this same bridge, and the node must forward it back out. Forwarding is turned on for packets that come
        # in on this bridge only (the machine's ip_forward stays as it was; the setting goes with the bridge),
        # without ICMP redirects (the DNATed destination is on-link).
        for key, value in (("forwarding", "1"), ("send_redirects", "0")):
            Path(f"/proc/sys/net/ipv4/conf/{BRIDGE}/{key}").write_text(value)
        conf_dir = self.workdir / "cni" / "net.d"
        conf_dir.mkdir(parents=True, exist_ok=True)
        # isGateway false: no default route in Pods (no egress: their only route beyond the bridge is the Service
        # range, via the node), and the machine's ip_forward is left alone.
        network = {
            "cniVersion": "0.4.0",
            "name": "mfl-pods",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": BRIDGE,
                    "isGateway": False,
                    "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "dataDir": str(self.workdir / "cni" / "ipam"),
                        "ranges": [
                            [
                                {
                                    "subnet": POD_CIDR,
                                    "rangeStart": "10.245.0.10",
                                    "rangeEnd": "10.245.0.250",
                                    "gateway": NODE_IP,
                                }
                            ]
                        ],
                        "routes": [{"dst": SERVICE_CIDR, "gw": NODE_IP}],
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
                {"type": "loopback"},
            ],
        }
        (conf_dir / "10-mfl.conflist").write_text(json.dumps(network, indent=1))

    def _start_containerd(self, deadline: float) -> None:
        (STATE_DIR / "containerd").mkdir(parents=True, exist_ok=True)
        config = self.workdir / "containerd.toml"
        config.write_text(
            CONTAINERD_CONFIG.format(
                root=self.containerd_root,
                state=STATE_DIR / "containerd" / "state",
                socket=SOCKET,
                pause=PAUSE_IMAGE,
                cni_bin=CNI_BIN,
                cni_conf=self.workdir / "cni" / "net.d",
            )
        )
        process = self._spawn("containerd", ["containerd", f"--config={config}"])
        wait_for_process(process, lambda: ctr("version", check=False, timeout=5) != "", deadline)

    def _import_images(self) -> None:
        present = image_digests()
        for archive in self.images:
            ref_file = archive.with_suffix(".ref")
            refs = ref_file.read_text().split() if ref_file.exists() else []
            digests = {present.get(ref) for ref in refs}
            if refs and len(digests) == 1 and None not in digests:
                continue  # every tag of this archive already names the same content in containerd
            ctr("images", "import", "--all-platforms", str(archive), timeout=600)
        if PAUSE_IMAGE not in image_digests():
            raise TestbedError(f"containerd lacks {PAUSE_IMAGE} after importing {self.images}")

    def _start_kubelet(self, deadline: float) -> None:
        root = self.workdir / "kubelet"
        root.mkdir(parents=True, exist_ok=True)
        kubelet_port, healthz_port = free_ports(2)
        process = self._spawn("kubelet", [
            str(self.bin_dir / "kubelet"), f"--kubeconfig={self.node_kubeconfig}",
            f"--hostname-override={NODE_NAME}",
            "--container-runtime=remote", f"--container-runtime-endpoint=unix://{SOCKET}",
            f"--containerd={SOCKET}", "--runtime-request-timeout=10m",
            "--cgroup-driver=cgroupfs", "--fail-swap-on=false",
            f"--node-ip={NODE_IP}", f"--address={NODE_IP}", f"--port={kubelet_port}", "--read-only-port=0",
            "--healthz-bind-address=127.0.0.1", f"--healthz-port={healthz_port}",
            f"--root-dir={root}", f"--cert-dir={root / 'pki'}", f"--volume-plugin-dir={root / 'volumeplugins'}",
            f"--pod-infra-container-image={PAUSE_IMAGE}", "--resolv-conf=",
            # Cluster DNS: dnsmasq on the node's IP (mfl_testbed.dns), names of Services under cluster.local.
            f"--cluster-dns={NODE_IP}", f"--cluster-domain={CLUSTER_DOMAIN}",
            # No registry to pull from again: never garbage-collect images.
            "--image-gc-high-threshold=100", "--image-gc-low-threshold=99",
            "--eviction-hard=memory.available<100Mi", "--v=1",
        ])  # fmt: skip

        def node_ready() -> bool:
            node = json.loads(self._kubectl("get", "node", NODE_NAME, "-o", "json", check=False) or "{}")
            conditions = node.get("status", {}).get("conditions", [])
            ready = any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)
            tainted = any(
                t["key"].startswith("node.kubernetes.io/not-ready") for t in node.get("spec", {}).get("taints") or []
            )
            return ready and not tainted

        wait_for_process(process, node_ready, deadline)

    def _start_kube_proxy(self) -> None:
        metrics, healthz = free_ports(2)
        self._spawn("kube-proxy", [
            str(self.bin_dir / "kube-proxy"), f"--kubeconfig={self.admin_kubeconfig}",
            f"--hostname-override={NODE_NAME}", "--proxy-mode=iptables", f"--cluster-cidr={POD_CIDR}",
            f"--nodeport-addresses={NODE_IP}/32", "--conntrack-max-per-core=0",
            "--conntrack-tcp-timeout-established=0", "--conntrack-tcp-timeout-close-wait=0",
            f"--metrics-bind-address=127.0.0.1:{metrics}", f"--healthz-bind-address=127.0.0.1:{healthz}",
        ])  # fmt: skip

    def _kubectl(self, *args: str, check: bool = True) -> str:
        return run(str(self.bin_dir / "kubectl"), f"--kubeconfig={self.admin_kubeconfig}", *args, check=check)


CONTAINERD_CONFIG = """version = 2
root = "{root}"
state = "{state}"
[grpc]
  address = "{socket}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  disable_apparmor = true
  restrict_oom_score_adj = true   # no CAP_SYS_RESOURCE in this VM: oom_score_adj cannot go below 0
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni_bin}"
    conf_dir = "{cni_conf}"
    max_conf_num = 1
"""


# ---- teardown: from the state file, so it also works from another process ----------------------


def _kill(pid: int, timeout: float = 15.0) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        try:  # our own child: reap it, or it stays a zombie that "exists"
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        except ChildProcessError:
            pass
        time.sleep(0.2)
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def alive(pid: int, name: str) -> bool:
    """`pid` still runs the program we started (not a recycled pid)."""
    try:
        return name.split("-")[0] in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


def pid_exists(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def running_components() -> list[str]:
    """Components of a test bed recorded in the state file that still run."""
    return [name for name, pid in read_state().get("pids", {}).items() if alive(pid, name)]


STOP_ORDER = (
    "dns-watcher",
    "dnsmasq",
    "pod-discovery",
    "prometheus",
    "kube-proxy",
    "kubelet",
    "kube-scheduler",
    "kube-controller-manager",
    "kube-apiserver",
    "etcd",
)


def teardown(log: Callable[[str], None] = lambda line: None) -> list[str]:
    """Undo everything the state file records; returns what is left (empty when clean)."""
    state = read_state()
    if not state:
        _kill_shims(log)  # shims are ours by their address even when the state file is gone
        return leftovers(state)
    pids: dict[str, int] = state.get("pids", {})
    for name in sorted(pids, key=lambda n: STOP_ORDER.index(n) if n in STOP_ORDER else -1):
        if name != "containerd" and alive(pids[name], name):
            _kill(pids[name])
            log(f"stopped {name} ({pids[name]})")
    _remove_containers(log)
    if "containerd" in pids and alive(pids["containerd"], "containerd"):
        _kill(pids["containerd"])
        log("stopped containerd")
    _kill_shims(log)
    _unmount(state, log)
    _remove_network(state, log)
    _remove_iptables_chains(log)
    _restore_sysctls(state.get("sysctls", {}))
    _remove_cgroups()
    shutil.rmtree(STATE_DIR, ignore_errors=True)
    return leftovers(state)


def _remove_containers(log: Callable[[str], None]) -> None:
    if not SOCKET.exists() or ctr("version", check=False, timeout=5) == "":
        return
    tasks = ctr("tasks", "ls", "-q", check=False).split()
    for task in tasks:
        ctr("tasks", "delete", "--force", task, check=False)  # SIGKILLs a running task, then deletes it
    containers = ctr("containers", "ls", "-q", check=False).split()
    for container in containers:
        ctr("containers", "delete", container, check=False)
    if tasks or containers:
        log(f"removed {len(tasks)} running tasks and {len(containers)} containers")


def _process_table() -> dict[int, tuple[int, bytes]]:
    """pid -> (parent pid, command line) of every process."""
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            table[int(entry.name)] = (int(stat.rsplit(")", 1)[1].split()[1]), cmdline)
    return table


def our_shims(table: dict[int, tuple[int, bytes]] | None = None) -> list[int]:
    """containerd shims serving our containerd (they outlive it, and their containers with them)."""
    table = _process_table() if table is None else table
    marker = f"-address\0{STATE_DIR}/".encode()
    return [
        pid
        for pid, (_, cmdline) in table.items()
        if b"containerd-shim" in cmdline.split(b"\0")[0] and marker in cmdline
    ]


def _kill_shims(log: Callable[[str], None]) -> None:
    """SIGKILL every container process under our shims, then the shims: nothing may outlive a teardown."""
    table = _process_table()
    shims = our_shims(table)
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in table.items():
        children.setdefault(parent, []).append(pid)
    doomed, stack = [], list(shims)
    while stack:
        pid = stack.pop()
        doomed.append(pid)
        stack.extend(children.get(pid, []))
    for pid in reversed(doomed):  # children before their parents
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if shims:
        log(f"killed {len(shims)} containerd shims and {len(doomed) - len(shims)} processes under them")
        # Their mounts and network namespaces are released once they are gone (init reaps them).
        wait_until(lambda: not any(pid_exists(pid) for pid in doomed), 10, "the killed shims to exit", 0.05)


def _our_mounts(state: dict[str, Any]) -> list[str]:
    roots = [str(STATE_DIR) + "/", str(cache_dir() / "containerd") + "/", "/run/netns/cni-"]
    roots += [str(Path(w)) + "/" for w in state.get("workdirs", [])]
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if any(point.startswith(root) or point + "/" == root for root in roots):
            mounts.append(point)
    return sorted(mounts, reverse=True)  # deepest first


def _unmount(state: dict[str, Any], log: Callable[[str], None]) -> None:
    mounts = _our_mounts(state)
    for point in mounts:
        if run("umount", point, check=False, timeout=30) == "" and _is_mounted(point):
            run("umount", "-l", point, check=False, timeout=30)
    if mounts:
        log(f"unmounted {len(mounts)} volumes, rootfs and network namespaces")
    for netns in run("ip", "netns", "list", check=False).split("\n"):
        name = netns.split(" ")[0]
        if name.startswith("cni-"):
            run("ip", "netns", "delete", name, check=False)


def _is_mounted(point: str) -> bool:
    return any(line.split()[4] == point for line in Path("/proc/self/mountinfo").read_text().splitlines())


def _remove_network(state: dict[str, Any], log: Callable[[str], None]) -> None:
    bridge = state.get("bridge")
    if bridge and run("ip", "link", "show", bridge, check=False):
        run("ip", "link", "del", bridge, check=False)
        log(f"removed bridge {bridge}")


def _remove_iptables_chains(log: Callable[[str], None]) -> None:
    """kube-proxy's and the kubelet's KUBE-* rules and chains (nothing else here uses KUBE-*)."""
    removed = 0
    for table in ("filter", "nat", "mangle"):
        jumps, chains = kube_iptables(run("iptables-save", "-t", table, check=False))
        for rule in jumps:
            run("iptables", "-t", table, "-D", *rule, check=False)
        for flag in ("-F", "-X"):  # flush every chain first: they jump to each other
            for chain in chains:
                run("iptables", "-t", table, flag, chain, check=False)
        removed += len(jumps) + len(chains)
    if removed:
        log(f"removed {removed} iptables KUBE-* rules and chains")


def kube_iptables(dump: str) -> tuple[list[list[str]], list[str]]:
    """From one table's `iptables-save`: the rules of built-in chains that jump into KUBE-* chains
    (as `-D` arguments: chain then rule), and the KUBE-* chains themselves."""
    jumps, chains = [], []
    for line in dump.splitlines():
        if line.startswith(":KUBE-"):
            chains.append(line[1:].split()[0])
        elif line.startswith("-A ") and "-j KUBE-" in line and not line.split()[1].startswith("KUBE-"):
            jumps.append(shlex.split(line)[1:])
    return jumps, chains


def _restore_sysctls(values: dict[str, str]) -> None:
    for key, value in values.items():
        path = Path("/proc/sys") / key
        try:
            if path.read_text().strip() != value:
                path.write_text(value)
        except OSError:
            pass


def _remove_cgroups() -> None:
    for hierarchy in Path("/sys/fs/cgroup").glob("*"):
        for top in ("kubepods", NAMESPACE):
            root = hierarchy / top
            if root.is_dir():
                for folder in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                    try:
                        folder.rmdir()
                    except OSError:
                        pass
                try:
                    root.rmdir()
                except OSError:
                    pass


def leftovers(state: dict[str, Any]) -> list[str]:
    """What a teardown failed to undo: our processes, mounts, bridge, KUBE-* iptables rules."""
    left = [f"process {name} ({pid})" for name, pid in state.get("pids", {}).items() if alive(pid, name)]
    left += [f"containerd shim {pid}" for pid in our_shims()]
    left += [f"mount {point}" for point in _our_mounts(state)]
    if state.get("bridge") and run("ip", "link", "show", state["bridge"], check=False):
        left.append(f"bridge {state['bridge']}")
    rules = sum("KUBE-" in line for line in run("iptables-save", check=False).splitlines())
    if rules:
        left.append(f"{rules} iptables KUBE-* lines")
    return left
