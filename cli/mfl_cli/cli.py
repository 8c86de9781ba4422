"""`mfl` (also `kubectl mfl`): see what a loop is doing and why, ask the operator for a promotion, a rollback,
a pause or a retraining, read a version's error analysis, run the demo and benchmarks.

mfl get [LOOP] [-A] [-l SELECTOR] [-w] [--no-headers]
        [-o wide|name|json|yaml|jsonpath=...|custom-columns=...]
                                           loops: phase, serving version, canary, age
mfl status LOOP [--watch] [-o json|yaml|jsonpath=...]
                                           phase, conditions, metrics, retraining, canary evidence
mfl versions LOOP [--storage DIR|--s3-*] [-o json|yaml|jsonpath=...]
                                           every version with its outcome (status history + registry)
mfl report LOOP [--version N] [--storage DIR|--s3-*] [-o json|yaml|jsonpath=...]
                                           a version's error analysis and what it was trained on
mfl feedback export LOOP -o FILE [--since 7d] [--size N] [--format csv|parquet]
                                           unlabelled predictions sampled for people to label
mfl feedback import LOOP FILE [--url URL]  send the labels filled in to the loop's server
mfl promote|abort|pause|resume LOOP        act on the running canary (the operator acts asynchronously)
mfl retrain LOOP                           retrain now (skips the cooldown, not the daily budget)
mfl demo                                   the whole loop on this machine (see `mfl demo --help`)
mfl testbed status|down                    the local test bed `mfl demo --keep` leaves running
mfl bench                                  every benchmark table
mfl conformance URL [--model NAME] [-o json]
                                           does a running server meet the serving contract
mfl version [--client] [-o json|yaml]      this client's version and the operator's (its Deployment's)

The namespace is -n, else the kubeconfig context's (as kubectl); --kubeconfig, else $KUBECONFIG, else
~/.kube/config. The artifact store is --storage DIR, else the loop's S3 bucket (credentials from its Secret, or
--s3-* flags and $MFL_S3_ACCESS_KEY_ID/$MFL_S3_SECRET_ACCESS_KEY), else its hostPath when this machine has it.
Installed as `kubectl-mfl` on PATH, every command runs as `kubectl mfl ...` too. Exit codes: 0 done, 1 an
error (the cluster, the store, an object not found), 2 a usage error; every error is one line on stderr
starting with "mfl:" (docs/cli.md: each verb and flag beside kubectl's).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from feedbackloop.core.timeutil import format_time
from mfl_cli import kube, output, stores, views
from mfl_cli.views import cell, entries, integer, line, mapping, table
from mfl_contracts.objectstore import ArtifactStore, NotFound, StoreError, VolumeStore

BENCHMARKS = [
    "canary_simulation.py",
    "operator_scale.py",
    "training_scale.py",
    "server_throughput.py",
    "feedback_storage.py",
    "trainer_read.py",
    "ml_efficacy.py",
    "detection_latency.py",
]


# --- reading a loop ---------------------------------------------------------------------------------


def render_status(loop: dict[str, Any]) -> str:
    """The loop's status in words and tables; any status the schema admits (a field absent, null or of
    another shape reads as absent), every value shown as inert text."""
    status, meta = mapping(loop.get("status")), mapping(loop.get("metadata"))
    out = [
        line(
            f"{meta.get('namespace')}/{meta.get('name')}: phase {status.get('phase', '?')}, serving version "
            f"{status.get('currentVersion', '-')}, generation {meta.get('generation')} "
            f"(observed {status.get('observedGeneration', '-')})"
        ),
        "",
    ]
    conditions = entries(status.get("conditions"))
    if conditions:
        out += [
            table(
                [
                    [
                        c.get("type"),
                        c.get("status"),
                        c.get("reason", ""),
                        c.get("lastTransitionTime", ""),
                        cell(c.get("message"), 90),
                    ]
                    for c in conditions
                ],
                ["CONDITION", "STATUS", "REASON", "SINCE", "MESSAGE"],
            ),
            "",
        ]
    metrics = entries(status.get("metrics"))
    if metrics:
        out += [
            table(
                [
                    [m.get("name"), m.get("state"), m.get("value"), m.get("sampleTime"), m.get("breachSince")]
                    for m in metrics
                ],
                ["METRIC", "STATE", "VALUE", "SAMPLED", "BREACH SINCE"],
            ),
            "",
        ]
    r = mapping(status.get("retraining"))
    if r:
        out += [
            line(
                f"Retraining: version {r.get('version')} ({r.get('trigger')}), "
                f"{'DaskJob' if r.get('engine') == 'Dask' else 'Job'} {r.get('jobName')}, "
                f"since {r.get('startedAt')}"
            ),
            "",
        ]
    if status.get("retrainBlockedBy"):
        out += [line(f"Retraining wanted but blocked: {status['retrainBlockedBy']}"), ""]
    c = mapping(status.get("candidate"))
    if c:
        out += [line(f"Candidate: version {c.get('version')}: {c.get('gate', '')}"), ""]
    rollout = mapping(status.get("rollout"))
    if rollout:
        out += render_rollout(rollout)
    history = entries(status.get("history"))
    if history:
        out += [
            table(
                [
                    [h.get("version"), h.get("trigger"), h.get("outcome"), h.get("at"), cell(h.get("message"), 80)]
                    for h in history
                ],
                ["VERSION", "TRIGGER", "OUTCOME", "AT", "WHY"],
            )
        ]
    return "\n".join(out).rstrip() + "\n"


def render_rollout(rollout: dict[str, Any]) -> list[str]:
    lines = [
        line(
            f"Canary: version {rollout.get('version')}, step {integer(rollout.get('step')) + 1} at "
            f"{rollout.get('weight')}%, analysis {rollout.get('analysisPhase')}"
            f"{' (paused)' if rollout.get('paused') else ''}, since {rollout.get('startedAt')}"
        )
    ]
    evidence = entries(rollout.get("evidence"))
    if evidence:
        lines.append(
            table(
                [[e.get("name"), e.get("decision"), cell(e.get("message"), 110)] for e in evidence],
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


def as_store(store: ArtifactStore | Path) -> ArtifactStore:
    return VolumeStore(store) if isinstance(store, Path) else store


def registry_versions(store: ArtifactStore | Path, model: str) -> dict[int, dict[str, Any]]:
    """Every published version's metadata: a version exists iff its metadata.json does (written last)."""
    store = as_store(store)
    pattern = re.compile(rf"^{re.escape(model)}/versions/(\d+)/metadata\.json$")
    versions: dict[int, dict[str, Any]] = {}
    for info in store.list(f"{model}/versions/"):
        found = pattern.match(info.key)
        if found:
            versions[int(found[1])] = read_json(store, info.key)
    return dict(sorted(versions.items()))


