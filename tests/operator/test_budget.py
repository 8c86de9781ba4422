"""The engine's client-side request budget (runtime/budget.py) and how the fenced client uses it (kube.fence_requests).

A takeover of a dead replica's loops, or a cold start, reconciles hundreds of loops at once; without a budget
the burst drowned a saturated API server and every replica's Lease renewal timed out (a restart storm)."""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any

import pytest

from feedbackloop.core.settings import AdminSettings, SettingsError, admin_settings_from_env
from feedbackloop.runtime import kube as kube_module
from feedbackloop.runtime import leader
from feedbackloop.runtime.budget import RequestBudget


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_is_sent_at_once_and_the_rest_at_the_rate() -> None:
    clock = Clock()
    budget = RequestBudget(qps=10, burst=3, clock=clock)
    assert [budget.reserve() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert [round(budget.reserve(), 3) for _ in range(3)] == [0.1, 0.2, 0.3]  # queued in the order reserved


def test_tokens_come_back_at_the_rate_up_to_the_burst() -> None:
    clock = Clock()
    budget = RequestBudget(qps=10, burst=3, clock=clock)
    for _ in range(3):
        budget.reserve()
    clock.now += 0.2  # two tokens back
    assert [round(budget.reserve(), 3) for _ in range(3)] == [0.0, 0.0, 0.1]
    clock.now += 3600  # idle: never more than the burst
    assert [round(budget.reserve(), 3) for _ in range(4)] == [0.0, 0.0, 0.0, 0.1]


def test_concurrent_callers_never_get_more_than_the_budget() -> None:
    clock = Clock()
    budget = RequestBudget(qps=50, burst=100, clock=clock)
    waits: list[float] = []
    lock = threading.Lock()

    def caller() -> None:
        for _ in range(50):
            wait = budget.reserve()
            with lock:
                waits.append(wait)

    threads = [threading.Thread(target=caller) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # 400 requests at one instant: 100 at once, then one each 1/50 s: the last waits (400 - 100) / 50 s
    assert sum(1 for w in waits if w == 0) == 100
    assert max(waits) == pytest.approx(300 / 50)
    assert sorted(round(w * 50) for w in waits if w > 0) == list(range(1, 301))


@pytest.mark.parametrize(("qps", "burst"), [(0, 1), (1, 0), (-1, 5)])
def test_a_budget_needs_a_rate_and_a_burst(qps: float, burst: int) -> None:
    with pytest.raises(ValueError, match="qps > 0 and burst >= 1"):
        RequestBudget(qps, burst)


def test_the_admin_sets_the_budget_and_a_bad_value_is_named() -> None:
    assert (AdminSettings().api_qps, AdminSettings().api_burst) == (50, 100)
    settings = admin_settings_from_env({"MFL_API_QPS": "20", "MFL_API_BURST": "30"})
    assert (settings.api_qps, settings.api_burst) == (20, 30)
    with pytest.raises(SettingsError, match="MFL_API_QPS"):
        admin_settings_from_env({"MFL_API_QPS": "0"})


# --- the fenced client ------------------------------------------------------------------------------------------


class Term:
    def __init__(self, left: float) -> None:
        self.left = left

    def remaining(self) -> float:
        return self.left


def fenced_client(budget: RequestBudget) -> tuple[Any, list[str]]:
    sent: list[str] = []
    rest = SimpleNamespace(request=lambda method, url, **kwargs: sent.append(f"{method} {url}"))
    return kube_module.fence_requests(SimpleNamespace(rest_client=rest), budget), sent  # type: ignore[arg-type]


def test_requests_past_the_burst_wait_their_turn(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr(kube_module.time, "sleep", slept.append)
    clock = Clock()
    client, sent = fenced_client(RequestBudget(qps=4, burst=2, clock=clock))
    for i in range(4):
        client.rest_client.request("GET", f"/api/{i}")
    assert sent == ["GET /api/0", "GET /api/1", "GET /api/2", "GET /api/3"]
    assert slept == [0.25, 0.5]


def test_a_wait_that_outlives_the_leader_s_term_is_not_waited_and_the_request_not_sent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    slept: list[float] = []
    monkeypatch.setattr(kube_module.time, "sleep", slept.append)
    client, sent = fenced_client(RequestBudget(qps=1, burst=1, clock=Clock()))
    token = leader.TERM.set(Term(left=2.0))
    try:
        client.rest_client.request("GET", "/first")  # within the burst
        client.rest_client.request("GET", "/second")  # waits 1 s of the 2 s left: sent
        with pytest.raises(leader.NotLeading, match="request budget"):
            client.rest_client.request("GET", "/third")  # would wait 2 s: past the term
    finally:
        leader.TERM.reset(token)
    assert sent == ["GET /first", "GET /second"] and slept == [1.0]
