from mfl_testbed.pod_discovery import sanitize_label, sd_targets


def pod(name, phase="Running", ip="10.244.0.5", annotations=None, labels=None, ports=(8080,)):
    return {
        "metadata": {
            "name": name,
            "namespace": "ml",
            "labels": labels or {},
            "annotations": {"prometheus.io/scrape": "true", **(annotations or {})},
        },
        "spec": {"containers": [{"name": "c", "ports": [{"containerPort": p} for p in ports]}]},
        "status": {"phase": phase, "podIP": ip},
    }


def test_running_annotated_pods_become_targets_with_namespace_pod_and_pod_labels():
    targets = sd_targets([pod("a", labels={"app.kubernetes.io/name": "churn", "track": "canary"})])
    assert targets == [
        {
            "targets": ["10.244.0.5:8080"],
            "labels": {
                "namespace": "ml",
                "pod": "a",
                "pod_label_app_kubernetes_io_name": "churn",
                "pod_label_track": "canary",
            },
        }
    ]


def test_port_path_and_scheme_annotations_win():
    [target] = sd_targets(
        [
            pod(
                "a",
                annotations={"prometheus.io/port": "9100", "prometheus.io/path": "/m", "prometheus.io/scheme": "https"},
            )
        ]
    )
    assert target["targets"] == ["10.244.0.5:9100"]
    assert target["labels"]["__metrics_path__"] == "/m" and target["labels"]["__scheme__"] == "https"


def test_pods_not_running_not_annotated_or_without_port_are_left_out():
    unannotated = pod("b")
    unannotated["metadata"]["annotations"] = {}
    assert sd_targets([pod("a", phase="Pending"), unannotated, pod("c", ports=()), pod("d", ip="")]) == []


def test_targets_are_sorted():
    assert [t["labels"]["pod"] for t in sd_targets([pod("z"), pod("a")])] == ["a", "z"]


def test_sanitize_label():
    assert sanitize_label("app.kubernetes.io/name") == "app_kubernetes_io_name"
