"""Where accepted labels are recorded, exactly once: the "label recorder" a server is built with.

``record(items, ts)`` returns the labels this request recorded and the ones someone recorded before
(duplicates); only the former move the metrics. It raises StoreFailure when nothing may be acknowledged,
having undone whatever it did, so the client's retry (here or on another replica) records the label.

Two recorders: ``VolumeLabels`` here (a claim file per id, then a feedback JSON line: the volume mode, as
it has always been) and ``mfl_server.ledger_labels.LedgerLabels`` (one row per id in PostgreSQL, one
statement per request: the object store + database mode, and a volume with a database).
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

from . import feedback as fb
from . import jsonio
from .claims import ClaimStore
from .errors import StoreFailure
from .store import DailyJsonl

log = logging.getLogger("mfl_server")
ARTIFACT_STORE = "the artifact store"
CLAIM_THREADS = 8  # file creates in flight per request


class LabelRecorder(Protocol):
    async def record(self, items: list[fb.Accepted], ts: float) -> tuple[list[fb.Accepted], list[fb.Rejected]]:
        """(recorded by this call, duplicates); StoreFailure if nothing may be acknowledged."""
        ...

    async def probe(self, now: float) -> None:
        """StoreFailure unless labels can be recorded now (readiness)."""
        ...

    async def sweep(self, now: float) -> list[str]:
        """Deletes what no replica needs any more (expired claims, ledger partitions); best effort."""
        ...

    def close(self) -> None: ...

    async def aclose(self) -> None: ...


def chunks_of(items: list[Any], count: int) -> list[list[Any]]:
    """At most ``count`` contiguous, non-empty parts of nearly equal size."""
    size = -(-len(items) // count) if items else 1
    return [items[start : start + size] for start in range(0, len(items), size)]


def os_reason(error: OSError) -> str:
    return error.strerror or str(error) or type(error).__name__


def feedback_line(item: fb.Accepted, ts: float) -> bytes:
    ref = item.ref
    return (
        jsonio.dumps(
            {
                "id": item.id,
                "ts": ts,
                "label": item.label,
                "version": ref.version,
                "track": ref.track,
                "prediction": ref.label,
                "predictionTs": ref.ts,
            }
        )
        + b"\n"
    )


class VolumeLabels:
    """Claim files on the shared volume (mfl_server.claims), then the feedback log.

    Claims are file creates, a round trip each on a network volume, so a request's claims run on a few
    threads at once, off the loop that serves predictions (on local ext4 and one core, threads and inline
    creates measured the same).
    """

    def __init__(self, claims_folder: Path, feedback_folder: Path, file_name: str, max_age: float) -> None:
        self.log = DailyJsonl(feedback_folder, file_name)
        self.claims = ClaimStore(claims_folder, file_name.removesuffix(".jsonl"))
        self.max_age = max_age
        self._threads = ThreadPoolExecutor(CLAIM_THREADS, thread_name_prefix="mfl-claims")

    async def record(self, items: list[fb.Accepted], ts: float) -> tuple[list[fb.Accepted], list[fb.Rejected]]:
        accepted, duplicates = await self._claim(items)
        try:
            self.log.append(b"".join(feedback_line(item, ts) for item in accepted), ts)
        except OSError as error:
            self._release(accepted)
            raise _write_failed(self.log.folder, error) from error
        return accepted, duplicates

    async def probe(self, now: float) -> None:
        try:
            await asyncio.to_thread(self._probe)
        except OSError as error:
            raise StoreFailure(ARTIFACT_STORE, "not writable", str(error)) from error

    def _probe(self) -> None:
        self.log.check_writable()
        self.claims.probe()

    async def sweep(self, now: float) -> list[str]:
        """Claim days once no replica accepts their labels (claims.expired_days): the retention of logs is
        longer by contract, so it never keeps them longer."""
        try:
            return await asyncio.to_thread(self.claims.sweep, now, self.max_age)
        except OSError as error:
            log.warning("cannot delete expired feedback claims in %s: %s", self.claims.folder, os_reason(error))
            return []

    def close(self) -> None:
        self._threads.shutdown(wait=True)
        self.log.close()

    async def aclose(self) -> None:
        self.close()

    async def _claim(self, items: list[fb.Accepted]) -> tuple[list[fb.Accepted], list[fb.Rejected]]:
        """Labels whose claim this request created, and the ones someone recorded before."""
        loop = asyncio.get_running_loop()
        chunks = chunks_of(items, CLAIM_THREADS)
        outcomes = await asyncio.gather(
            *(
                loop.run_in_executor(self._threads, self.claims.claim_all, [(item.id, item.ref.ts) for item in chunk])
                for chunk in chunks
            )
        )
        claimed: list[fb.Accepted] = []
        duplicates: list[fb.Rejected] = []
        for chunk, (won, _) in zip(chunks, outcomes):  # a chunk that failed won fewer than it holds
            claimed += [item for item, created in zip(chunk, won) if created]
            duplicates += [fb.duplicate(item.index, item.id) for item, created in zip(chunk, won) if not created]
        error = next((failure for _, failure in outcomes if failure is not None), None)
        if error is not None:
            self._release(claimed)
            raise _write_failed(self.claims.folder, error) from error
        return claimed, duplicates

    def _release(self, items: list[fb.Accepted]) -> None:
        """Claims of labels that were not recorded, so the client's retry can record them."""
        kept = sum(not self.claims.release(item.id, item.ref.ts) for item in items)
        if kept:
            log.error("%d feedback claims could not be released: those labels stay unrecorded", kept)


def _write_failed(folder: Path, error: OSError) -> StoreFailure:
    log.error("cannot write feedback to %s: %s", folder, error)
    return StoreFailure(ARTIFACT_STORE, "not writable", os_reason(error))
