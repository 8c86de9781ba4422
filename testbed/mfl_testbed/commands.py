"""`mfl demo` and `mfl testbed`: the test bed's commands, added to `mfl` through the `mfl.commands`
entry point (testbed/pyproject.toml), so that the product's CLI never imports the test bed."""

from __future__ import annotations

import argparse
from typing import Any


def add_demo(sub: Any) -> None:
    demo = sub.add_parser("demo", help="the whole loop on this machine, live")
    demo.add_argument("--workdir", help="default: a new temporary folder")
    demo.add_argument("--fast", action="store_true", help="shorter phases (for tests)")
    demo.add_argument("--keep", action="store_true", help="leave everything running at the end")
    demo.add_argument(
        "--kubeconfig",
        default=argparse.SUPPRESS,
        help="run the demo on this existing cluster instead of the local test bed",
    )
    demo.add_argument("--registry", help="with --kubeconfig: where the project's images are (e.g. ghcr.io/you)")
    demo.add_argument("--prometheus-url", help="with --kubeconfig: a Prometheus that scrapes the cluster's Pods")
    demo.add_argument("--namespace", default="mfl-demo", help="with --kubeconfig: the demo's namespace")
    demo.add_argument("--storage-class", help="with --kubeconfig: for the artifacts volume (default: the cluster's)")
    demo.add_argument(
        "--access-mode",
        default="ReadWriteOnce",
        help="with --kubeconfig: of the artifacts volume; ReadWriteMany when Pods spread over nodes",
    )
    demo.set_defaults(handler=cmd_demo)


def add_testbed(sub: Any) -> None:
    testbed = sub.add_parser(
        "testbed",
        help="the local test bed: `status`, or `down` to remove it and undo its "
        "changes to the machine (after `mfl demo --keep` or a crash)",
    )
    testbed.add_argument("action", choices=["status", "down"])
    testbed.set_defaults(handler=cmd_testbed)


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args)


def cmd_testbed(args: argparse.Namespace) -> int:
    from . import node

    if args.action == "down":
        left = node.teardown(print)
        print("test bed removed" if not left else f"left behind: {', '.join(left)}")
        return 1 if left else 0
    state = node.read_state()
    if not state:
        print("no test bed on this machine")
        return 0
    for name, pid in state.get("pids", {}).items():
        print(f"{name:<24} pid {pid:<8} {'running' if node.alive(pid, name) else 'gone'}")
    for folder in state.get("workdirs", []):
        print(f"kubeconfig: {folder}/controlplane/kubeconfig")
    return 0
