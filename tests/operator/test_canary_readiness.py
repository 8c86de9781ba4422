"""A candidate whose canary Pods cannot serve (a model file the runtime cannot load, a crash loop, an image that
cannot be pulled) is rolled back before it takes traffic, with what its Pods say, not after its whole analysis.

Three layers: the decision (phases, pure), reading the Pods' JSON (observe.pod_problems) and the engine's cycle
over the in-memory API (the list, the log read at the deadline, the rollback's writes)."""

from __future__ import annotations

from typing import Any

import pydantic
import pytest

from feedbackloop.core import api, phases, resources
from feedbackloop.core.phases import EnsureCanary, EnsureStable, RemoveCanary, ServingObservation, decide
from feedbackloop.core.timeutil import format_time
from feedbackloop.runtime import observe

from .fake_kube import FakeKube, FakePrometheus, Harness
from .test_engine_cycle import canary_running, loop, reasons, writes
from .test_phases import NOW, canary_status, condition, events, make_spec, world

CRASHED = "Traceback (most recent call last):\nValueError: model.joblib: invalid load key, 'n'."


def canary(ready=0, replicas=1, version=2, failure=None, detail="", **kw):
    return ServingObservation(
        stable_version=1,
        stable_ready=2,
        stable_replicas=2,
        canary_version=version,
        canary_ready=ready,
        canary_replicas=replicas,
        canary_failure=failure,
        canary_detail=detail,
        **kw,
    )


def unready_since(since, started=NOW - 100):
    status = canary_status(started=started)
    status["rollout"]["notReadySince"] = format_time(since)
    return status


# --- the decision -------------------------------------------------------------------------------------------


def test_a_canary_not_ready_within_the_timeout_is_rolled_back_with_what_its_pods_say():
    detail = "Pod churn-canary-x: container feedback running, not ready; server logged: model.joblib is unreadable"
    d = decide(world(unready_since(NOW - 301), serving=canary(detail=detail)))
    assert RemoveCanary() in d.actions and not [a for a in d.actions if isinstance(a, EnsureCanary)]
    assert [a for a in d.actions if isinstance(a, EnsureStable)] == [EnsureStable(1)]  # stable untouched
    assert d.status["rollout"] is None and d.status["currentVersion"] == 1
    record = d.status["history"][-1]
    assert record["outcome"] == "RolledBack" and record["version"] == 2
    assert "not ready within rollout.readyTimeout (5m)" in record["message"] and "unreadable" in record["message"]
    retraining = condition(d.status, "Retraining")
    assert retraining["status"] == "False" and retraining["reason"] == "CanaryNotReady"
    assert "unreadable" in retraining["message"]
    assert ("Warning", "RolledBack") in events(d)
    event = next(a for a in d.actions if isinstance(a, phases.Event) and a.reason == "RolledBack")
    assert "unreadable" in event.message and "stable version 1 untouched" in event.message


def test_a_canary_still_starting_within_the_timeout_is_waited_for():
    d = decide(world(unready_since(NOW - 299), serving=canary(detail="Pod x: container server waiting")))
    assert d.status["rollout"] is not None and RemoveCanary() not in d.actions
    assert d.status["rollout"]["notReadySince"] == format_time(NOW - 299)
    assert [a for a in d.actions if isinstance(a, EnsureCanary)]


def test_the_timeout_is_configurable():
    spec = make_spec(rollout={"readyTimeout": "30s"})
    d = decide(world(unready_since(NOW - 31), spec=spec, serving=canary()))
    assert d.status["history"][-1]["outcome"] == "RolledBack"
    assert "readyTimeout (30s): 0/1 ready" in d.status["history"][-1]["message"]


def test_a_crash_loop_is_rolled_back_at_once():
    failure = "Pod churn-canary-x: container server restarted 3 times, last exit Error (exit code 1): ...load key"
    d = decide(world(unready_since(NOW - 20), serving=canary(failure=failure)))
    assert RemoveCanary() in d.actions and d.status["rollout"] is None
    assert d.status["history"][-1]["message"] == f"canary Pods failed before serving: {failure}"
    assert condition(d.status, "Retraining")["reason"] == "CanaryNotReady"


