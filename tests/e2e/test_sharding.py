"""Sharded operator replicas (the `ha` + `sharded` components, tests/install/shapes.py's `ha-sharded`) under the
faults of issue 21: six loops in two namespaces, two of them mid-Canary (traffic, a retrained candidate) and two
mid-Retraining (a deliberately slow first training Job) when the faults start; then

(a) a replica that owns loops is SIGKILLed and its Pod force-deleted (its node lost), then the coordinator the
    same way: within the takeover bound every loop's `feedbackloop.dev/shard` names a live replica;
(b) `kubectl scale` 3 -> 5 -> 2: the fleet converges (every loop on one live replica, whose engine holds
    exactly its loops, loads within the cap, no drain left);
(c) one replica cut off from the API server (mfl_testbed.replicas.Partition): it stops acting and exits, its
    loops move only once its Lease was taken, and after healing it comes back with none but its own.

Throughout, every ~0.5 s (`Fleet`): no second training Job (or re-created one: uids) for a loop's version, at most
one canary Deployment per loop, no loop relabelled away from a replica whose Lease it still held, and no replica
acting (its mfl_operator_replica_lease / mfl_operator_leader gauge, read from its Pod) while the API shows its
Lease held by another. Every rollout that was running finishes by the loop's own rules. The measured takeover,
rebalance and partition times are printed. Every operator container's log is kept across restarts
(Cluster.keep_pod_logs) and printed when the test fails. About 5 minutes.
"""

from __future__ import annotations

import copy
import json
import sys
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

import pytest

from feedbackloop.core import sharding
from feedbackloop.core.election import Timing
from mfl_testbed.cluster import OPERATOR_NAMESPACE, Cluster
from mfl_testbed.replicas import Partition, api_server_port, kill_replica, replica_metrics
from mfl_testbed.traffic import TrafficGenerator, service_endpoints
from tests.install.shapes import SHAPES, apply_shape

from .conftest import artifact_claim, seed_registry, write_base_data
from .test_install_shapes import SELECTOR, restore_default, wait  # noqa: F401 - restore_default: a fixture here
from .test_loop import history_outcomes, loop_manifest

TIMING = Timing()  # the manifests' defaults
PERIOD = 2.0  # MFL_SHARD_PERIOD_SECONDS' default: a coordinator round
# A non-coordinator's loops: its Lease seen unrenewed for a lease duration by the coordinator (which lists every
# round), then taken and its loops assigned in a round. The coordinator's: the leader Lease first (a standby's
# lease + poll), then the new coordinator observes the dead replica's Lease for a lease duration of its own.
# Both with a margin for the test bed's load.
TAKEOVER_BOUND = TIMING.lease_seconds + 3 * PERIOD + 3
COORDINATOR_TAKEOVER_BOUND = 2 * TIMING.lease_seconds + 3 * PERIOD + 2 * TIMING.poll_seconds + 4
SLOW_TRAINING = {"max_iter": 1500, "early_stopping": False, "learning_rate": 0.01}  # ~40 s of fitting
PAUSES = ("40s", "30s")  # the canary loops' steps: the canary outlasts the kills
TRAINER = "app.kubernetes.io/name=mfl-trainer"


# ---- what the API and the replicas say, sampled --------------------------------------------------------------


