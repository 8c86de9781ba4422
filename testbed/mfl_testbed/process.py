"""Long-running child processes of the test bed: own process group, own log file, clean stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path


class TestbedError(RuntimeError):
    """A test bed component failed to start or to become ready."""

    __test__ = False  # not a pytest test class despite the name


class TestbedUnavailable(TestbedError):
    """A test bed component cannot run on this machine (missing binary, not root, ...)."""


def cache_dir() -> Path:
    """Where the test bed caches builds (Kubernetes binaries, images, containerd's store): $MFL_CACHE."""
    return Path(os.environ.get("MFL_CACHE") or Path.home() / ".cache" / "mfl")


def print_progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def run_script(script: Path, args: Sequence[str], env: Mapping[str, str], progress: Callable[[str], None]) -> None:
    """Run a build script, streaming its output line by line to `progress` (cold builds take
    minutes); raise TestbedUnavailable with its last lines when it fails."""
    last_lines: deque[str] = deque(maxlen=30)
    with subprocess.Popen(
        ["bash", str(script), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        errors="replace",
        env=dict(env),
    ) as build:
        assert build.stdout is not None
        for line in build.stdout:
            line = line.rstrip("\n")
            last_lines.append(line)
            progress(line)
    if build.returncode != 0:
        output = "\n".join(last_lines)
        raise TestbedUnavailable(f"{script.name} failed with exit code {build.returncode}:\n{output}")


def wait_for_process(
    process: ManagedProcess, probe: Callable[[], object], deadline: float, interval: float = 0.2
) -> None:
    """Poll `probe` until it holds or `deadline` (monotonic) passes, failing early if `process` exits;
    a timeout carries the end of the process's log."""
    from mfl_testbed.netutil import wait_until

    try:
        wait_until(
            probe,
            timeout=max(deadline - time.monotonic(), 1.0),
            what=f"{process.name} to become ready",
            interval=interval,
            on_poll=process.check_running,
        )
    except TimeoutError as error:
        raise TestbedError(f"{error}; last lines of its log:\n{process.tail()}") from error


def tail(path: Path, lines: int = 40) -> str:
    """The last `lines` lines of a text file, or a note when it does not exist."""
    if not path.exists():
        return f"({path} does not exist)"
    with path.open(errors="replace") as file:
        return "".join(deque(file, maxlen=lines))


class ManagedProcess:
    """A child process in its own process group, with stdout and stderr in `log_path`."""

    def __init__(
        self,
        name: str,
        args: Sequence[str],
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.args = list(args)
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self._popen: subprocess.Popen[bytes] | None = None
        self._stopped = False

    def start(self) -> None:
        self._stopped = False
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"$ {' '.join(self.args)}\n".encode())
            log.flush()
            # A new session lets stop() kill the component together with anything it forked.
            self._popen = subprocess.Popen(
                self.args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen else None

    @property
    def running(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return self._popen.poll() if self._popen else None

    def check_running(self) -> None:
        """Raise with the log tail when the process has already exited."""
        if self._popen is not None and self._popen.poll() is not None:
            raise TestbedError(
                f"{self.name} exited with code {self._popen.returncode}; last lines of {self.log_path}:\n{self.tail()}"
            )

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the process group, SIGKILL after `timeout`. Safe to call more than once."""
        popen = self._popen
        if popen is None or self._stopped:
            return
        self._stopped = True
        if popen.poll() is not None:
            return  # already reaped: its pid (= group id) may belong to someone else by now
        self._signal_group(popen.pid, signal.SIGTERM)
        if not _exited_unreaped(popen.pid, timeout):
            self._signal_group(popen.pid, signal.SIGKILL)
            _exited_unreaped(popen.pid, timeout)
        # The unreaped leader still holds the group id: children that outlived it die too.
        self._signal_group(popen.pid, signal.SIGKILL)
        popen.wait()

    @staticmethod
    def _signal_group(pgid: int, signum: int) -> None:
        try:
            os.killpg(pgid, signum)
        except (ProcessLookupError, PermissionError):
            pass

    def tail(self, lines: int = 40) -> str:
        return tail(self.log_path, lines)


def _exited_unreaped(pid: int, timeout: float) -> bool:
    """Wait up to `timeout` for child `pid` to exit, leaving it a zombie (not reaped)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT | os.WNOHANG) is not None:
                return True
        except ChildProcessError:
            return True  # reaped elsewhere
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
