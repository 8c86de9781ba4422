"""A sharded replica's engine (runtime/engine.py with Settings.shard): a drained loop gets its reconcile in
flight finished, then no action at all after the ack; the ack is one patch on the version that asked for it;
events older than the ack are ignored; and a DELETED event resets the HTTPRoute only when the loop is
really gone."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest

from feedbackloop.core import resources, sharding
from feedbackloop.core.fleet import LoopMemory
from feedbackloop.runtime.engine import Engine, Settings

from .fake_kube import FakeKube, FakePrometheus, Harness
from .test_engine_cycle import KEY, T0, loop

ME = "feedbackloop-operator-7d9f-a"


@pytest.fixture
def bed() -> Harness:
    harness = Harness(FakeKube(), FakePrometheus())
    harness.prometheus.answer("accuracy_of", [({"model": "churn", "namespace": "team-a"}, 0.95)])
    harness.engine.settings.shard = ME
    return harness


def labelled(version: int, drain: str | None = None, **spec: Any) -> dict[str, Any]:
    body = loop(**spec)
    labels = {sharding.SHARD_LABEL: ME} | ({sharding.DRAIN_LABEL: drain} if drain else {})
    body["metadata"].update(labels=labels, resourceVersion=str(version))
    return body


def run_cycle(bed: Harness, now: float) -> list[tuple[str, str]]:
    """One engine cycle without the harness's re-feeding of every stored loop (a sharded watch would not
    send a loop that left its label selector)."""
    start = len(bed.kube.actions)

    async def cycle() -> None:
        await bed.engine.cycle(now)
        await bed.engine.settle()
        while bed.engine._fresh:  # the cycles its finished polls wake
            await bed.engine.cycle(now)
            await bed.engine.settle()

    bed.runner.run(cycle())
    return bed.kube.actions[start:]


def store(bed: Harness, body: dict[str, Any], event: str = "MODIFIED") -> None:
    """The API server holds `body` and the watch delivers it."""
    bed.kube.loops[KEY] = copy.deepcopy(body)
    bed.engine.observe_loop(event, copy.deepcopy(body))


def test_a_drained_loop_is_acked_on_its_version_and_then_left_alone(bed: Harness) -> None:
    store(bed, labelled(10), "ADDED")
    assert ("create", "Job team-a/churn-train-v1") in run_cycle(bed, T0)
    store(bed, labelled(11, drain="feedbackloop-operator-7d9f-b"))
    actions = run_cycle(bed, T0 + 1)
    assert actions == [("ack-shard", KEY)]  # nothing else: no reconcile once the drain is seen
    assert bed.kube.ack_versions == ["11"]
    assert sharding.SHARD_LABEL not in bed.kube.loops[KEY]["metadata"]["labels"]
    assert KEY not in bed.engine.loops
    # A late event from before the ack changes nothing; nor does time passing (the Job would be due).
    bed.engine.observe_loop("MODIFIED", labelled(11, drain="feedbackloop-operator-7d9f-b"))
    for step in range(1, 5):
        assert run_cycle(bed, T0 + 60 * step) == []
    assert KEY not in bed.engine.loops and bed.kube.ack_versions == ["11"]
    # The watch's DELETED (it left the selector): the loop still exists, so its HTTPRoute is not touched.
    bed.engine.observe_loop("DELETED", bed.kube.loops[KEY])
    assert run_cycle(bed, T0 + 400) == []


def test_the_ack_waits_for_the_reconcile_in_flight(bed: Harness) -> None:
    store(bed, labelled(10), "ADDED")
    run_cycle(bed, T0)
    in_flight: asyncio.Future[None] = bed.runner.get_loop().create_future()

    async def reconcile() -> None:
        await in_flight

    bed.engine._reconciles[KEY] = bed.runner.get_loop().create_task(reconcile())
    store(bed, labelled(11, drain="other"))
    bed.runner.run(bed.engine.cycle(T0 + 1))
    assert KEY not in bed.engine._acks and bed.kube.ack_versions == []  # it waits
    in_flight.set_result(None)
    bed.runner.run(asyncio.sleep(0))
    bed.engine._reconciles.pop(KEY)
    assert run_cycle(bed, T0 + 2) == [("ack-shard", KEY)]


def test_a_reconcile_queued_before_the_drain_does_nothing() -> None:
    harness = Harness(FakeKube(), FakePrometheus())
    harness.engine.settings.shard = ME
    body = labelled(11, drain="other")
    harness.kube.loops[KEY] = body
    harness.engine.fleet.loops[KEY] = body
    harness.engine.fleet.memory.setdefault(KEY, LoopMemory())
    harness.runner.run(harness.engine._reconcile(KEY, None, T0))
    assert harness.kube.actions == []


def test_an_ack_refused_for_a_newer_version_is_sent_again_on_the_next_event(bed: Harness) -> None:
    store(bed, labelled(10), "ADDED")
    run_cycle(bed, T0)
    bed.engine.observe_loop("MODIFIED", labelled(11, drain="other"))
    bed.kube.loops[KEY] = labelled(12, drain="other")  # changed again since (a status write, a user's edit)
    assert run_cycle(bed, T0 + 1) == []  # 409: not let go yet
    assert KEY in bed.engine.loops
    bed.engine.observe_loop("MODIFIED", labelled(12, drain="other"))
    assert run_cycle(bed, T0 + 2) == [("ack-shard", KEY)]
    assert bed.kube.ack_versions == ["11", "12"]


def test_a_loop_assigned_back_later_is_acted_on_again(bed: Harness) -> None:
    store(bed, labelled(10), "ADDED")
    run_cycle(bed, T0)
    store(bed, labelled(11, drain="other"))
    run_cycle(bed, T0 + 1)
    bed.engine.observe_loop("DELETED", bed.kube.loops[KEY])
    store(bed, labelled(20), "ADDED")  # the coordinator gave it back
    assert KEY in bed.engine.loops
    run_cycle(bed, T0 + 2)
    assert bed.engine.fleet.memory[KEY].spec is not None


def test_without_sharding_a_drain_label_changes_nothing() -> None:
    harness = Harness(FakeKube(), FakePrometheus())
    store(harness, labelled(10, drain="other"), "ADDED")
    actions = run_cycle(harness, T0)
    assert ("create", "Job team-a/churn-train-v1") in actions and ("ack-shard", KEY) not in actions


@pytest.mark.parametrize("sharded", [True, False])
def test_a_deleted_event_for_a_loop_that_still_exists_leaves_the_httproute_alone(sharded: bool) -> None:
    harness = Harness(FakeKube(), FakePrometheus())
    harness.engine.settings.shard = ME if sharded else None
    body = labelled(10)
    body["spec"]["rollout"]["trafficRouting"] = {"httpRoute": {"name": "churn-route"}}
    store(harness, body, "ADDED")
    run_cycle(harness, T0)
    harness.kube.route_weights["team-a/churn-route"] = 30  # the user's (or a canary's) weights
    harness.engine.observe_loop("DELETED", copy.deepcopy(body))  # it left the watch, but exists
    actions = run_cycle(harness, T0 + 1)
    assert actions == [("get", KEY)]
    assert harness.kube.route_weights["team-a/churn-route"] == 30
    assert KEY not in harness.engine.loops  # and this replica stopped acting on it


@pytest.mark.parametrize("how", ["gone", "deleting", "recreated"])
def test_a_deleted_event_for_a_loop_really_gone_resets_the_httproute(how: str) -> None:
    harness = Harness(FakeKube(), FakePrometheus())
    harness.engine.settings.shard = ME
    body = labelled(10)
    body["spec"]["rollout"]["trafficRouting"] = {"httpRoute": {"name": "churn-route"}}
    store(harness, body, "ADDED")
    run_cycle(harness, T0)
    harness.kube.route_weights["team-a/churn-route"] = 30
    if how == "gone":
        del harness.kube.loops[KEY]
    elif how == "deleting":
        harness.kube.loops[KEY]["metadata"]["deletionTimestamp"] = "2026-12-07T05:00:00Z"
    else:
        harness.kube.loops[KEY]["metadata"]["uid"] = "uid-another"
    harness.engine.observe_loop("DELETED", copy.deepcopy(body))
    actions = run_cycle(harness, T0 + 1)
    assert ("patch", "HTTPRoute churn-route canary=0") in actions
    assert harness.kube.route_weights["team-a/churn-route"] == 0


def replica(kube: FakeKube, prometheus: FakePrometheus, shard: str | None) -> Harness:
    """A replica's engine on the same API server whose watch has sent it no Deployment (its selector's)."""
    harness = Harness(kube, prometheus)
    harness.engine = Engine(kube, Settings(active_reconcile_seconds=5.0))
    harness.engine.observer.poller._query = prometheus.query
    harness.engine.settings.shard = shard
    return harness


def serving(version: int) -> dict[str, Any]:
    body = labelled(version)
    body["spec"]["model"]["initialVersion"] = 1
    return body


def test_a_loop_taken_over_brings_its_deployments_into_this_replicas_watch_before_acting(bed: Harness) -> None:
    """Sharded, a replica watches only the Deployments labelled for it: before it first acts on a loop it labels
    the loop's Deployments (so that its watch sends them) and knows them from that call. Acting without them would
    write every Deployment again as if it were missing."""
    first = replica(bed.kube, bed.prometheus, None)  # before sharding: Deployments without a shard label
    store(first, serving(10), "ADDED")
    run_cycle(first, T0)
    stable = f"team-a/{resources.stable_name('churn')}"
    assert sharding.SHARD_LABEL not in bed.kube.deployments[stable]["metadata"]["labels"]
    taker = replica(bed.kube, bed.prometheus, ME)
    store(taker, serving(11), "ADDED")
    actions = run_cycle(taker, T0 + 1)
    assert ("label", f"Deployment {stable} shard={ME}") in actions
    assert not [a for a in actions if a[0] in ("create", "update") and a[1].startswith("Deployment")], actions
    assert taker.engine.fleet.deployments[stable]["metadata"]["labels"][sharding.SHARD_LABEL] == ME
    assert all(a[0] != "label" for a in run_cycle(taker, T0 + 20))  # once
    assert taker.kube.adoptions == ["team-a/churn"]  # one list for the loop, however many cycles


def test_deployments_a_sharded_replica_writes_carry_its_shard(bed: Harness) -> None:
    store(bed, serving(10), "ADDED")
    run_cycle(bed, T0)
    created = list(bed.kube.deployments.values())
    assert created and all(d["metadata"]["labels"][sharding.SHARD_LABEL] == ME for d in created)
    # Its Pods are not relabelled when the loop moves: the label is on the Deployment only.
    assert all(sharding.SHARD_LABEL not in d["spec"]["template"]["metadata"]["labels"] for d in created)


def test_a_loop_whose_deployments_cannot_be_adopted_is_not_acted_on_until_they_are(bed: Harness) -> None:
    failing = {"on": True}
    adopt = bed.kube.adopt_deployments

    def flaky(namespace: str, loop_label: str, shard: str) -> list[dict[str, Any]]:
        if failing["on"]:
            raise RuntimeError("the API server is unreachable")
        return adopt(namespace, loop_label, shard)

    bed.kube.adopt_deployments = flaky  # type: ignore[method-assign]
    store(bed, serving(10), "ADDED")
    assert run_cycle(bed, T0) == []
    failing["on"] = False
    assert any(a[1].startswith("Deployment") for a in run_cycle(bed, T0 + 10))


def test_a_loop_that_left_and_came_back_is_adopted_again(bed: Harness) -> None:
    store(bed, serving(10), "ADDED")
    run_cycle(bed, T0)
    bed.engine.observe_loop("DELETED", serving(10))  # moved to another replica, which labelled them its own
    for deployment in bed.kube.deployments.values():
        deployment["metadata"]["labels"][sharding.SHARD_LABEL] = "feedbackloop-operator-7d9f-b"
    store(bed, serving(20), "ADDED")
    actions = run_cycle(bed, T0 + 1)
    assert [a for a in actions if a[0] == "label"] and all(
        d["metadata"]["labels"][sharding.SHARD_LABEL] == ME for d in bed.kube.deployments.values()
    )
