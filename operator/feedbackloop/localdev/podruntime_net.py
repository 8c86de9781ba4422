"""Pod networking: a bridge on the host, one network namespace + veth pair per Pod, Pod IPs.

10.244.0.0/24 is split into SLOT_COUNT slots (/26 each) so that several runtimes (test sessions of
different people on one machine) can run side by side: a runtime holds its slot with a file lock,
and every object it creates carries the slot in its name (bridge `mfl<slot>`, namespaces
`mflpod<slot>-*`, veths `mflv<slot>*`). Start-up cleanup only touches its own slot's names.
Pod namespaces get no default route: a Pod reaches its peers and the host's bridge address, nothing else.
"""
from __future__ import annotations

import errno
import fcntl
import ipaddress
import logging
import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

SUPERNET = ipaddress.ip_network("10.244.0.0/24")
SLOT_PREFIX_LENGTH = 26
SLOT_COUNT = 2 ** (SLOT_PREFIX_LENGTH - SUPERNET.prefixlen)
LOCK_DIR = Path("/run/mfl-podruntime")


class NetworkError(RuntimeError):
    pass


class IPExhausted(NetworkError):
    pass


@dataclass(frozen=True)
class Slot:
    index: int

    @property
    def network(self) -> ipaddress.IPv4Network:
        return list(SUPERNET.subnets(new_prefix=SLOT_PREFIX_LENGTH))[self.index]  # type: ignore[return-value]

    @property
    def gateway(self) -> str:
        return str(self.network[1])

    @property
    def bridge(self) -> str:
        return f"mfl{self.index}"

    @property
    def netns_prefix(self) -> str:
        return f"mflpod{self.index}-"

    @property
    def veth_prefix(self) -> str:
        return f"mflv{self.index}"

    def pod_names(self, uid: str) -> tuple[str, str, str]:
        """(netns, host veth, temporary peer name) for a pod; interface names stay under 16 chars."""
        short = uid.replace("-", "")[:8]
        return f"{self.netns_prefix}{uid}", f"{self.veth_prefix}{short}", f"mflp{self.index}{short}"


class IPAllocator:
    """Pod IPs of a subnet, handed out round-robin so a freed IP is not reused at once (pure)."""

    def __init__(self, network: ipaddress.IPv4Network, reserved: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        self.pool = [str(ip) for ip in network.hosts() if str(ip) not in reserved]
        self.assigned: dict[str, str] = {}
        self._cursor = 0

    def allocate(self, key: str) -> str:
        if key in self.assigned:
            return self.assigned[key]
        used = set(self.assigned.values())
        for step in range(len(self.pool)):
            candidate = self.pool[(self._cursor + step) % len(self.pool)]
            if candidate not in used:
                self._cursor = (self._cursor + step + 1) % len(self.pool)
                self.assigned[key] = candidate
                return candidate
        raise IPExhausted(f"all {len(self.pool)} pod IPs of the node are in use")

    def release(self, key: str) -> None:
        self.assigned.pop(key, None)

    def avoid(self, ips: set[str]) -> None:
        """Continue after the highest of `ips` (stale Pod IPs still in the API), so they come back last."""
        seen = [index for index, ip in enumerate(self.pool) if ip in ips]
        if seen:
            self._cursor = (max(seen) + 1) % len(self.pool)


def acquire_slot(preferred: int | None = None) -> tuple[Slot, IO[str]]:
    """Lock a free slot (the preferred one, or the first free); the lock dies with the process."""
    LOCK_DIR.mkdir(parents=True, exist_ok=True)
    candidates = [preferred] if preferred is not None else list(range(SLOT_COUNT))
    for index in candidates:
        handle = (LOCK_DIR / f"slot{index}.lock").open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            handle.close()
            if error.errno in (errno.EAGAIN, errno.EACCES):
                continue
            raise
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        return Slot(index), handle
    raise NetworkError(f"no free pod runtime slot among {candidates}: other runtimes hold them "
                       f"(locks in {LOCK_DIR})")


def _free_slots(own: Slot) -> Iterator[int]:
    """Other slots no live runtime holds (its lock dies with it), each yielded while we hold its lock."""
    for index in range(SLOT_COUNT):
        if index == own.index:
            continue
        with (LOCK_DIR / f"slot{index}.lock").open("a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # a live runtime owns it
            yield index


def clean_abandoned_slots(own: Slot) -> None:
    """Remove what crashed runtimes left in slots nobody holds now."""
    for index in _free_slots(own):
        Network(Slot(index)).remove_leftovers()


def other_slots_in_use(own: Slot) -> bool:
    return len(list(_free_slots(own))) < SLOT_COUNT - 1


def run_ip(*args: str, netns: str | None = None, stdin: str | None = None, check: bool = True) -> str:
    command = ["ip", *(("-n", netns) if netns else ()), *args]
    result = subprocess.run(command, input=stdin, capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise NetworkError(f"{' '.join(command)} failed: {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout


def netns_pids(netns: str) -> list[int]:
    output = run_ip("netns", "pids", netns, check=False)
    return [int(pid) for pid in output.split() if pid.isdigit()]


def kill_netns_processes(netns: str) -> None:
    for pid in netns_pids(netns):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class Network:
    """The host side: the slot's bridge, and one namespace per Pod on it."""

    def __init__(self, slot: Slot) -> None:
        self.slot = slot

    def setup(self) -> None:
        self.remove_leftovers()
        bridge = self.slot.bridge
        run_ip("-batch", "-", stdin="\n".join([
            f"link add {bridge} type bridge",
            f"addr add {self.slot.gateway}/{SLOT_PREFIX_LENGTH} dev {bridge}",
            f"link set {bridge} up",
        ]) + "\n")

    def teardown(self) -> None:
        self.remove_leftovers()

    def remove_leftovers(self) -> None:
        """Delete every namespace and link of this slot (ours: we hold the slot's lock)."""
        for netns in self._own_namespaces():
            self.delete_pod(netns, "")
        for link in self._own_links():
            run_ip("link", "del", link, check=False)

    def create_pod(self, uid: str, ip: str) -> tuple[str, str]:
        netns, veth, peer = self.slot.pod_names(uid)
        self.delete_pod(netns, veth)  # a leftover of an earlier attempt
        run_ip("netns", "add", netns)
        try:
            run_ip("-batch", "-", stdin="\n".join([
                f"link add {veth} type veth peer name {peer} netns {netns}",
                f"link set {veth} master {self.slot.bridge} up",
            ]) + "\n")
            run_ip("-batch", "-", netns=netns, stdin="\n".join([
                f"link set {peer} name eth0",
                f"addr add {ip}/{SLOT_PREFIX_LENGTH} dev eth0",
                "link set eth0 up",
                "link set lo up",
            ]) + "\n")
        except NetworkError:
            self.delete_pod(netns, veth)
            raise
        return netns, veth

    def delete_pod(self, netns: str, veth: str) -> None:
        if netns:
            kill_netns_processes(netns)
            run_ip("netns", "del", netns, check=False)
        if veth:
            run_ip("link", "del", veth, check=False)

    def _own_namespaces(self) -> list[str]:
        names = [line.split()[0] for line in run_ip("netns", "list", check=False).splitlines() if line.strip()]
        return [name for name in names if name.startswith(self.slot.netns_prefix)]

    def _own_links(self) -> list[str]:
        links = []
        for line in run_ip("-o", "link", "show", check=False).splitlines():
            name = line.split(":", 2)[1].strip().split("@", 1)[0] if ":" in line else ""
            if name == self.slot.bridge or name.startswith(self.slot.veth_prefix):
                links.append(name)
        return links
