"""The prediction log in an object store: buffered gzip JSON-lines segments, one object per flush.

An object store has no append, and an object per request would cost a PUT per prediction batch. So lines
are buffered per UTC day and uploaded as one object once the buffer holds ``flush_bytes`` or is
``flush_seconds`` old (a background task), and at shutdown:

    <model>/predictions/date=YYYY-MM-DD/<host>-<process start ms>-<seq 6 digits>.jsonl.gz

Predictions are answered before their segment is uploaded: a crash loses at most the last
``flush_seconds`` of prediction lines (their labels are then unjoinable), never a label (labels go to the
ledger, committed before they are acknowledged). Uploads (and the gzip) run on a thread, off the loop. A
failed upload keeps its segment and is retried, with a backoff up to ``flush_seconds``; while more than
``BACKLOG_FACTOR`` x ``flush_bytes`` wait, new predictions are refused (503) and the replica is not ready:
memory stays bounded and nothing unlogged is acknowledged.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from .errors import StoreFailure
from .store import utc_day

log = logging.getLogger("mfl_server")
ARTIFACT_STORE = "the artifact store"
BACKLOG_FACTOR = 4  # buffered bytes, in flushes, before predictions are refused
# Level 1, not 6: the gzip runs on a thread, but its CPU is still the replica's (its CPU limit). At level 6 it
# was ~16% of the server's samples in s3 mode at /predict batch 32 (2x the volume mode's CPU per request);
# level 1 is ~3.5x faster for objects ~12% bigger (JSON lines of floats: still ~2.3x smaller than the text).
GZIP_LEVEL = 1
CLOSE_ATTEMPTS = 3  # uploads tried per segment at shutdown
CLOSE_SECONDS = 10.0  # for all of them: the rest of the grace period is the other shutdown steps'
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


class ObjectWriter(Protocol):
    """What a segment log needs of mfl_contracts.objectstore.ArtifactStore."""

    description: str

    def put(self, key: str, data: bytes) -> None: ...

    def check(self) -> None: ...


@dataclass
class Segment:
    day: str  # YYYY-MM-DD
    seq: int
    opened: float  # clock() when its first line arrived
    chunks: list[bytes] = field(default_factory=list)
    size: int = 0  # uncompressed bytes
    lines: int = 0
    data: bytes | None = None  # the gzip, once compressed (kept for a retry)


def writer_name(host: str | None = None) -> str:
    return _UNSAFE.sub("_", host or socket.gethostname()) or "host"


class SegmentLog:
    """``append`` (on the loop) buffers; ``run`` (a background task) seals and uploads; ``close`` flushes."""

    def __init__(
        self,
        store: ObjectWriter,
        prefix: str,
        flush_bytes: int,
        flush_seconds: float,
        *,
        writer: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.prefix = prefix.strip("/")  # "<model>/predictions"
        self.folder = f"{store.description} {self.prefix}/"  # for messages
        self.flush_bytes = flush_bytes
        self.flush_seconds = flush_seconds
        self.limit = BACKLOG_FACTOR * flush_bytes
        self.last_error: str | None = None
        self._writer = f"{writer_name(writer)}-{int(time.time() * 1000)}"
        self._clock = clock
        self._open: dict[str, Segment] = {}
        self._sealed: list[Segment] = []  # oldest first, waiting for upload
        self._buffered = 0  # bytes in open and sealed segments
        self._seq = 0
        self._failures = 0
        self._retry_at = 0.0
        self._wake = asyncio.Event()

    # --- on the loop -------------------------------------------------------------------------------

    def append(self, data: bytes, ts: float) -> None:
        """``data``: complete lines; ``ts`` picks the day. StoreFailure while the backlog is over the bound."""
        if not data:
            return
        if self._buffered >= self.limit:
            raise StoreFailure(ARTIFACT_STORE, "not writable", self.backlog_problem())
        day = utc_day(ts)
        segment = self._open.get(day)
        if segment is None:
            self._seq += 1
            segment = self._open[day] = Segment(day, self._seq, self._clock())
        segment.chunks.append(data)
        segment.size += len(data)
        segment.lines += data.count(b"\n")
        self._buffered += len(data)
        if segment.size >= self.flush_bytes:
            self._seal(day)
            self._wake.set()

    def backlog_problem(self) -> str:
        return (
            f"{self._buffered} bytes of prediction log wait for upload to {self.store.description} "
            f"(at most {self.limit}; last error: {self.last_error or 'none yet'}): "
            "new predictions are refused until an upload succeeds"
        )

    def seal_due(self, now: float) -> None:
        """Seals the segments that have buffered for ``flush_seconds`` (the age bound of what a crash loses)."""
        for day in [day for day, segment in self._open.items() if now - segment.opened >= self.flush_seconds]:
            self._seal(day)

    async def flush(self) -> bool:
        """Uploads sealed segments, oldest first, up to the first failure (kept for a retry): True if none left."""
        while self._sealed:
            segment = self._sealed[0]
            try:
                await asyncio.to_thread(self._upload, segment)
            except Exception as error:  # any store error: the segment stays, the next tick retries
                self._upload_failed(segment, error)
                return False
            self._uploaded(segment)
        return True

    async def run(self) -> None:
        """The background task: seals by age, uploads, retries failures with a backoff."""
        tick = min(1.0, max(0.02, self.flush_seconds / 4))
        while True:
            try:
                async with asyncio.timeout(tick):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            now = self._clock()
            self.seal_due(now)
            if self._sealed and now >= self._retry_at:
                await self.flush()

    # --- readiness and shutdown (on a thread) ------------------------------------------------------

    def check_writable(self) -> None:
        """StoreFailure unless the store takes writes and the backlog is under its bound."""
        try:
            self.store.check()
        except Exception as error:
            raise StoreFailure(ARTIFACT_STORE, "not writable", str(error)) from error
        if self._buffered >= self.limit:
            raise StoreFailure(ARTIFACT_STORE, "not writable", self.backlog_problem())

    def close(self) -> None:
        """Seals and uploads everything (called once nothing appends any more), within ``CLOSE_SECONDS`` (the
        Pod's grace period is 30 s); logs what could not be uploaded."""
        for day in list(self._open):
            self._seal(day)
        deadline = time.monotonic() + CLOSE_SECONDS
        while self._sealed:
            segment = self._sealed.pop(0)
            self._buffered -= segment.size
            if not self._upload_before(segment, deadline):
                log.error("lost %d prediction lines at shutdown: %s", segment.lines, self.last_error)

    def _upload_before(self, segment: Segment, deadline: float) -> bool:
        for attempt in range(CLOSE_ATTEMPTS):
            if time.monotonic() + 0.2 * attempt > deadline:
                return False
            time.sleep(0.2 * attempt)
            try:
                self._upload(segment)
                return True
            except Exception as error:
                self._upload_failed(segment, error)
        return False

    # --- helpers -----------------------------------------------------------------------------------

    def key(self, segment: Segment) -> str:
        return f"{self.prefix}/date={segment.day}/{self._writer}-{segment.seq:06d}.jsonl.gz"

    @property
    def buffered(self) -> int:
        return self._buffered

    def _seal(self, day: str) -> None:
        self._sealed.append(self._open.pop(day))

    def _upload(self, segment: Segment) -> None:
        """On a thread: only reads the segment and sets its gzip; the list bookkeeping stays on the loop."""
        if segment.data is None:
            segment.data = gzip.compress(b"".join(segment.chunks), compresslevel=GZIP_LEVEL, mtime=0)
        self.store.put(self.key(segment), segment.data)

    def _uploaded(self, segment: Segment) -> None:
        if self._sealed and self._sealed[0] is segment:
            self._sealed.pop(0)
            self._buffered -= segment.size
        if self.last_error is not None:
            log.info("prediction log uploads to %s work again", self.store.description)
        self.last_error = None
        self._failures = 0
        self._retry_at = 0.0

    def _upload_failed(self, segment: Segment, error: Exception) -> None:
        reason = str(error) or type(error).__name__
        if reason != self.last_error:
            where = self.store.description
            log.error("cannot upload %s to %s: %s (kept for a retry)", self.key(segment), where, reason)
        self.last_error = reason
        self._failures += 1
        self._retry_at = self._clock() + min(self.flush_seconds, 0.25 * 2**self._failures)