@dataclass
class Sample:
    at: float  # wall clock, after the API reads and before the replicas' metrics
    loops: dict[str, sharding.LoopShard]  # "ns/name" -> its labels
    phases: dict[str, str]
    leases: dict[str, dict[str, Any]]  # replica -> its Lease's spec
    leader: str  # the leader Lease's holder: the coordinator
    pods: dict[str, dict[str, Any]]  # operator Pod name -> {ip, terminating, restarts, ready}
    beliefs: dict[str, dict[str, float] | None] = field(default_factory=dict)  # Pod -> its gauges (None: silent)

    def live(self) -> set[str]:
        """Replicas whose Lease names them and has not expired, with a Pod that is not terminating."""
        alive = set()
        for replica, spec in self.leases.items():
            renewed = _time(spec.get("renewTime"))
            pod = self.pods.get(replica)
            if (
                spec.get("holderIdentity") == replica
                and renewed + float(spec.get("leaseDurationSeconds") or 0) > self.at
                and pod is not None
                and not pod["terminating"]
            ):
                alive.add(replica)
        return alive

    def owners(self) -> dict[str, int]:
        loads: dict[str, int] = defaultdict(int)
        for shard in self.loops.values():
            if shard.shard:
                loads[shard.shard] += 1
        return dict(loads)

    def all_on_live(self, excluding: str = "") -> bool:
        live = self.live() - {excluding}
        return bool(self.loops) and all(s.shard in live for s in self.loops.values())

    def all_acted_on(self, excluding: str = "") -> bool:
        """Every loop on a live replica that acts (its mfl_operator_replica_lease gauge): a replica whose Lease
        is new gets loops at once but acts on them a lease duration after creating it (core/election.acts_from)."""
        acting = {r for r in self.live() - {excluding} if (self.beliefs.get(r) or {}).get("mfl_operator_replica_lease")}
        return bool(self.loops) and all(s.shard in acting for s in self.loops.values())

    def converged(self, replicas: int) -> bool:
        """`replicas` live replicas, every loop on one of them with no drain asked, loads within the cap, and
        each live replica's engine holding exactly the loops labelled for it."""
        live = self.live()
        if len(live) != replicas or not self.all_on_live() or any(s.drain for s in self.loops.values()):
            return False
        loads = self.owners()
        if max(loads.values(), default=0) > sharding.cap(len(self.loops), replicas):
            return False
        beliefs = {r: self.beliefs.get(r) for r in live}  # no mfl_operator_loops series yet: no loop
        return all(b is not None and b.get("mfl_operator_loops", 0.0) == loads.get(r, 0) for r, b in beliefs.items())


def _time(stamp: str | None) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() if stamp else 0.0