def read_json(store: ArtifactStore, key: str) -> dict[str, Any]:
    try:
        value = json.loads(store.get(key))
    except ValueError as error:
        raise kube.CliError(f"{store.description}: {key} is not valid JSON ({error})") from None
    return value if isinstance(value, dict) else {}


def version_records(
    loop: dict[str, Any] | None, store: ArtifactStore | Path | None, model: str
) -> list[dict[str, Any]]:
    """Every version the loop's history or the registry knows, oldest first (what `versions -o json` prints)."""
    status = mapping((loop or {}).get("status"))
    history = {h["version"]: h for h in entries(status.get("history")) if type(h.get("version")) is int}
    registry = registry_versions(store, model) if store else {}
    records = []
    for version in sorted(set(history) | set(registry)):
        record, metadata = history.get(version, {}), registry.get(version, {})
        metrics = mapping(mapping(metadata.get("metrics")).get("challenger")) or mapping(record.get("metrics"))
        records.append(
            {
                "version": version,
                "serving": version == status.get("currentVersion"),
                "parentVersion": metadata.get("parentVersion"),
                "trigger": record.get("trigger"),
                "outcome": record.get("outcome", "(in registry)" if metadata else None),
                "offlineMetrics": metrics,
                "trainRows": mapping(metadata.get("rows")).get("train"),
                "message": record.get("message"),
            }
        )
    return records


def render_versions(loop: dict[str, Any] | None, store: ArtifactStore | Path | None, model: str) -> str:
    rows = []
    for record in version_records(loop, store, model):
        score = ", ".join(f"{k}={_number(v, '.4f')}" for k, v in list(record["offlineMetrics"].items())[:2])
        rows.append(
            [
                f"{record['version']}{' *' if record['serving'] else ''}",
                "" if record["parentVersion"] is None else record["parentVersion"],
                record["trigger"] or "",
                record["outcome"] or "",
                score,
                "" if record["trainRows"] is None else record["trainRows"],
                cell(record["message"], 60),
            ]
        )
    if not rows:
        return "no versions yet\n"
    note = (
        "" if store else "\n(registry not reachable from here: pass --storage DIR or --s3-bucket to add its metadata)"
    )
    return (
        table(rows, ["VERSION", "PARENT", "TRIGGER", "OUTCOME", "OFFLINE", "TRAIN ROWS", "WHY"])
        + "\n* = serving"
        + note
        + "\n"
    )


