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