def test_an_image_pull_error_is_rolled_back_at_once():
    failure = "Pod churn-canary-x: container server ImagePullBackOff: Back-off pulling image ghcr.io/x/mlserver:9"
    d = decide(world(canary_status(started=NOW - 5), serving=canary(failure=failure)))
    assert d.status["rollout"] is None and "ImagePullBackOff" in d.status["history"][-1]["message"]


def test_a_canary_that_becomes_ready_in_time_clears_its_clock_and_a_later_stall_starts_a_new_one():
    d = decide(world(unready_since(NOW - 200), serving=canary(ready=1)))
    assert d.status["rollout"]["notReadySince"] is None  # null: the merge patch removes it
    later = decide(world(d.status, serving=canary(ready=0), now=NOW + 600))
    assert later.status["rollout"]["notReadySince"] == format_time(NOW + 600)  # a Pod restarted: a new clock
    assert later.status["rollout"] is not None
    ready_again = decide(world(later.status, serving=canary(ready=1), now=NOW + 620))
    assert ready_again.status["rollout"]["notReadySince"] is None


def test_a_ready_canary_without_a_clock_writes_nothing_new():
    status = canary_status()
    d = decide(world(status, serving=canary(ready=1)))
    assert "notReadySince" not in d.status["rollout"]


def test_a_canary_starts_its_clock_at_its_start():
    status = {**canary_status(), "rollout": None, "phase": phases.RETRAINING}
    status["retraining"] = {"version": 2, "jobName": "churn-train-v2", "trigger": "Manual", "parentVersion": 1}
    summary = {"ok": True, "challenger": {"accuracy": 0.9}, "champion": {"accuracy": 0.85}}
    job = phases.JobObservation("churn-train-v2", "Succeeded", summary=summary)
    d = decide(world(status, job=job, serving=canary(version=None, replicas=0)))
    assert d.status["rollout"]["notReadySince"] == format_time(NOW)


@pytest.mark.parametrize(
    "observed",
    [
        None,  # serving not observed this round
        canary(version=None, replicas=0, failure="stale"),  # the canary Deployment not in the watch cache yet
        canary(version=3, failure="another version's Pods"),
    ],
)
def test_only_the_canary_of_this_version_is_judged(observed):
    d = decide(world(unready_since(NOW - 3600), serving=observed))
    assert d.status["rollout"] is not None


def test_a_paused_canary_that_cannot_start_is_still_rolled_back():
    status = unready_since(NOW - 400)
    status["rollout"]["paused"] = True
    d = decide(world(status, serving=canary()))
    assert d.status["rollout"] is None


def test_overdue_says_when_observe_reads_the_logs():
    spec = make_spec()
    assert phases.canary_ready_overdue(spec, unready_since(NOW - 300)["rollout"], NOW)
    assert not phases.canary_ready_overdue(spec, unready_since(NOW - 299)["rollout"], NOW)
    assert not phases.canary_ready_overdue(spec, canary_status()["rollout"], NOW)
    assert not phases.canary_ready_overdue(spec, None, NOW)


def test_the_stable_deployment_s_pods_explain_serving_ready():
    observed = ServingObservation(
        stable_version=1, stable_replicas=2, stable_detail="Pod churn-x: container server waiting: CrashLoopBackOff"
    )
    d = decide(world(canary_status(), serving=observed))
    serving_ready = condition(d.status, "ServingReady")
    assert serving_ready["status"] == "False" and "CrashLoopBackOff" in serving_ready["message"]
    ready = ServingObservation(stable_version=1, stable_ready=2, stable_replicas=2, stable_detail="stale")
    assert "stale" not in condition(decide(world(canary_status(), serving=ready)).status, "ServingReady")["message"]


@pytest.mark.parametrize(("value", "ok"), [("10s", True), ("24h", True), ("5s", False), ("2d", False)])
def test_ready_timeout_is_bounded(value, ok):
    if ok:
        assert make_spec(rollout={"readyTimeout": value}).rollout.ready_timeout == value
    else:
        with pytest.raises(pydantic.ValidationError, match="readyTimeout"):
            make_spec(rollout={"readyTimeout": value})