def render_report(report: dict[str, Any], folder: Path | None, plots: list[str] | None = None) -> str:
    """`folder`: the version's local folder, whose confusion.png is named; `plots`: where the version's plots
    are when it has no local folder (objects in a bucket, or the copies --plots downloaded). The report is the
    trainer's: any part of another shape reads as absent, every value is shown as inert text."""
    out = [
        line(
            f"{report.get('model')} version {report.get('version')} (parent {report.get('parentVersion')}), "
            f"{report.get('task')}, target {report.get('target')!r}"
        )
    ]
    holdout = mapping(report.get("holdout"))
    out.append(
        line(
            f"holdout: {holdout.get('rows')} rows, {holdout.get('strategy')}"
            + (f" ({holdout['reason']})" if holdout.get("reason") else "")
        )
    )
    if isinstance(report.get("trainingData"), dict):  # trainers before change-point training wrote none
        out += [line(text) for text in render_training_data(report["trainingData"], holdout, report.get("metric"))]
    if isinstance(report.get("paired"), dict):
        out.append(line(LABEL.format("paired:") + render_paired(report["paired"], report.get("task"))))
    for role in ("challenger", "champion"):
        part = mapping(report.get(role))
        if not part:
            continue
        scores = mapping(part.get("metrics"))
        out += ["", line(f"== {role}: " + ", ".join(f"{k}={_number(v, '.4f')}" for k, v in scores.items()))]
        confusion = mapping(part.get("confusion"))
        labels, matrix = confusion.get("labels"), confusion.get("matrix")
        if isinstance(labels, list) and labels and isinstance(matrix, list):
            out.append(
                table(
                    [[f"actual {a}", *(row if isinstance(row, list) else [row])] for a, row in zip(labels, matrix)],
                    ["", *[f"pred {p}" for p in labels]],
                )
            )
        per_class = entries(part.get("perClass"))
        if per_class:
            out.append(
                table(
                    [
                        [
                            c.get("label"),
                            _number(c.get("precision"), ".3f"),
                            _number(c.get("recall"), ".3f"),
                            _number(c.get("f1"), ".3f"),
                            c.get("support"),
                        ]
                        for c in per_class
                    ],
                    ["CLASS", "PRECISION", "RECALL", "F1", "SUPPORT"],
                )
            )
    slices = entries(mapping(report.get("worstSlices")).get("challenger"))
    if slices:
        metric = str(next((k for k in slices[0] if k not in ("feature", "bin", "rows")), "accuracy"))
        out += [
            "",
            "worst slices (challenger):",
            table(
                [[s.get("feature"), s.get("bin"), _number(s.get(metric), ".3f"), s.get("rows")] for s in slices[:10]],
                ["FEATURE", "BIN", metric.upper(), "ROWS"],
            ),
        ]
    if plots is not None:
        out += ["", *(line(f"plot: {plot}") for plot in plots)] if plots else []
    elif folder is not None and (folder / "confusion.png").exists():
        out += ["", line(f"confusion matrix plot: {folder / 'confusion.png'}")]
    return "\n".join(out) + "\n"


LABEL = "{:<16}"  # "training data:  ...", its continuation lines indented alike
CROSS_FITTED = "post_change_cross_fitted"
GREATER_IS_BETTER = {"accuracy": True, "f1_macro": True, "mae": False, "rmse": False, "r2": True}  # the trainer's
JUDGED_ON = {  # the trainer's holdout strategies (mfl_trainer.plan, .split), as the report says them
    "post_change_stratified": "on a stratified share of the rows since the change",
    "time_ordered_feedback": "on the newest feedback",
    "stratified_random_base": "on a stratified random share of the base data",
    "random_base": "on a random share of the base data",
}