class Fleet(threading.Thread):
    """Samples the loops, the replica Leases, the operator Pods, the training Jobs and Pods and the canary
    Deployments of `namespaces` (API reads first, then every replica's metrics), and checks each sample."""

    def __init__(self, cluster: Cluster, namespaces: list[str], interval: float = 0.5) -> None:
        super().__init__(name="fleet-sampler", daemon=True)
        self.cluster, self.namespaces, self.interval = cluster, namespaces, interval
        self.samples: list[Sample] = []
        self.jobs: dict[tuple[str, str, str], set[str]] = defaultdict(set)  # (ns, loop, version) -> Job uids
        self.trainer_pods: dict[tuple[str, str, str], set[str]] = defaultdict(set)
        self.most_canaries: dict[str, int] = defaultdict(int)  # "ns/loop" -> most canary Deployments at once
        self.violations: list[str] = []
        self.errors = 0
        self._suspects: dict[str, int] = defaultdict(int)  # a gauge/Lease disagreement: in how many samples in a row
        self._drains: dict[str, str] = {}  # loop -> the owner a drain was seen asked of (since its last move)
        self._pool = ThreadPoolExecutor(8, thread_name_prefix="replica-metrics")  # a gone Pod's IP times out
        self.stopped = threading.Event()
        self.lock = threading.Lock()

    def get(self, path: str, **query: str) -> dict[str, Any]:
        return self.cluster.plane.api("GET", f"{path}?{urlencode(query)}" if query else path, timeout=5.0)

    def run(self) -> None:
        while not self.stopped.is_set():
            started = time.monotonic()
            try:
                self.sample()
            except Exception as error:  # an API hiccup: the next sample
                self.errors += 1
                print(f"[sharding] sample failed: {error}", file=sys.__stderr__, flush=True)
            self.stopped.wait(max(0.05, self.interval - (time.monotonic() - started)))
        self._pool.shutdown(wait=False)

    def latest(self) -> Sample:
        with self.lock:
            return self.samples[-1]

    def since(self, moment: float) -> list[Sample]:
        with self.lock:
            return [s for s in self.samples if s.at >= moment]

    def wait_for(self, what: str, predicate, timeout: float, after: float | None = None) -> Sample:  # noqa: ANN001
        """The first sample taken after `after` (default: now) satisfying `predicate`."""
        after = time.time() if after is None else after
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for sample in self.since(after):
                if predicate(sample):
                    return sample
            time.sleep(0.2)
        last = self.latest()
        raise AssertionError(
            f"timed out after {timeout:.0f}s waiting for {what}; last sample: live {sorted(last.live())}, "
            f"loops { ({k: (v.shard, v.drain) for k, v in last.loops.items()}) }, beliefs {last.beliefs}"
        )

    def sample(self) -> None:
        ours = set(self.namespaces)
        loops_list = self.get("/apis/feedbackloop.dev/v1alpha1/modelfeedbackloops")["items"]  # loops before Leases
        leases_list = self.get(
            f"/apis/coordination.k8s.io/v1/namespaces/{OPERATOR_NAMESPACE}/leases",
        )["items"]
        pods_list = self.get(f"/api/v1/namespaces/{OPERATOR_NAMESPACE}/pods", labelSelector=SELECTOR)["items"]
        jobs = self.get("/apis/batch/v1/jobs", labelSelector=TRAINER)["items"]
        trainer_pods = self.get("/api/v1/pods", labelSelector=TRAINER)["items"]
        canaries = self.get("/apis/apps/v1/deployments", labelSelector="feedbackloop.dev/track=canary")["items"]
        at = time.time()
        loops = {
            f"{x['metadata']['namespace']}/{x['metadata']['name']}": sharding.shard_of(x["metadata"].get("labels"))
            for x in loops_list
            if x["metadata"]["namespace"] in ours
        }
        phases = {
            f"{x['metadata']['namespace']}/{x['metadata']['name']}": (x.get("status") or {}).get("phase", "")
            for x in loops_list
            if x["metadata"]["namespace"] in ours
        }
        leases, leader = {}, ""
        for item in leases_list:
            name = item["metadata"]["name"]
            if name == "feedbackloop-operator":
                leader = (item.get("spec") or {}).get("holderIdentity") or ""
            elif (replica := sharding.identity_of_lease(name)) is not None:
                leases[replica] = item.get("spec") or {}
        pods = {}
        for pod in pods_list:
            statuses = pod["status"].get("containerStatuses") or [{}]
            pods[pod["metadata"]["name"]] = {
                "ip": pod["status"].get("podIP"),
                "terminating": bool(pod["metadata"].get("deletionTimestamp")),
                "restarts": int(statuses[0].get("restartCount") or 0),
                "ready": bool(statuses[0].get("ready")),
            }
        sample = Sample(at, loops, phases, leases, leader, pods)
        named = sorted(name for name, pod in pods.items() if pod["ip"])
        sample.beliefs = dict.fromkeys(pods)
        sample.beliefs.update(zip(named, self._pool.map(lambda n: replica_metrics(pods[n]["ip"]), named)))
        for job in jobs:
            meta = job["metadata"]
            if meta["namespace"] in ours:
                labels = meta.get("labels") or {}
                key = (
                    meta["namespace"],
                    labels.get("feedbackloop.dev/loop", "?"),
                    labels.get("feedbackloop.dev/version", "?"),
                )
                self.jobs[key].add(meta["uid"])
        for pod in trainer_pods:
            meta = pod["metadata"]
            if meta["namespace"] in ours:
                labels = meta.get("labels") or {}
                key = (
                    meta["namespace"],
                    labels.get("feedbackloop.dev/loop", "?"),
                    labels.get("feedbackloop.dev/version", "?"),
                )
                self.trainer_pods[key].add(meta["uid"])
        per_loop: dict[str, int] = defaultdict(int)
        for deployment in canaries:
            meta = deployment["metadata"]
            if meta["namespace"] in ours:
                per_loop[f"{meta['namespace']}/{(meta.get('labels') or {}).get('feedbackloop.dev/loop', '?')}"] += 1
        for loop, count in per_loop.items():
            self.most_canaries[loop] = max(self.most_canaries[loop], count)
        with self.lock:
            previous = self.samples[-1] if self.samples else None
            self.samples.append(sample)
        self.check(previous, sample)

    def check(self, before: Sample | None, now: Sample) -> None:
        # A loop relabelled from one replica to another without its owner's ack (no drain seen, no unlabelled
        # state between: the ack removes the label, a round later the next owner's is written) is an assignment
        # after a take: its old owner's Lease (read after the loops) must no longer be its own.
        for key, shard in now.loops.items():
            if shard.drain and shard.shard:
                self._drains[key] = shard.shard
        if before is not None:
            for key, shard in now.loops.items():
                old = before.loops.get(key)
                if old and old.shard and shard.shard and shard.shard != old.shard:
                    spec = now.leases.get(old.shard) or {}
                    acked = self._drains.pop(key, None) == old.shard
                    if spec.get("holderIdentity") == old.shard and not acked:
                        self.violations.append(
                            f"{now.at:.1f}: {key} moved from {old.shard} to {shard.shard} while {old.shard} "
                            f"still held its Lease (renewed {spec.get('renewTime')})"
                        )
        # A replica acting (its own gauges) while the API shows its Lease held by another (or gone): twice in a
        # row (a gauge read just after a takeover the Lease read missed is not one).
        for pod, gauges in now.beliefs.items():
            if not gauges:
                continue
            for gauge, holder in (
                ("mfl_operator_replica_lease", (now.leases.get(pod) or {}).get("holderIdentity")),
                ("mfl_operator_leader", now.leader),
            ):
                suspect = f"{pod}/{gauge}"
                if gauges.get(gauge) == 1.0 and holder != pod:
                    self._suspects[suspect] += 1
                    if self._suspects[suspect] == 2:
                        self.violations.append(
                            f"{now.at:.1f}: {pod} reports {gauge}=1 while the Lease names {holder!r}"
                        )
                else:
                    self._suspects[suspect] = 0

    def twins(self) -> dict[tuple[str, str, str], int]:
        return {key: len(uids) for key, uids in self.jobs.items() if len(uids) > 1}


