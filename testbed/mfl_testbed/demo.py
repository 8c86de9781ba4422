"""`mfl demo`: the whole loop on this machine — drift, breach, retraining, canary, promotion — live.

It brings up the test bed (a real one-node Kubernetes 1.20 cluster: control plane, kubelet,
containerd, kube-proxy, built once and cached; a real Prometheus), builds the project's images, installs
the operator in-cluster with `kubectl apply -k manifests/`, deploys a model for a synthetic concept-drift
stream, drives traffic with delayed ground truth, drifts the labels (abruptly, then gradually), and
prints what the loop does. At the end it writes a plot and a summary table. Ctrl-C tears everything
down; `--keep` leaves the cluster running.

`Demo` is the story, told over an `Environment` with two implementations: `LocalTestbed` (this machine)
and `ExistingCluster` (`mfl demo --kubeconfig`: your cluster, your registry, your Prometheus).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import yaml

from feedbackloop.core import resources
from feedbackloop.core.timeutil import parse_time

from . import datasets

NAMESPACE = "demo"
LOOP = "churn"
IMAGE_TAG = "0.1.0"
MANIFESTS = Path(__file__).resolve().parents[2] / "manifests"
BY_VERSION = "sum by (model, namespace, version)"
SELECT = 'model="{{model}}",namespace="{{namespace}}",version="{{version}}",track="stable"'
ACCURACY_MIN = 0.8  # the loop's accuracy rule (`min`), drawn on the plot
GRADUAL_DRIFT_SECONDS = 60  # the second drift mixes the new concept in over this long


def loop_manifest(
    prometheus_url: str,
    storage: dict[str, Any],
    fast: bool,
    namespace: str = NAMESPACE,
    registry: str | None = None,
    images: dict[str, str] | None = None,
) -> dict[str, Any]:
    window = "20s"
    images = images or {"server": image(registry, "mfl-server"), "trainer": image(registry, "mfl-trainer")}
    return {
        "apiVersion": "feedbackloop.dev/v1alpha1",
        "kind": "ModelFeedbackLoop",
        "metadata": {"name": LOOP, "namespace": namespace},
        "spec": {
            "model": {"name": LOOP, "serving": {"replicas": 2, "image": images["server"]}, "storage": storage},
            "monitoring": {
                "prometheus": {"url": prometheus_url},
                "interval": "2s",
                "metrics": [
                    {
                        "name": "accuracy",
                        "min": ACCURACY_MIN,
                        "for": "6s",
                        "minSamples": 30,
                        "query": f"{BY_VERSION} (increase(mfl_feedback_correct_total{{{SELECT}}}[{window}])) / "
                        f"{BY_VERSION} (increase(mfl_feedback_total{{{SELECT}}}[{window}]))",
                        "samplesQuery": f"{BY_VERSION} (increase(mfl_feedback_total{{{SELECT}}}[{window}]))",
                    }
                ],
            },
            "retraining": {
                "trainer": {"image": images["trainer"]},
                "features": datasets.feature_names(),
                "target": "label",
                "cooldown": "20s",
                "maxRetrainsPerDay": 10,
                "minRows": 100,
                "holdoutFraction": 0.3,
                # A short window and heavy weight on fresh labels: after a drift the loop
                # adapts once about a window of new-concept labels exists.
                "dataWindow": "45s",
                "recentWeight": 20,
            },
            "rollout": {
                "steps": [
                    {"weight": 30, "pause": "8s" if fast else "12s"},
                    {"weight": 50, "pause": "8s" if fast else "12s"},
                ],
                "analysis": {
                    "interval": "2s",
                    "minSamples": 150,
                    "maxDegradation": 0.03,
                    "maxDuration": "5m",
                    "latency": {"enabled": False},
                },
            },
        },
    }


def image(registry: str | None, name: str) -> str:
    """The project's image, from the user's registry when one is given (`mfl demo --kubeconfig`)."""
    return f"{registry.rstrip('/') if registry else 'ghcr.io/feedbackloop'}/{name}:{IMAGE_TAG}"


@dataclass
class Timeline:
    """What the demo saw, second by second, for the live view, the plot and the summary."""

    start: float = field(default_factory=time.time)
    samples: list[tuple[float, float | None, str, int | None]] = field(default_factory=list)
    marks: list[tuple[float, str]] = field(default_factory=list)
    client: list[tuple[float, float]] = field(default_factory=list)
    drifts: list[tuple[float, float, str]] = field(default_factory=list)  # (start, seconds, kind)

    def t(self, at: float | None = None) -> float:
        return (at or time.time()) - self.start

    def mark(self, label: str) -> None:
        self.marks.append((self.t(), label))

    def drift(self, kind: str, seconds: float = 0.0) -> None:
        """A drift starts now: `abrupt` (at once) or `gradual` (the new concept mixes in over `seconds`)."""
        self.drifts.append((self.t(), seconds, kind))
        self.mark("abrupt drift" if kind == "abrupt" else f"{kind} drift starts")

    def save(self, path: Path) -> None:
        """As JSON, so that the plot can be redrawn without a new run (`python -m mfl_testbed.demo --replot`)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, path: Path) -> Timeline:
        data = json.loads(Path(path).read_text())
        rows = {key: [tuple(row) for row in data.get(key, [])] for key in ("samples", "marks", "client", "drifts")}
        return cls(start=data["start"], **rows)


