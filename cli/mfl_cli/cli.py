"""`mfl`: see what a loop is doing and why, read a version's error analysis, run the demo and benchmarks.

mfl status churn [-n NAMESPACE]          phase, conditions, metrics, retraining, canary evidence
mfl versions churn [--storage DIR]       every version with its outcome (status history + registry)
mfl report churn [--version N] [--storage DIR]   error analysis of a version
mfl demo                                 the whole loop on this machine (see `mfl demo --help`)
mfl testbed status|down                  the local test bed `mfl demo --keep` leaves running
mfl bench                                every benchmark table
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from feedbackloop import api

BENCHMARKS = [
    "canary_simulation.py",
    "operator_scale.py",
    "training_scale.py",
    "server_throughput.py",
    "ml_efficacy.py",
    "detection_latency.py",
]


# --- reading a loop ---------------------------------------------------------------------------------


def fetch_loop(name: str, namespace: str, kubeconfig: str | None) -> dict[str, Any]:
    import urllib3
    from kubernetes import client

    urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)  # the kubeconfig chose it

    from feedbackloop.kube import load_config

    load_config(kubeconfig)
    return client.CustomObjectsApi().get_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.PLURAL, name)


def table(rows: list[list[Any]], header: list[str]) -> str:
    cells = [[str(c) for c in header]] + [[("" if c is None else str(c)) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def render_status(loop: dict[str, Any]) -> str:
    status = loop.get("status") or {}
    meta = loop["metadata"]
    out = [
        f"{meta['namespace']}/{meta['name']}: phase {status.get('phase', '?')}, serving version "
        f"{status.get('currentVersion', '-')}, generation {meta.get('generation')} "
        f"(observed {status.get('observedGeneration', '-')})",
        "",
    ]
    conditions = status.get("conditions", [])
    if conditions:
        out += [
            table(
                [
                    [
                        c["type"],
                        c["status"],
                        c.get("reason", ""),
                        c.get("lastTransitionTime", ""),
                        (c.get("message") or "")[:90],
                    ]
                    for c in conditions
                ],
                ["CONDITION", "STATUS", "REASON", "SINCE", "MESSAGE"],
            ),
            "",
        ]
    if status.get("metrics"):
        out += [
            table(
                [
                    [m["name"], m.get("state"), m.get("value"), m.get("sampleTime"), m.get("breachSince")]
                    for m in status["metrics"]
                ],
                ["METRIC", "STATE", "VALUE", "SAMPLED", "BREACH SINCE"],
            ),
            "",
        ]
    if status.get("retraining"):
        r = status["retraining"]
        out += [f"Retraining: version {r['version']} ({r['trigger']}), Job {r['jobName']}, since {r['startedAt']}", ""]
    if status.get("retrainBlockedBy"):
        out += [f"Retraining wanted but blocked: {status['retrainBlockedBy']}", ""]
    if status.get("candidate"):
        c = status["candidate"]
        out += [f"Candidate: version {c['version']}: {c.get('gate', '')}", ""]
    if status.get("rollout"):
        out += render_rollout(status["rollout"])
    if status.get("history"):
        out += [
            table(
                [
                    [h["version"], h.get("trigger"), h.get("outcome"), h.get("at"), (h.get("message") or "")[:80]]
                    for h in status["history"]
                ],
                ["VERSION", "TRIGGER", "OUTCOME", "AT", "WHY"],
            )
        ]
    return "\n".join(out).rstrip() + "\n"


def render_rollout(rollout: dict[str, Any]) -> list[str]:
    lines = [
        f"Canary: version {rollout['version']}, step {rollout.get('step', 0) + 1} at {rollout.get('weight')}%, "
        f"analysis {rollout.get('analysisPhase')}{' (paused)' if rollout.get('paused') else ''}, "
        f"since {rollout.get('startedAt')}"
    ]
    evidence = rollout.get("evidence") or []
    if evidence:
        lines.append(
            table(
                [[e["name"], e.get("decision"), (e.get("message") or "")[:110]] for e in evidence],
                ["CHECK", "DECISION", "EVIDENCE"],
            )
        )
    return lines + [""]


# --- the registry -----------------------------------------------------------------------------------


def storage_root(loop: dict[str, Any] | None, given: str | None) -> Path | None:
    """The artifact store as a local folder: given, or the loop's hostPath when this host has it."""
    if given:
        return Path(given)
    host_path = (((loop or {}).get("spec") or {}).get("model", {}).get("storage") or {}).get("hostPath")
    if host_path and Path(host_path["path"]).is_dir():
        return Path(host_path["path"])
    return None


