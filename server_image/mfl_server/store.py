"""Append-only JSON-lines logs in the artifact store, one file per UTC day and process.

``<folder>/date=YYYY-MM-DD/<host>-<pid>.jsonl`` (docs/contracts.md). Each append is one unbuffered
``write`` of whole lines, so it has reached the kernel when ``append`` returns: a crash of this
process loses nothing acknowledged. (No fsync per request: surviving a node crash is the volume's job.)
"""

from __future__ import annotations

import os
import re
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

_DAY_SECONDS = 86400
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def process_file_name(host: str | None = None, pid: int | None = None) -> str:
    host = _UNSAFE.sub("_", host or socket.gethostname()) or "host"
    return f"{host}-{pid if pid is not None else os.getpid()}.jsonl"


def utc_day(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%d")


class DailyJsonl:
    def __init__(self, folder: Path, file_name: str) -> None:
        self.folder = folder
        self.file_name = file_name
        self._file: BinaryIO | None = None
        self._day_start = self._day_end = 0.0
        self.path: Path | None = None

    def check_writable(self) -> None:
        """Raises OSError when lines could not be appended (read-only volume, wrong owner)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        if not os.access(self.folder, os.W_OK | os.X_OK):
            raise PermissionError(f"{self.folder} is not writable by uid {os.getuid()}")

    def append(self, data: bytes, ts: float) -> None:
        """``data``: complete lines, each ending in a newline; ``ts`` picks the day partition."""
        if not data:
            return
        try:
            if not self._day_start <= ts < self._day_end:
                self._open_day(ts)
            view = memoryview(data)
            while view:
                written = self._file.write(view)  # raw FileIO may write less than asked
                view = view[written:]
        except OSError:
            self.close()  # reopening ends a torn line before the next append
            raise

    def close(self) -> None:
        self._day_start = self._day_end = 0.0
        file, self._file = self._file, None
        if file is None:
            return
        try:
            os.fsync(file.fileno())  # once per file, not per request: makes a clean stop durable
        except OSError:
            pass
        finally:
            file.close()

    def _open_day(self, ts: float) -> None:
        self.close()
        day_start = ts - ts % _DAY_SECONDS
        self.path = self.folder / f"date={utc_day(day_start)}" / self.file_name
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "ab", buffering=0)  # noqa: SIM115 - held open across appends; close() ends it
        self._end_torn_line()
        self._day_start, self._day_end = day_start, day_start + _DAY_SECONDS

    def _end_torn_line(self) -> None:
        """A previous process with our name (same pod, restarted) may have died mid-line."""
        size = self._file.tell()
        if size == 0:
            return
        with open(self.path, "rb") as reader:
            reader.seek(size - 1)
            if reader.read(1) != b"\n":
                self._file.write(b"\n")
