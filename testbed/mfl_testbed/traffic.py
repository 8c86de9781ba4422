"""A traffic generator: predictions through a Service's endpoints, ground truth fed back later.

It reads the Service's Endpoints (the Pod IPs the endpoints controller lists, as a kube-proxy would:
nothing implements ClusterIPs here), spreads batches of rows over them, and sends each row's true label
to a *random* endpoint after `label_delay` seconds, so feedback often reaches another replica than the
prediction did. The true label comes from a synthetic concept (mfl_testbed.datasets) that the caller
can switch to make the labels drift.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from . import datasets
from .netutil import http_request


@dataclass
class TrafficStats:
    predictions: int = 0
    feedback: int = 0
    correct: int = 0
    errors: int = 0
    last_error: str = ""
    by_version: dict[str, list[int]] = field(default_factory=dict)  # version -> [labelled, correct]

    def accuracy(self) -> float:
        """Client-side accuracy of every prediction made so far (labels are known at prediction time)."""
        return self.correct / self.predictions if self.predictions else float("nan")


class TrafficGenerator:
    """`start()` runs it in a thread until `stop()`; `concept` may be changed at any time (drift)."""

    def __init__(
        self,
        endpoints: Callable[[], list[str]],
        rate: float = 50.0,
        batch: int = 10,
        label_delay: float = 2.0,
        generator: datasets.Generator = "hyperplane",
        n_features: int = 10,
        seed: int = 7,
        noise: float = 0.02,
        protocol: str = "mfl",
        model: str = "churn",
    ) -> None:
        """``protocol`` "v2": a client that knows only the Open Inference Protocol (infer with one tensor,
        ids from the `mfl_prediction_id` output, labels to /v2/models/<model>/feedback), as a team's
        MLServer client would be; "mfl": the reference server's own /predict and /feedback."""
        self.endpoints = endpoints
        self.protocol, self.model = protocol, model
        self.rate, self.batch, self.label_delay = rate, batch, label_delay
        self.generator, self.n_features, self.noise = generator, n_features, noise
        self.names = datasets.feature_names(generator, n_features)
        self.concept = 0
        self.input_squeeze: float | None = None  # covariate shift: inputs squeezed around the centre (datasets)
        self.next_concept: int | None = None  # gradual drift: rows take this concept with probability `mix`
        self._ramp: tuple[float, float] | None = None  # (start, seconds) of a gradual drift
        self.stats = TrafficStats()
        self._rng = np.random.default_rng(seed)
        self._pending: deque[tuple[float, str, int, str]] = deque()  # (due, id, label, version)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def drift_gradually(self, next_concept: int, seconds: float) -> None:
        """From now on, a growing share of rows (0 to 1 over `seconds`) follows `next_concept`."""
        self.next_concept, self._ramp = next_concept, (time.monotonic(), max(seconds, 1e-9))

    @property
    def mix(self) -> float:
        if self._ramp is None:
            return 0.0
        return min(1.0, (time.monotonic() - self._ramp[0]) / self._ramp[1])

    def start(self) -> TrafficGenerator:
        self._thread = threading.Thread(target=self._run, name="traffic", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        interval = self.batch / self.rate
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self._predict_batch()
                self._send_due_feedback()
            except Exception as error:  # a Pod being replaced: count it and go on
                self.stats.errors += 1
                self.stats.last_error = f"{type(error).__name__}: {error}"
            self._stop.wait(max(0.0, interval - (time.monotonic() - started)))

    def _predict_batch(self) -> None:
        targets = self.endpoints()
        if not targets:
            return
        seed = int(self._rng.integers(1 << 31))
        if self.input_squeeze is None:
            X = datasets.sample_features(self.batch, seed, self.generator, self.n_features)
        else:
            X = datasets.shifted_features(self.batch, seed, self.generator, self.n_features, self.input_squeeze)
        concepts = np.full(self.batch, self.concept)
        if self.next_concept is not None:
            concepts[self._rng.random(self.batch) < self.mix] = self.next_concept
        labels = datasets.flip_labels(
            datasets.concept_labels(X, concepts, self.generator), self.noise, int(self._rng.integers(1 << 31))
        )
        version, ids, predictions = self._predict(random.choice(targets), X)
        due = time.monotonic() + self.label_delay
        for prediction_id, prediction, label in zip(ids, predictions, labels):
            self._pending.append((due, prediction_id, int(label), version))
            tally = self.stats.by_version.setdefault(version, [0, 0])
            tally[0] += 1
            tally[1] += int(prediction) == int(label)
            self.stats.correct += int(prediction) == int(label)
        self.stats.predictions += len(labels)

    def _predict(self, target: str, X: np.ndarray) -> tuple[str, list[str], list[int]]:
        """(version, ids, predictions) of one batch."""
        if self.protocol == "v2":
            tensor = {"name": "input-0", "shape": list(X.shape), "datatype": "FP64", "data": X.tolist()}
            path, body = f"/v2/models/{self.model}/infer", {"inputs": [tensor]}
        else:
            path, body = "/predict", {"instances": datasets.to_records(X, self.names)}
        status, reply = http_request(
            f"http://{target}{path}",
            "POST",
            json.dumps(body).encode(),
            {"Content-Type": "application/json"},
            timeout=5.0,
        )
        if status != 200:
            raise RuntimeError(f"{path} answered {status}: {reply[:200]!r}")
        answer = json.loads(reply)
        if self.protocol != "v2":
            return str(answer.get("version", "?")), answer["ids"], answer["predictions"]
        outputs = {output["name"]: output["data"] for output in answer["outputs"]}
        predicted = next(data for name, data in outputs.items() if name != "mfl_prediction_id")
        # a runtime that answers P(class 1) (MLServer's LightGBM runtime): the client thresholds it itself
        labels = [int(p >= 0.5) if isinstance(p, float) else int(p) for p in predicted]
        return str(answer.get("model_version", "?")), outputs["mfl_prediction_id"], labels

    def _send_due_feedback(self) -> None:
        now, due = time.monotonic(), []
        while self._pending and self._pending[0][0] <= now:
            due.append(self._pending.popleft())
        targets = self.endpoints()
        if not due or not targets:
            self._pending.extendleft(reversed(due))
            return
        body = json.dumps({"feedback": [{"id": i, "label": label} for _, i, label, _ in due]}).encode()
        path = f"/v2/models/{self.model}/feedback" if self.protocol == "v2" else "/feedback"
        status, reply = http_request(
            f"http://{random.choice(targets)}{path}", "POST", body, {"Content-Type": "application/json"}, timeout=5.0
        )
        if status != 200:
            self._pending.extendleft(reversed(due))
            raise RuntimeError(f"{path} answered {status}: {reply[:200]!r}")
        self.stats.feedback += len(due)


def service_endpoints(kubectl: Callable[..., object], namespace: str, service: str) -> Callable[[], list[str]]:
    """A cached reader of a Service's ready endpoints as 'ip:port' (refreshed every 2 s)."""
    cache: dict[str, object] = {"at": 0.0, "value": []}

    def read() -> list[str]:
        if time.monotonic() - float(cache["at"]) < 2.0:  # type: ignore[arg-type]
            return list(cache["value"])  # type: ignore[arg-type]
        result = kubectl("get", "endpoints", service, "-n", namespace, "-o", "json", check=False)
        addresses: list[str] = []
        if getattr(result, "returncode", 1) == 0:
            for subset in json.loads(result.stdout).get("subsets") or []:  # type: ignore[attr-defined]
                port = next((p["port"] for p in subset.get("ports", [])), None)
                addresses += [f"{a['ip']}:{port}" for a in subset.get("addresses") or [] if port]
        cache.update(at=time.monotonic(), value=addresses)
        return addresses

    return read


def main(argv: list[str] | None = None) -> int:
    """In-cluster use (`mfl demo --kubeconfig`): seed base data into a volume, or drive a Service by DNS."""
    import argparse
    import os

    parser = argparse.ArgumentParser(prog="python -m mfl_testbed.traffic")
    sub = parser.add_subparsers(dest="command", required=True)
    seed = sub.add_parser("seed", help="write base training data (concept 0) as CSV")
    seed.add_argument("path")
    seed.add_argument("--rows", type=int, default=3000)
    run = sub.add_parser("run", help="predictions and delayed feedback against a Service URL, until stopped")
    run.add_argument("--url", required=True, help="e.g. http://churn.mfl-demo.svc:80")
    run.add_argument("--rate", type=float, default=80.0)
    run.add_argument("--batch", type=int, default=2)
    args = parser.parse_args(argv)
    if args.command == "seed":
        datasets.write_base_csv(args.path, args.rows, seed=1)
        print(f"wrote {args.rows} rows to {args.path}", flush=True)
        return 0
    address = args.url.split("://", 1)[-1].rstrip("/")
    generator = TrafficGenerator(lambda: [address], rate=args.rate, batch=args.batch, label_delay=1.0)
    generator.concept = int(os.environ.get("MFL_CONCEPT", "0"))  # the demo changes these with `kubectl set env`
    if os.environ.get("MFL_NEXT_CONCEPT"):
        generator.drift_gradually(int(os.environ["MFL_NEXT_CONCEPT"]), float(os.environ.get("MFL_RAMP_SECONDS", "60")))
    generator.start()
    try:
        while True:
            time.sleep(10)
            stats = generator.stats
            print(
                f"predictions {stats.predictions} feedback {stats.feedback} accuracy {stats.accuracy():.3f} "
                f"errors {stats.errors} {stats.last_error}",
                flush=True,
            )
    except KeyboardInterrupt:
        generator.stop()
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
