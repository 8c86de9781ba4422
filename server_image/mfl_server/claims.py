"""Exactly-once feedback: one claim file per labelled prediction id, on the shared artifact store.

A label is recorded only by the request that creates its claim,
``<model>/feedback-claims/date=<prediction's UTC day>/<h[:2]>/<h[2:32]>`` (``h`` = sha256 of the id),
with ``O_CREAT | O_EXCL``: the filesystem lets exactly one creator win, whichever replica or process
it is, and the file outlives restarts. This is an idempotency key kept where the replicas already
meet (the PVC), like a conditional put (``attribute_not_exists``) in DynamoDB; the signed prediction
time bounds how long a key must live, as the 24 h of Stripe's idempotency keys bound theirs.

Claims are empty files (an inode, no data block). A day folder is deleted once every prediction it
holds is older than the feedback age the server accepts, plus ``CLOCK_MARGIN`` for skew between the
replicas' clocks: by then no replica accepts a label for those ids any more, so nothing can be
counted twice after the deletion. A day folder dated beyond every replica's clock margin (ids dated in the
future are refused: mfl_server.feedback.future_problem) is deleted too. Docs: docs/contracts.md, "Feedback".
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterable
from datetime import date
from pathlib import Path

from .store import utc_day

DAY_SECONDS = 86400
CLOCK_MARGIN = 3600.0  # seconds of clock skew between replicas the retention tolerates
NAME_HEX = 32  # 128 bits of sha256: no two ids share a claim in practice
PROBE_BYTES = b"\0" * 1024  # a data block: a full disk refuses it even when inodes are left
# Read-only: nothing is ever written to a claim; it is its name that counts.
_FLAGS = os.O_RDONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)


def claim_key(prediction_id: str, prediction_ts: float) -> str:
    """``date=YYYY-MM-DD/xx/<30 hex>``: sharded so no folder grows beyond labels/day / 256 files."""
    digest = hashlib.sha256(prediction_id.encode()).hexdigest()
    return f"date={utc_day(prediction_ts)}/{digest[:2]}/{digest[2:NAME_HEX]}"


def expired_days(names: Iterable[str], now: float, max_age: float) -> list[str]:
    """Day folders whose every prediction is older than ``max_age`` + ``CLOCK_MARGIN``, and day folders dated
    beyond what any replica accepts (``future_day``)."""
    expired = []
    for name in names:
        day = _day_start(name)
        if day is not None and (now >= day + DAY_SECONDS + max_age + CLOCK_MARGIN or future_day(day, now)):
            expired.append(name)
    return sorted(expired)


def future_day(day_start: float, now: float) -> bool:
    """No replica takes a label for a prediction of this day yet: every one refuses ids dated more than the
    feedback clock margin (at most ``CLOCK_MARGIN``) ahead of its clock, itself at most ``CLOCK_MARGIN`` ahead
    of this one. Such a day holds only the claims of ids accepted before servers refused them; nothing deletes
    them otherwise until long after that day."""
    return day_start > now + 2 * CLOCK_MARGIN


def _day_start(name: str) -> float | None:
    if not name.startswith("date="):
        return None
    try:
        day = date.fromisoformat(name.removeprefix("date="))
    except ValueError:
        return None
    return float((day - date(1970, 1, 1)).days * DAY_SECONDS)


class ClaimStore:
    """The claim folder of one model; every method raises OSError when the store cannot be written,
    except ``release`` and ``sweep``, which are best effort."""

    def __init__(self, folder: Path, probe_name: str) -> None:
        self.folder = folder
        self._root = str(folder)
        self._probe = folder / f".probe-{probe_name}"

    def claim(self, prediction_id: str, prediction_ts: float) -> bool:
        """True if this call created the claim; False if anyone (here or elsewhere) did before."""
        path = f"{self._root}/{claim_key(prediction_id, prediction_ts)}"
        try:
            descriptor = os.open(path, _FLAGS, 0o644)
        except FileExistsError:
            return False
        except FileNotFoundError:  # the first claim in this shard: make the folder, then again
            os.makedirs(os.path.dirname(path), exist_ok=True)
            try:
                descriptor = os.open(path, _FLAGS, 0o644)
            except FileExistsError:
                return False
        os.close(descriptor)
        return True

    def claim_all(self, keys: list[tuple[str, float]]) -> tuple[list[bool], OSError | None]:
        """``claim`` for each (id, prediction time) in turn, up to the first error, which is returned."""
        won: list[bool] = []
        try:
            for prediction_id, prediction_ts in keys:
                won.append(self.claim(prediction_id, prediction_ts))
        except OSError as error:
            return won, error
        return won, None

    def release(self, prediction_id: str, prediction_ts: float) -> bool:
        """Undo a claim whose label could not be recorded, so a retry can record it."""
        try:
            os.unlink(f"{self._root}/{claim_key(prediction_id, prediction_ts)}")
        except FileNotFoundError:
            return True
        except OSError:
            return False
        return True

    def probe(self) -> None:
        """Raises OSError unless a file can be created, written and removed (read-only, full, wrong owner)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            with open(self._probe, "wb", buffering=0) as handle:
                handle.write(PROBE_BYTES)
        finally:
            with contextlib.suppress(FileNotFoundError):
                self._probe.unlink()

    def sweep(self, now: float, max_age: float) -> list[str]:
        """Deletes expired day folders; several replicas may sweep at once."""
        try:
            names = os.listdir(self.folder)
        except FileNotFoundError:
            return []
        expired = expired_days(names, now, max_age)
        for name in expired:
            _remove_day(self.folder / name)
        return expired


def _remove_day(folder: Path) -> None:
    """Files, then shard folders, then the day; whatever another sweeper removed first is skipped."""
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for shard in os.scandir(folder):
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                for entry in os.scandir(shard.path):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)
            with contextlib.suppress(OSError):
                os.rmdir(shard.path)
    with contextlib.suppress(OSError):
        os.rmdir(folder)
