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
    # Why the stable Deployment is not ready, as last listed: (its resourceVersion then, when, the detail).
    stable_diagnosis: tuple[str, float, str] | None = None

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