def registry_versions(root: Path, model: str) -> dict[int, dict[str, Any]]:
    versions: dict[int, dict[str, Any]] = {}
    for folder in sorted((root / model / "versions").glob("[0-9]*")):
        metadata = folder / "metadata.json"
        if folder.name.isdigit() and metadata.exists():
            versions[int(folder.name)] = json.loads(metadata.read_text())
    return versions


def render_versions(loop: dict[str, Any] | None, root: Path | None, model: str) -> str:
    history = {h["version"]: h for h in ((loop or {}).get("status") or {}).get("history", [])}
    registry = registry_versions(root, model) if root else {}
    current = ((loop or {}).get("status") or {}).get("currentVersion")
    rows = []
    for version in sorted(set(history) | set(registry)):
        record, metadata = history.get(version, {}), registry.get(version, {})
        metrics = metadata.get("metrics", {}).get("challenger") or record.get("metrics") or {}
        score = ", ".join(f"{k}={v:.4f}" for k, v in list(metrics.items())[:2]) if isinstance(metrics, dict) else ""
        rows.append(
            [
                f"{version}{' *' if version == current else ''}",
                metadata.get("parentVersion", ""),
                record.get("trigger", ""),
                record.get("outcome", "(in registry)" if metadata else ""),
                score,
                (metadata.get("rows") or {}).get("train", ""),
                (record.get("message") or "")[:60],
            ]
        )
    if not rows:
        return "no versions yet\n"
    note = "" if root else "\n(registry not reachable from here: pass --storage DIR to add its metadata)"
    return (
        table(rows, ["VERSION", "PARENT", "TRIGGER", "OUTCOME", "OFFLINE", "TRAIN ROWS", "WHY"])
        + "\n* = serving"
        + note
        + "\n"
    )


def render_report(report: dict[str, Any], folder: Path) -> str:
    out = [
        f"{report.get('model')} version {report.get('version')} (parent {report.get('parentVersion')}), "
        f"{report.get('task')}, target {report.get('target')!r}"
    ]
    holdout = report.get("holdout") or {}
    out.append(
        f"holdout: {holdout.get('rows')} rows, {holdout.get('strategy')}"
        + (f" ({holdout['reason']})" if holdout.get("reason") else "")
    )
    for role in ("challenger", "champion"):
        part = report.get(role)
        if not part:
            continue
        out += ["", f"== {role}: " + ", ".join(f"{k}={v:.4f}" for k, v in part.get("metrics", {}).items())]
        confusion = part.get("confusion")
        if confusion:
            labels = confusion["labels"]
            out.append(
                table(
                    [[f"actual {a}", *row] for a, row in zip(labels, confusion["matrix"])],
                    ["", *[f"pred {p}" for p in labels]],
                )
            )
        if part.get("perClass"):
            out.append(
                table(
                    [
                        [c["label"], f"{c['precision']:.3f}", f"{c['recall']:.3f}", f"{c['f1']:.3f}", c["support"]]
                        for c in part["perClass"]
                    ],
                    ["CLASS", "PRECISION", "RECALL", "F1", "SUPPORT"],
                )
            )
    slices = (report.get("worstSlices") or {}).get("challenger") or []
    if slices:
        metric = next((k for k in slices[0] if k not in ("feature", "bin", "rows")), "accuracy")
        out += [
            "",
            "worst slices (challenger):",
            table(
                [[s["feature"], s["bin"], f"{s[metric]:.3f}", s["rows"]] for s in slices[:10]],
                ["FEATURE", "BIN", metric.upper(), "ROWS"],
            ),
        ]
    png = folder / "confusion.png"
    if png.exists():
        out += ["", f"confusion matrix plot: {png}"]
    return "\n".join(out) + "\n"


# --- commands ---------------------------------------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    loop = fetch_loop(args.loop, args.namespace, args.kubeconfig)
    sys.stdout.write(json.dumps(loop.get("status"), indent=2) + "\n" if args.json else render_status(loop))
    return 0


