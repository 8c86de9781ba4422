"""Cluster DNS for the test bed: `<svc>.<ns>.svc.cluster.local` names of Services, as CoreDNS would serve them.

CoreDNS is not packaged in Debian; dnsmasq is. Two host processes, started and torn down with the bed:

- `dnsmasq` on the node's IP, port 53 (UDP and TCP): no DHCP, no /etc/hosts, no /etc/resolv.conf; it answers
  from the hosts files in `hostsdir` (re-read on change, inotify), NXDOMAIN at once for any other name under
  `cluster.local` (`--local`), and forwards other names to the host's own nameservers (its /etc/resolv.conf).
- the watcher (`python -m mfl_testbed.dns`): lists the cluster's Services every half second and rewrites
  `hostsdir/services` with `<clusterIP> <svc>.<ns>.svc.cluster.local <svc>.<ns>.svc` lines (written to a
  dot-file first, which dnsmasq ignores, then renamed).

The kubelet runs with `--cluster-dns=<node IP> --cluster-domain=cluster.local`, so a Pod's resolv.conf names
dnsmasq with the usual search path (`<ns>.svc.cluster.local svc.cluster.local cluster.local`, ndots 5).
Headless Services (clusterIP None) get no record.

    python -m mfl_testbed.dns --kubectl K --kubeconfig C --hostsdir D [--interval 0.5]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import shutil
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mfl_testbed.netutil import wait_until
from mfl_testbed.process import ManagedProcess, TestbedError, TestbedUnavailable

log = logging.getLogger(__name__)

CLUSTER_DOMAIN = "cluster.local"
HOSTS_FILE = "services"
PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # where `mfl_testbed` is importable from
INSTALL_HINT = "apt-get install dnsmasq-base"


def service_records(services: Iterable[Mapping[str, Any]], domain: str = CLUSTER_DOMAIN) -> list[str]:
    """Hosts-file lines for the Services that have a cluster IP, sorted."""
    lines = []
    for service in services:
        metadata, spec = service.get("metadata") or {}, service.get("spec") or {}
        ip = spec.get("clusterIP")
        if not ip or ip == "None" or not metadata.get("name") or not metadata.get("namespace"):
            continue
        short = f"{metadata['name']}.{metadata['namespace']}.svc"
        lines.append(f"{ip} {short}.{domain} {short}")
    return sorted(lines)


def host_nameservers(resolv_conf: Path = Path("/etc/resolv.conf")) -> list[str]:
    """The host's upstream nameservers (loopback ones left out: dnsmasq would ask itself, or nothing)."""
    try:
        text = resolv_conf.read_text()
    except OSError:
        return []
    servers = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver" and not parts[1].startswith(("127.", "::1")):
            servers.append(parts[1])
    return servers


