"""Two operator replicas (the `ha` shape), the leader SIGKILLed at seeded random moments across Monitoring,
Retraining and Canary (at least ten kills): no Job twice for a version, never more than one canary, every
rollout finished, and the failover time of each kill printed with the p50 and p99 of those with a standby
ready (the kill to the first renewal of the Lease by a live replica: the standby after the lease expired,
or the killed Pod's restarted container resuming it).

About 12 minutes: two retrain -> canary -> promote rounds of tests/e2e/test_loop.py's loop, each stretched by
its leaderless seconds and by the wait for the replica killed before to stand by again (fresh replicas for
each round keep the kubelet's crash-loop back-off short); the kills stop being planned once the budget is
spent.
"""

from __future__ import annotations

import json
import random
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import pytest

from feedbackloop.core.election import Timing
from mfl_testbed.cluster import OPERATOR_NAMESPACE, Cluster
from mfl_testbed.traffic import TrafficGenerator, service_endpoints
from tests.install.shapes import apply_shape

from .conftest import ROOT, artifact_claim, seed_registry
from .test_install_shapes import SELECTOR, lease, ready_pods, renewed, wait
from .test_loop import history_outcomes, loop_manifest

SEED = 20261202
MIN_KILLS = 10
BUDGET_SECONDS = 600  # for the rounds; setup and teardown come on top
STANDBY_WAIT_SECONDS = 90  # for the replica killed before to stand by again (the kubelet's back-off: 80 s at its 5th)
MAX_BACKOFF_SECONDS = 300  # the kubelet's longest crash-loop back-off
# Kills planned per phase and round, each after a random delay (seconds) within the phase.
PLAN = {"Monitoring": (2, (1.0, 6.0)), "Retraining": (2, (0.5, 4.0)), "Canary": (3, (1.0, 8.0))}
TIMING = Timing()  # the defaults the manifests run with (operator/feedbackloop/core/election.py)
LEASE_SECONDS, POLL_SECONDS = TIMING.lease_seconds, TIMING.poll_seconds


@dataclass
class Kill:
    phase: str
    killed: str
    standby: bool  # another replica was ready when the leader was killed (not in crash-loop back-off)
    leader: str  # who renewed the Lease first after the kill
    seconds: float  # the kill to that renewal

    def __str__(self) -> str:
        how = "its restarted container resumed" if self.leader == self.killed else f"{self.leader} took over"
        alone = "" if self.standby else " (no standby ready)"
        return f"{self.phase:<10} killed {self.killed}{alone}: {how} after {self.seconds:5.1f}s"


class Watch(threading.Thread):
    """Every second: the retraining Jobs per version (by uid: a re-created Job is a twin too) and the
    canary Deployments that exist at once."""

    def __init__(self, kubectl, namespace: str) -> None:
        super().__init__(daemon=True)
        self.kubectl, self.namespace = kubectl, namespace
        self.jobs: dict[str, set[str]] = defaultdict(set)
        self.most_canaries = 0
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(1.0):
            for job in self._items("jobs"):
                labels = job["metadata"].get("labels") or {}
                self.jobs[labels.get("feedbackloop.dev/version", "?")].add(job["metadata"]["uid"])
            canaries = [
                d
                for d in self._items("deployments")
                if (d["metadata"].get("labels") or {}).get("feedbackloop.dev/track") == "canary"
            ]
            self.most_canaries = max(self.most_canaries, len(canaries))

    def _items(self, kind: str) -> list[dict[str, Any]]:
        result = self.kubectl("get", kind, "-n", self.namespace, "-o", "json", check=False)
        return json.loads(result.stdout)["items"] if result.returncode == 0 else []

    def twins(self) -> dict[str, int]:
        return {version: len(uids) for version, uids in self.jobs.items() if len(uids) > 1}


def kill_leader(cluster: Cluster, kubectl, phase: str) -> Kill:
    # Give a replica restarting from an earlier kill (the kubelet's back-off grows) time to stand by.
    deadline = time.monotonic() + STANDBY_WAIT_SECONDS
    while len(ready_pods(cluster)) < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    holder = lease(kubectl)["holderIdentity"]
    standby = any(pod != holder for pod in ready_pods(cluster))
    killed_at = time.time()
    cluster.kill_container(OPERATOR_NAMESPACE, holder)
    dead = time.time()
    # The killed process writes nothing after the kill returned: a renewal stamped later is a live leader's (one
    # stamped while `ctr` was starting may be the dying leader's). Counted from before the kill: conservative.
    # (The wait allows for both replicas in crash-loop back-off; the bound is asserted with a standby.)
    wait(
        "a live replica renewing the Lease",
        lambda: renewed(lease(kubectl)) > dead,
        LEASE_SECONDS + MAX_BACKOFF_SECONDS + 30,
    )
    spec = lease(kubectl)
    kill = Kill(phase, holder, standby, spec["holderIdentity"], renewed(spec) - killed_at)
    print(f"[failover] {kill}", file=sys.__stderr__, flush=True)  # as it happens: a long run shows its progress
    return kill