def test_ready_timeout_defaults_to_five_minutes():
    assert make_spec().rollout.ready_timeout.seconds == 300


# --- the Pods' JSON -----------------------------------------------------------------------------------------


def pod(name="churn-canary-x", version="2", containers=(), conditions=(), deleting=False, track="canary"):
    metadata: dict[str, Any] = {
        "name": name,
        "labels": {resources.LOOP_LABEL: "churn", resources.TRACK_LABEL: track, resources.VERSION_LABEL: version},
    }
    if deleting:
        metadata["deletionTimestamp"] = "2027-01-01T00:00:00Z"
    return {"metadata": metadata, "status": {"conditions": list(conditions), "containerStatuses": list(containers)}}


def container(name="server", ready=False, restarts=0, state=None, last=None):
    status = {"name": name, "ready": ready, "restartCount": restarts, "state": state or {"running": {}}}
    if last:
        status["lastState"] = {"terminated": last}
    return status


CRASH = {"reason": "Error", "exitCode": 1, "message": CRASHED}
BACKOFF = {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting failed container"}}


def test_a_crash_loop_is_a_failure_with_the_runtime_s_termination_message():
    failure, detail = observe.pod_problems([pod(containers=[container(restarts=3, state=BACKOFF, last=CRASH)])])
    assert failure is not None and detail == ""
    assert failure.startswith("Pod churn-canary-x: container server restarted 3 times, last exit Error (exit code 1)")
    assert "invalid load key" in failure and "\n" not in failure


def test_fewer_restarts_are_only_a_detail():
    failure, detail = observe.pod_problems([pod(containers=[container(restarts=2, state=BACKOFF, last=CRASH)])])
    assert failure is None
    assert "container server waiting: CrashLoopBackOff" in detail and "restarted 2 times" in detail
    assert "invalid load key" in detail


@pytest.mark.parametrize("reason", ["ImagePullBackOff", "ErrImagePull", "CreateContainerConfigError"])
def test_a_container_that_cannot_be_made_is_a_failure(reason):
    waiting = {"waiting": {"reason": reason, "message": "rpc error: not found"}}
    failure, _ = observe.pod_problems([pod(containers=[container(name="feedback", state=waiting)])])
    assert failure == f"Pod churn-canary-x: container feedback {reason}: rpc error: not found"


def test_an_unschedulable_pod_says_why():
    scheduled = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/3 nodes: cpu"}
    failure, detail = observe.pod_problems([pod(conditions=[scheduled])])
    assert failure is None and detail == "Pod churn-canary-x: not scheduled: Unschedulable: 0/3 nodes: cpu"


def test_a_v2_pod_whose_runtime_runs_but_is_not_ready():
    pods = [pod(containers=[container("server", ready=True), container("feedback", ready=False)])]
    failure, detail = observe.pod_problems(pods)
    assert failure is None and detail == "Pod churn-canary-x: container feedback running, not ready"
    assert observe.log_targets(pods) == [("churn-canary-x", "server"), ("churn-canary-x", "feedback")]


def test_terminating_pods_are_ignored_and_no_pods_says_why():
    deleting = pod(containers=[container(restarts=9, state=BACKOFF, last=CRASH)], deleting=True)
    assert observe.pod_problems([deleting]) == (None, "no Pods yet")
    deployment = {"status": {"conditions": [{"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
                                             "message": "exceeded quota"}]}}  # fmt: skip
    assert observe.pod_problems([], deployment) == (None, "no Pods: FailedCreate: exceeded quota")


def test_long_messages_keep_their_end():
    long = {"reason": "Error", "exitCode": 1, "message": "x" * 2000 + " the real error"}
    failure, _ = observe.pod_problems([pod(containers=[container(restarts=5, state=BACKOFF, last=long)])])
    assert failure is not None and failure.endswith("the real error") and len(failure) < 600


def test_the_runtime_s_last_words_survive_the_history_s_limit():
    long = {"reason": "Error", "exitCode": 1, "message": "x" * 2000 + " ValueError: invalid load key"}
    name = "a-long-loop-name-for-a-model-canary-5d9c7b8f6-abcde"
    failure, _ = observe.pod_problems([pod(name, containers=[container(restarts=3, state=BACKOFF, last=long)])])
    d = decide(world(unready_since(NOW - 5), serving=canary(failure=failure)))
    assert d.status["history"][-1]["message"].endswith("ValueError: invalid load key")


def test_last_log_lines():
    assert observe.last_lines("a\n\nb\nc\nd\n") == "b | c | d"


def test_server_containers_leave_their_last_log_lines_as_termination_message():
    for runtime in (None, {"kind": "mlserver"}):
        serving: dict[str, Any] = {"image": "ghcr.io/x/server:1"}
        if runtime:
            serving["runtime"] = runtime
        spec = make_spec(model={"name": "churn", "storage": {"hostPath": {"path": "/d"}}, "serving": serving})
        body = {"metadata": {"name": "churn", "namespace": "team-a", "uid": "u"}}
        deployment = resources.server_deployment(body, spec, 2, "canary", 1)
        for each in deployment["spec"]["template"]["spec"]["containers"]:
            assert each["terminationMessagePolicy"] == "FallbackToLogsOnError", each["name"]


# --- the engine's cycle -------------------------------------------------------------------------------------


@pytest.fixture
def bed() -> Harness:
    harness = Harness(FakeKube(), FakePrometheus())
    harness.prometheus.answer("accuracy_of", [({"model": "churn", "namespace": "team-a"}, 0.95)])
    return harness


def test_a_crash_looping_canary_is_rolled_back_before_its_analysis(bed: Harness) -> None:
    now = canary_running(bed)
    bed.cycle(now)
    bed.kube.hold_unready("team-a/churn-canary", [pod(containers=[container(restarts=3, state=BACKOFF, last=CRASH)])])
    bed.watch()
    actions = bed.cycle(now + 5)
    assert writes(actions, "delete") == ["Deployment team-a/churn-canary"]
    assert "Warning RolledBack" in reasons(actions)
    status = bed.status()
    assert status["currentVersion"] == 1 and not status.get("rollout")
    assert "invalid load key" in status["history"][-1]["message"]
    assert "team-a/churn" in bed.kube.deployments  # the stable Deployment stays


def test_a_canary_that_never_gets_ready_is_rolled_back_at_the_timeout_with_its_runtime_s_log(bed: Harness) -> None:
    now = canary_running(bed)
    rollout = {"steps": [{"weight": 50, "pause": "30s"}], "readyTimeout": "30s"}
    bed.apply(loop(annotations={"feedbackloop.dev/retrain": "r1"}, rollout=rollout))
    bed.cycle(now)
    unready = pod(containers=[container("server", ready=True), container("feedback", ready=False)])
    bed.kube.hold_unready("team-a/churn-canary", [unready])
    bed.kube.logs["team-a/churn-canary-x/server"] = "starting\nValueError: model.joblib: invalid load key"
    bed.kube.logs["team-a/churn-canary-x/feedback"] = "not ready: the model server is not ready (400)"
    bed.watch()
    actions = bed.cycle(now + 5) + bed.cycle(now + 20)
    assert writes(actions, "delete") == [] and writes(actions, "read-log") == []  # waiting, no log read yet
    actions = bed.cycle(now + 31)
    assert writes(actions, "read-log") == ["team-a/churn-canary-x/server", "team-a/churn-canary-x/feedback"]
    assert writes(actions, "delete") == ["Deployment team-a/churn-canary"]
    message = bed.status()["history"][-1]["message"]
    assert message.startswith("canary Pods not ready within rollout.readyTimeout (30s): Pod churn-canary-x:")
    assert "server logged: starting | ValueError: model.joblib: invalid load key" in message
    retraining = next(c for c in bed.status()["conditions"] if c["type"] == "Retraining")
    assert retraining["reason"] == "CanaryNotReady"


def test_api_bounds_are_described():
    field = api.Rollout.model_fields["ready_timeout"]
    assert "10s to 24h" in (field.description or "")


# --- an HTTPRoute sends the canary nothing until one of its Pods is ready -------------------------------------


@pytest.mark.parametrize(
    ("observed", "weight"),
    [
        (None, 33),  # not observed: the step's weight, as before
        (canary(version=None, replicas=0), 0),  # the Deployment not there yet
        (canary(ready=0), 0),  # no ready Pod: the Service has no endpoints
        (canary(ready=1, replicas=2), 33),  # one ready Pod serves the Service
    ],
)
def test_the_routed_weight_waits_for_a_ready_canary_pod(observed, weight):
    d = decide(world(canary_status(), serving=observed))
    assert [a.weight for a in d.actions if isinstance(a, EnsureCanary)] == [weight]
    assert d.status["rollout"]["weight"] == 33  # the step's share, as planned


def test_an_httproute_weight_follows_the_canary_s_readiness(bed: Harness) -> None:
    now = canary_running(bed)
    routed = {"steps": [{"weight": 50, "pause": "30s"}], "trafficRouting": {"httpRoute": {"name": "churn-route"}}}
    bed.apply(loop(annotations={"feedbackloop.dev/retrain": "r1"}, rollout=routed))
    actions = bed.cycle(now)
    assert ("patch", "HTTPRoute churn-route canary=0") in actions  # created, not yet seen ready
    actions = bed.cycle(now + 5)  # the watch now shows it ready
    assert ("patch", "HTTPRoute churn-route canary=50") in actions


def test_an_unready_stable_deployment_s_pods_are_listed_on_a_backing_off_schedule(bed: Harness) -> None:
    """A fleet of unready stable Deployments (a node down) listed every loop's Pods at every poll: the reason is
    only ServingReady's message, so it is listed when the Deployment turns unready or changes, and otherwise after
    a wait that doubles."""
    from .test_engine_cycle import serving_v1

    listed: list[float] = []
    list_pods = bed.kube.list_pods
    clock = [0.0]

    def counting(namespace: str, selector: str) -> list[dict[str, Any]]:
        listed.append(clock[0])
        return list_pods(namespace, selector)

    def cycle(at: float) -> None:
        clock[0] = at
        bed.cycle(at)

    bed.kube.list_pods = counting  # type: ignore[method-assign]
    now = serving_v1(bed)
    crash = container(restarts=3, state=BACKOFF, last=CRASH)
    bed.kube.hold_unready("team-a/churn", [pod("churn-x", version="1", containers=[crash], track="stable")])
    bed.watch()
    for step in range(6):  # a poll every 10 s
        cycle(now + 10 * step)
    assert listed == [now]  # once, not at every poll
    serving = next(c for c in bed.status()["conditions"] if c["type"] == "ServingReady")
    assert "restarted 3 times" in serving["message"] and "invalid load key" in serving["message"]
    for step in range(6, 30):
        cycle(now + 10 * step)
    assert listed == [now, now + 60, now + 180]  # a minute, then twice as long while nothing changed
    bed.kube.deployments["team-a/churn"]["metadata"]["resourceVersion"] = "changed"
    bed.watch()
    cycle(now + 300)  # the Deployment changed: listed at once
    assert listed[-1] == now + 300 and len(listed) == 4
    bed.kube.deployments["team-a/churn"]["status"]["readyReplicas"] = 2
    bed.watch()
    cycle(now + 310)
    assert len(listed) == 4  # all ready: nothing to list
    assert bed.engine.fleet.memory["team-a/churn"].stable_diagnosis is None


def test_the_stable_list_schedule() -> None:
    from feedbackloop.core.fleet import StableDiagnosis, stable_list_due, stable_listed

    assert stable_list_due(None, "7", 100.0)  # turned unready: list now
    listed = stable_listed(None, "7", "Pod x: pending", 100.0)
    assert (listed.next_list, listed.wait, listed.detail) == (160.0, 60.0, "Pod x: pending")
    assert not stable_list_due(listed, "7", 159.0) and stable_list_due(listed, "7", 160.0)
    assert stable_list_due(listed, "8", 101.0)  # the Deployment changed
    again = stable_listed(listed, "7", "Pod x: pending", 160.0)
    assert (again.next_list, again.wait) == (280.0, 120.0)
    assert stable_listed(again, "8", "Pod y", 200.0).wait == 60.0
    assert stable_listed(StableDiagnosis("7", "", 0.0, 600.0), "7", "", 1000.0).wait == 600.0  # ten minutes at most
