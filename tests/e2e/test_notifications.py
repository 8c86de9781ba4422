"""Issue 12, item 3 end to end: the operator in-cluster POSTs one drift story's notifications (first version,
breach, retraining, canary, promotion) to webhook receivers on the node, one of which fails for a while;
the canary's promotion waits for a confirm-promotion webhook that says no twice, then yes.

The receivers listen on the node's address (reachable from Pods, as tests/e2e/test_monitoring.py's proxy
is); plain http is allowed there because the address is private (docs/operations.md, Notifications).
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from mfl_testbed.node import NODE_IP
from mfl_testbed.traffic import TrafficGenerator, service_endpoints

from .conftest import artifact_claim, write_base_data
from .test_loop import loop_manifest

STORY = [
    ("RetrainingStarted", 1),
    ("Promoted", 1),
    ("BreachStarted", 1),
    ("RetrainingStarted", 2),
    ("CanaryStarted", 2),
    ("Promoted", 2),
]


class Receiver:
    """A webhook receiver on the node: answers `refusal` to its first `failures` requests, records every one."""

    def __init__(self, failures: int = 0, refusal: int = 500) -> None:
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.answered: list[int] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server API
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with receiver.lock:
                    code = refusal if len(receiver.answered) < failures else 200
                    receiver.requests.append(body)
                    receiver.headers.append(dict(self.headers))
                    receiver.answered.append(code)
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: object) -> None:
                return

        self.server = ThreadingHTTPServer((NODE_IP, 0), Handler)
        self.url = f"http://{NODE_IP}:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def delivered(self) -> list[dict[str, Any]]:
        """What a receiver keeps: each id once (the first copy answered 2xx), in the order received."""
        kept: dict[str, dict[str, Any]] = {}
        with self.lock:
            for body, code in zip(self.requests, self.answered, strict=True):
                if code == 200:
                    kept.setdefault(body["id"], body)
        return list(kept.values())

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def story_of(notifications: list[dict[str, Any]]) -> list[tuple[str, int]]:
    """The first notification of each step of STORY, in the order they arrived."""
    seen = [(n["reason"], n["version"]) for n in notifications]
    firsts = sorted({step: seen.index(step) for step in STORY if step in seen}.items(), key=lambda item: item[1])
    return [step for step, _ in firsts]


def wait_for(predicate, timeout: float, what: str) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def test_receivers_get_the_drift_story_and_one_failing_for_a_while_gets_all_of_it(
    loops, prometheus, kubectl, k8s_namespace
):
    ns = k8s_namespace
    steady, flaky = Receiver(), Receiver(failures=6)  # six 500s: about a minute of backoff (1+2+4+8+16+32 s)
    approver = Receiver(failures=2, refusal=409)  # not yet, not yet, yes
    try:
        claim, storage = artifact_claim(loops.cluster, ns)
        write_base_data(storage, "churn", 3000)
        manifest = loop_manifest(ns, prometheus.url, claim)
        manifest["spec"]["notifications"] = [{"url": steady.url}, {"url": flaky.url}]
        manifest["spec"]["rollout"]["confirmPromotion"] = {"url": approver.url}
        loops.apply(manifest)
        loops.wait_condition(ns, "churn", "Ready", "True", 180)

        traffic = TrafficGenerator(service_endpoints(kubectl, ns, "churn"), rate=80, batch=8, label_delay=1.0).start()
        try:
            loops.wait(ns, "churn", lambda s: (s.get("metrics") or [{}])[0].get("state") == "Healthy", 90, "healthy")
            traffic.concept = 1  # drift
            loops.wait(ns, "churn", lambda s: s.get("currentVersion") == 2, 540, "promotion of version 2")
        finally:
            traffic.stop()

        wait_for(lambda: story_of(steady.delivered()) == STORY, 30, f"the story at the steady receiver: {STORY}")
        wait_for(
            lambda: {n["id"] for n in steady.delivered()} <= {n["id"] for n in flaky.delivered()},
            150,
            "every notification at the receiver that failed for a while",
        )
    finally:
        steady.close()
        flaky.close()
        approver.close()

    kept, recovered = steady.delivered(), flaky.delivered()
    assert story_of(recovered) == STORY
    both = {n["id"] for n in kept} & {n["id"] for n in recovered}
    assert [n["id"] for n in recovered if n["id"] in both] == [n["id"] for n in kept if n["id"] in both]  # in order
    assert flaky.answered[:6] == [500] * 6 and {n["id"] for n in flaky.requests[:6]} == {kept[0]["id"]}
    assert all(n["loop"] == {"namespace": ns, "name": "churn", "uid": kept[0]["loop"]["uid"]} for n in kept)
    promoted = next(n for n in kept if (n["reason"], n["version"]) == ("Promoted", 2))
    assert promoted["currentVersion"] == 2 and promoted["type"] == "Normal" and promoted["timestamp"]
    assert {n["reason"] for n in kept} <= set(loops.reasons(ns, "churn"))  # each one is an Event, too

    # The promotion of version 2 waited for the approver: asked at the analysis' looks, promoted on its 2xx.
    assert approver.answered[:3] == [409, 409, 200]  # (a 4th only if that round's reconcile failed)
    asked = approver.requests[0]
    assert asked["kind"] == "PromotionRequest" and asked["version"] == 2 and asked["currentVersion"] == 1
    # A breach retraining's candidate that beat the failing champion offline is asked about once seen
    # serving, its analysis still running (docs/retraining.md); others once their analysis passed.
    assert asked["canary"]["trigger"] == "Breach" and asked["canary"]["offlineSuperior"] is True
    assert asked["analysis"]["phase"] in ("Running", "Successful") and asked["candidate"]["version"] == 2
    assert "PromotionAwaitingConfirmation" in loops.reasons(ns, "churn")


def test_a_webhook_whose_url_and_token_live_only_in_secrets_delivers_and_no_object_or_log_holds_them(
    loops, prometheus, kubectl, k8s_namespace
):
    """Issue 23: the URL (with a secret path) and an Authorization header come from Secrets of the loop's
    namespace; the CloudEvent arrives with the header; the loop, its status, its Events and the operator's log
    never contain either; a webhook whose Secret lacks its key gets one NotificationSecretUnusable Event."""
    ns = k8s_namespace
    receiver = Receiver()
    secret_url = receiver.url.replace("/hook", "/hook/S3CRET-PATH-e2e")
    token = "Bearer t0ken-e2e-never-shown"
    try:
        kubectl("-n", ns, "create", "secret", "generic", "chat-webhook",
                f"--from-literal=url={secret_url}", f"--from-literal=token={token}")  # fmt: skip
        kubectl("-n", ns, "annotate", "secret", "chat-webhook", f"feedbackloop.dev/webhook-hosts={NODE_IP}")
        kubectl("-n", ns, "create", "secret", "generic", "half-done", "--from-literal=other=x")
        claim, storage = artifact_claim(loops.cluster, ns)
        write_base_data(storage, "churn", 3000)
        manifest = loop_manifest(ns, prometheus.url, claim)
        ref = {"name": "chat-webhook"}
        manifest["spec"]["notifications"] = [
            {
                "urlFrom": {"secretKeyRef": {**ref, "key": "url"}},
                "headers": [{"name": "Authorization", "valueFrom": {"secretKeyRef": {**ref, "key": "token"}}}],
                "format": "cloudevents",
            },
            {"urlFrom": {"secretKeyRef": {"name": "half-done", "key": "url"}}, "format": "teams"},
        ]
        loops.apply(manifest)
        loops.wait_condition(ns, "churn", "Ready", "True", 180)
        wait_for(lambda: len(receiver.requests) >= 2, 60, "RetrainingStarted and Promoted of version 1")
        wait_for(lambda: "NotificationSecretUnusable" in loops.reasons(ns, "churn"), 60, "the Warning Event")
    finally:
        receiver.close()

    events = [body for body in receiver.requests if body.get("specversion") == "1.0"]
    assert [e["type"] for e in events[:2]] == ["dev.feedbackloop.RetrainingStarted", "dev.feedbackloop.Promoted"]
    assert all(e["subject"] == f"{ns}/churn" and e["id"] == e["data"]["id"] for e in events)
    assert all(h.get("Authorization") == token for h in receiver.headers)
    assert all(h.get("Content-Type") == "application/cloudevents+json" for h in receiver.headers)
    warning = next(e for e in loops.events(ns, "churn") if e["reason"] == "NotificationSecretUnusable")
    assert warning["type"] == "Warning" and f"Secret {ns}/half-done has no key url" in warning["message"]
    shown = json.dumps(loops.get(ns, "churn")) + json.dumps(loops.events(ns, "churn"))
    shown += loops.cluster.operator_logs(2000)
    for secret in ("S3CRET-PATH-e2e", "t0ken-e2e-never-shown"):
        assert secret not in shown, secret
