"""`mfl demo` builds valid objects for both settings (the cluster setting cannot run here: no cluster)."""

import argparse

from feedbackloop import api, cli, demo


def test_local_loop_is_a_valid_spec():
    manifest = demo.loop_manifest("http://127.0.0.1:9090", {"hostPath": {"path": "/tmp/a"}}, fast=True)
    spec = api.validate_spec(manifest["spec"])
    assert spec.model.serving.image == "ghcr.io/feedbackloop/mfl-server:0.1.0"


def test_cluster_loop_takes_images_from_the_registry_and_a_claim():
    manifest = demo.loop_manifest(
        "http://prom:9090",
        {"persistentVolumeClaim": {"claimName": "c"}},
        fast=False,
        namespace="x",
        registry="registry.example/team/",
    )
    spec = api.validate_spec(manifest["spec"])
    assert spec.model.serving.image == "registry.example/team/mfl-server:0.1.0"
    assert spec.retraining.trainer.image == "registry.example/team/mfl-trainer:0.1.0"
    assert manifest["metadata"]["namespace"] == "x"


def test_cluster_workload_is_restricted_and_mounts_the_claim():
    args = cli.build_parser().parse_args(
        [
            "demo",
            "--kubeconfig",
            "k",
            "--registry",
            "r.example",
            "--prometheus-url",
            "http://p",
            "--storage-class",
            "fast",
        ]
    )
    assert args.kubeconfig == "k" and args.namespace == "mfl-demo"
    pvc, seed = demo.ClusterDemo(args).workload()
    assert pvc["spec"]["storageClassName"] == "fast" and pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    pod = seed["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["containers"][0]["image"] == "r.example/mfl-trainer:0.1.0"
    assert pod["containers"][0]["securityContext"]["allowPrivilegeEscalation"] is False


def test_kubeconfig_before_the_subcommand_still_counts():
    args = cli.build_parser().parse_args(["--kubeconfig", "k", "demo"])
    assert args.kubeconfig == "k"
    args = cli.build_parser().parse_args(["demo"])
    assert args.kubeconfig is None


def test_cluster_demo_needs_a_registry_and_prometheus():
    args = argparse.Namespace(kubeconfig="k", registry=None, prometheus_url=None)
    try:
        demo.run_demo(args)
    except SystemExit as stop:
        assert "--registry" in str(stop)
    else:
        raise AssertionError("expected a usage error")