def fresh_replicas(cluster: Cluster, kubectl) -> None:
    """New operator Pods (a rolling restart: the leader releases, the surge Pod takes over): the kubelet's
    crash-loop back-off grows with every restart of a Pod's container (10 s, 20 s, ... 5 min) and resets only
    after 10 minutes, so without this the killed replicas of a round come back too late to stand by."""
    kubectl("rollout", "restart", "deployment", "feedbackloop-operator", "-n", OPERATOR_NAMESPACE)
    kubectl("rollout", "status", "deployment", "feedbackloop-operator", "-n", OPERATOR_NAMESPACE, "--timeout=300s")
    wait("two operator Pods ready", lambda: len(ready_pods(cluster)) == 2, 120)
    wait("one of them leading", lambda: lease(kubectl).get("holderIdentity") in ready_pods(cluster), 60)


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile, linear between the closest ranks (numpy's default)."""
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def finished(status: dict[str, Any], version: int) -> bool:
    return any(v == version for v, _ in history_outcomes(status)) and not status.get("rollout")


@pytest.fixture
def ha_operator(operator: Cluster, image_refs: dict[str, str], kubectl, tmp_path):
    apply_shape(operator, tmp_path / "ha", ("ha",), {"operator": image_refs["operator"]})
    wait("two operator Pods ready", lambda: len(ready_pods(operator)) == 2, 120)
    wait("one of them leading", lambda: lease(kubectl).get("holderIdentity") in ready_pods(operator), 60)
    yield operator
    kubectl("delete", "poddisruptionbudget", "feedbackloop-operator", "-n", OPERATOR_NAMESPACE, "--ignore-not-found")
    operator.install_operator(ROOT / "manifests", {"operator": image_refs["operator"]})
    wait("one default operator Pod", lambda: len(operator.pods(OPERATOR_NAMESPACE, SELECTOR)) == 1, 120)


def test_leader_killed_across_monitoring_retraining_and_canary(
    ha_operator: Cluster, loops, prometheus, kubectl, k8s_namespace, capsys
) -> None:
    ns, rng = k8s_namespace, random.Random(SEED)
    claim, storage = artifact_claim(ha_operator, ns)
    seed_registry(storage, "churn")
    manifest = loop_manifest(ns, prometheus.url, claim, initial_version=1, max_degradation=1.0, pauses=("20s", "15s"))
    loops.apply(manifest)
    loops.wait_condition(ns, "churn", "ServingReady", "True", 180)
    traffic = TrafficGenerator(service_endpoints(kubectl, ns, "churn"), rate=80, batch=8, label_delay=1.0).start()
    watch = Watch(kubectl, ns)
    watch.start()
    kills: list[Kill] = []
    rounds: list[int] = []  # the candidate version of each round
    started = time.monotonic()

    def status() -> dict[str, Any]:
        return loops.status(ns, "churn")

    def kill_during(phase: str) -> None:
        """The planned kills while the loop is in `phase` (those left when it moves on are dropped)."""
        count, (low, high) = PLAN[phase]
        for _ in range(count):
            if time.monotonic() - started > BUDGET_SECONDS:
                return
            time.sleep(rng.uniform(low, high))
            now = status()
            if now.get("phase") != phase or (phase == "Monitoring" and now.get("retraining")):
                return
            kills.append(kill_leader(ha_operator, kubectl, phase))

    def one_round() -> None:
        """Monitoring -> (retrain) Retraining -> Canary -> finished, with the planned kills in each."""
        loops.wait(ns, "churn", lambda s: s.get("phase") == "Monitoring", 120, "Monitoring")
        kill_during("Monitoring")
        manifest["metadata"]["annotations"]["feedbackloop.dev/retrain"] = f"failover-{len(rounds)}"
        loops.apply(manifest)
        now = loops.wait(ns, "churn", lambda s: bool(s.get("retraining") or s.get("rollout")), 120, "a retraining")
        version = int((now.get("retraining") or now.get("rollout"))["version"])
        rounds.append(version)
        kill_during("Retraining")
        loops.wait(ns, "churn", lambda s: bool(s.get("rollout")) or finished(s, version), 300, "the canary")
        kill_during("Canary")
        loops.wait(ns, "churn", lambda s: finished(s, version), 420, f"the rollout of version {version} finished")

    try:
        while time.monotonic() - started < BUDGET_SECONDS and (
            len(kills) < MIN_KILLS or {k.phase for k in kills} < set(PLAN)
        ):
            if rounds:
                fresh_replicas(ha_operator, kubectl)
            one_round()
    finally:
        traffic.stop()
        watch.stopped.set()
        watch.join(5)

    final = status()
    covered = [kill.seconds for kill in kills if kill.standby]
    with capsys.disabled():
        print(f"\nfailover after SIGKILL of the leader ({len(kills)} kills, seed {SEED}):")
        for number, kill in enumerate(kills, 1):
            print(f"  {number:2d}. {kill}")
        took_over = [kill.seconds for kill in kills if kill.standby and kill.leader != kill.killed]
        for what, figures in (("with a standby ready", covered), ("taken over by the standby", took_over)):
            if figures:
                print(f"  {what} ({len(figures)} kills): p50 {percentile(figures, 50):.1f}s, "
                      f"p99 {percentile(figures, 99):.1f}s, max {max(figures):.1f}s")  # fmt: skip
        print(f"  rounds (candidate versions): {rounds}; outcomes: {history_outcomes(final)}")
    assert len(kills) >= MIN_KILLS, f"only {len(kills)} kills within the budget"
    assert {kill.phase for kill in kills} == set(PLAN)
    assert watch.twins() == {}, f"versions with more than one Job: {watch.twins()}"
    assert watch.most_canaries <= 1
    outcomes = dict(history_outcomes(final))
    assert rounds and all(outcomes.get(version) in ("Promoted", "RolledBack") for version in rounds), outcomes
    assert final.get("rollout") is None and final["phase"] == "Monitoring"
    # Bounded with a standby: the lease after the last renewal it saw (within a poll, with jitter; it reads
    # again when the lease ends), a margin for the test bed. A Pod's restarted container may resume sooner.
    assert covered and max(covered) <= LEASE_SECONDS + 1.2 * POLL_SECONDS + 5, covered
    assert any(kill.leader != kill.killed for kill in kills)  # the standby did take over
