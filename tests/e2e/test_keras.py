"""Issue 19 end to end: the seed's Keras example (dense -> dropout -> sigmoid, estimator keras_dense) runs the
whole loop on the real node. Version 1 is trained as keras_dense by the real trainer on the host, the Keras server
image (mfl-server-keras: the reference server with Keras on JAX) serves it, the reference server's own routes take
the traffic and the labels; drift -> breach -> a retraining Job in the Keras trainer image (mfl-trainer-keras) ->
canary -> promotion of a version 2 that is a Keras network again (model.keras, metadata format keras). The default
images carry no Keras (tests/e2e/test_images.py): only these two images can train and serve such a version."""

from __future__ import annotations

import json
import time

from mfl_testbed.traffic import TrafficGenerator, service_endpoints

from .conftest import artifact_claim, seed_registry
from .test_loop import deployment, history_outcomes, loop_manifest

# Small, so that the breach retraining (several fits: the change-point recipes and their cross-fitted holdout) is
# quick on the test bed's two shared cores; the network is the seed's all the same.
HYPERPARAMETERS = {"units": 16, "dropout": 0.1, "epochs": 6, "batch_size": 64, "learning_rate": 0.01}


def keras_loop(namespace, prometheus_url, storage, image_refs):
    manifest = loop_manifest(namespace, prometheus_url, storage, initial_version=1)
    spec = manifest["spec"]
    # JAX holds its runtime and the compiled forward passes (one per padded batch size): ~300 MB a server; the
    # trainer's fits peak higher. Limits as a cluster would set them, well above that.
    spec["model"]["serving"].update(
        {
            "image": image_refs["server-keras"],
            "resources": {"requests": {"cpu": "50m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
        }
    )
    spec["retraining"].update(
        {
            "estimator": "keras_dense",
            "hyperparameters": HYPERPARAMETERS,
            "trainer": {
                "image": image_refs["trainer-keras"],
                "resources": {"requests": {"cpu": "100m", "memory": "512Mi"}, "limits": {"memory": "2Gi"}},
            },
        }
    )
    return manifest


def pod_logs(kubectl, namespace):
    """The Pods, and the trainer's and the servers' logs: printed with a failure."""
    pods = kubectl("get", "pods", "-n", namespace, "-o", "wide", check=False).stdout
    logs = []
    for name in ("mfl-trainer", "mfl-server"):
        result = kubectl(
            "logs", "-n", namespace, "-l", f"app.kubernetes.io/name={name}", "--prefix", "--tail=40", check=False
        )
        logs.append(f"--- {name} logs ---\n{result.stdout}{result.stderr}")
    return f"--- pods ---\n{pods}\n" + "\n".join(logs)


def server_image(kubectl, namespace, name):
    containers = deployment(kubectl, namespace, name)["spec"]["template"]["spec"]["containers"]
    return next(c["image"] for c in containers if c["name"] == "server")


def test_keras_loop_recovers_from_drift_with_a_retrained_network(
    loops, prometheus, kubectl, k8s_namespace, image_refs, capsys
):
    ns = k8s_namespace
    timings: dict[str, float] = {}
    started = time.monotonic()

    def mark(what):
        timings[what] = time.monotonic() - started

    claim, storage = artifact_claim(loops.cluster, ns)
    seed_registry(storage, "churn", estimator="keras_dense")
    version_1 = storage / "churn" / "versions" / "1"
    assert json.loads((version_1 / "metadata.json").read_text())["format"] == "keras"
    mark("version 1 trained on the host")
    loops.apply(keras_loop(ns, prometheus.url, claim, image_refs))
    traffic = None
    try:
        loops.wait_condition(ns, "churn", "ServingReady", "True", 240)
        mark("version 1 serving (mfl-server-keras)")
        assert server_image(kubectl, ns, "churn") == image_refs["server-keras"]
        traffic = TrafficGenerator(service_endpoints(kubectl, ns, "churn"), rate=80, batch=8, label_delay=1.0).start()
        loops.wait(ns, "churn", lambda s: (s.get("metrics") or [{}])[0].get("state") == "Healthy", 120, "healthy")
        assert traffic.stats.feedback > 0 and traffic.stats.errors == 0, traffic.stats
        mark("healthy")
        traffic.concept = 1  # drift
        status = loops.wait(
            ns, "churn", lambda s: (s.get("retraining") or {}).get("trigger") == "Breach", 120, "a breach retraining"
        )
        assert status["retraining"]["version"] == 2
        mark("breach")
        jobs = json.loads(kubectl("get", "jobs", "-n", ns, "-o", "json").stdout)["items"]
        [job] = [j for j in jobs if j["metadata"]["labels"].get("feedbackloop.dev/version") == "2"] or jobs
        assert job["spec"]["template"]["spec"]["containers"][0]["image"] == image_refs["trainer-keras"]
        status = loops.wait(ns, "churn", lambda s: s.get("phase") == "Canary", 300, "the retrained network's canary")
        mark("canary (version 2 trained in mfl-trainer-keras)")
        candidate = status["candidate"]
        assert candidate["version"] == 2 and candidate["challenger"]["accuracy"] > candidate["champion"]["accuracy"]
        assert server_image(kubectl, ns, "churn-canary") == image_refs["server-keras"]
        status = loops.wait(ns, "churn", lambda s: s.get("currentVersion") == 2, 300, "promotion of version 2")
        mark("promoted")
        loops.wait_recovered(ns, "churn", 2, 120)
        mark("version 2 healthy")
        recent = traffic.stats.by_version.get("2", [0, 0])
    except AssertionError as error:
        raise AssertionError(f"{error}\n{pod_logs(kubectl, ns)}") from None
    finally:
        if traffic is not None:
            traffic.stop()
        with capsys.disabled():
            print(
                "\nKeras loop timings (s since the start): "
                + ", ".join(f"{what} {seconds:.0f}" for what, seconds in timings.items())
                + (f"; client errors {traffic.stats.errors} of {traffic.stats.predictions}" if traffic else "")
            )
    assert history_outcomes(status)[-1] == (2, "Promoted")
    # A few client timeouts (5 s) may happen while the training Job and JAX's first compilations in the new Pods
    # take both of the test bed's cores; the loop's own rules (accuracy on labels) are what is judged.
    assert traffic.stats.errors <= traffic.stats.predictions / 100, traffic.stats
    version_2 = storage / "churn" / "versions" / "2"
    metadata = json.loads((version_2 / "metadata.json").read_text())
    assert metadata["format"] == "keras" and metadata["estimator"] == "keras_dense", metadata
    assert metadata["trainerImage"] == image_refs["trainer-keras"] and metadata["libraries"]["jax"], metadata
    assert HYPERPARAMETERS.items() <= metadata["hyperparameters"].items(), metadata["hyperparameters"]
    assert (version_2 / "model.keras").stat().st_size > 0 and (version_2 / "model.joblib").exists()
    assert recent[0] > 100 and recent[1] / recent[0] > 0.75, recent  # what the clients saw of version 2
    assert deployment(kubectl, ns, "churn")["metadata"]["labels"]["feedbackloop.dev/version"] == "2"
