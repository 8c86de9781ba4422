"""One real node per machine: the test bed changes the machine (a bridge, iptables chains, containerd's state
under /run), so a second run that started its own bed beside a running one would break both. A run holds this
lock from before its bed starts until it is torn down; a second run waits for it, saying who holds it, instead
of failing half-way through a start.

    with bed_lock(progress=print, timeout=1800):
        ...start, use and stop the bed...
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from mfl_testbed import TestbedError

LOCK_FILE = Path("/run/mfl-testbed.lock")


def holder(path: Path = LOCK_FILE) -> str:
    """Who holds the lock, as its holder wrote it ("pid 123: pytest ... (since 12:00:01)"), or ""."""
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _describe_self() -> str:
    try:
        command = Path(f"/proc/{os.getpid()}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        command = "?"
    return f"pid {os.getpid()}: {command[:200]} (since {time.strftime('%H:%M:%S')})"


@contextmanager
def bed_lock(
    progress: Callable[[str], None] = print,
    timeout: float = 1800.0,
    path: Path = LOCK_FILE,
    poll: float = 2.0,
) -> Iterator[None]:
    """Hold the machine's test-bed lock; wait up to `timeout` seconds for another run's bed to go, reporting
    who holds it every minute; TestbedError naming the holder when it does not go in time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as handle:
        deadline, told = time.monotonic() + timeout, 0.0
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                now = time.monotonic()
                if now >= deadline:
                    raise TestbedError(
                        f"the test bed is in use by {holder(path) or 'another run'} ({path}); waited {timeout:.0f} s"
                    ) from None
                if now - told >= 60:
                    progress(f"the test bed is in use by {holder(path) or 'another run'}: waiting for it")
                    told = now
                time.sleep(poll)
        handle.seek(0)
        handle.truncate()
        handle.write(_describe_self() + "\n")
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            handle.flush()
            fcntl.flock(handle, fcntl.LOCK_UN)