# ---- the test --------------------------------------------------------------------------------------------


@dataclass
class Loop:
    namespace: str
    name: str
    kind: str  # "canary" (seeded, retrained under traffic), "slow" (its first training is slow), "idle"

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


def manifest(loop: Loop, prometheus_url: str, claim: dict[str, Any]) -> dict[str, Any]:
    body = copy.deepcopy(
        loop_manifest(
            loop.namespace,
            prometheus_url,
            claim,
            initial_version=None if loop.kind == "slow" else 1,
            max_degradation=1.0,  # any candidate reaches its canary
            pauses=PAUSES,
        )
    )
    body["metadata"]["name"] = loop.name
    body["spec"]["model"]["name"] = loop.name
    body["spec"]["model"]["serving"]["replicas"] = 1
    if loop.kind == "slow":
        body["spec"]["retraining"]["hyperparameters"] = SLOW_TRAINING
    return body


NOTES: list[str] = []  # what happened, printed with the figures (and in the captured output on a failure)


def log(line: str) -> None:
    NOTES.append(line)
    print(f"[sharding] {line}", file=sys.__stderr__, flush=True)


@pytest.fixture
def sharded(operator: Cluster, image_refs: dict[str, str], kubectl, tmp_path, request):
    """The operator in the `ha-sharded` shape (3 replicas), every operator container's log kept; the session's
    install back afterwards (restore_default, torn down after this one), the kept logs printed when the test
    failed."""
    request.getfixturevalue("restore_default")
    keeper = operator.keep_pod_logs(OPERATOR_NAMESPACE)
    failed = request.session.testsfailed
    apply_shape(operator, tmp_path / "ha-sharded", SHAPES["ha-sharded"], {"operator": image_refs["operator"]})
    yield operator
    keeper.copy()
    if request.session.testsfailed > failed:
        log(f"operator containers' logs (all of them in {keeper.target}):\n{keeper.text(lines=120)}")
    else:
        log(f"operator containers' logs kept in {keeper.target}")


