"""How the startup handler wires a sharded replica (MFL_SHARDING=true): kopf's watch of the loops selects
this replica's shard server-side (Deployments stay watched in full), the engine runs fenced by the replica's
own Lease, the coordinator by the leader Lease; unset, the wiring is today's (one leader, one engine)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import kopf
import pytest
from kopf._cogs.structs import references

from feedbackloop.core import api, sharding
from feedbackloop.runtime import egress_net, handlers, leader, metrics


def started(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str]
) -> tuple[kopf.OperatorSettings, kopf.Memo, list[dict[str, Any]]]:
    for name in ("MFL_SHARDING", "MFL_LEADER_ELECTION", "POD_NAME", "POD_NAMESPACE", "MFL_WATCH_NAMESPACES"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    leads: list[dict[str, Any]] = []

    async def lead(elector: leader.Elector, work: Any, fence: leader.Fence, **kwargs: Any) -> None:
        leads.append({"lease": elector.election.name, "labels": dict(elector.election.labels), **kwargs})

    async def unelected(work: Any, fence: leader.Fence) -> None:
        leads.append({"lease": None})

    monkeypatch.setattr(handlers, "load_config", lambda path: None)
    clients: list[Any] = []  # the budget of each Kube made: the engine's, then the coordinator's (sharded)
    monkeypatch.setattr(handlers, "Kube", lambda budget=None: clients.append(budget) or SimpleNamespace(budget=budget))
    monkeypatch.setattr(egress_net, "operator_policy", lambda allow: None)
    monkeypatch.setattr(egress_net, "install", lambda policy: None)
    lease_timeouts: list[float] = []  # each Lease client's request timeout
    monkeypatch.setattr(leader, "KubeLease", lambda name, namespace, timeout: lease_timeouts.append(timeout))
    monkeypatch.setattr(leader, "lead", lead)
    monkeypatch.setattr(leader, "unelected", unelected)
    settings, memo = kopf.OperatorSettings(), kopf.Memo()

    async def start() -> None:
        await handlers.start_engine(settings=settings, memo=memo)
        await asyncio.sleep(0.01)  # the tasks start
        await handlers.stop_engine(memo=memo)

    asyncio.run(start())
    memo.clients, memo.lease_timeouts = clients, lease_timeouts
    return settings, memo, leads


def resource(group: str, plural: str) -> references.Resource:
    return references.Resource(group, "v1", plural, kind="X", namespaced=True)


def test_sharded_replica_watches_its_shard_and_leads_two_leases(monkeypatch: pytest.MonkeyPatch) -> None:
    settings, memo, leads = started(monkeypatch, {"MFL_SHARDING": "true", "POD_NAME": "op-a", "POD_NAMESPACE": "ns"})
    selectors = settings.watching.label_selectors
    assert selectors.collect(resource(api.GROUP, api.PLURAL)) == ["feedbackloop.dev/shard=op-a"]
    assert selectors.collect(resource("apps", "deployments")) == [
        "app.kubernetes.io/managed-by=feedbackloop,feedbackloop.dev/shard=op-a"  # its loops' Deployments only
    ]
    assert memo.engine.settings.shard == "op-a"
    replica, coordinator = sorted(leads, key=lambda lead: lead["lease"] != "mfl-replica-op-a")
    assert replica == {
        "lease": "mfl-replica-op-a",
        "labels": {sharding.REPLICA_LEASE_LABEL: "true"},
        "gauge": metrics.REPLICA_LEASE,
    }
    assert coordinator == {"lease": leader.DEFAULT_LEASE, "labels": {}}
    # A Lease request may take what a renewal may (the renew deadline), not one retry period.
    assert memo.lease_timeouts and set(memo.lease_timeouts) == {leader.Timing().renew_deadline_seconds}
    engine_budget, coordinator_budget = memo.clients  # the engine's calls within the admin's budget; the moves not
    assert (engine_budget.qps, engine_budget.burst) == (50, 100) and coordinator_budget is None


def test_unsharded_wiring_is_todays(monkeypatch: pytest.MonkeyPatch) -> None:
    settings, memo, leads = started(monkeypatch, {"POD_NAME": "op-a"})
    selectors = settings.watching.label_selectors
    assert selectors.collect(resource(api.GROUP, api.PLURAL)) == []
    assert selectors.collect(resource("apps", "deployments")) == ["app.kubernetes.io/managed-by=feedbackloop"]
    assert memo.engine.settings.shard is None and not hasattr(memo, "coordinator_task")
    assert leads == [{"lease": leader.DEFAULT_LEASE, "labels": {}}]
    assert [budget.qps for budget in memo.clients] == [50]
    _, memo, leads = started(monkeypatch, {})
    assert leads == [{"lease": None}]


def test_sharding_needs_leader_election(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(kopf.PermanentError, match="MFL_SHARDING"):
        started(monkeypatch, {"MFL_SHARDING": "true", "MFL_LEADER_ELECTION": "false"})