def resolve(name: str, server: str, port: int = 53, timeout: float = 2.0) -> list[str]:
    """The A records of `name` from `server` (one UDP query; no search path): [] for NXDOMAIN or no answer."""
    query_id = secrets.randbits(16)
    question = b"".join(bytes([len(label)]) + label.encode() for label in name.rstrip(".").split(".")) + b"\0"
    packet = struct.pack(">HHHHHH", query_id, 0x0100, 1, 0, 0, 0) + question + struct.pack(">HH", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(packet, (server, port))
        reply = sock.recv(4096)
    answer_id, flags, _, answers = struct.unpack(">HHHH", reply[:8])
    if answer_id != query_id or flags & 0x000F:  # another reply, or an error code (3: NXDOMAIN)
        return []
    offset = 12 + len(question) + 4
    addresses = []
    for _ in range(answers):
        offset = _skip_name(reply, offset)
        rtype, _, _, length = struct.unpack(">HHIH", reply[offset : offset + 10])
        offset += 10
        if rtype == 1 and length == 4:
            addresses.append(socket.inet_ntoa(reply[offset : offset + 4]))
        offset += length
    return addresses


def _skip_name(packet: bytes, offset: int) -> int:
    while True:
        length = packet[offset]
        if length == 0:
            return offset + 1
        if length & 0xC0 == 0xC0:  # a compression pointer ends the name
            return offset + 2
        offset += length + 1


class ClusterDNS:
    """dnsmasq on `host`:53 and the Services watcher that keeps its hosts folder (`workdir/hosts`)."""

    def __init__(self, workdir: Path, host: str, kubectl: Path, kubeconfig: Path) -> None:
        self.workdir = Path(workdir)
        self.host = host
        self.kubectl = kubectl
        self.kubeconfig = kubeconfig
        self.hostsdir = self.workdir / "hosts"
        self.dnsmasq: ManagedProcess | None = None
        self.watcher: ManagedProcess | None = None

    @property
    def processes(self) -> list[ManagedProcess]:
        return [p for p in (self.dnsmasq, self.watcher) if p is not None]

    def start(self, timeout: float = 30.0) -> ClusterDNS:
        """Both processes; returns once dnsmasq answers for the `kubernetes` Service's name."""
        binary = _dnsmasq_binary()
        self.hostsdir.mkdir(parents=True, exist_ok=True)
        for folder in (self.workdir, self.hostsdir):
            folder.chmod(0o755)  # dnsmasq drops root for `nobody`, and reads the hosts folder as such
        (self.hostsdir / HOSTS_FILE).write_text("")
        upstream = [f"--server={server}" for server in host_nameservers()]
        self.dnsmasq = ManagedProcess(
            "dnsmasq",
            [
                binary, "--keep-in-foreground", "--log-facility=-", "--conf-file=/dev/null", "--pid-file=",
                "--bind-interfaces", f"--listen-address={self.host}", "--port=53",
                "--no-resolv", "--no-hosts", "--no-poll", f"--hostsdir={self.hostsdir}",
                f"--local=/{CLUSTER_DOMAIN}/", "--domain-needed", "--bogus-priv",
                *upstream,
            ],
            self.workdir / "dnsmasq.log",
        )  # fmt: skip
        self.dnsmasq.start()
        self.watcher = ManagedProcess(
            "dns-watcher",
            [
                sys.executable, "-m", "mfl_testbed.dns", f"--kubectl={self.kubectl}",
                f"--kubeconfig={self.kubeconfig}", f"--hostsdir={self.hostsdir}",
            ],
            self.workdir / "dns-watcher.log",
            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(PACKAGE_ROOT), os.environ.get("PYTHONPATH", "")])},
        )  # fmt: skip
        self.watcher.start()
        name = f"kubernetes.default.svc.{CLUSTER_DOMAIN}"

        def answers() -> bool:
            for process in self.processes:
                process.check_running()
            return bool(resolve(name, self.host, timeout=0.5))

        try:
            wait_until(answers, timeout, f"dnsmasq on {self.host}:53 to answer {name}", interval=0.2)
        except (TimeoutError, TestbedError) as error:
            raise TestbedError(f"cluster DNS did not start: {error}\n{self.log_tail()}") from error
        return self

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()

    def detach(self) -> None:
        """Leave both processes running when this process exits (`mfl demo --keep`; `mfl testbed down`)."""
        self.dnsmasq = self.watcher = None

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(f"----- {p.name} -----\n{p.tail(lines)}" for p in self.processes)


def _dnsmasq_binary() -> str:
    found = shutil.which("dnsmasq", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]))
    if found is None:
        raise TestbedUnavailable(f"dnsmasq is missing, so the cluster has no DNS: {INSTALL_HINT}")
    return found


# ---- the watcher ---------------------------------------------------------------------------------


def write_hosts(hostsdir: Path, lines: list[str]) -> None:
    """Replace hostsdir/services atomically (dnsmasq ignores dot-files, and re-reads on the rename)."""
    partial = hostsdir / f".{HOSTS_FILE}.partial"
    partial.write_text("".join(f"{line}\n" for line in lines))
    partial.chmod(0o644)
    partial.replace(hostsdir / HOSTS_FILE)


def watch(kubectl: str, kubeconfig: str, hostsdir: Path, interval: float) -> None:
    command = [kubectl, f"--kubeconfig={kubeconfig}", "get", "services", "--all-namespaces", "-o", "json"]
    current: list[str] | None = None
    while True:
        result = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
        if result.returncode == 0:
            lines = service_records(json.loads(result.stdout)["items"])
            if lines != current:
                write_hosts(hostsdir, lines)
                log.info("%d service names", len(lines))
                current = lines
        else:
            log.warning("listing services failed: %s", result.stderr.strip()[:300])
        time.sleep(interval)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="dns", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kubectl", required=True)
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--hostsdir", required=True, type=Path)
    parser.add_argument("--interval", type=float, default=0.5)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    watch(args.kubectl, args.kubeconfig, args.hostsdir, args.interval)


if __name__ == "__main__":
    main()