@pytest.mark.timeout(900)  # with a cold test bed's start in it (about 3 minutes): longer than the suite's 600 s
def test_sharded_replicas_killed_scaled_and_partitioned(
    sharded: Cluster, loops, prometheus, kubectl, k8s_namespace, capsys
) -> None:
    started = time.monotonic()
    NOTES.clear()
    ns_a, ns_b = k8s_namespace, f"{k8s_namespace}-b"[:63]
    kubectl("create", "namespace", ns_b)
    sharded.plane.wait_for_service_account(ns_b)
    fleet_loops = [
        Loop(ns_a, "canary-a", "canary"),
        Loop(ns_b, "canary-b", "canary"),
        Loop(ns_a, "idle-a", "idle"),
        Loop(ns_b, "idle-b", "idle"),
        Loop(ns_a, "slow-a", "slow"),
        Loop(ns_b, "slow-b", "slow"),
    ]
    claims = {ns: artifact_claim(sharded, ns) for ns in (ns_a, ns_b)}

    def prepare(namespace: str) -> None:
        """Version 1 of the seeded loops trained on the host, the slow loop's base data: one namespace's
        storage at a time (each step hands the whole folder to the images' user)."""
        for loop in fleet_loops:
            if loop.namespace == namespace and loop.kind != "slow":
                seed_registry(claims[namespace][1], loop.name)
            elif loop.namespace == namespace:
                write_base_data(claims[namespace][1], loop.name, 3000)

    with ThreadPoolExecutor(2) as pool:  # meanwhile, the replicas start
        prepared = [pool.submit(prepare, namespace) for namespace in (ns_a, ns_b)]
        wait("three replicas with live Leases", lambda: _live_replicas(kubectl) == 3, 120)
        for future in prepared:
            future.result()
    fleet = Fleet(sharded, [ns_a, ns_b])
    fleet.start()
    traffic: list[TrafficGenerator] = []
    partition: Partition | None = None
    figures: dict[str, float] = {}
    try:
        by_kind = defaultdict(list)
        for loop in fleet_loops:
            by_kind[loop.kind].append(loop)
        for loop in by_kind["canary"] + by_kind["idle"]:
            loops.apply(manifest(loop, prometheus.url, claims[loop.namespace][0]))
        for loop in by_kind["canary"]:
            loops.wait_condition(loop.namespace, loop.name, "ServingReady", "True", 150)
            traffic.append(
                TrafficGenerator(
                    service_endpoints(kubectl, loop.namespace, loop.name), rate=40, batch=8, label_delay=1.0
                ).start()
            )
            body = manifest(loop, prometheus.url, claims[loop.namespace][0])
            body["metadata"]["annotations"]["feedbackloop.dev/retrain"] = "sharding"
            loops.apply(body)
        candidates = {}
        for loop in by_kind["canary"]:
            status = loops.wait(loop.namespace, loop.name, lambda s: bool(s.get("rollout")), 180, "its canary")
            candidates[loop.key] = int(status["rollout"]["version"])
        for loop in by_kind["slow"]:
            loops.apply(manifest(loop, prometheus.url, claims[loop.namespace][0]))
        for loop in by_kind["slow"]:
            loops.wait(loop.namespace, loop.name, lambda s: s.get("phase") == "Retraining", 60, "its first training")
        now = fleet.wait_for("every loop on a live replica", lambda s: len(s.loops) == 6 and s.all_on_live(), 60)
        log(f"set up in {time.monotonic() - started:.0f}s: owners {now.owners()}, phases {now.phases}")

        # (a) a replica owning loops SIGKILLed (its Pod gone with it), then the coordinator.
        in_flight = {k for k, phase in now.phases.items() if phase in ("Retraining", "Canary")}
        victims = [r for r in now.live() if r != now.leader and r in now.owners()]
        victim = max(victims, key=lambda r: (sum(now.loops[k].shard == r for k in in_flight), now.owners()[r]))
        figures["takeover"], figures["takeover: acted on"], moved = kill_and_wait(
            fleet, kubectl, victim, TAKEOVER_BOUND + 30
        )
        log(f"killed {victim} (owner of {moved}): every loop on a live replica after {figures['takeover']:.1f}s, "
            f"acted on after {figures['takeover: acted on']:.1f}s")  # fmt: skip
        coordinator = fleet.latest().leader
        figures["coordinator takeover"], figures["coordinator takeover: acted on"], moved = kill_and_wait(
            fleet, kubectl, coordinator, COORDINATOR_TAKEOVER_BOUND + 30
        )
        log(f"killed the coordinator {coordinator} (owner of {moved}): every loop on a live replica after "
            f"{figures['coordinator takeover']:.1f}s, acted on after {figures['coordinator takeover: acted on']:.1f}s; "
            f"coordinator now {fleet.latest().leader}")  # fmt: skip
        fleet.wait_for("three live replicas again", lambda s: s.converged(3), 120)

        # (b) scale 3 -> 5 -> 2.
        for replicas in (5, 2):
            moment = time.time()
            kubectl("scale", "deployment/feedbackloop-operator", "-n", OPERATOR_NAMESPACE, f"--replicas={replicas}")
            done = fleet.wait_for(f"the fleet converged on {replicas}", lambda s, n=replicas: s.converged(n), 150)
            figures[f"scale to {replicas}"] = done.at - moment
            log(f"scaled to {replicas}: converged after {done.at - moment:.1f}s, loads {done.owners()}")

        # (c) a replica owning loops (not the coordinator) cut off from the API server.
        now = fleet.wait_for("a live coordinator", lambda s: s.converged(2) and s.leader in s.live(), 60)
        [cut_off] = [r for r in now.live() if r != now.leader]
        assert cut_off in now.owners(), f"{cut_off} owns no loop: {now.owners()}"
        its_loops = sorted(k for k, s in now.loops.items() if s.shard == cut_off)
        restarts = now.pods[cut_off]["restarts"]
        partition = Partition(now.pods[cut_off]["ip"], api_server_port(sharded.plane.server))
        moment = time.time()
        partition.cut()
        silent = fleet.wait_for(
            f"{cut_off} to stop acting",
            lambda s: not (s.beliefs.get(cut_off) or {}).get("mfl_operator_replica_lease"),
            30,
        )
        gone = fleet.wait_for(
            f"the loops of {cut_off} moved", lambda s: not any(s.loops[k].shard == cut_off for k in its_loops), 60
        )
        taken = (gone.leases.get(cut_off) or {}).get("holderIdentity")
        figures["partition: stopped acting"] = silent.at - moment
        figures["partition: loops moved"] = gone.at - moment
        log(f"cut {cut_off} off: it stopped acting after {silent.at - moment:.1f}s, its loops {its_loops} moved "
            f"after {gone.at - moment:.1f}s (its Lease then held by {taken!r})")  # fmt: skip
        exited = fleet.wait_for(
            f"{cut_off} to exit", lambda s: (s.pods.get(cut_off) or {}).get("restarts", 0) > restarts, 60, after=moment
        )
        partition.heal()
        healed = time.time()
        back = fleet.wait_for(f"{cut_off} back with its own Lease", lambda s: cut_off in s.live(), 240)
        done = fleet.wait_for("the fleet converged on 2 again", lambda s: s.converged(2), 120)
        figures["partition: back after healing"] = back.at - healed
        log(f"{cut_off} exited after {exited.at - moment:.1f}s (restart {exited.pods[cut_off]['restarts']}); "
            f"healed: back after {back.at - healed:.1f}s, converged after {done.at - healed:.1f}s, "
            f"loads {done.owners()}")  # fmt: skip

        # Every rollout that was running finishes by the loop's own rules.
        for loop in by_kind["canary"]:
            version = candidates[loop.key]
            loops.wait(
                loop.namespace,
                loop.name,
                lambda s, v=version: any(x == v for x, _ in history_outcomes(s)) and not s.get("rollout"),
                300,
                f"the rollout of version {version} finished",
            )
        for loop in by_kind["slow"]:
            loops.wait(loop.namespace, loop.name, lambda s: s.get("currentVersion") == 1, 240, "version 1 serving")
    finally:
        if partition is not None:
            partition.heal()
        for generator in traffic:
            generator.stop()
        fleet.stopped.set()
        fleet.join(10)
        kubectl("delete", "namespace", ns_b, "--wait=false", check=False)

    outcomes = {loop.key: dict(history_outcomes(loops.status(loop.namespace, loop.name))) for loop in by_kind["canary"]}
    with capsys.disabled():
        print(f"\nsharded replicas ({len(fleet.samples)} samples over {time.monotonic() - started:.0f}s):")
        for what, bound in (("takeover", TAKEOVER_BOUND), ("coordinator takeover", COORDINATOR_TAKEOVER_BOUND)):
            killed = "a replica owning loops" if what == "takeover" else "the coordinator"
            print(f"  SIGKILL of {killed} -> every loop on a live replica: {figures[what]:.1f}s (bound {bound:.0f}s), "
                  f"acted on: {figures[what + ': acted on']:.1f}s")  # fmt: skip
        for replicas in (5, 2):
            print(f"  kubectl scale to {replicas} -> converged: {figures[f'scale to {replicas}']:.1f}s")
        for what in ("partition: stopped acting", "partition: loops moved", "partition: back after healing"):
            print(f"  {what}: {figures[what]:.1f}s")
        print(f"  canary outcomes {outcomes}")
        print(f"  Jobs per version {_counts(fleet.jobs)}; trainer Pods per version {_counts(fleet.trainer_pods)}")
        print(f"  most canary Deployments at once {dict(fleet.most_canaries)}; samples failed {fleet.errors}")
        print("\n".join(f"  - {note}" for note in NOTES))
    assert fleet.violations == [], fleet.violations
    assert fleet.twins() == {}, f"versions with more than one Job: {fleet.twins()}"
    assert max(fleet.most_canaries.values(), default=0) <= 1, dict(fleet.most_canaries)
    assert figures["takeover"] <= TAKEOVER_BOUND, figures
    assert figures["coordinator takeover"] <= COORDINATOR_TAKEOVER_BOUND, figures
    assert taken != cut_off, f"the loops of {cut_off} moved while its Lease was its own"
    for key, versions in outcomes.items():
        assert versions.get(candidates[key]) in ("Promoted", "RolledBack"), (key, versions)


