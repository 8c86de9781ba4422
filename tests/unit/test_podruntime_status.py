from datetime import UTC, datetime, timedelta

import pytest
from feedbackloop.localdev.podruntime_status import (
    ContainerView,
    PodView,
    Terminated,
    build_pod_status,
    cap_message,
    pod_phase,
    restart_delay,
    should_restart,
)

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def running(name="main", ready=True):
    view = ContainerView(name, "busybox")
    view.set_running(T0, f"mfl://x-{name}-1")
    view.ready = view.started = ready
    return view


def terminated(code, name="main"):
    view = ContainerView(name, "busybox")
    view.set_terminated(Terminated(code, "Completed" if code == 0 else "Error", "msg", T0, T0, "mfl://x"))
    return view


def backing_off(code, name="main"):
    view = ContainerView(name, "busybox", restart_count=1)
    view.last_terminated = Terminated(code, "Error", "", T0, T0)
    view.set_waiting("CrashLoopBackOff", "back-off 10s")
    return view


def pod(policy="Always", conditions=None, gates=()):
    return {"metadata": {"name": "p", "namespace": "n", "uid": "u"},
            "spec": {"restartPolicy": policy, "containers": [{"name": "main"}],
                     "readinessGates": [{"conditionType": gate} for gate in gates]},
            "status": {"conditions": conditions or []}}


@pytest.mark.parametrize("policy, containers, phase", [
    ("Always", [ContainerView("main", "i")], "Pending"),
    ("Always", [running()], "Running"),
    ("Never", [running(), terminated(1, "side")], "Running"),
    ("Never", [terminated(0)], "Succeeded"),
    ("OnFailure", [terminated(0)], "Succeeded"),
    ("Never", [terminated(2)], "Failed"),
    ("Never", [terminated(0), terminated(1, "b")], "Failed"),
    ("OnFailure", [backing_off(1)], "Running"),
    ("Always", [backing_off(0)], "Running"),
    ("Always", [terminated(0)], "Running"),
])
def test_phase_follows_the_kubelet(policy, containers, phase):
    assert pod_phase(policy, [], containers) == phase


def test_init_containers_keep_the_pod_pending_and_a_failed_one_fails_a_never_pod():
    assert pod_phase("Always", [running("init")], [ContainerView("main", "i")]) == "Pending"
    assert pod_phase("Never", [terminated(1, "init")], [ContainerView("main", "i")]) == "Failed"
    assert pod_phase("OnFailure", [backing_off(1, "init")], [ContainerView("main", "i")]) == "Pending"
    assert pod_phase("Always", [terminated(0, "init")], [running()]) == "Running"


def test_a_pod_level_failure_wins():
    assert pod_phase("Always", [], [running()], failed=True) == "Failed"


def test_running_ready_pod_status():
    status = build_pod_status(pod(), PodView("10.244.0.7", "10.244.0.1", T0, [], [running()]), now=T0)
    assert status["phase"] == "Running"
    assert status["podIP"] == "10.244.0.7" and status["podIPs"] == [{"ip": "10.244.0.7"}]
    assert status["hostIP"] == "10.244.0.1" and status["startTime"] == "2026-01-02T03:04:05Z"
    conditions = {c["type"]: c["status"] for c in status["conditions"]}
    assert conditions == {"Initialized": "True", "Ready": "True", "ContainersReady": "True", "PodScheduled": "True"}
    [container] = status["containerStatuses"]
    assert container["ready"] and container["state"] == {"running": {"startedAt": "2026-01-02T03:04:05Z"}}


def test_unready_container_makes_the_pod_unready_with_a_reason():
    status = build_pod_status(pod(), PodView("10.244.0.7", "h", T0, [], [running(ready=False)]), now=T0)
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False" and ready["reason"] == "ContainersNotReady"
    assert "main" in ready["message"]


def test_terminated_container_reports_exit_code_reason_and_message():
    status = build_pod_status(pod("Never"), PodView("ip", "h", T0, [], [terminated(3)]), now=T0)
    assert status["phase"] == "Failed"
    state = status["containerStatuses"][0]["state"]["terminated"]
    assert state["exitCode"] == 3 and state["reason"] == "Error" and state["message"] == "msg"
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "PodCompleted"


def test_back_off_shows_waiting_with_the_last_termination_and_restart_count():
    [container] = build_pod_status(pod(), PodView("ip", "h", T0, [], [backing_off(1)]), now=T0)["containerStatuses"]
    assert container["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    assert container["lastState"]["terminated"]["exitCode"] == 1 and container["restartCount"] == 1


def test_transition_times_stay_while_a_condition_holds():
    first = build_pod_status(pod(), PodView("ip", "h", T0, [], [running()]), now=T0)
    later = T0 + timedelta(minutes=5)
    second = build_pod_status(pod(conditions=first["conditions"]), PodView("ip", "h", T0, [], [running()]), now=later)
    assert second == first
    third = build_pod_status(pod(conditions=first["conditions"]),
                             PodView("ip", "h", T0, [], [running(ready=False)]), now=later)
    ready = next(c for c in third["conditions"] if c["type"] == "Ready")
    assert ready["lastTransitionTime"] == "2026-01-02T03:09:05Z"


def test_foreign_conditions_are_kept_and_readiness_gates_respected():
    gate = {"type": "example.com/Warm", "status": "False", "lastTransitionTime": "2026-01-01T00:00:00Z"}
    scheduled = {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2025-12-31T00:00:00Z"}
    status = build_pod_status(pod(conditions=[scheduled, gate], gates=["example.com/Warm"]),
                              PodView("ip", "h", T0, [], [running()]), now=T0)
    by_type = {c["type"]: c for c in status["conditions"]}
    assert by_type["example.com/Warm"] == gate and by_type["PodScheduled"] == scheduled
    assert by_type["ContainersReady"]["status"] == "True"
    assert by_type["Ready"]["status"] == "False" and by_type["Ready"]["reason"] == "ReadinessGatesNotReady"


def test_pod_level_failure_sets_reason_and_message():
    status = build_pod_status(pod(), PodView("ip", "h", T0, [], [running()], failure=("DeadlineExceeded", "late")))
    assert (status["phase"], status["reason"], status["message"]) == ("Failed", "DeadlineExceeded", "late")


def test_termination_messages_are_capped_at_4096_bytes():
    assert len(cap_message(b"x" * 10000)) == 4096


@pytest.mark.parametrize("policy, code, restart", [
    ("Always", 0, True), ("Always", 1, True), ("OnFailure", 0, False), ("OnFailure", 2, True),
    ("Never", 0, False), ("Never", 1, False)])
def test_should_restart(policy, code, restart):
    assert should_restart(policy, code) is restart


def test_crash_loop_back_off_doubles_up_to_the_cap_and_resets_after_a_long_run():
    delays = [restart_delay(n, ran_for=1.0) for n in range(8)]
    assert delays == [0.0, 10.0, 20.0, 40.0, 80.0, 160.0, 300.0, 300.0]
    assert restart_delay(5, ran_for=601.0) == 0.0
    assert restart_delay(2, ran_for=1.0, base=0.5) == 1.0
