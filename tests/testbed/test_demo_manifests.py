"""`mfl demo` builds valid objects for both settings (the cluster setting cannot run here: no cluster)."""

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from feedbackloop.core import api
from mfl_cli import cli
from mfl_testbed import demo


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
    pvc, code, seed = demo.ExistingCluster(args, Path("/tmp")).workload()
    assert code["kind"] == "ConfigMap" and "traffic.py" in code["data"]
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


@pytest.mark.integration
def test_the_demo_code_configmap_runs_on_its_own(tmp_path):
    """The existing-cluster demo mounts this ConfigMap as a package in the trainer image: it must import
    nothing beyond its own files, numpy and the standard library."""
    package = tmp_path / "mfl_testbed"
    package.mkdir()
    for name, text in demo.demo_code_configmap()["data"].items():
        (package / name).write_text(text)
    probe = "import sys, mfl_testbed.traffic as t; assert t.__file__.startswith(sys.argv[1]), t.__file__"
    env = {"PYTHONPATH": str(tmp_path), "PATH": os.environ["PATH"]}
    subprocess.run([sys.executable, "-c", probe, str(tmp_path)], env=env, check=True, timeout=60)
    help_ = subprocess.run(
        [sys.executable, "-m", "mfl_testbed.traffic", "--help"], env=env, capture_output=True, text=True, timeout=60
    )
    assert help_.returncode == 0 and "seed" in help_.stdout, help_.stderr
