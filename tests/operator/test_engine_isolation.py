"""One loop can never stop the fleet's poll: a loop whose poll cannot even be prepared, or one deleted
while its poll is in flight, costs that loop alone (issue: a spec the CRD accepted froze every loop)."""

from __future__ import annotations

import asyncio
from typing import Any

from feedbackloop.core import api
from feedbackloop.core.fleet import LoopMemory
from feedbackloop.core.monitoring import Sample
from feedbackloop.runtime import observe as observe_module
from feedbackloop.runtime.engine import Engine
from feedbackloop.runtime.poller import PollStats

ACCURACY = 'test_model_accuracy{model="{{model}}",namespace="{{namespace}}"}'


def loop(name: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "team-a", "generation": 1, "uid": name},
        "spec": {
            "model": {"name": name, "initialVersion": 1, "storage": {"persistentVolumeClaim": {"claimName": "c"}}},
            "monitoring": {
                "prometheus": {"url": "http://prometheus:9090"},
                "interval": "10s",
                "metrics": [{"name": "accuracy", "query": ACCURACY, "min": 0.8}],
            },
        },
    }


class FakePoller:
    """Answers every query with 0.9; `during` runs while the poll is in flight."""

    def __init__(self, during=None) -> None:  # noqa: ANN001
        self.during = during
        self.asked: list[str] = []

    async def poll(self, queries, now):  # noqa: ANN001, ANN201
        if self.during:
            self.during()
        self.asked = [q.key for q in queries]
        return {q.key: {r.name: Sample(0.9, now) for r in q.rules} for q in queries}, PollStats()


def engine_with(*names: str, poller: FakePoller) -> Engine:
    engine = Engine(kube=object())  # type: ignore[arg-type] - polling touches no Kubernetes API
    engine.observer.poller = poller  # type: ignore[assignment]
    for name in names:
        engine.observe_loop("ADDED", loop(name))
    for key in engine.loops:
        engine._parse(engine.loops[key], engine.fleet.memory.setdefault(key, LoopMemory()))
    return engine


def test_a_loop_whose_poll_cannot_be_prepared_does_not_stop_the_others(monkeypatch) -> None:  # noqa: ANN001
    poller = FakePoller()
    engine = engine_with("healthy", "broken", poller=poller)
    real_polled_rules = observe_module.inputdrift.polled_rules

    def polled_rules(spec):  # noqa: ANN001, ANN202
        if spec.monitoring.metrics[0].query == ACCURACY and polled_rules.calls == 1:
            polled_rules.calls += 1
            raise RuntimeError("boom")  # the second loop's preparation fails
        polled_rules.calls += 1
        return real_polled_rules(spec)

    polled_rules.calls = 0
    monkeypatch.setattr(observe_module.inputdrift, "polled_rules", polled_rules)
    states = asyncio.run(engine.observer.poll(["team-a/healthy", "team-a/broken"], 1000.0))
    assert poller.asked == ["team-a/healthy"]
    assert states["team-a/healthy"]["accuracy"].value == 0.9
    broken = states["team-a/broken"]["accuracy"]
    assert broken.value is None and "boom" in broken.error
    assert engine.fleet.memory["team-a/broken"].next_poll == 1030.0  # backs off: no hot loop


def test_a_loop_deleted_while_its_poll_is_in_flight_is_dropped_quietly() -> None:
    engine: Engine

    def delete_one() -> None:
        engine.observe_loop("DELETED", loop("gone"))

    engine = engine_with("stays", "gone", poller=FakePoller(during=delete_one))
    states = asyncio.run(engine.observer.poll(["team-a/stays", "team-a/gone"], 1000.0))
    assert set(states) == {"team-a/stays"}


def test_an_unexpected_error_parsing_one_spec_leaves_the_cycle_running(monkeypatch) -> None:  # noqa: ANN001
    engine = engine_with("ok", poller=FakePoller())
    engine.observe_loop("ADDED", {**loop("odd"), "metadata": {**loop("odd")["metadata"], "generation": 2}})

    def explode(spec):  # noqa: ANN001, ANN202
        if spec["model"]["name"] == "odd":
            raise KeyError("surprise")
        return real(spec)

    real = api.validate_spec
    monkeypatch.setattr(api, "validate_spec", explode)
    engine._reconcile_guarded = _noop  # type: ignore[method-assign] - reconcile is not under test here
    asyncio.run(engine.cycle(1000.0))
    assert "surprise" in engine.fleet.memory["team-a/odd"].spec_error
    assert engine.fleet.memory["team-a/ok"].spec is not None


async def _noop(*_: Any) -> None:
    return None
