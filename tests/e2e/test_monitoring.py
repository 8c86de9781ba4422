"""The monitoring loop end to end: kubectl, the real control plane, a real Prometheus, the operator."""

from __future__ import annotations

import ssl
import subprocess
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from mfl_testbed.controlplane import KubectlError
from mfl_testbed.node import NODE_IP

from .conftest import condition_of

ACCURACY = 'sum by (model, namespace) (test_model_accuracy{model="{{model}}",namespace="{{namespace}}"})'


def loop_manifest(namespace, prometheus_url, name="churn", **monitoring):
    return {
        "apiVersion": "feedbackloop.dev/v1alpha1",
        "kind": "ModelFeedbackLoop",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "model": {"name": name, "initialVersion": 1, "storage": {"hostPath": {"path": "/tmp/mfl-e2e"}}},
            "monitoring": {
                "prometheus": {"url": prometheus_url},
                "interval": "1s",
                "metrics": [{"name": "accuracy", "query": ACCURACY, "min": 0.8, "for": "3s"}],
                **monitoring,
            },
        },
    }


def test_breach_and_recovery_follow_prometheus(loops, prometheus, exporter, k8s_namespace):
    ns = k8s_namespace
    exporter.set("test_model_accuracy", 0.95, model="churn", namespace=ns)
    prometheus.wait_for(f'test_model_accuracy{{namespace="{ns}"}}', timeout=30)
    loops.apply(loop_manifest(ns, prometheus.url))

    status = loops.wait(ns, "churn", lambda s: (s.get("metrics") or [{}])[0].get("value") == 0.95, 30, "the first poll")
    assert status["phase"] == "Monitoring"
    assert status["observedGeneration"] == 1
    assert condition_of(status, "MetricsAvailable")["status"] == "True"
    assert condition_of(status, "Breached")["status"] == "False"
    assert {c["type"] for c in status["conditions"]} >= {
        "Ready",
        "Reconciling",
        "Stalled",
        "Breached",
        "MetricsAvailable",
    }
    for condition in status["conditions"]:
        assert condition["lastTransitionTime"] and condition["reason"] and condition["observedGeneration"] == 1

    exporter.set("test_model_accuracy", 0.5, model="churn", namespace=ns)
    status = loops.wait(ns, "churn", lambda s: s.get("phase") == "Breached", 30, "phase Breached")
    assert condition_of(status, "Breached")["status"] == "True"
    assert condition_of(status, "Ready")["status"] == "False"
    assert status["metrics"][0]["state"] == "Breaching" and status["breachSince"]
    assert "BreachStarted" in loops.reasons(ns, "churn")

    exporter.set("test_model_accuracy", 0.93, model="churn", namespace=ns)
    loops.wait(ns, "churn", lambda s: s.get("phase") == "Monitoring", 30, "recovery")
    assert "Recovered" in loops.reasons(ns, "churn")

    # The operator never writes the user's object: no finalizers, no bookkeeping annotations, spec as applied.
    metadata = loops.get(ns, "churn")["metadata"]
    assert not metadata.get("finalizers")
    assert not [a for a in metadata.get("annotations", {}) if "kopf" in a]
    assert metadata["generation"] == 1


def test_missing_series_is_no_data_not_a_breach(loops, prometheus, exporter, k8s_namespace):
    ns = k8s_namespace
    exporter.set("test_model_accuracy", 0.95, model="churn", namespace=ns)
    loops.apply(loop_manifest(ns, prometheus.url))
    loops.wait(ns, "churn", lambda s: (s.get("metrics") or [{}])[0].get("value") == 0.95, 30, "first poll")
    exporter.clear("test_model_accuracy", model="churn", namespace=ns)  # the series goes stale
    status = loops.wait_condition(ns, "churn", "MetricsAvailable", "False", 60)
    assert status["phase"] == "Monitoring"
    assert "MetricsUnavailable" in loops.reasons(ns, "churn")