def kill_and_wait(fleet: Fleet, kubectl, pod: str, timeout: float) -> tuple[float, float, list[str]]:  # noqa: ANN001
    """SIGKILL `pod` (and forget it); the seconds until every loop is labelled for a live replica (none for it),
    and until each of those acts on it; the loops it owned."""
    owned = sorted(k for k, s in fleet.latest().loops.items() if s.shard == pod)
    killed = time.time()
    kill_replica(kubectl, OPERATOR_NAMESPACE, pod)
    labelled = fleet.wait_for(f"the loops of {pod} on live replicas", lambda s: s.all_on_live(excluding=pod), timeout)
    acted = fleet.wait_for(
        f"the loops of {pod} acted on", lambda s: s.all_acted_on(excluding=pod), timeout, after=labelled.at
    )
    return labelled.at - killed, acted.at - killed, owned


def _live_replicas(kubectl) -> int:  # noqa: ANN001
    """Replica Leases held by their replica and unexpired (before the sampler runs)."""
    items = json.loads(
        kubectl(
            "get", "lease", "-n", OPERATOR_NAMESPACE, "-l", f"{sharding.REPLICA_LEASE_LABEL}=true", "-o", "json"
        ).stdout
    )["items"]
    now = time.time()
    pods = {p["metadata"]["name"] for p in json.loads(
        kubectl("get", "pods", "-n", OPERATOR_NAMESPACE, "-l", SELECTOR, "-o", "json").stdout)["items"]
        if not p["metadata"].get("deletionTimestamp")}  # fmt: skip
    return sum(
        1
        for item in items
        if sharding.identity_of_lease(item["metadata"]["name"]) in pods
        and (item.get("spec") or {}).get("holderIdentity") == sharding.identity_of_lease(item["metadata"]["name"])
        and _time((item.get("spec") or {}).get("renewTime")) + float(item["spec"].get("leaseDurationSeconds") or 0)
        > now
    )


def _counts(table: dict[tuple[str, str, str], set[str]]) -> dict[str, int]:
    return {f"{ns}/{loop} v{version}": len(uids) for (ns, loop, version), uids in sorted(table.items())}
