"""What one check concluded at one look, and the evidence shown to users ("why was this decided")."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class Outcome(str, Enum):
    """A check's conclusion at one look."""

    PASS = "Pass"  # evidence that the canary is acceptable on this check
    FAIL = "Fail"  # evidence that the canary is worse than allowed
    PENDING = "Pending"  # not enough data or evidence yet: keep looking
    INCONCLUSIVE = "Inconclusive"  # the check can no longer decide (its sample budget is spent)
    ERROR = "Error"  # the observation could not be used (query failed, bad data)


@dataclass(frozen=True)
class Evidence:
    """A small, JSON-friendly record of one check at one look (maps to the CRD's CheckEvidence)."""

    name: str
    decision: Outcome
    message: str
    values: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "decision": self.decision.value,
            "message": self.message,
            "values": {key: round(float(value), 6) for key, value in self.values.items() if math.isfinite(value)},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Evidence:
        return cls(
            name=data["name"],
            decision=Outcome(data["decision"]),
            message=data.get("message", ""),
            values={key: float(value) for key, value in data.get("values", {}).items()},
        )