def test_unreachable_prometheus_is_reported_never_a_breach(loops, k8s_namespace):
    ns = k8s_namespace
    loops.apply(loop_manifest(ns, f"http://{NODE_IP}:9"))  # nothing listens on the node's discard port
    status = loops.wait_condition(ns, "churn", "MetricsAvailable", "False", 30)
    assert "connection refused" in condition_of(status, "MetricsAvailable")["message"]
    assert status["phase"] == "Monitoring"


def test_a_prometheus_url_at_the_operators_own_loopback_is_refused_naming_the_setting(loops, k8s_namespace):
    """The egress policy in-cluster (docs/security.md, Egress): the operator never connects to its own Pod for a
    tenant; the loop says so, naming the URL, the address and the setting its admin would change."""
    ns = k8s_namespace
    loops.apply(loop_manifest(ns, "http://127.0.0.1:8080"))  # the operator's own health endpoint
    status = loops.wait_condition(ns, "churn", "MetricsAvailable", "False", 30)
    message = condition_of(status, "MetricsAvailable")["message"]
    assert "http://127.0.0.1:8080" in message and "127.0.0.1 is loopback" in message, message
    assert "MFL_EGRESS_ALLOW" in message, message
    assert status["phase"] == "Monitoring"


def test_many_loops_share_one_query_per_template(loops, prometheus, exporter, k8s_namespace):
    ns = k8s_namespace
    for i in range(5):
        exporter.set("test_model_accuracy", 0.9 + i / 100, model=f"m{i}", namespace=ns)
        loops.apply(loop_manifest(ns, prometheus.url, name=f"m{i}"))
    for i in range(5):
        loops.wait(
            ns,
            f"m{i}",
            lambda s, i=i: (s.get("metrics") or [{}])[0].get("value") == round(0.9 + i / 100, 6),
            30,
            f"m{i} value",
        )


def test_schema_breaking_spec_is_refused_by_kubectl(loops, prometheus, k8s_namespace):
    manifest = loop_manifest(k8s_namespace, prometheus.url)
    manifest["spec"]["monitoring"]["interval"] = "5 minutes"
    with pytest.raises(KubectlError) as refused:
        loops.apply(manifest)
    assert "spec.monitoring.interval" in refused.value.stderr
    del manifest["spec"]["model"]
    with pytest.raises(KubectlError) as refused:
        loops.apply(manifest)
    assert 'missing required field "model"' in refused.value.stderr