class Environment(Protocol):
    """Where the story runs: the local test bed, or an existing cluster (`--kubeconfig`)."""

    namespace: str
    workdir: Path

    def bring_up(self, say: Say) -> None: ...
    def kubectl(self, *args: str, check: bool = True, input: str | None = None) -> Any: ...  # noqa: A002
    def deploy_model(self, say: Say, fast: bool) -> None: ...
    def start_traffic(self, say: Say) -> None: ...
    def set_concept(self, concept: int) -> None: ...
    def drift_gradually(self, concept: int, seconds: float) -> None: ...
    def client_accuracy(self) -> float | None: ...
    def stop_traffic(self) -> None: ...
    def tear_down(self, keep: bool) -> None: ...


Say = Callable[[str], None]


class LocalTestbed:
    """The test bed on this machine: a one-node cluster, Prometheus, the images built from this tree."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.namespace = NAMESPACE
        self.components: list[Any] = []
        self.traffic: Any = None

    def bring_up(self, say: Say) -> None:
        from .cluster import Cluster
        from .controlplane import ensure_binaries
        from .images import ensure_images, image_archives

        if os.geteuid() != 0:
            raise SystemExit("mfl demo needs root: it runs a real kubelet, containerd and a bridge on this machine")
        say(f"work folder {self.workdir}")
        say("Kubernetes 1.20 binaries: built from Debian's source once (~7 min cold), then cached")
        ensure_binaries(lambda line: print(f"           build: {line}", flush=True))
        say("images: operator, server, trainer from this tree's Dockerfile (~3 min cold, cached by content)")
        self.refs = ensure_images(lambda line: print(f"           images: {line}", flush=True))
        self.cluster = Cluster.create(image_archives())
        self.cluster.start(say)
        self.components.append(self.cluster)
        # Status values refresh every 3 s instead of 5 min, so that the live view and the plot follow them.
        self.cluster.install_operator(
            MANIFESTS,
            {"operator": self.refs["operator"]},
            env={"MFL_STATUS_REFRESH_SECONDS": "3", "MFL_ACTIVE_RECONCILE_SECONDS": "1"},
        )
        say("operator installed in-cluster: kubectl apply -k manifests/ (its image from this tree)")
        self.kubectl("create", "namespace", NAMESPACE)
        self.cluster.plane.wait_for_service_account(NAMESPACE)
        self.storage = self.cluster.artifact_volume(NAMESPACE, "churn-artifacts")

    def kubectl(self, *args: str, check: bool = True, input: str | None = None) -> Any:  # noqa: A002
        return self.cluster.kubectl(*args, check=check, input=input)

    def deploy_model(self, say: Say, fast: bool) -> None:
        from .cluster import give_to_images

        datasets.write_base_csv(self.storage / LOOP / "data" / "base.csv", 3000, seed=1)
        give_to_images(self.storage)
        say(
            "base data: 3,000 rows of concept 0 (rotating-hyperplane stream, 10 features) in the "
            "PersistentVolumeClaim churn-artifacts"
        )
        storage = {"persistentVolumeClaim": {"claimName": "churn-artifacts"}}
        images = {"server": self.refs["server"], "trainer": self.refs["trainer"]}
        manifest = loop_manifest(self.cluster.prometheus.url, storage, fast, images=images)
        self.kubectl("apply", "-f", "-", input=yaml.safe_dump(manifest))
        say(f"applied ModelFeedbackLoop {NAMESPACE}/{LOOP}: no version yet, so the operator trains version 1")

    def start_traffic(self, say: Say) -> None:
        from .traffic import TrafficGenerator, service_endpoints

        self.traffic = TrafficGenerator(
            service_endpoints(self.kubectl, NAMESPACE, LOOP), rate=80, batch=2, label_delay=1.0
        ).start()
        say("traffic: 80 predictions/s (40 requests/s) through the Service's endpoints, ground truth 1 s later")

    def set_concept(self, concept: int) -> None:
        self.traffic.concept = concept

    def drift_gradually(self, concept: int, seconds: float) -> None:
        self.traffic.drift_gradually(concept, seconds)

    def client_accuracy(self) -> float | None:
        return None if self.traffic is None else self.traffic.stats.accuracy()

    def stop_traffic(self) -> None:
        if self.traffic is not None:
            self.traffic.stop()

    def tear_down(self, keep: bool) -> None:
        if keep and getattr(self, "cluster", None) is not None:
            print("\n" + self.cluster.keep(), flush=True)
            return
        for component in reversed(self.components):
            try:
                component.stop()
            except Exception as error:  # keep tearing down the rest
                print(f"  could not stop {type(component).__name__}: {error}", file=sys.stderr)
        self.components.clear()


class Demo:
    """The story: drift, breach, retraining, canary, promotion, told live over an Environment."""

    def __init__(self, env: Environment, fast: bool) -> None:
        self.env = env
        self.fast = fast
        self.workdir = env.workdir
        self.timeline = Timeline()
        self.last_line = ""
        self.seen_events: set[str] = set()

    def say(self, text: str) -> None:
        print(f"[{self.timeline.t():6.1f}s] {text}", flush=True)

    def kubectl(self, *args: str, check: bool = True, input: str | None = None) -> Any:  # noqa: A002
        return self.env.kubectl(*args, check=check, input=input)

    # --- the story ------------------------------------------------------------------------------
    def run(self) -> None:
        self.say("the story starts: the clock restarts at 0 (the plot's time axis)")
        self.timeline = Timeline()  # bring-up (cold builds included) is not part of the story
        self.env.deploy_model(self.say, self.fast)
        self.wait_for(lambda s: s.get("currentVersion") == 1 and self.ready(s), 300, "version 1 serving")
        self.env.start_traffic(self.say)
        try:
            self.watch(25 if self.fast else 40, "steady state")
            self.env.set_concept(1)
            self.timeline.drift("abrupt")
            self.say("DRIFT: the labels switch abruptly to concept 1")
            self.wait_for(lambda s: self.adapted(s, 1), 480, "the loop to retrain, canary and promote a new version")
            if not self.fast:
                self.watch(30, "after the first promotion")
                version = self.status().get("currentVersion") or 0
                self.env.drift_gradually(2, GRADUAL_DRIFT_SECONDS)
                self.timeline.drift("gradual", GRADUAL_DRIFT_SECONDS)
                self.say(f"DRIFT: concept 2 creeps in gradually over {GRADUAL_DRIFT_SECONDS} s")
                self.wait_for(lambda s: self.adapted(s, version), 600, "the loop to adapt to the gradual drift")
            self.watch(20, "after promotion")
        finally:
            self.env.stop_traffic()

    def adapted(self, status: dict[str, Any], old_version: int) -> bool:
        """A newer version serves and its own accuracy is healthy again."""
        healthy = (status.get("metrics") or [{}])[0].get("state") == "Healthy"
        return (status.get("currentVersion") or 0) > old_version and status.get("phase") == "Monitoring" and healthy

    def ready(self, status: dict[str, Any]) -> bool:
        return any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions", []))

    def status(self) -> dict[str, Any]:
        out = self.kubectl("get", "mfl", LOOP, "-n", self.env.namespace, "-o", "json", check=False)
        return (json.loads(out.stdout).get("status") or {}) if out.returncode == 0 else {}

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float, what: str) -> dict[str, Any]:
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

    # --- the live view ----------------------------------------------------------------------------
    def observe(self) -> dict[str, Any]:
        status = self.status()
        metric = (status.get("metrics") or [{}])[0].get("value")
        self.timeline.samples.append(
            (self.timeline.t(), metric, status.get("phase", "?"), status.get("currentVersion"))
        )
        accuracy = self.env.client_accuracy()
        if accuracy is not None:
            self.timeline.client.append((self.timeline.t(), accuracy))
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
            line += (
                f"  | canary v{rollout['version']} step {rollout['step'] + 1} at {rollout['weight']}%, "
                f"analysis {rollout.get('analysisPhase')}"
            )
        return line

    def new_events(self) -> None:
        out = self.kubectl(
            "get",
            "events",
            "-n",
            self.env.namespace,
            "-o",
            "json",
            "--field-selector=involvedObject.kind=ModelFeedbackLoop",
            check=False,
        )
        if out.returncode != 0:
            return
        for event in sorted(json.loads(out.stdout)["items"], key=lambda e: e.get("firstTimestamp") or ""):
            uid = event["metadata"]["uid"]
            if uid in self.seen_events:
                continue
            self.seen_events.add(uid)
            self.timeline.marks.append(
                (self.timeline.t(parse_time(event.get("firstTimestamp")) or time.time()), event["reason"])
            )
            self.say(f"  event {event['type']:<7} {event['reason']}: {event['message'][:150]}")
            if event["reason"] in {"RetrainingStarted", "CanaryStarted"}:
                self.show_pods()

    def show_pods(self) -> None:
        """What `kubectl get pods -A` shows now: the operator and the loop's Pods, all from the project's images."""
        out = self.kubectl(
            "get",
            "pods",
            "--all-namespaces",
            "-o",
            "custom-columns=NAMESPACE:.metadata.namespace,"
            "POD:.metadata.name,PHASE:.status.phase,IMAGE:.spec.containers[0].image",
            check=False,
        )
        for line in out.stdout.splitlines():
            print(f"           {line}", flush=True)

    # --- results ----------------------------------------------------------------------------------
    def finish(self) -> None:
        status = self.status()
        plot = self.workdir / "demo.png"
        saved = self.workdir / "demo-timeline.json"
        self.timeline.save(saved)
        write_plot(self.timeline, plot)
        print("\nversions:")
        for record in status.get("history", []):
            print(
                f"  v{record['version']:<3} {record.get('trigger', ''):<9} {record.get('outcome', ''):<12} "
                f"{record.get('at', '')}  {record.get('message', '')[:90]}"
            )
        print("\ntimeline (seconds since the demo started):")
        for at, label in sorted(self.timeline.marks):
            print(f"  {at:7.1f}s  {label}")
        print(f"\nplot: {plot} (redraw it: python -m mfl_testbed.demo --replot {saved} {plot})")


class ExistingCluster:
    """`mfl demo --kubeconfig`: the same story on an existing cluster, with the images from your registry.

    It installs the operator (`manifests/`), a namespace with a PersistentVolumeClaim for the artifacts,
    seeds the base data with a Job, and runs the traffic generator as a Deployment that reaches the
    model through the Service's DNS name; the drifts are `kubectl set env` on that Deployment. Your
    Prometheus must scrape Pods annotated `prometheus.io/scrape` and label them with `namespace`.
    """

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.namespace = args.namespace
        self.base = ["kubectl", f"--kubeconfig={args.kubeconfig}"]

    def kubectl(self, *args: str, check: bool = True, input: str | None = None) -> Any:  # noqa: A002
        result = subprocess.run([*self.base, *args], input=input, capture_output=True, text=True, timeout=300)
        if check and result.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
        return result

    def bring_up(self, say: Say) -> None:
        registry = self.args.registry
        rendered = self.kubectl("kustomize", str(MANIFESTS)).stdout.replace(
            "ghcr.io/feedbackloop", registry.rstrip("/")
        )
        self.kubectl("apply", "-f", "-", input=rendered)
        say(f"installed the CRD and the operator (images from {registry})")
        self.kubectl(
            "rollout", "status", "deployment/feedbackloop-operator", "-n", "feedbackloop-system", "--timeout=300s"
        )
        self.kubectl("create", "namespace", self.namespace, check=False)
        self.kubectl("apply", "-n", self.namespace, "-f", "-", input=yaml.safe_dump_all(self.workload()))
        self.kubectl("wait", "-n", self.namespace, "--for=condition=complete", "job/mfl-demo-seed", "--timeout=300s")
        say("seeded 3,000 rows of base data into the artifacts volume")

    def workload(self) -> list[dict[str, Any]]:
        volume = {"name": "artifacts", "persistentVolumeClaim": {"claimName": "mfl-demo-artifacts"}}
        security = resources.restricted_pod_security()
        pvc = {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "mfl-demo-artifacts"},
            "spec": {
                "accessModes": [self.args.access_mode],
                "resources": {"requests": {"storage": "1Gi"}},
                **({"storageClassName": self.args.storage_class} if self.args.storage_class else {}),
            },
        }
        seed = {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": "mfl-demo-seed"},
            "spec": {
                "backoffLimit": 2,
                "template": {
                    "spec": {
                        "restartPolicy": "Never",
                        "securityContext": security,
                        "volumes": [volume, DEMO_CODE_VOLUME],
                        "containers": [
                            {
                                "name": "seed",
                                "env": [DEMO_CODE_PATH],
                                "image": image(self.args.registry, "mfl-trainer"),
                                "command": [
                                    "python",
                                    "-m",
                                    "mfl_testbed.traffic",
                                    "seed",
                                    f"/var/lib/mfl/artifacts/{LOOP}/data/base.csv",
                                ],
                                "securityContext": resources.restricted_container_security(),
                                "volumeMounts": [
                                    {"name": "artifacts", "mountPath": "/var/lib/mfl/artifacts"},
                                    DEMO_CODE_MOUNT,
                                ],
                            }
                        ],
                    }
                },
            },
        }
        return [pvc, demo_code_configmap(), seed]

    def deploy_model(self, say: Say, fast: bool) -> None:
        storage = {"persistentVolumeClaim": {"claimName": "mfl-demo-artifacts"}}
        manifest = loop_manifest(self.args.prometheus_url, storage, fast, self.namespace, self.args.registry)
        self.kubectl("apply", "-f", "-", input=yaml.safe_dump(manifest))
        say(f"applied ModelFeedbackLoop {self.namespace}/{LOOP}: the operator trains version 1")

    def start_traffic(self, say: Say) -> None:
        labels = {"app.kubernetes.io/name": "mfl-demo-traffic"}
        deployment = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "mfl-demo-traffic"},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "securityContext": resources.restricted_pod_security(),
                        "volumes": [DEMO_CODE_VOLUME],
                        "containers": [
                            {
                                "name": "traffic",
                                "volumeMounts": [DEMO_CODE_MOUNT],
                                "image": image(self.args.registry, "mfl-trainer"),
                                "command": [
                                    "python",
                                    "-m",
                                    "mfl_testbed.traffic",
                                    "run",
                                    f"--url=http://{LOOP}.{self.namespace}.svc:80",
                                ],
                                "securityContext": resources.restricted_container_security(),
                                "env": [{"name": "MFL_CONCEPT", "value": "0"}, DEMO_CODE_PATH],
                            }
                        ],
                    },
                },
            },
        }
        self.kubectl("apply", "-n", self.namespace, "-f", "-", input=yaml.safe_dump(deployment))
        say("traffic: a Deployment sends 80 predictions/s to the Service, ground truth 1 s later")

    def set_concept(self, concept: int) -> None:
        self.kubectl("set", "env", "-n", self.namespace, "deployment/mfl-demo-traffic", f"MFL_CONCEPT={concept}")

    def drift_gradually(self, concept: int, seconds: float) -> None:
        self.kubectl(
            "set",
            "env",
            "-n",
            self.namespace,
            "deployment/mfl-demo-traffic",
            f"MFL_NEXT_CONCEPT={concept}",
            f"MFL_RAMP_SECONDS={seconds:.0f}",
        )

    def client_accuracy(self) -> float | None:
        return None  # the traffic runs in the cluster; its client-side accuracy is not collected

    def stop_traffic(self) -> None:
        self.kubectl("delete", "deployment", "mfl-demo-traffic", "-n", self.namespace, check=False)

    def tear_down(self, keep: bool) -> None:
        if keep:
            return
        self.kubectl("delete", "namespace", self.namespace, "--wait=false", check=False)
        print(f"deleted namespace {self.namespace}; the operator stays (kubectl delete -k manifests/ removes it)")


# The existing-cluster demo runs its traffic generator and seeding in the trainer image (numpy and the
# standard library are all they need), with the code from a ConfigMap: no image ships the test bed.
DEMO_CODE_MODULES = ("traffic.py", "datasets.py", "netutil.py")
DEMO_CODE_VOLUME = {"name": "demo-code", "configMap": {"name": "mfl-demo-code"}}
DEMO_CODE_MOUNT = {"name": "demo-code", "mountPath": "/opt/mfl-demo/mfl_testbed", "readOnly": True}
DEMO_CODE_PATH = {"name": "PYTHONPATH", "value": "/opt/mfl-demo"}


def demo_code_configmap() -> dict[str, Any]:
    here = Path(__file__).resolve().parent
    files = {name: (here / name).read_text() for name in DEMO_CODE_MODULES}
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "mfl-demo-code"},
        "data": {"__init__.py": "", **files},
    }


# The loop's events on the plot, in the story's order: (reason, row label, colour, marker).
PLOT_EVENTS = (
    ("BreachStarted", "breach started", "tab:orange", "o"),
    ("RetrainingStarted", "retraining started", "tab:purple", "s"),
    ("RetrainingFailed", "retraining failed", "tab:brown", "X"),
    ("CandidateRejected", "gate rejected", "tab:gray", "x"),
    ("CanaryStarted", "canary started", "tab:cyan", "D"),
    ("Promoted", "promoted", "tab:green", "^"),
    ("RolledBack", "rolled back", "black", "v"),
)
DRIFT_COLOR = "tab:red"


def write_plot(timeline: Timeline, path: Path) -> None:
    """Accuracy over time under a strip with one labelled row per kind of event, so that events a second
    apart (a breach and the retraining it starts) stay apart; each drift drawn and named by its kind (abrupt:
    a line, gradual: a span over its ramp); the legend right of the axes, off the data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    events = [spec for spec in PLOT_EVENTS if any(label == spec[0] for _, label in timeline.marks)]
    rows = ["drift", *(name for _, name, _, _ in events)]
    fig, (strip, ax) = plt.subplots(
        2,
        1,
        sharex=True,
        figsize=(13, 3.6 + 0.28 * len(rows)),
        height_ratios=[0.32 * len(rows), 3.2],
        layout="constrained",
    )
    height = {name: len(rows) - 1 - i for i, name in enumerate(rows)}  # the first row on top
    handles: list[Any] = []

    points = [(t, v) for t, v, _, _ in timeline.samples if v is not None]
    if points:
        (line,) = ax.plot(*zip(*points), color="tab:blue", lw=1.8, zorder=3)
        line.set_label("stable accuracy (loop status, 20 s window)")
        handles.append(line)
    handles.append(ax.axhline(ACCURACY_MIN, color="tab:blue", ls=":", lw=1, label=f"accuracy rule: min {ACCURACY_MIN}"))

    kinds: set[str] = set()
    for start, seconds, kind in sorted(timeline.drifts):
        y = height["drift"]
        if kind == "gradual" and seconds > 0:
            span = ax.axvspan(start, start + seconds, color=DRIFT_COLOR, alpha=0.15, lw=0, gid="gradual drift")
            strip.broken_barh([(start, seconds)], (y - 0.3, 0.6), color=DRIFT_COLOR, alpha=0.5, gid="gradual drift")
            strip.text(start + seconds + 1, y, "gradual", va="center", fontsize=8, color=DRIFT_COLOR)
            label = f"gradual drift: the new concept mixes in over {seconds:.0f} s"
            artist: Any = span
        else:
            artist = ax.axvline(start, color=DRIFT_COLOR, lw=2, gid=f"{kind} drift")
            strip.plot([start], [y], marker="|", ms=14, mew=2.5, color=DRIFT_COLOR, gid=f"{kind} drift")
            strip.text(start + 1.5, y, kind, va="center", fontsize=8, color=DRIFT_COLOR)
            label = f"{kind} drift: the labels switch at once" if kind == "abrupt" else f"{kind} drift"
        if kind not in kinds:
            artist.set_label(label)
            handles.append(artist)
            kinds.add(kind)

    for reason, name, color, marker in events:
        times = sorted(at for at, label in timeline.marks if label == reason)
        for at in times:
            ax.axvline(at, color=color, ls="--", lw=1, alpha=0.7, zorder=2, gid=reason)
        strip.scatter(times, [height[name]] * len(times), marker=marker, color=color, s=40, zorder=3, gid=reason)
        handles.append(Line2D([], [], color=color, ls="--", marker=marker, label=name))

    strip.set_yticks([height[name] for name in rows], rows, fontsize=8)
    strip.set_ylim(-0.7, len(rows) - 0.3)
    strip.grid(axis="x", alpha=0.3)
    strip.tick_params(axis="x", labelbottom=False)
    strip.set_title("model-feedback-loop demo: drift -> breach -> retraining -> canary -> promotion")
    ax.set_xlabel("seconds since the demo started")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0.3, 1.0)
    ax.grid(alpha=0.3)
    if not kinds:  # still say what a drift looks like
        handles.append(Patch(color=DRIFT_COLOR, alpha=0.15, label="drift"))
    fig.legend(handles=handles, loc="outside right upper", fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """`python -m mfl_testbed.demo --replot demo-timeline.json demo.png`: redraw the plot from a saved
    timeline (the demo itself runs as `mfl demo`)."""
    parser = argparse.ArgumentParser(prog="python -m mfl_testbed.demo", description=main.__doc__)
    parser.add_argument(
        "--replot", nargs=2, metavar=("TIMELINE", "PNG"), required=True, help="the demo's demo-timeline.json, the plot"
    )
    args = parser.parse_args(argv)
    timeline, png = Path(args.replot[0]), Path(args.replot[1])
    write_plot(Timeline.load(timeline), png)
    print(f"plot: {png}")
    return 0


def run_demo(args: argparse.Namespace) -> int:
    if args.kubeconfig and not (args.registry and args.prometheus_url):
        raise SystemExit(
            "mfl demo --kubeconfig needs --registry (where the project's images are) and "
            "--prometheus-url (a Prometheus that scrapes the cluster's Pods)"
        )
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="mfl-demo-"))
    env: Environment = ExistingCluster(args, workdir) if args.kubeconfig else LocalTestbed(workdir)
    demo = Demo(env, args.fast)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        env.bring_up(demo.say)
        demo.run()
        demo.finish()
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted: tearing down", flush=True)
        return 130
    finally:
        env.tear_down(args.keep)  # with --keep: prints how to use the cluster and how to remove it


if __name__ == "__main__":
    sys.exit(main())
