"""The Argo CD health check shipped as docs/argocd/health.lua, run by Lua 5.1 (Argo CD's gopher-lua speaks 5.1;
lupa embeds the reference interpreter) against the status the operator itself writes in each phase: the
conditions come from phases._settle_phase / _invalid / _hold_pods, not from hand-written fixtures, so a change in
what the operator writes that the health check misreads fails here."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import lupa.lua51 as lua51
import pytest
import yaml

from feedbackloop.core import api, phases
from feedbackloop.core.credentials import Refusal
from feedbackloop.core.phases import Decision, InvalidWorld, ServingObservation, World

ROOT = Path(__file__).resolve().parents[2]
HEALTH = ROOT / "docs" / "argocd" / "health.lua"
SPEC = yaml.safe_load((ROOT / "manifests" / "examples" / "loop.yaml").read_text())["spec"]
NOW = 1_800_000_000.0
READY_V1 = ServingObservation(stable_version=1, stable_ready=2, stable_replicas=2)
STARTING_V1 = ServingObservation(stable_version=1, stable_ready=0, stable_replicas=2, stable_detail="pulling")


def lua_value(runtime: Any, value: Any) -> Any:
    if isinstance(value, dict):
        return runtime.table_from({k: lua_value(runtime, v) for k, v in value.items() if v is not None})
    if isinstance(value, list):
        return runtime.table_from([lua_value(runtime, v) for v in value])
    return value


def health(obj: dict[str, Any]) -> tuple[str, str]:
    """(status, message) as Argo CD would show them: the script run with `obj` set to the live object."""
    runtime = lua51.LuaRuntime(unpack_returned_tuples=True)
    runtime.globals().obj = lua_value(runtime, obj)
    result = runtime.execute(HEALTH.read_text())
    return result.status, result.message


def settled(
    status: dict[str, Any], serving: ServingObservation | None = READY_V1, paused: bool = False
) -> dict[str, Any]:
    """The status after the operator's round: phase and the summary conditions as _settle_phase writes them."""
    spec = api.validate_spec({**SPEC, "paused": paused})
    world = World(now=NOW, name="churn", generation=3, spec=spec, status=copy.deepcopy(status), serving=serving)
    decision = Decision(status=copy.deepcopy(status))
    phases._settle_phase(world, decision, "2027-01-15T08:00:00Z")
    return decision.status


def loop(status: dict[str, Any] | None, generation: int = 3, paused: bool = False) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "feedbackloop.dev/v1alpha1",
        "kind": "ModelFeedbackLoop",
        "metadata": {"name": "churn", "namespace": "team-a", "generation": generation},
        "spec": {**SPEC, "paused": paused},
    }
    if status is not None:
        obj["status"] = status
    return obj


SERVING_V1 = {"currentVersion": 1}
BREACHED = {"type": "Breached", "status": "True", "reason": "OutOfBounds", "message": "accuracy 0.7 < 0.85"}
RUN = {"version": 2, "jobName": "churn-train-v2", "engine": "Job", "trigger": "breach", "parentVersion": 1}
ROLLOUT = {"version": 2, "trigger": "breach", "step": 0, "weight": 20, "analysisPhase": "Running"}


def invalid() -> dict[str, Any]:
    world = InvalidWorld(now=NOW, name="churn", generation=3, spec_error="spec.model.task: unknown", status={})
    decision = Decision(status={})
    phases._invalid(world, decision, "2027-01-15T08:00:00Z")
    return decision.status


def storage_refused() -> dict[str, Any]:
    spec = api.validate_spec(SPEC)
    world = World(now=NOW, name="churn", generation=3, spec=spec, status=dict(SERVING_V1), serving=READY_V1)
    decision = Decision(status=settled(SERVING_V1))
    phases._hold_pods(world, decision, Refusal("StorageKeysNotBound", "bind the keys to the endpoint"))
    return decision.status


CASES: list[tuple[str, dict[str, Any], str, str]] = [
    ("created, no status yet", loop(None), "Progressing", "waiting for the operator"),
    (
        "Pending: training the first version",
        loop(settled({}, serving=None)),
        "Progressing",
        "training the first version",
    ),
    (
        "Pending: the first training failed",
        loop(settled({"lastFailure": "OOMKilled"}, serving=None)),
        "Degraded",
        "OOMKilled",
    ),
    ("Monitoring", loop(settled(SERVING_V1)), "Healthy", "version 1 serving"),
    (
        "Monitoring, a spec change not seen yet",
        loop(settled(SERVING_V1), generation=4),
        "Progressing",
        "the operator has not seen generation 4 yet",
    ),
    (
        "Monitoring, version 1 rolling out",
        loop(settled(SERVING_V1, serving=STARTING_V1)),
        "Progressing",
        "waiting for version 1 to be ready",
    ),
    ("Breached", loop(settled({**SERVING_V1, "conditions": [BREACHED]})), "Degraded", ""),
    ("Retraining", loop(settled({**SERVING_V1, "retraining": RUN})), "Progressing", "version 2"),
    ("Canary", loop(settled({**SERVING_V1, "rollout": ROLLOUT})), "Progressing", "version 2"),
    ("Paused", loop(settled(SERVING_V1, paused=True), paused=True), "Suspended", "paused"),
    (
        "Paused while breached",
        loop(settled({**SERVING_V1, "conditions": [BREACHED]}, paused=True), paused=True),
        "Suspended",
        "paused",
    ),
    ("Invalid spec", loop(invalid()), "Degraded", "spec.model.task: unknown"),
    ("Invalid spec, paused", loop(invalid(), paused=True), "Degraded", "spec.model.task: unknown"),
    ("storage keys refused", loop(storage_refused()), "Degraded", "bind the keys to the endpoint"),
]


@pytest.mark.parametrize("case, obj, expected, message", CASES, ids=[c[0] for c in CASES])
def test_health_per_phase(case: str, obj: dict[str, Any], expected: str, message: str) -> None:
    status, said = health(obj)
    assert status == expected, (case, obj.get("status"))
    assert (said or "") == message, case


def test_every_phase_is_covered() -> None:
    covered = {obj.get("status", {}).get("phase") for _, obj, _, _ in CASES}
    assert covered >= {
        phases.PENDING,
        phases.MONITORING,
        phases.BREACHED,
        phases.RETRAINING,
        phases.CANARY,
        phases.PAUSED,
        phases.INVALID,
    }


def test_the_docs_install_the_shipped_file() -> None:
    """docs/install.md points Argo CD at the file, and holds no copy of it that could drift."""
    install = (ROOT / "docs" / "install.md").read_text()
    assert "docs/argocd/health.lua" in install
    assert "resource.customizations.health.feedbackloop.dev_ModelFeedbackLoop" in install
    assert "hs.status" not in install and "hs.status" not in (ROOT / "docs" / "operations.md").read_text()
