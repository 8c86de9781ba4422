from datetime import UTC, datetime, timedelta

from feedbackloop.localdev.podruntime_node import node_manifest, node_status, without_startup_taints

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_node_reports_capacity_ready_and_only_an_internal_ip():
    status = node_status("10.244.0.1", T0)
    assert status["capacity"] == {"cpu": "2", "memory": "24Gi", "pods": "110", "ephemeral-storage": "100Gi"}
    assert status["allocatable"] == status["capacity"]
    assert status["addresses"] == [{"type": "InternalIP", "address": "10.244.0.1"}]
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True" and ready["reason"] == "KubeletReady"
    assert status["nodeInfo"]["kubeletVersion"] == "v1.20.2"
    assert status["daemonEndpoints"] == {"kubeletEndpoint": {"Port": 0}}
    assert node_status("ip", T0, kubelet_port=10250)["daemonEndpoints"]["kubeletEndpoint"]["Port"] == 10250


def test_heartbeats_move_but_transition_times_stay():
    first = node_status("ip", T0)["conditions"]
    later = node_status("ip", T0 + timedelta(seconds=10), previous=first)["conditions"]
    assert [c["lastTransitionTime"] for c in later] == [c["lastTransitionTime"] for c in first]
    assert all(c["lastHeartbeatTime"] == "2026-01-01T00:00:10Z" for c in later)
    stopped = node_status("ip", T0 + timedelta(seconds=20), ready=False, previous=later)["conditions"]
    ready = next(c for c in stopped if c["type"] == "Ready")
    assert ready["status"] == "False" and ready["lastTransitionTime"] == "2026-01-01T00:00:20Z"


def test_the_not_ready_taint_is_removed_and_others_kept():
    taints = [{"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"},
              {"key": "dedicated", "value": "ml", "effect": "NoSchedule"}]
    assert without_startup_taints(taints) == [taints[1]]


def test_manifest_labels_and_pod_cidr():
    node = node_manifest("mfl-node", "10.244.0.0/26")
    assert node["metadata"]["labels"]["kubernetes.io/hostname"] == "mfl-node"
    assert node["spec"]["podCIDR"] == "10.244.0.0/26"