def cmd_versions(args: argparse.Namespace) -> int:
    loop = None if args.offline else fetch_loop(args.loop, args.namespace, args.kubeconfig)
    model = ((loop or {}).get("spec") or {}).get("model", {}).get("name", args.loop)
    sys.stdout.write(render_versions(loop, storage_root(loop, args.storage), model))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    loop = None if args.offline else fetch_loop(args.loop, args.namespace, args.kubeconfig)
    model = ((loop or {}).get("spec") or {}).get("model", {}).get("name", args.loop)
    root = storage_root(loop, args.storage)
    if root is None:
        print("the artifact store is not reachable from here: pass --storage DIR (e.g. a mounted PVC)", file=sys.stderr)
        return 2
    version = (
        args.version
        or ((loop or {}).get("status") or {}).get("currentVersion")
        or max(registry_versions(root, model), default=None)
    )
    folder = root / model / "versions" / str(version)
    if version is None or not (folder / "report.json").exists():
        print(f"no report for {model} version {version} under {root}", file=sys.stderr)
        return 2
    sys.stdout.write(render_report(json.loads((folder / "report.json").read_text()), folder))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    folder = Path(__file__).resolve().parents[2] / "benchmarks"
    failed = 0
    for name in args.only or BENCHMARKS:
        script = folder / name
        if not script.exists():
            print(f"== {name}: not found under {folder}", flush=True)
            failed += 1
            continue
        print(f"\n== {name}", flush=True)
        failed += subprocess.call([sys.executable, str(script), *args.extra]) != 0
    return 1 if failed else 0


PLUGIN_GROUP = "mfl.commands"
# Commands that other distributions add through the `mfl.commands` entry point: the test bed
# (`pip install -e ./testbed`) adds these. The CLI never imports the test bed by name.
TESTBED_COMMANDS = {"demo": "the whole loop on this machine, live", "testbed": "the local test bed: status, down"}


def add_plugin_commands(sub: Any) -> None:
    found = set()
    for entry in importlib.metadata.entry_points(group=PLUGIN_GROUP):
        entry.load()(sub)
        found.add(entry.name)
    for name, help_ in TESTBED_COMMANDS.items():
        if name not in found:
            sub.add_parser(name, help=f"{help_} (needs the test bed)", add_help=False).set_defaults(
                handler=lambda _args, name=name: missing_testbed(name)
            )


def missing_testbed(name: str) -> int:
    print(
        f"mfl {name}: the test bed is not installed here: pip install -e ./testbed (from the checkout)", file=sys.stderr
    )
    return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mfl", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kubeconfig", help="default: $KUBECONFIG or ~/.kube/config")
    sub = parser.add_subparsers(dest="command", required=True)

    def loop_command(name: str, handler, help_: str) -> argparse.ArgumentParser:
        command = sub.add_parser(name, help=help_)
        command.add_argument("loop")
        command.add_argument("-n", "--namespace", default="default")
        command.set_defaults(handler=handler)
        return command

    loop_command("status", cmd_status, "phase, conditions, metrics, retraining and canary evidence").add_argument(
        "--json", action="store_true", help="the raw status"
    )
    for name, handler, help_ in (
        ("versions", cmd_versions, "versions and their outcomes"),
        ("report", cmd_report, "a version's error analysis"),
    ):
        command = loop_command(name, handler, help_)
        command.add_argument("--storage", help="the artifact store as a local folder")
        command.add_argument("--offline", action="store_true", help="read only --storage, not the cluster")
        if name == "report":
            command.add_argument("--version", type=int, help="default: the serving version")
    bench = sub.add_parser("bench", help="run every benchmark and print its table")
    bench.add_argument("--only", nargs="*", help=f"some of: {' '.join(BENCHMARKS)}")
    bench.add_argument("extra", nargs=argparse.REMAINDER, help="passed to each benchmark")
    bench.set_defaults(handler=cmd_bench)
    add_plugin_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        sys.exit(args.handler(args))
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as error:  # a clear one-liner for users; tracebacks are for bugs in tests
        from kubernetes.client.rest import ApiException

        if isinstance(error, ApiException):
            print(
                f"mfl: {error.status} {error.reason}: {json.loads(error.body or '{}').get('message', '')}",
                file=sys.stderr,
            )
            sys.exit(1)
        raise


if __name__ == "__main__":
    main()
