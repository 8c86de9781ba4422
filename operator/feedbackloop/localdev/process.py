"""Long-running child processes of the test bed: own process group, own log file, clean stop."""

from __future__ import annotations

import os
import signal
import subprocess
from collections import deque
from pathlib import Path
from typing import Mapping, Sequence


class TestbedError(RuntimeError):
    """A test bed component failed to start or to become ready."""

    __test__ = False  # not a pytest test class despite the name


class TestbedUnavailable(TestbedError):
    """A test bed component cannot run on this machine (missing binary, not root, ...)."""


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

    def start(self) -> None:
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
                f"{self.name} exited with code {self._popen.returncode}; "
                f"last lines of {self.log_path}:\n{self.tail()}"
            )

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the process group, SIGKILL after `timeout`; a no-op when not running."""
        popen = self._popen
        if popen is None:
            return
        if popen.poll() is None:
            self._signal_group(popen.pid, signal.SIGTERM)
            try:
                popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(popen.pid, signal.SIGKILL)
                popen.wait(timeout)
        # Children that outlived the leader still belong to its group.
        self._signal_group(popen.pid, signal.SIGKILL)

    @staticmethod
    def _signal_group(pgid: int, signum: int) -> None:
        try:
            os.killpg(pgid, signum)
        except (ProcessLookupError, PermissionError):
            pass

    def tail(self, lines: int = 40) -> str:
        return tail(self.log_path, lines)
