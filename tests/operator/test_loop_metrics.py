"""Per-loop metrics (issue 23, item 1): `namespace` and `loop` on every series, values a function of the loop's
status (metrics.loop_series), exported only by an engine that runs (acts), for the loops it holds: a deleted
loop, or one let go to another replica, has no series left, and a standby exports none."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Iterator
from typing import Any

import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families

from feedbackloop.core import sharding
from feedbackloop.core.timeutil import format_time
from feedbackloop.runtime import metrics
from feedbackloop.runtime.metrics import LoopSeries, loop_series

from .fake_kube import FakeKube, FakePrometheus, Harness
from .test_engine_cycle import KEY, T0, loop

ME = "feedbackloop-operator-7d9f-a"


def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The per-loop samples of a scrape of the registry: (name, labels) -> value."""
    text = prometheus_client.generate_latest().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        if family.name.startswith("mfl_loop")
        for sample in family.samples
    }


def loops_exported() -> set[tuple[str, str]]:
    return {(dict(labels)["namespace"], dict(labels)["loop"]) for name, labels in scrape() if name == "mfl_loop_info"}


@pytest.fixture(autouse=True)
def no_source() -> Iterator[None]:
    metrics.LOOP_SERIES.source = None
    yield
    metrics.LOOP_SERIES.source = None


def condition(type_: str, status: str, reason: str) -> dict[str, str]:
    return {"type": type_, "status": status, "reason": reason}


def test_a_monitoring_loop() -> None:
    status = {
        "phase": "Monitoring",
        "currentVersion": 3,
        "metrics": [{"name": "accuracy", "state": "Healthy"}, {"name": "errorRate", "state": "Pending"}],
        "conditions": [condition("Breached", "False", "WithinThresholds")],
        "history": [{"version": 3, "outcome": "Promoted", "trigger": "Schedule", "at": format_time(T0)}],
    }
    assert loop_series(status) == LoopSeries(
        phase="Monitoring",
        version="3",
        canary_version="",
        canary_step=0,
        canary_weight=0,
        breaching={"accuracy": False, "errorRate": False},  # Pending is not firing yet
        breached=False,
        metrics_unavailable=False,
        last_retraining=("Promoted", "Schedule", T0),
    )


def test_a_canary_of_a_breached_loop() -> None:
    status = {
        "phase": "Canary",
        "currentVersion": 3,
        "rollout": {"version": 4, "step": 1, "weight": 50},
        "metrics": [{"name": "accuracy", "state": "Breaching"}],
        "conditions": [condition("Breached", "True", "ThresholdBreached")],
    }
    series = loop_series(status)
    assert (series.canary_version, series.canary_step, series.canary_weight) == ("4", 2, 50)
    assert series.breaching == {"accuracy": True} and series.breached
    assert series.last_retraining is None


def test_a_new_loop_and_the_availability_of_its_metrics() -> None:
    assert loop_series({}) == LoopSeries("Pending", "", "", 0, 0)
    awaiting = {"conditions": [condition("MetricsAvailable", "False", "AwaitingData")]}
    outage = {"conditions": [condition("MetricsAvailable", "False", "NoData")]}
    assert not loop_series(awaiting).metrics_unavailable  # a version waiting for data is no outage
    assert loop_series(outage).metrics_unavailable


def test_the_exposition_carries_namespace_and_loop() -> None:
    statuses = [
        (
            "team-a",
            "a",
            {"phase": "Breached", "currentVersion": 2, "metrics": [{"name": "accuracy", "state": "Breaching"}]},
        ),
        ("team-b", "a", {"phase": "Monitoring", "currentVersion": 5}),
    ]
    metrics.LOOP_SERIES.source = lambda: statuses
    samples = scrape()
    info = (("canary_version", ""), ("loop", "a"), ("namespace", "team-a"), ("phase", "Breached"), ("version", "2"))
    assert samples[("mfl_loop_info", info)] == 1
    rule = (("loop", "a"), ("namespace", "team-a"), ("rule", "accuracy"))
    assert samples[("mfl_loop_rule_breaching", rule)] == 1
    assert samples[("mfl_loop_canary_weight", (("loop", "a"), ("namespace", "team-b")))] == 0
    assert loops_exported() == {("team-a", "a"), ("team-b", "a")}
    metrics.LOOP_SERIES.source = None
    assert scrape() == {}  # the families stay described, with no series


@pytest.fixture
def bed() -> Harness:
    harness = Harness(FakeKube(), FakePrometheus())
    harness.prometheus.answer("accuracy_of", [({"model": "churn", "namespace": "team-a"}, 0.95)])
    return harness


def running(bed: Harness) -> Any:
    """The engine's run() as the leader runs it, started (the test cancels it)."""

    async def start() -> asyncio.Task[None]:
        task = asyncio.create_task(bed.engine.run())
        await asyncio.sleep(0)
        return task

    return bed.runner.run(start())


def stop(bed: Harness, task: Any) -> None:
    async def cancel() -> None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    bed.runner.run(cancel())


def test_only_a_running_engine_exports_and_a_deleted_loop_leaves_no_series(bed: Harness) -> None:
    bed.apply(loop())
    bed.cycle(T0)
    assert loops_exported() == set()  # observing (a standby replica's view) is not acting
    task = running(bed)
    try:
        assert loops_exported() == {("team-a", "churn")}
        phase = next(dict(labels)["phase"] for name, labels in scrape() if name == "mfl_loop_info")
        assert phase == bed.engine.fleet.phase(KEY) == "Retraining"
        bed.engine.observe_loop("DELETED", bed.kube.loops[KEY])
        assert loops_exported() == set()
    finally:
        stop(bed, task)
    assert metrics.LOOP_SERIES.source is None


def test_a_loop_let_go_to_another_replica_leaves_no_series(bed: Harness) -> None:
    bed.engine.settings.shard = ME
    body = loop()
    body["metadata"].update(labels={sharding.SHARD_LABEL: ME}, resourceVersion="10")
    bed.kube.loops[KEY] = copy.deepcopy(body)
    bed.engine.observe_loop("ADDED", copy.deepcopy(body))
    task = running(bed)
    try:
        assert loops_exported() == {("team-a", "churn")}
        body["metadata"].update(labels={sharding.SHARD_LABEL: ME, sharding.DRAIN_LABEL: "other"}, resourceVersion="11")
        bed.kube.loops[KEY] = copy.deepcopy(body)
        bed.engine.observe_loop("MODIFIED", copy.deepcopy(body))

        async def ack() -> None:
            await bed.engine.cycle(T0)
            await bed.engine.settle()

        bed.runner.run(ack())
        assert bed.kube.ack_versions == ["11"]
        assert loops_exported() == set()
    finally:
        stop(bed, task)
