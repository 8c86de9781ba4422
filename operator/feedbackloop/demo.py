"""`mfl demo`: the whole loop on this machine — drift, breach, retraining, canary, promotion — live.

It brings up the test bed (a real Kubernetes 1.20 control plane built once and cached, a pod runtime
that runs Pods as local processes in network namespaces, a real Prometheus), installs the CRD and runs
the operator, deploys a model for a synthetic concept-drift stream, drives traffic with delayed ground
truth, drifts the labels (abruptly, then gradually), and prints what the loop does. At the end it writes
a plot and a summary table. Ctrl-C tears everything down.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import datasets
from .timeutil import parse_time

NAMESPACE = "demo"
LOOP = "churn"
SELECT = 'model="{{model}}",namespace="{{namespace}}",version="{{version}}",track="stable"'


def loop_manifest(prometheus_url: str, storage: Path, fast: bool) -> dict[str, Any]:
    window = "20s"
    return {
        "apiVersion": "feedbackloop.dev/v1alpha1", "kind": "ModelFeedbackLoop",
        "metadata": {"name": LOOP, "namespace": NAMESPACE},
        "spec": {
            "model": {"name": LOOP, "serving": {"replicas": 2}, "storage": {"hostPath": {"path": str(storage)}}},
            "monitoring": {"prometheus": {"url": prometheus_url}, "interval": "2s", "metrics": [{
                "name": "accuracy", "min": 0.8, "for": "6s", "minSamples": 30,
                "query": f"sum by (model, namespace, version) (increase(mfl_feedback_correct_total{{{SELECT}}}[{window}])) / "
                         f"sum by (model, namespace, version) (increase(mfl_feedback_total{{{SELECT}}}[{window}]))",
                "samplesQuery": f"sum by (model, namespace, version) (increase(mfl_feedback_total{{{SELECT}}}[{window}]))"}]},
            "retraining": {"features": datasets.feature_names(), "target": "label", "cooldown": "20s",
                           "maxRetrainsPerDay": 10, "minRows": 100, "holdoutFraction": 0.3,
                           # A short window and heavy weight on fresh labels: after a drift the loop
                           # adapts once about a window of new-concept labels exists.
                           "dataWindow": "45s", "recentWeight": 20},
            "rollout": {"steps": [{"weight": 30, "pause": "8s" if fast else "12s"},
                                  {"weight": 50, "pause": "8s" if fast else "12s"}],
                        "analysis": {"interval": "2s", "minSamples": 150, "maxDegradation": 0.03,
                                     "maxDuration": "5m", "latency": {"enabled": False}}},
        },
    }


@dataclass
class Timeline:
    """What the demo saw, second by second, for the live view, the plot and the summary."""

    start: float = field(default_factory=time.time)
    samples: list[tuple[float, float | None, str, int | None]] = field(default_factory=list)
    marks: list[tuple[float, str]] = field(default_factory=list)
    client: list[tuple[float, float]] = field(default_factory=list)

    def t(self, at: float | None = None) -> float:
        return (at or time.time()) - self.start

    def mark(self, label: str) -> None:
        self.marks.append((self.t(), label))


class Demo:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.workdir = Path(args.workdir or tempfile.mkdtemp(prefix="mfl-demo-"))
        self.timeline = Timeline()
        self.components: list[Any] = []
        self.last_line = ""
        self.seen_events: set[str] = set()

    # --- set-up ---------------------------------------------------------------------------------
    def say(self, text: str) -> None:
        print(f"[{self.timeline.t():6.1f}s] {text}", flush=True)

    def bring_up(self) -> None:
        from .localdev.controlplane import ControlPlane, ensure_binaries
        from .localdev.operatorproc import OperatorProcess, install_crd
        from .localdev.podruntime import PodRuntimeProcess
        from .localdev.prometheus import Prometheus
        if os.geteuid() != 0:
            raise SystemExit("mfl demo needs root: the pod runtime makes network namespaces for the Pods")
        self.say(f"work folder {self.workdir}")
        self.say("control plane binaries (built from Debian's kubernetes source once, ~5 min, then cached)")
        ensure_binaries(lambda line: print(f"           build: {line}", flush=True))
        self.cp = self._start(ControlPlane(self.workdir / "controlplane"), "Kubernetes control plane")
        self.prom = self._start(Prometheus(self.workdir / "prometheus"), "Prometheus")
        self.runtime = self._start(PodRuntimeProcess(self.cp.kubeconfig, self.workdir / "podruntime"),
                                   "pod runtime (the kubelet's stand-in)")
        self.prom.add_http_sd(self.runtime.sd_url)
        install_crd(self.cp)
        self.operator = self._start(OperatorProcess(self.cp.kubeconfig, self.workdir / "operator",
                                                    env={"MFL_STATUS_REFRESH_SECONDS": "3",
                                                         "MFL_ACTIVE_RECONCILE_SECONDS": "1"}), "operator")
        self.cp.kubectl("create", "namespace", NAMESPACE)
        self.cp.wait_for_service_account(NAMESPACE)

    def _start(self, component: Any, name: str) -> Any:
        started = time.monotonic()
        (component.workdir if hasattr(component, "workdir") else self.workdir).mkdir(parents=True, exist_ok=True)
        component.start()
        self.components.append(component)
        self.say(f"{name} up in {time.monotonic() - started:.1f}s")
        return component

    def tear_down(self) -> None:
        for component in reversed(self.components):
            try:
                component.stop()
            except Exception as error:  # keep tearing down the rest
                print(f"  could not stop {type(component).__name__}: {error}", file=sys.stderr)
        self.components.clear()

    # --- the story ------------------------------------------------------------------------------
    def run(self) -> None:
        from .localdev.traffic import TrafficGenerator, service_endpoints
        storage = self.workdir / "artifacts"
        datasets.write_base_csv(storage / LOOP / "data" / "base.csv", 3000, seed=1)
        self.say("base data: 3,000 rows of concept 0 (rotating-hyperplane stream, 10 features)")
        self.cp.kubectl("apply", "-f", "-", input=yaml.safe_dump(loop_manifest(self.prom.url, storage, self.args.fast)))
        self.say(f"applied ModelFeedbackLoop {NAMESPACE}/{LOOP}: no version yet, so the operator trains version 1")
        self.wait_for(lambda s: s.get("currentVersion") == 1 and self.ready(s), 300, "version 1 serving")
        self.traffic = TrafficGenerator(service_endpoints(self.cp.kubectl, NAMESPACE, LOOP), rate=80, batch=2,
                                        label_delay=1.0).start()
        self.say("traffic: 80 predictions/s (40 requests/s) through the Service's endpoints, ground truth 1 s later")
        try:
            self.watch(25 if self.args.fast else 40, "steady state")
            self.traffic.concept = 1
            self.timeline.mark("abrupt drift")
            self.say("DRIFT: the labels switch abruptly to concept 1")
            self.wait_for(lambda s: self.adapted(s, 1), 480, "the loop to retrain, canary and promote a new version")
            if not self.args.fast:
                self.watch(30, "after the first promotion")
                self.traffic.next_concept = 2
                self.timeline.mark("gradual drift starts")
                self.say("DRIFT: concept 2 creeps in gradually over 60 s")
                version = self.status().get("currentVersion") or 0
                self.ramp_until(lambda s: self.adapted(s, version), ramp_seconds=60, timeout=600)
            self.watch(20, "after promotion")
        finally:
            self.traffic.stop()

    def adapted(self, status: dict[str, Any], old_version: int) -> bool:
        """A newer version serves and its own accuracy is healthy again."""
        healthy = (status.get("metrics") or [{}])[0].get("state") == "Healthy"
        return (status.get("currentVersion") or 0) > old_version and status.get("phase") == "Monitoring" and healthy

    def ready(self, status: dict[str, Any]) -> bool:
        return any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions", []))

    def status(self) -> dict[str, Any]:
        out = self.cp.kubectl("get", "mfl", LOOP, "-n", NAMESPACE, "-o", "json", check=False)
        return (json.loads(out.stdout).get("status") or {}) if out.returncode == 0 else {}

    def wait_for(self, predicate, timeout: float, what: str) -> dict[str, Any]:
        self.say(f"waiting for {what} ...")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.observe()
            if predicate(status):
                return status
            time.sleep(1)
        raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}; see {self.workdir}")

    def watch(self, seconds: float, what: str) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.observe()
            time.sleep(1)

    def ramp_until(self, predicate, ramp_seconds: float, timeout: float) -> None:
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            self.traffic.mix = min(1.0, (time.monotonic() - started) / ramp_seconds)
            if predicate(self.observe()):
                self.traffic.concept, self.traffic.next_concept, self.traffic.mix = 2, None, 0.0
                return
            time.sleep(1)
        raise TimeoutError("timed out waiting for the loop to adapt to the gradual drift")

    # --- the live view ----------------------------------------------------------------------------
    def observe(self) -> dict[str, Any]:
        status = self.status()
        metric = (status.get("metrics") or [{}])[0].get("value")
        self.timeline.samples.append((self.timeline.t(), metric, status.get("phase", "?"), status.get("currentVersion")))
        traffic = getattr(self, "traffic", None)
        if traffic is not None:
            self.timeline.client.append((self.timeline.t(), traffic.stats.accuracy()))
        line = self.live_line(status, metric)
        if line != self.last_line:
            self.say(line)
            self.last_line = line
        self.new_events()
        return status

    def live_line(self, status: dict[str, Any], metric: float | None) -> str:
        value = "  n/a" if metric is None else f"{metric:5.3f}"
        line = f"phase {status.get('phase', '?'):<10} version {status.get('currentVersion') or '-'}  accuracy {value}"
        if status.get("retraining"):
            line += f"  | training v{status['retraining']['version']} ({status['retraining']['trigger']})"
        rollout = status.get("rollout")
        if rollout:
            line += (f"  | canary v{rollout['version']} step {rollout['step'] + 1} at {rollout['weight']}%, "
                     f"analysis {rollout.get('analysisPhase')}")
        return line

    def new_events(self) -> None:
        out = self.cp.kubectl("get", "events", "-n", NAMESPACE, "-o", "json",
                              "--field-selector=involvedObject.kind=ModelFeedbackLoop", check=False)
        if out.returncode != 0:
            return
        for event in sorted(json.loads(out.stdout)["items"], key=lambda e: e.get("firstTimestamp") or ""):
            uid = event["metadata"]["uid"]
            if uid in self.seen_events:
                continue
            self.seen_events.add(uid)
            self.timeline.marks.append((self.timeline.t(parse_time(event.get("firstTimestamp")) or time.time()),
                                        event["reason"]))
            self.say(f"  event {event['type']:<7} {event['reason']}: {event['message'][:150]}")

    # --- results ----------------------------------------------------------------------------------
    def finish(self) -> None:
        status = self.status()
        plot = self.workdir / "demo.png"
        write_plot(self.timeline, plot)
        print("\nversions:")
        for record in status.get("history", []):
            print(f"  v{record['version']:<3} {record.get('trigger', ''):<9} {record.get('outcome', ''):<12} "
                  f"{record.get('at', '')}  {record.get('message', '')[:90]}")
        print("\ntimeline (seconds since the demo started):")
        for at, label in sorted(self.timeline.marks):
            print(f"  {at:7.1f}s  {label}")
        print(f"\nplot: {plot}\nartifacts, logs and kubeconfig: {self.workdir}")


def write_plot(timeline: Timeline, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(11, 4.5))
    points = [(t, v) for t, v, _, _ in timeline.samples if v is not None]
    if points:
        ax.plot(*zip(*points), label="stable accuracy (loop status, 20 s window)", color="tab:blue")
    colors = {"drift": "tab:red", "BreachStarted": "tab:orange", "RetrainingStarted": "tab:purple",
              "CanaryStarted": "tab:cyan", "Promoted": "tab:green", "RolledBack": "black"}
    seen: set[str] = set()
    for at, label in sorted(timeline.marks):
        key = "drift" if "drift" in label else label
        if key not in colors:
            continue
        ax.axvline(at, color=colors[key], linestyle="--", alpha=0.8, label=None if key in seen else label)
        seen.add(key)
    ax.set_xlabel("seconds since the demo started")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0.3, 1.0)
    ax.set_title("model-feedback-loop demo: drift -> breach -> retraining -> canary -> promotion")
    ax.legend(loc="lower left", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_demo(args: argparse.Namespace) -> int:
    demo = Demo(args)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        demo.bring_up()
        demo.run()
        demo.finish()
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted: tearing down", flush=True)
        return 130
    finally:
        if not args.keep:
            demo.tear_down()  # the work folder stays: it holds the plot, the logs and the artifacts
