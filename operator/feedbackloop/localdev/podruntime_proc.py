"""A container as a local process: `ip netns exec` + `unshare -m -u` + the launcher, own process group.

Its stdout and stderr are appended to one log file per container; the termination message file is a
per-container host file bind-mounted at terminationMessagePath.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from .podruntime_status import MESSAGE_LIMIT, utcnow
from .podruntime_volumes import Mount

LAUNCHER = Path(__file__).with_name("podruntime_launcher.py")
START_ERROR_EXIT = 128
LOG_FALLBACK_LINES, LOG_FALLBACK_BYTES = 80, 2048  # what the kubelet keeps for FallbackToLogsOnError


@dataclass
class LaunchSpec:
    argv: list[str]
    env: dict[str, str]
    mounts: list[Mount] = field(default_factory=list)
    working_dir: str = ""
    hostname: str = ""

    def write(self, path: Path, error_file: Path) -> Path:
        document = {
            "argv": self.argv, "env": self.env, "workingDir": self.working_dir, "hostname": self.hostname,
            "errorFile": str(error_file),
            "mounts": [{"source": m.source, "target": m.target, "readOnly": m.read_only, "isFile": m.is_file}
                       for m in self.mounts],
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # env may hold secrets
        with os.fdopen(descriptor, "w") as file:
            json.dump(document, file)
        return path


def launch_command(netns: str | None, spec_path: Path, argv_override: list[str] | None = None) -> list[str]:
    namespace = ["ip", "netns", "exec", netns] if netns else []
    return [*namespace, "unshare", "--mount", "--uts", "--propagation", "private", "--",
            sys.executable, "-I", "-S", str(LAUNCHER), str(spec_path), *(argv_override or [])]


def exit_code(returncode: int) -> int:
    """Shell-style: killed by signal N -> 128 + N (137 for SIGKILL, 143 for SIGTERM)."""
    return returncode if returncode >= 0 else 128 - returncode


def signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


@dataclass
class ContainerProcess:
    popen: subprocess.Popen[bytes]
    log_path: Path
    log_offset: int
    started_at: datetime
    started_monotonic: float
    error_file: Path
    kill_deadline: float | None = None  # set while a graceful stop is under way

    @property
    def pid(self) -> int:
        return self.popen.pid

    def poll(self) -> int | None:
        code = self.popen.poll()
        if code is not None:
            signal_group(self.popen.pid, signal.SIGKILL)  # children that outlived the main process
        return None if code is None else exit_code(code)

    def terminate(self, grace: float) -> None:
        """Start a graceful stop; `enforce_deadline()` kills it when the grace period is over."""
        if self.kill_deadline is None:
            self.kill_deadline = time.monotonic() + max(grace, 0.0)
            signal_group(self.popen.pid, signal.SIGTERM if grace > 0 else signal.SIGKILL)

    def enforce_deadline(self) -> None:
        if self.kill_deadline is not None and time.monotonic() >= self.kill_deadline:
            signal_group(self.popen.pid, signal.SIGKILL)

    def start_error(self) -> str | None:
        """The launcher's message when the command never started."""
        try:
            return self.error_file.read_text(errors="replace").strip() or None
        except FileNotFoundError:
            return None

    def log_tail(self) -> str:
        with self.log_path.open("rb") as log:
            log.seek(self.log_offset)
            lines = log.read().splitlines()[-LOG_FALLBACK_LINES:]
        return b"\n".join(lines)[-LOG_FALLBACK_BYTES:].decode(errors="replace")


def start_process(netns: str | None, spec: LaunchSpec, spec_path: Path, log_path: Path) -> ContainerProcess:
    error_file = spec_path.with_suffix(".error")
    error_file.unlink(missing_ok=True)
    spec.write(spec_path, error_file)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        offset = log.tell()
        popen = subprocess.Popen(launch_command(netns, spec_path), stdin=subprocess.DEVNULL, stdout=log,
                                 stderr=subprocess.STDOUT, start_new_session=True)
    return ContainerProcess(popen, log_path, offset, utcnow(), time.monotonic(), error_file)


def run_once(netns: str | None, spec_path: Path, argv: list[str], timeout: float) -> tuple[bool, str]:
    """An exec probe: argv in the container's namespaces and mounts; (exit 0, output on failure)."""
    try:
        result = subprocess.run(launch_command(netns, spec_path, argv), stdin=subprocess.DEVNULL,
                                capture_output=True, timeout=timeout, start_new_session=True, check=False)
    except subprocess.TimeoutExpired:
        return False, f"command {argv} timed out after {timeout:.0f}s"
    if result.returncode == 0:
        return True, ""
    output = (result.stdout + result.stderr)[-MESSAGE_LIMIT:].decode(errors="replace").strip()
    return False, f"command {argv} exited with {exit_code(result.returncode)}: {output}"


def read_termination_message(path: Path) -> str:
    try:
        with path.open("rb") as file:
            return file.read(MESSAGE_LIMIT).decode(errors="replace")
    except OSError:
        return ""
