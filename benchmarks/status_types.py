"""What typing the status with pydantic models would cost, against the plain JSON decide works on today.

Per reconcile the engine copies the loop's status (decide never mutates its input). A pydantic status
would add a model_validate and a model_dump(by_alias, exclude_none) to that. This times both on the
largest status a loop carries (a canary with its evidence, conditions and history) and scales them to
one poll of a 2,000-loop fleet, and beside them the walk that makes tenant text inert on every write
(a timed assertion in tests/operator/test_sanitise.py before: timings belong here). The typing figures are
in operator/feedbackloop/core/status.py's docstring.

    python benchmarks/status_types.py
"""

from __future__ import annotations

import copy
import time
from typing import Any

from feedbackloop.core import api
from feedbackloop.core.text import inert_tree

EVIDENCE = [
    {"name": n, "decision": "Pending", "message": "m" * 60, "values": {"a": 1.0, "b": 2.0, "c": 3.0}}
    for n in ("accuracy", "availability", "latency")
]
STATUS: dict[str, Any] = {
    "phase": "Canary",
    "observedGeneration": 3,
    "currentVersion": 4,
    "summary": "accuracy=0.912",
    "serving": {"version": 4, "readyReplicas": 2, "replicas": 2},
    "conditions": [
        {"type": t, "status": "True", "reason": "R", "message": "m" * 80, "lastTransitionTime": "2026-12-02T03:00:00Z"}
        for t in ("Ready", "Reconciling", "Stalled", "MetricsAvailable", "Breached", "ServingReady", "Retraining")
    ],
    "metrics": [
        {"name": n, "state": "Healthy", "value": 0.9, "sampleTime": "2026-12-02T03:00:00Z", "message": "m" * 60}
        for n in ("accuracy", "errorRate", "latencyP99")
    ],
    "candidate": {"version": 5, "challenger": {"accuracy": 0.93}, "champion": {"accuracy": 0.9}, "gate": "g" * 80},
    "rollout": {
        "version": 5,
        "trigger": "Breach",
        "step": 1,
        "weight": 50,
        "startedAt": "2026-12-02T03:00:00Z",
        "stepStartedAt": "2026-12-02T03:02:00Z",
        "analysisPhase": "Running",
        "consecutiveErrors": 0,
        "evidence": EVIDENCE,
        "analysis": {"phase": "Running", "startedAt": 1.0, "looks": 12, "passed": [], "consecutiveErrors": {}},
        "paused": False,
    },
    "history": [
        {
            "version": v,
            "trigger": "Breach",
            "outcome": "Promoted",
            "at": "2026-12-01T00:00:00Z",
            "message": "m" * 100,
            "metrics": {"accuracy": 0.9},
            "evidence": EVIDENCE,
        }
        for v in range(1, 11)
    ],
    "retrainTimes": ["2026-12-02T01:00:00Z", "2026-12-02T02:00:00Z"],
    "handledRequests": {"retrain": "r1"},
}


def per_call_us(work, rounds: int = 2000) -> float:  # noqa: ANN001
    start = time.perf_counter()
    for _ in range(rounds):
        work()
    return (time.perf_counter() - start) / rounds * 1e6


def main() -> None:
    api.ModelFeedbackLoopStatus.model_validate(STATUS)  # the status is valid for the model
    copied = per_call_us(lambda: copy.deepcopy(STATUS))
    round_trip = per_call_us(
        lambda: api.ModelFeedbackLoopStatus.model_validate(STATUS).model_dump(by_alias=True, exclude_none=True)
    )
    print(f"{'per reconcile (canary status, 10 history entries)':<52} {'us':>8} {'2,000 loops, ms':>16}")
    for name, value in (("deepcopy (what decide costs today)", copied), ("pydantic validate + dump", round_trip)):
        print(f"{name:<52} {value:8.0f} {value * 2000 / 1000:16.0f}")
    print(f"pydantic round trip / deepcopy: {round_trip / copied:.2f}x")
    # Every status write is also walked to make tenant text inert (core/text.py): its cost beside the copy.
    walked = per_call_us(lambda: inert_tree(STATUS, 4096))
    print(f"{'inert_tree walk of the same status':<52} {walked:8.0f} {walked * 2000 / 1000:16.0f}")
    print(f"inert walk / deepcopy: {walked / copied:.2f}x")


if __name__ == "__main__":
    main()