def _number(value: Any, spec: str) -> str:
    """A number of the trainer's report or metadata as `spec` says, "?" when it is none (or no float holds it)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "?"
    try:
        return format(value, spec)
    except (OverflowError, ValueError):
        return "?"


def render_training_data(training: dict[str, Any], holdout: dict[str, Any], metric: Any = None) -> list[str]:
    """What the version learned from (the trainer's `trainingData`): the change it trained since, found now,
    found for an earlier version, or none; the rows; how it was judged; the recipes' cross-fitted scores."""
    cut, since = training.get("cut"), training.get("conceptSince")
    if isinstance(cut, dict):
        method = str(cut.get("method") or "change test").split(",")[0]
        origin = (
            f"since the change at {_when(cut.get('ts'))} (served error {_number(cut.get('errorBefore'), '.2f')} -> "
            f"{_number(cut.get('errorAfter'), '.2f')}, {method} p={_number(cut.get('pValue'), '.2g')}; "
            f"{_number(cut.get('rowsBefore'), ',')} rows before, {_number(cut.get('rowsAfter'), ',')} after)"
        )
    elif since is not None:
        origin = f"since the change at {_when(since)} found for an earlier version"
    else:
        origin = "base data and the data window (no change found)"
    rows = (
        f"trained on {_number(training.get('trainFeedback'), ',')} feedback rows, "
        f"{_number(training.get('trainBase'), ',')} base rows"
    )
    strategy = training.get("holdoutStrategy") or holdout.get("strategy")
    if strategy == CROSS_FITTED:
        folds = re.search(r"(\d+) folds", str(holdout.get("reason") or ""))
        rows += "; judged cross-fitted" + (f" ({folds.group(1)} folds)" if folds else "")
    elif strategy:
        if isinstance(cut, dict) or since is not None:  # the trainer fell back to the base data and the window
            rows += " (too few since the change to train on them alone)"
        rows += f"; judged {JUDGED_ON.get(str(strategy), str(strategy))}"
    recipes = training.get("recipes")
    if isinstance(recipes, dict) and recipes:
        rows += "; recipes: " + ", ".join(
            f"{name} {_number(score, '.3f')}" + (" (trained)" if name == _best(recipes, metric) else "")
            for name, score in recipes.items()
        )
    return [LABEL.format("training data:") + origin, LABEL.format("") + rows]


def _best(scores: dict[str, Any], metric: Any) -> str | None:
    """The recipe the trainer trained: the best cross-fitted score of the report's metric, the first on a tie
    (mfl_trainer.plan.best_recipe); None when the metric's direction is unknown."""
    if not isinstance(metric, str) or metric not in GREATER_IS_BETTER:
        return None
    numbers = {
        name: float(v)
        for name, v in scores.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and abs(v) <= 1e300
    }
    if not numbers:
        return None
    sign = 1.0 if GREATER_IS_BETTER[metric] else -1.0
    return max(numbers, key=lambda name: sign * numbers[name])


def _when(ts: Any) -> str:
    if not isinstance(ts, (int, float)) or isinstance(ts, bool):
        return "?"
    try:
        return format_time(float(ts)) or "?"
    except (OverflowError, ValueError, OSError):  # NaN, or a time no calendar holds
        return "?"


def render_paired(paired: dict[str, Any], task: Any) -> str:
    """The holdout rows only one model got right (closer, for regression): the gate's sign test counts."""
    better = "right where champion wrong" if task != "regression" else "closer than champion"
    return (
        f"challenger {better} on {_number(paired.get('challengerOnly'), ',')} rows, "
        f"the reverse on {_number(paired.get('championOnly'), ',')}"
    )


# --- commands ---------------------------------------------------------------------------------------


def cmd_get(args: argparse.Namespace, loops: kube.Loops) -> int:
    namespace = None if args.all_namespaces else args.namespace
    selector = kube.Selector(args.selector, args.field_selector)
    if args.loop and (args.all_namespaces or args.selector or args.field_selector):
        raise kube.UsageError("a loop's name cannot be given with -A, -l or --field-selector (as kubectl)")
    printer = output.LoopPrinter(args.output, args.all_namespaces, args.no_headers, time.time)
    if args.watch or args.watch_only:
        return watch_loops(args, loops, printer, namespace, selector)
    found = (
        [loops.get(args.loop, args.namespace)] if args.loop else output.sorted_loops(loops.list(namespace, selector))
    )
    listing = args.output is not None and args.output.format in ("json", "yaml", "jsonpath")
    if found or listing:
        sys.stdout.write(printer.print(found, as_list=not args.loop))  # kubectl prints an empty List too
    if not found and not listing:
        print(views.no_loops(namespace), file=sys.stderr)  # as kubectl: stdout stays empty for scripts
    return 0


def watch_loops(
    args: argparse.Namespace,
    loops: kube.Loops,
    printer: output.LoopPrinter,
    namespace: str | None,
    selector: kube.Selector,
) -> int:
    """kubectl get -w: the loops now (not with --watch-only), then a row (or object) per change, a deleted
    loop's last state included; Ctrl-C ends it with 0. One loop by name: a field selector on its name."""
    if args.loop:
        loops.get(args.loop, args.namespace)  # a loop that is not there: not found (1), as kubectl, not a silent wait
        selector, namespace = kube.Selector(fields=f"metadata.name={args.loop}"), args.namespace
    try:
        for kind, loop in loops.watch_list(namespace, selector):
            if kind == "LISTED" and args.watch_only:
                continue
            sys.stdout.write(printer.print([loop], as_list=False))
            sys.stdout.flush()
    except KeyboardInterrupt:
        return 0
    return 0


def status_text(loop: dict[str, Any], out: output.Output | None) -> str:
    """`status` prints the loop's status: as text, or the raw status block with -o json|yaml|jsonpath."""
    return output.document(loop.get("status") or {}, out) if out else render_status(loop)


def cmd_status(args: argparse.Namespace, loops: kube.Loops) -> int:
    out = output.Output("json") if args.json else args.output
    if not args.watch:
        sys.stdout.write(status_text(loops.get(args.loop, args.namespace), out))
        return 0
    shown = None
    try:
        for loop in loops.watch(args.loop, args.namespace):
            text = status_text(loop, out)
            if text == shown:  # an update of something not shown (a refresh, another field)
                continue
            if shown is not None:
                sys.stdout.write(watch_separator(out.format if out else None, datetime.now(UTC)))
            sys.stdout.write(text)
            sys.stdout.flush()
            shown = text
    except KeyboardInterrupt:  # Ctrl-C is how a watch ends: not a failure (as `get -w`)
        return 0
    return 0


def watch_separator(output: str | None, now: datetime) -> str:
    """Between two prints of a watched status: a YAML document start, nothing between JSON documents
    (a stream `jq` reads), a timestamped rule for people."""
    if output == "yaml":
        return "---\n"
    if output == "json":
        return ""
    return f"\n--- {now.strftime('%H:%M:%S')} ---\n"


def loop_of(args: argparse.Namespace, loops: kube.Loops | None) -> tuple[dict[str, Any] | None, str]:
    """The loop (None offline) and its model's name (the loop's name offline)."""
    loop = loops.get(args.loop, args.namespace) if loops else None
    return loop, ((loop or {}).get("spec") or {}).get("model", {}).get("name", args.loop)


def artifact_store(
    args: argparse.Namespace, loop: dict[str, Any] | None, loops: kube.Loops | None
) -> ArtifactStore | None:
    return stores.open_store(args, loop, loops, storage_root(loop, None))


OFFLINE_NEEDS_STORE = (
    "--offline reads only the artifact store, and none is given: pass --storage DIR (e.g. a mounted PVC) or the "
    "bucket (--s3-bucket, --s3-endpoint and credentials)"
)
UNREACHABLE_STORE = (
    "the artifact store is not reachable from here: pass --storage DIR (e.g. a mounted PVC) or the bucket "
    "(--s3-endpoint, --s3-bucket and credentials)"
)


def cmd_versions(args: argparse.Namespace, loops: kube.Loops | None) -> int:
    loop, model = loop_of(args, loops)
    store = artifact_store(args, loop, loops)
    if loops is None and store is None:
        raise kube.UsageError(OFFLINE_NEEDS_STORE)
    records = version_records(loop, store, model)
    if loops is None and not records:
        assert store is not None
        raise kube.CliError(f"no versions of model {model!r} in {as_store(store).description}")
    if args.output:
        current = mapping((loop or {}).get("status")).get("currentVersion")
        sys.stdout.write(output.document({"model": model, "servingVersion": current, "versions": records}, args.output))
    else:
        sys.stdout.write(render_versions(loop, store, model))
    return 0


def cmd_report(args: argparse.Namespace, loops: kube.Loops | None) -> int:
    loop, model = loop_of(args, loops)
    store = artifact_store(args, loop, loops)
    if store is None:
        raise kube.UsageError(OFFLINE_NEEDS_STORE) if loops is None else kube.CliError(UNREACHABLE_STORE)
    version = (
        args.version
        or ((loop or {}).get("status") or {}).get("currentVersion")
        or max(registry_versions(store, model), default=None)
    )
    prefix = f"{model}/versions/{version}/"
    try:
        report = json.loads(store.get(prefix + "report.json")) if version is not None else None
    except NotFound:
        report = None
    except ValueError as error:
        raise kube.CliError(f"{store.description}: {prefix}report.json is not valid JSON ({error})") from None
    if report is None:
        raise kube.CliError(f"no report for {model} version {version} under {store.description}")
    if args.output:
        sys.stdout.write(output.document(report, args.output))
    elif isinstance(store, VolumeStore):
        sys.stdout.write(render_report(report, store.root / model / "versions" / str(version)))
    else:
        sys.stdout.write(render_report(report, None, plots_of(store, prefix, args.plots)))
    return 0


def plots_of(store: ArtifactStore, prefix: str, folder: str | None) -> list[str]:
    """The version's PNG plots: downloaded to `folder` (--plots), else named where they are in the store."""
    keys = [info.key for info in store.list(prefix) if info.key.endswith(".png")]
    if folder is None:
        return [f"{key} in {store.description} (--plots DIR downloads it)" for key in keys]
    paths = []
    for key in keys:
        path = Path(folder) / key.rsplit("/", 1)[-1]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(store.get(key))
        paths.append(str(path))
    return paths


def cmd_feedback_export(args: argparse.Namespace, loops: kube.Loops | None) -> int:
    from mfl_cli import export  # the sampling and writers: only this command pays for them

    loop, model = loop_of(args, loops)
    store = artifact_store(args, loop, loops)
    if store is None:
        raise kube.CliError("the artifact store is not reachable from here: pass --storage DIR or --s3-bucket ...")
    if args.format == "parquet":
        export.pyarrow_modules()  # fail before the long read, not after
    database_url = stores.database_url(args, loop, loops, os.environ)
    if database_url is None and not isinstance(store, VolumeStore):
        print(
            "warning: no label database given (--database-url): in s3 mode the labels are only there, so "
            "predictions labelled already may be exported again",
            file=sys.stderr,
        )
    spec_model = ((loop or {}).get("spec") or {}).get("model") or {}
    serving = args.version or ((loop or {}).get("status") or {}).get("currentVersion")
    request = export.ExportRequest(
        model, Path(args.output_file), args.since, args.size, args.format, serving, database_url, args.seed
    )
    return export.export(store, request, spec_model.get("task"), time.time())


def cmd_feedback_import(args: argparse.Namespace, loops: kube.Loops | None) -> int:
    from mfl_cli import labels

    loop = loops.get(args.loop, args.namespace) if loops else None
    task = args.task or (((loop or {}).get("spec") or {}).get("model") or {}).get("task")
    rows, skipped = labels.label_rows(labels.read_records(Path(args.file)), task)
    if not rows:  # the file given cannot be used: a usage error (2)
        raise kube.UsageError(f"{args.file}: no row has a label ({skipped} rows with an empty label column)")
    if args.url or loops is None:  # run() connects unless --url and --task leave nothing to ask the cluster
        sender, target = labels.url_sender(args.url, args.request_timeout), args.url
    else:
        sender, target = labels.proxy_sender(loops, args.namespace, args.loop)
    return labels.import_labels(rows, skipped, sender, target, args.batch)


# The requests the operator reads as annotations (feedbackloop.core.phases.REQUEST_ANNOTATIONS; a test keeps
# the two equal). Listed here so that building the parser does not import the operator's decision code.
WRITE_VERBS = {
    "promote": "promote the running canary now",
    "abort": "roll the running canary back",
    "pause": "hold the running canary at its step",
    "resume": "let a paused canary go on",
    "retrain": "retrain now (skips the cooldown, not the daily budget)",
}


def cmd_request(args: argparse.Namespace, loops: kube.Loops) -> int:
    from mfl_cli import actions  # imports the operator's policy: only the write verbs pay for it

    loop = loops.get(args.loop, args.namespace)
    refused = actions.refusal(args.verb, loop, time.time())
    if refused:
        raise kube.CliError(refused)
    token = actions.new_token()
    loops.annotate(args.loop, args.namespace, {actions.annotation_key(args.verb): token})
    print(actions.confirmation(args.verb, loop, token, args.prog))
    return 0


OPERATOR_NAMESPACE = "feedbackloop-system"  # manifests/kustomization.yaml's
OPERATOR_SELECTOR = "app.kubernetes.io/name=feedbackloop-operator"  # manifests/operator.yaml's Deployment
DISTRIBUTION = "model-feedback-loop"  # pyproject.toml's [project] name: the one version of the release


def client_version() -> str:
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def operator_version(deployment: Any) -> dict[str, Any]:
    """The operator's version as its Deployment says it: the `app.kubernetes.io/version` label, else the tag
    of its image (none: a digest only, or the registry's default `latest`)."""
    meta = deployment.metadata
    containers = deployment.spec.template.spec.containers or []
    image = next((c.image for c in containers if c.name == "operator"), containers[0].image if containers else "")
    tail = (image or "").rsplit("/", 1)[-1].split("@", 1)[0]
    tag = tail.partition(":")[2] or None
    version = (meta.labels or {}).get("app.kubernetes.io/version") or tag or "unknown"
    return {"version": version, "image": image, "deployment": f"{meta.namespace}/{meta.name}"}


def cmd_version(args: argparse.Namespace) -> int:
    """kubectl version's shape: the client's, then the operator's as the cluster says it; with -o the whole as
    one document. An unreachable cluster or no operator: the client's version printed, the error, exit 1."""
    result: dict[str, Any] = {"clientVersion": {"version": client_version()}}
    failure = None
    if not args.client:
        try:
            target = kube.Target(args.kubeconfig, args.context, None, args.request_timeout)
            loops, _ = kube.connect(target)
            found = loops.operator_deployments(args.operator_namespace, args.operator_selector)
            if not found:
                raise kube.CliError(
                    f"no operator Deployment labelled {args.operator_selector} in namespace "
                    f"{args.operator_namespace!r} (--operator-namespace, --operator-selector)"
                )
            result["operatorVersion"] = operator_version(found[0])
        except kube.CliError as error:
            failure = error
    if args.output:
        sys.stdout.write(output.document(result, args.output))
    else:
        sys.stdout.write(f"Client Version: {result['clientVersion']['version']}\n")
        if "operatorVersion" in result:
            operator = result["operatorVersion"]
            sys.stdout.write(
                f"Operator Version: {operator['version']} ({operator['deployment']}, {operator['image']})\n"
            )
    if failure is not None:
        raise failure
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


def cmd_conformance(args: argparse.Namespace) -> int:
    from mfl_cli import conformance  # standard library only; imported when used

    return conformance.command(args)


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
    raise kube.UsageError(f"{name}: the test bed is not installed here: pip install -e ./testbed (from the checkout)")


def program_name(argv0: str) -> str:
    """kubectl runs a plugin as `kubectl-mfl`; help and messages then name it as the user typed it."""
    return "kubectl mfl" if Path(argv0).name.startswith("kubectl-mfl") else "mfl"


def cluster_options(parser: argparse.ArgumentParser, after_verb: bool) -> None:
    """Where to connect. Accepted after the verb too (kubectl passes a plugin everything after its
    name, so `kubectl mfl get -n prod` is the usual order); there SUPPRESS keeps a value given before."""

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if after_verb else value

    parser.add_argument("--kubeconfig", default=default(None), help="default: $KUBECONFIG or ~/.kube/config")
    parser.add_argument("--context", default=default(None), help="a kubeconfig context (default: the current one)")
    parser.add_argument(
        "-n", "--namespace", default=default(None), help="default: the namespace of the kubeconfig's context"
    )
    parser.add_argument(
        "--request-timeout",
        type=request_timeout,
        default=default(15.0),
        metavar="DURATION",
        help="per API request, as kubectl: 30s, 1m, a bare number of seconds, 0 for none (15s)",
    )


def request_timeout(text: str) -> float | None:
    """kubectl's --request-timeout: a Go duration (1s, 2m, 1m30s, 500ms), a bare number meaning seconds, 0 for no
    timeout (None)."""
    import durationpy  # the kubernetes client's own Go-duration parser (a dependency of it)

    value = text.strip()
    try:
        seconds = float(value) if re.fullmatch(r"\d+(\.\d+)?", value) else durationpy.from_str(value).total_seconds()
    except (ValueError, durationpy.DurationError):
        raise argparse.ArgumentTypeError(
            f"invalid duration {text!r}: e.g. 30s, 1m, 500ms, a number of seconds, 0 for none"
        ) from None
    if seconds < 0:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: a timeout cannot be negative")
    return seconds or None


class Parser(argparse.ArgumentParser):
    """argparse, its usage errors said as every other error ("mfl: ..."), then where help is, as kubectl says it;
    exit code 2."""

    def error(self, message: str) -> Any:
        root = "kubectl mfl" if self.prog.startswith("kubectl mfl") else "mfl"
        self.exit(2, f"{root}: {message}\nSee '{self.prog} --help' for usage.\n")


def build_parser(prog: str = "mfl") -> argparse.ArgumentParser:
    parser = Parser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cluster_options(parser, after_verb=False)
    parser.set_defaults(prog=prog)
    sub = parser.add_subparsers(dest="command", required=True)
    common = Parser(add_help=False)
    cluster_options(common, after_verb=True)

    def loop_command(name: str, handler: Any, help_: str, loop_nargs: str | None = None) -> argparse.ArgumentParser:
        command = sub.add_parser(name, help=help_, parents=[common])
        command.add_argument("loop", nargs=loop_nargs, help="the ModelFeedbackLoop's name")
        command.set_defaults(handler=handler, loop_command=True)
        return command

    get = loop_command("get", cmd_get, "list loops (or one): name, phase, version, canary, age", loop_nargs="?")
    get.add_argument("-A", "--all-namespaces", action="store_true", help="loops of every namespace")
    get.add_argument(
        "-o",
        "--output",
        type=output.output_type("wide", "name", "json", "yaml", "jsonpath", "custom-columns"),
        metavar="FORMAT",
        help="wide, name, json, yaml, jsonpath=TEMPLATE or custom-columns=SPEC (as kubectl)",
    )
    get.add_argument("-l", "--selector", metavar="SELECTOR", help="label selector, e.g. team=ml,tier!=test")
    get.add_argument("--field-selector", metavar="SELECTOR", help="field selector, e.g. metadata.name=churn")
    get.add_argument("--no-headers", action="store_true", help="no header line in the table formats")
    get.add_argument("-w", "--watch", action="store_true", help="then a line per change (Ctrl-C ends, exit 0)")
    get.add_argument("--watch-only", action="store_true", help="a line per change, without the loops first")
    status = loop_command("status", cmd_status, "phase, conditions, metrics, retraining and canary evidence")
    status.add_argument(
        "-o",
        "--output",
        type=output.output_type("json", "yaml", "jsonpath"),
        metavar="FORMAT",
        help="the raw status instead of the text: json, yaml or jsonpath=TEMPLATE",
    )
    status.add_argument("--json", action="store_true", help="the raw status (same as -o json)")
    status.add_argument("-w", "--watch", action="store_true", help="print again on every change (Ctrl-C ends)")
    for name, handler, help_ in (
        ("versions", cmd_versions, "versions and their outcomes"),
        ("report", cmd_report, "a version's error analysis"),
    ):
        command = loop_command(name, handler, help_)
        stores.add_store_options(command)
        command.add_argument("--offline", action="store_true", help="read only the store, not the cluster")
        command.add_argument(
            "-o",
            "--output",
            type=output.output_type("json", "yaml", "jsonpath"),
            metavar="FORMAT",
            help=("the report.json as it is" if name == "report" else "the versions as data")
            + ": json, yaml or jsonpath=TEMPLATE",
        )
        if name == "report":
            command.add_argument("--version", type=int, help="default: the serving version")
            command.add_argument("--plots", metavar="DIR", help="download the plots of a version in a bucket here")
    add_feedback_commands(sub, common)
    for verb, help_ in WRITE_VERBS.items():
        loop_command(verb, cmd_request, help_).set_defaults(verb=verb)
    conformance = sub.add_parser(
        "conformance",
        help="check a running server against the serving contract (health, metadata, infer with ids, "
        "feedback, metrics)",
        description="Checks that the server at URL meets the serving contract: V2 health and metadata, infer "
        "with one signed id per row (output tensor and header), a label accepted once and refused as a "
        "duplicate, the mfl_* metrics with mfl_feedback_total moved by exactly one. Sends one row and one "
        "label. Exits 1 when a check fails.",
    )
    conformance.add_argument("url", help="the server's base URL, e.g. http://127.0.0.1:8080")
    conformance.add_argument(
        "--model", help="the model's name (default: the only one the server lists, or the one /readyz names)"
    )
    conformance.add_argument("--timeout", default="10s", metavar="DURATION", help="per request, e.g. 10s, 500ms")
    conformance.add_argument("-o", "--output", choices=["json"], help="the checks as JSON")
    conformance.set_defaults(handler=cmd_conformance)
    version = sub.add_parser(
        "version",
        help="this client's version and the operator's (from its Deployment)",
        description="Prints this client's version and the operator's, as the cluster says it: the "
        "app.kubernetes.io/version label of the operator's Deployment, else its image's tag.",
    )
    cluster_options(version, after_verb=True)
    version.add_argument("--client", action="store_true", help="the client's version only (no cluster needed)")
    version.add_argument(
        "-o", "--output", type=output.output_type("json", "yaml"), metavar="FORMAT", help="json or yaml"
    )
    version.add_argument("--operator-namespace", default=OPERATOR_NAMESPACE, help=f"default: {OPERATOR_NAMESPACE}")
    version.add_argument("--operator-selector", default=OPERATOR_SELECTOR, help=f"default: {OPERATOR_SELECTOR}")
    version.set_defaults(handler=cmd_version)
    bench = sub.add_parser("bench", help="run every benchmark and print its table")
    bench.add_argument("--only", nargs="*", help=f"some of: {' '.join(BENCHMARKS)}")
    bench.add_argument("extra", nargs=argparse.REMAINDER, help="passed to each benchmark")
    bench.set_defaults(handler=cmd_bench)
    add_plugin_commands(sub)
    return parser


def add_feedback_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    feedback = sub.add_parser("feedback", help="labels by people: export predictions to label, import the labels")
    verbs = feedback.add_subparsers(dest="feedback_command", required=True, metavar="export|import")
    export = verbs.add_parser(
        "export",
        parents=[common],
        help="write unlabelled predictions, sampled for people to label",
        description="Writes a sample of the predictions served in the last --since that have no label yet: "
        "stratified by predicted class, the rows in the serving version's worst slices oversampled. Columns: id, "
        "ts, version, prediction, the features, and an empty label column to fill in for `feedback import`.",
    )
    export.add_argument("loop", help="the ModelFeedbackLoop's name")
    export.add_argument("-o", "--output-file", required=True, metavar="FILE", help="the file to write")
    export.add_argument("--since", type=since_type, default=7 * 86400.0, metavar="DURATION", help="e.g. 36h (7d)")
    export.add_argument("--size", type=positive_int, default=200, metavar="N", help="rows to write (200)")
    export.add_argument("--format", choices=("csv", "parquet"), default="csv", help="parquet needs pyarrow")
    export.add_argument(
        "--version", type=int, metavar="N", help="whose worst slices to oversample (default: the serving one)"
    )
    export.add_argument("--seed", type=int, help="the same sample again for the same logs")
    export.add_argument("--offline", action="store_true", help="read only the store, not the cluster")
    stores.add_store_options(export)
    stores.add_database_option(export)
    export.set_defaults(handler=cmd_feedback_export, loop_command=True)
    labels = verbs.add_parser(
        "import",
        parents=[common],
        help="send the labels of a file to the loop's server",
        description="Sends the labels filled in (rows with an empty label are skipped) to the loop's server, "
        "through the API server's service proxy or to --url, and prints per row: accepted, duplicate (recorded "
        "before) or refused with the server's reason. Exits 1 when a row was refused. Importing again is safe.",
    )
    labels.add_argument("loop", help="the ModelFeedbackLoop's name")
    labels.add_argument("file", help="a CSV or Parquet file with the columns id and label")
    labels.add_argument("--url", help="the server's base URL (default: the loop's Service through the API server)")
    labels.add_argument("--batch", type=positive_int, default=256, metavar="N", help="labels per request (256)")
    labels.add_argument(
        "--task",
        choices=("classification", "regression"),
        help="how to type the labels (default: the loop's model.task); with --url, no cluster is needed",
    )
    labels.set_defaults(handler=cmd_feedback_import, loop_command=True)


def since_type(text: str) -> float:
    from mfl_cli.export import parse_since

    try:
        return parse_since(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


def needs_cluster(args: argparse.Namespace) -> bool:
    """--offline reads only the store; an import to --url with its --task has nothing to ask the cluster."""
    if getattr(args, "offline", False):
        return False
    return not (getattr(args, "handler", None) is cmd_feedback_import and args.url and args.task)


def run(args: argparse.Namespace) -> int:
    """Loop commands get the cluster's adapter (none offline) and the namespace resolved."""
    if not getattr(args, "loop_command", False):
        return args.handler(args)
    loops = None
    if needs_cluster(args):
        target = kube.Target(args.kubeconfig, args.context, args.namespace, args.request_timeout)
        loops, args.namespace = kube.connect(target)
    return args.handler(args, loops)


def store_error_message(error: StoreError) -> str:
    """One line; a bucket unreachable from here is usually a cluster-internal endpoint: say how to reach it."""
    message = " ".join(str(error).split())
    if message.startswith("s3://") and "unreachable" in message:
        message += " (from outside the cluster: --s3-endpoint, e.g. through kubectl port-forward)"
    return message


def main(argv: list[str] | None = None) -> None:
    prog = program_name(sys.argv[0])
    args = build_parser(prog).parse_args(argv)
    sys.exit(execute(args, prog))


def execute(args: argparse.Namespace, prog: str = "mfl") -> int:
    """A parsed command run: whatever it prints made inert (the cluster's, a bucket's and a server's text
    are others'), a failure said in one line on stderr; the exit code."""
    try:
        with views.inert_output():
            return run(args)
    except KeyboardInterrupt:
        return 130  # Ctrl-C (outside a watch, which ends with 0): the shell's convention, no traceback
    except kube.UsageError as error:
        print(line(f"{prog}: {error}"), file=sys.stderr)
        return 2
    except kube.CliError as error:
        print(line(f"{prog}: {error}"), file=sys.stderr)
        return 1
    except StoreError as error:  # the store's message names it, the key and the reason (AccessDenied, ...)
        print(line(f"{prog}: {store_error_message(error)}"), file=sys.stderr)
        return 1
    except BrokenPipeError:  # `mfl get | head -1`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    main()
