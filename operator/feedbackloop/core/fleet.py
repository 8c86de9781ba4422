"""The engine's in-memory view of the fleet, fed by kopf's watch and shared by observe, act and record.

Nothing here is needed across restarts: the API server holds every loop's status, and the watch
refills the rest.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, cast

from feedbackloop.core import phases
from feedbackloop.core.api import ModelFeedbackLoopSpec
from feedbackloop.core.status import LoopStatus

# When the stable Deployment's Pods are listed to explain why it is not ready (ServingReady's message only: no
# decision reads it): when it turns unready or changes, otherwise after a wait that doubles while nothing changes.
# A fleet of never-ready stable tracks (a node down, or a cluster without nodes) listed every loop's Pods at every
# poll and loaded the API server. The canary's Pods are not on this schedule: a failing canary is rolled back on
# what they say.
STABLE_RELIST_SECONDS = 60.0
STABLE_RELIST_MAX_SECONDS = 600.0


@dataclass(frozen=True)
class StableDiagnosis:
    version: str  # the Deployment's resourceVersion when its Pods were last listed
    detail: str
    next_list: float
    wait: float  # the wait before next_list


def stable_list_due(diagnosis: StableDiagnosis | None, version: str, now: float) -> bool:
    """Whether to list the unready stable Deployment's Pods now."""
    return diagnosis is None or version != diagnosis.version or now >= diagnosis.next_list


def stable_listed(diagnosis: StableDiagnosis | None, version: str, detail: str, now: float) -> StableDiagnosis:
    """The schedule after a list: the next one a minute later, twice as long each time the Deployment stayed the
    same, at most ten minutes."""
    same = diagnosis is not None and version == diagnosis.version
    wait = (
        min(2 * diagnosis.wait, STABLE_RELIST_MAX_SECONDS) if diagnosis is not None and same else STABLE_RELIST_SECONDS
    )
    return StableDiagnosis(version, detail, now + wait, wait)


@dataclass
class LoopMemory:
    """What the engine remembers of one loop between cycles."""

    next_poll: float = 0.0
    next_reconcile: float = 0.0
    next_analysis: float = 0.0
    written_status: LoopStatus | None = None
    written_at: float = 0.0
    parsed_generation: int | None = None
    spec: ModelFeedbackLoopSpec | None = None
    spec_error: str = ""
    dirty: bool = True
    seen_metadata: tuple[Any, ...] | None = None
    # The loop's resourceVersion our last status write made, and the one the watch showed when we wrote it.
    written_version: str = ""
    written_over: str = ""
    stable_diagnosis: StableDiagnosis | None = None  # while the stable Deployment is not all ready

    def version_to_write_on(self, seen: str) -> str | None:
        """The loop's current resourceVersion as far as we know, for a status write's precondition: our own last
        write's until the watch shows anything newer than what that write was based on (the watch delivers
        events in order, so the first one after `written_over` is our write itself). None: read it first."""
        if self.written_version and seen == self.written_over:
            return self.written_version
        return seen or None

    def note_write(self, seen: str, written: str) -> None:
        self.written_over, self.written_version = seen, written


@dataclass
class Fleet:
    loops: dict[str, dict[str, Any]] = field(default_factory=dict)  # namespace/name -> the loop's body
    memory: dict[str, LoopMemory] = field(default_factory=dict)
    deployments: dict[str, dict[str, Any]] = field(default_factory=dict)  # namespace/name -> body

    def status(self, key: str) -> LoopStatus:
        """The freshest status we know: our own last write, unless the object is newer than it."""
        memory = self.memory[key]
        if memory.written_status is not None:
            return copy.deepcopy(memory.written_status)
        return cast(LoopStatus, copy.deepcopy(self.loops[key].get("status") or {}))

    def phase(self, key: str) -> str:
        memory = self.memory[key]
        status = memory.written_status if memory.written_status is not None else self.loops[key].get("status") or {}
        return str(status.get("phase", phases.PENDING))