def test_semantically_invalid_spec_ends_invalid_and_recovers_when_fixed(loops, prometheus, k8s_namespace):
    ns = k8s_namespace
    manifest = loop_manifest(ns, prometheus.url)
    manifest["spec"]["monitoring"]["metrics"][0]["max"] = 0.1  # min 0.8 > max 0.1: the schema allows it
    loops.apply(manifest)
    status = loops.wait(ns, "churn", lambda s: s.get("phase") == "Invalid", 30, "phase Invalid")
    ready = condition_of(status, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
    assert "spec.monitoring.metrics.0" in ready["message"]
    assert condition_of(status, "Stalled")["status"] == "True"
    assert "InvalidSpec" in loops.reasons(ns, "churn")
    del manifest["spec"]["monitoring"]["metrics"][0]["max"]
    loops.apply(manifest)
    status = loops.wait(
        ns,
        "churn",
        lambda s: s.get("phase") == "Monitoring" and s.get("observedGeneration") == 2,
        30,
        "phase Monitoring at generation 2",
    )
    assert condition_of(status, "Stalled")["status"] == "False"


def test_printer_columns_show_live_values(loops, prometheus, exporter, kubectl, k8s_namespace):
    ns = k8s_namespace
    exporter.set("test_model_accuracy", 0.91, model="churn", namespace=ns)
    loops.apply(loop_manifest(ns, prometheus.url))
    loops.wait(ns, "churn", lambda s: s.get("summary") == "accuracy=0.910", 30, "summary")
    table = kubectl("get", "mfl", "-n", ns).stdout
    header, row = table.splitlines()[:2]
    assert header.split()[:5] == ["NAME", "PHASE", "VERSION", "METRIC", "READY"]
    assert row.split()[:4] == ["churn", "Monitoring", "1", "accuracy=0.910"]
    assert "churn" in kubectl("get", "ml", "-n", ns).stdout  # the category


def test_for_survives_an_operator_restart(loops, prometheus, exporter, k8s_namespace):
    """A pending breach keeps its start across a crash: `for` is not restarted by the new process."""
    ns = k8s_namespace
    exporter.set("test_model_accuracy", 0.95, model="churn", namespace=ns)
    manifest = loop_manifest(ns, prometheus.url)
    manifest["spec"]["monitoring"]["metrics"][0]["for"] = "20s"
    loops.apply(manifest)
    loops.wait(ns, "churn", lambda s: (s.get("metrics") or [{}])[0].get("value") == 0.95, 30, "first poll")
    exporter.set("test_model_accuracy", 0.5, model="churn", namespace=ns)
    status = loops.wait(
        ns, "churn", lambda s: (s.get("metrics") or [{}])[0].get("state") == "Pending", 30, "a pending breach"
    )
    since = status["metrics"][0]["breachSince"]
    loops.cluster.crash_operator()
    status = loops.wait(ns, "churn", lambda s: s.get("phase") == "Breached", 60, "Breached after the restart")
    assert status["metrics"][0]["breachSince"] == since


class TokenCheckingProxy:
    """An https Prometheus for one test: a self-signed certificate for the node's address, every request
    forwarded to the test bed's Prometheus, and the Authorization headers it was sent, recorded."""

    def __init__(self, prometheus_url: str, workdir: Path) -> None:
        self.cert, self.key = workdir / "tls.crt", workdir / "tls.key"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", f"/CN={NODE_IP}",
             "-addext", f"subjectAltName=IP:{NODE_IP}", "-keyout", str(self.key), "-out", str(self.cert)],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        self.tokens: list[str] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                proxy.tokens.append(self.headers.get("Authorization", ""))
                with urllib.request.urlopen(prometheus_url + self.path, timeout=10) as answer:
                    body = answer.read()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: object) -> None:
                return

        self.server = ThreadingHTTPServer((NODE_IP, 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, self.key)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://{NODE_IP}:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


def test_a_token_is_sent_only_over_tls_to_a_host_its_secret_names(
    loops, prometheus, exporter, kubectl, k8s_namespace, tmp_path
):
    """Issue 10: a loop can name any Secret of its namespace; the token goes only where the Secret says."""
    ns = k8s_namespace
    exporter.set("test_model_accuracy", 0.95, model="churn", namespace=ns)
    proxy = TokenCheckingProxy(prometheus.url, tmp_path)
    try:
        manifest = loop_manifest(ns, proxy.url)
        manifest["spec"]["monitoring"]["prometheus"].update(
            bearerTokenSecretRef={"name": "prom-token", "key": "token"},
            caBundleSecretRef={"name": "prom-ca", "key": "ca.crt"},
        )
        loops.apply(manifest)
        status = loops.wait_condition(ns, "churn", "MetricsAvailable", "False", 30)
        message = condition_of(status, "MetricsAvailable")["message"]
        assert f"Secret {ns}/prom-token" in message and "404" in message

        kubectl("create", "secret", "generic", "prom-ca", "-n", ns, f"--from-file=ca.crt={proxy.cert}")
        kubectl("create", "secret", "generic", "prom-token", "-n", ns, "--from-literal=token=s3cret")
        loops.wait(
            ns,
            "churn",
            lambda s: "does not say where its token may go" in condition_of(s, "MetricsAvailable").get("message", ""),
            120,
            "the refusal of a Secret that did not opt in (read again after the one-minute cache)",
        )
        assert not any("s3cret" in token for token in proxy.tokens)

        kubectl("annotate", "secret", "prom-token", "-n", ns, f"feedbackloop.dev/prometheus-hosts={NODE_IP}")
        loops.wait(
            ns,
            "churn",
            lambda s: (s.get("metrics") or [{}])[0].get("value") == 0.95,
            120,
            "a value over verified TLS once the Secret names this host",
        )
        assert "Bearer s3cret" in proxy.tokens
    finally:
        proxy.close()
