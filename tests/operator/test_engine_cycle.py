"""`Engine.cycle()` phase by phase against the in-memory API (tests/operator/fake_kube.py): for each
phase, the writes one cycle makes. No root, etcd or Prometheus; the real cluster tier is tests/e2e."""

from __future__ import annotations

import json
from typing import Any

import pytest

from .fake_kube import FakeKube, FakePrometheus, Harness

T0 = 1_800_000_000.0
KEY = "team-a/churn"
ACCURACY = 'accuracy_of{model="{{model}}",namespace="{{namespace}}",version="{{version}}"}'


def loop(generation: int = 1, annotations: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    body = {
        "apiVersion": "feedbackloop.dev/v1alpha1",
        "kind": "ModelFeedbackLoop",
        "metadata": {
            "name": "churn",
            "namespace": "team-a",
            "uid": "uid-churn",
            "generation": generation,
            "annotations": annotations or {},
        },
        "spec": {
            "model": {"name": "churn", "storage": {"persistentVolumeClaim": {"claimName": "artifacts"}}},
            "monitoring": {
                "prometheus": {"url": "http://prometheus:9090"},
                "interval": "10s",
                "metrics": [{"name": "accuracy", "query": ACCURACY, "min": 0.8, "for": "20s"}],
            },
            "retraining": {"features": ["a", "b"], "target": "label", "cooldown": "10s", "maxRetrainsPerDay": 5},
            "rollout": {"steps": [{"weight": 50, "pause": "30s"}], "analysis": {"interval": "10s", "minSamples": 50}},
        },
    }
    body["spec"].update(spec)
    return body


def trained(version: int, accuracy: float, champion: float | None = None) -> str:
    summary: dict[str, Any] = {"ok": True, "version": version, "challenger": {"accuracy": accuracy}}
    if champion is not None:
        summary["champion"] = {"accuracy": champion}
    return "training done\n" + json.dumps(summary)


def writes(actions: list[tuple[str, str]], verb: str) -> list[str]:
    return [what for done, what in actions if done == verb]


def reasons(actions: list[tuple[str, str]]) -> list[str]:
    return [what for done, what in actions if done == "event"]  # "Normal Promoted"


@pytest.fixture
def bed() -> Harness:
    harness = Harness(FakeKube(), FakePrometheus())
    harness.prometheus.answer("accuracy_of", [({"model": "churn", "namespace": "team-a"}, 0.95)])
    return harness


def serving_v1(bed: Harness) -> float:
    """Pending -> Retraining -> Monitoring on version 1; returns the time it got there."""
    bed.apply(loop())
    bed.cycle(T0)
    bed.kube.finish_job("team-a/churn-train-v1", True, trained(1, 0.93))
    bed.cycle(T0 + 5)
    bed.cycle(T0 + 10)
    return T0 + 10


def test_a_new_loop_starts_training_version_1_and_records_it(bed: Harness) -> None:
    bed.apply(loop())
    actions = bed.cycle(T0)
    assert writes(actions, "create") == ["Job team-a/churn-train-v1"]
    assert "Normal RetrainingStarted" in reasons(actions)
    assert writes(actions, "patch-status") == [KEY]
    status = bed.status()
    assert status["phase"] == "Retraining" and status["retraining"]["jobName"] == "churn-train-v1"
    assert status["observedGeneration"] == 1


def test_while_the_job_runs_nothing_is_written(bed: Harness) -> None:
    bed.apply(loop())
    bed.cycle(T0)
    assert bed.cycle(T0 + 5) == []
    assert bed.cycle(T0 + 10) == []


def test_a_finished_first_version_is_served_stable(bed: Harness) -> None:
    bed.apply(loop())
    bed.cycle(T0)
    bed.kube.finish_job("team-a/churn-train-v1", True, trained(1, 0.93))
    actions = bed.cycle(T0 + 5)
    assert writes(actions, "create") == [
        "Secret team-a/churn-signing-key",
        "Service team-a/churn",
        "Deployment team-a/churn v1",
    ]
    assert "Normal Promoted" in reasons(actions)
    status = bed.status()
    assert status["currentVersion"] == 1 and not status.get("retraining")
    bed.cycle(T0 + 10)
    assert bed.status()["phase"] == "Monitoring"


def test_a_failed_job_is_reported_and_backs_off(bed: Harness) -> None:
    bed.apply(loop())
    bed.cycle(T0)
    bed.kube.finish_job("team-a/churn-train-v1", False, json.dumps({"ok": False, "error": "no data in the window"}))
    actions = bed.cycle(T0 + 5)
    assert "Warning RetrainingFailed" in reasons(actions)
    assert writes(actions, "create") == []
    status = bed.status()
    assert "no data in the window" in status["lastFailure"] and status["failureBackoffUntil"]


def test_healthy_monitoring_polls_without_writes(bed: Harness) -> None:
    now = serving_v1(bed)
    asked = len(bed.prometheus.asked)
    actions = bed.cycle(now + 10) + bed.cycle(now + 20)
    assert len(bed.prometheus.asked) > asked  # it did poll
    assert [a for a in actions if a[0] != "event"] == []  # and wrote nothing: nothing changed


def test_a_sustained_breach_starts_a_retraining_from_the_serving_version(bed: Harness) -> None:
    now = serving_v1(bed)
    bed.prometheus.answer("accuracy_of", [({"model": "churn", "namespace": "team-a"}, 0.6)])
    created = []
    for step in range(1, 6):  # `for: 20s` at a 10 s interval: the breach must last
        created += writes(bed.cycle(now + 10 * step), "create")
    assert created == ["Job team-a/churn-train-v2"]
    retraining = bed.status()["retraining"]
    assert retraining["trigger"] == "Breach" and retraining["parentVersion"] == 1


def test_a_breach_shorter_than_for_starts_nothing(bed: Harness) -> None:
    now = serving_v1(bed)
    bed.prometheus.answer("accuracy_of", [({"model": "churn", "namespace": "team-a"}, 0.6)])
    bed.cycle(now + 10)
    bed.prometheus.answer("accuracy_of", [({"model": "churn", "namespace": "team-a"}, 0.95)])
    created = [w for step in range(2, 6) for w in writes(bed.cycle(now + 10 * step), "create")]
    assert created == []


def canary_running(bed: Harness) -> float:
    now = serving_v1(bed)
    bed.apply(loop(annotations={"feedbackloop.dev/retrain": "r1"}))
    bed.cycle(now + 1)
    bed.kube.finish_job("team-a/churn-train-v2", True, trained(2, 0.95, champion=0.93))
    return now + 6


def test_a_challenger_that_passes_the_gate_goes_to_canary(bed: Harness) -> None:
    now = canary_running(bed)
    actions = bed.cycle(now)
    assert writes(actions, "create") == ["Deployment team-a/churn-canary v2"]
    assert "Normal CanaryStarted" in reasons(actions)
    status = bed.status()
    assert status["phase"] == "Canary" and status["rollout"]["version"] == 2 and status["currentVersion"] == 1


def test_abort_rolls_the_canary_back_and_keeps_the_stable_version(bed: Harness) -> None:
    now = canary_running(bed)
    bed.cycle(now)
    bed.apply({**loop(annotations={"feedbackloop.dev/retrain": "r1", "feedbackloop.dev/abort": "a1"})})
    actions = bed.cycle(now + 1)
    assert writes(actions, "delete") == ["Deployment team-a/churn-canary"]
    status = bed.status()
    assert status["currentVersion"] == 1 and not status.get("rollout")


def test_promote_makes_the_canary_the_stable_version(bed: Harness) -> None:
    now = canary_running(bed)
    bed.cycle(now)
    bed.apply({**loop(annotations={"feedbackloop.dev/retrain": "r1", "feedbackloop.dev/promote": "p1"})})
    actions = bed.cycle(now + 1) + bed.cycle(now + 2)
    assert "update" in [verb for verb, _ in actions]  # the stable Deployment moves to version 2
    assert any(w == "Deployment team-a/churn v2" for w in writes(actions, "update"))
    assert bed.status()["currentVersion"] == 2


def test_a_clearly_worse_canary_is_rolled_back_by_the_analysis(bed: Harness) -> None:
    now = canary_running(bed)
    bed.cycle(now)

    def counts(correct_canary: float, correct_stable: float, labelled: float):  # noqa: ANN202
        def answer(query: str):  # noqa: ANN202
            wanted = correct_canary if "correct" in query else labelled
            stable = correct_stable if "correct" in query else labelled
            return [({"track": "canary", "version": "2"}, wanted), ({"track": "stable", "version": "1"}, stable)]

        return answer

    bed.prometheus.answer("mfl_feedback", counts(300, 470, 500))
    bed.prometheus.answer("mfl_http_requests_total", [({"track": "canary", "version": "2"}, 500)])
    deleted = []
    for step in range(1, 8):
        deleted += writes(bed.cycle(now + 10 * step), "delete")
    assert deleted == ["Deployment team-a/churn-canary"]
    status = bed.status()
    assert status["currentVersion"] == 1 and not status.get("rollout")
    assert status["history"][-1]["outcome"] == "RolledBack"


def test_a_restart_mid_training_creates_no_second_job(bed: Harness) -> None:
    bed.apply(loop())
    bed.cycle(T0)
    bed.new_engine()  # the operator restarts: it knows only what the API server holds
    assert writes(bed.cycle(T0 + 5), "create") == []
    assert list(bed.kube.jobs) == ["team-a/churn-train-v1"]


def test_a_restart_mid_canary_keeps_one_canary(bed: Harness) -> None:
    now = canary_running(bed)
    bed.cycle(now)
    bed.new_engine()
    actions = bed.cycle(now + 1)
    assert writes(actions, "create") == [] and writes(actions, "delete") == []
    assert [k for k in bed.kube.deployments if k.endswith("-canary")] == ["team-a/churn-canary"]
    assert bed.status()["phase"] == "Canary"


def test_a_lost_job_is_created_again_under_the_same_name(bed: Harness) -> None:
    bed.apply(loop())
    bed.cycle(T0)
    del bed.kube.jobs["team-a/churn-train-v1"]  # someone deleted it
    assert writes(bed.cycle(T0 + 5), "create") == ["Job team-a/churn-train-v1"]


def test_an_invalid_spec_is_reported_and_nothing_else_happens(bed: Harness) -> None:
    body = loop()
    body["spec"]["monitoring"]["metrics"][0]["query"] = 'x{model="{{modle}}"}'  # a misspelt placeholder
    bed.apply(body)
    actions = bed.cycle(T0)
    assert writes(actions, "create") == []
    assert "Warning InvalidSpec" in reasons(actions)
    ready = {c["type"]: c for c in bed.status()["conditions"]}
    assert bed.status()["phase"] == "Invalid" and ready["Stalled"]["reason"] == "InvalidSpec"
    assert "spec.monitoring.metrics[0].query" in json.dumps(bed.status())


def test_prometheus_down_during_monitoring_starts_no_retraining(bed: Harness) -> None:
    now = serving_v1(bed)
    bed.prometheus.down = True
    created = [w for step in range(1, 10) for w in writes(bed.cycle(now + 10 * step), "create")]
    assert created == []
    assert bed.status()["phase"] == "Monitoring"


def test_prometheus_down_during_a_canary_neither_rolls_back_nor_promotes_and_the_canary_resumes(bed: Harness) -> None:
    """An outage longer than consecutiveErrorLimit looks is missing data, not evidence (issue 10)."""
    now = canary_running(bed)
    bed.cycle(now)
    bed.prometheus.down = True
    actions = [a for step in range(1, 13) for a in bed.cycle(now + 10 * step)]  # 12 looks > the limit of 4
    assert writes(actions, "delete") == [] and "Warning RolledBack" not in reasons(actions)
    rollout = bed.status()["rollout"]
    assert rollout["analysisPhase"] == "Running" and rollout["consecutiveErrors"] == 0
    assert "Prometheus unavailable" in " ".join(e["message"] for e in rollout["evidence"])
    bed.prometheus.down = False  # back: a clearly worse canary is still caught
    bed.prometheus.answer("mfl_feedback", worse_canary)
    deleted = [w for step in range(13, 20) for w in writes(bed.cycle(now + 10 * step), "delete")]
    assert deleted == ["Deployment team-a/churn-canary"]


def test_a_query_prometheus_refuses_is_an_error_that_ends_the_canary(bed: Harness) -> None:
    from feedbackloop.runtime.poller import QueryRejected

    now = canary_running(bed)
    bed.cycle(now)

    def refuse(query: str):  # noqa: ANN202
        raise QueryRejected("HTTP Status Code 400 (bad_data: parse error)")

    bed.prometheus.answer("mfl_feedback", refuse)
    actions = [a for step in range(1, 8) for a in bed.cycle(now + 10 * step)]
    assert writes(actions, "delete") == ["Deployment team-a/churn-canary"]
    assert "refused" in bed.status()["history"][-1]["message"] or "errors" in bed.status()["history"][-1]["message"]


def worse_canary(query: str) -> list[tuple[dict[str, str], float]]:
    correct = "correct" in query
    return [
        ({"track": "canary", "version": "2"}, 300 if correct else 500),
        ({"track": "stable", "version": "1"}, 470 if correct else 500),
    ]


def test_a_black_hole_prometheus_costs_only_its_own_loops() -> None:
    """One tenant's Prometheus never answers; another tenant's loop is polled and recorded meanwhile."""
    import asyncio
    import threading

    release = threading.Event()
    bed = Harness()
    bed.prometheus.answer("accuracy_of", [({"model": "churn", "namespace": "team-a"}, 0.95)])
    query = bed.prometheus.query

    def black_hole_for_team_b(endpoint, text):  # noqa: ANN001, ANN202
        if "blackhole" in endpoint.url:
            release.wait(30)  # a socket that accepts and never answers, until its timeout
        return query(endpoint, text)

    bed.engine.observer.poller._query = black_hole_for_team_b
    healthy, stuck = loop(), loop()
    stuck["metadata"].update(namespace="team-b", uid="uid-b")
    stuck["spec"]["monitoring"]["prometheus"]["url"] = "http://blackhole:9090"
    for body in (healthy, stuck):
        body["spec"]["model"]["initialVersion"] = 1
        bed.apply(body)

    async def scenario() -> None:
        engine = bed.engine
        for tick in range(20):  # the run loop: a cycle per wake-up or tick, never waiting on a poll
            await engine.cycle(T0 + tick * 0.05)
            await asyncio.sleep(0.05)
            if (bed.kube.loops["team-a/churn"].get("status") or {}).get("metrics"):
                break
        assert (bed.kube.loops["team-a/churn"].get("status") or {}).get("metrics"), "the healthy loop waited"
        assert not (bed.kube.loops["team-b/churn"].get("status") or {}).get("metrics")
        release.set()
        await engine.settle()

    asyncio.run(scenario())


def test_a_token_is_sent_only_where_its_secret_allows() -> None:
    """A loop may name a Secret its author cannot read; the token goes nowhere the Secret does not name."""
    bed = Harness()
    seen_tokens: list[str | None] = []
    query = bed.prometheus.query

    def recording(endpoint, text):  # noqa: ANN001, ANN202
        seen_tokens.append(endpoint.token)
        return query(endpoint, text)

    bed.engine.observer.poller._query = recording
    bed.prometheus.answer("accuracy_of", [({"model": "churn", "namespace": "team-a"}, 0.95)])
    bed.kube.secrets["team-a/prom-token"] = {"token": "s3cret"}
    body = loop()
    body["spec"]["model"]["initialVersion"] = 1
    body["spec"]["monitoring"]["prometheus"] = {
        "url": "https://attacker.example.com",
        "bearerTokenSecretRef": {"name": "prom-token", "key": "token"},
    }
    bed.apply(body)
    bed.cycle(T0)
    assert seen_tokens == []  # nothing was queried with (or without) the token
    message = json.dumps(bed.status()["conditions"])
    assert "does not say where its token may go" in message and "s3cret" not in message

    bed.kube.secret_annotations["team-a/prom-token"] = {"feedbackloop.dev/prometheus-hosts": "prometheus.example.com"}
    bed.engine.observer._secrets.clear()  # the Secret cache (60 s) would pick the annotation up by itself
    bed.cycle(T0 + 10)
    assert seen_tokens == [] and "allows its token only to prometheus.example.com" in json.dumps(bed.status())

    body["spec"]["monitoring"]["prometheus"]["url"] = "https://prometheus.example.com"
    bed.apply(body)
    bed.cycle(T0 + 20)
    assert seen_tokens and set(seen_tokens) == {"s3cret"}


def test_a_spec_change_rolls_out_to_the_stable_deployment(bed: Harness) -> None:
    now = serving_v1(bed)
    body = loop()
    body["spec"]["model"]["serving"] = {"replicas": 3, "image": "registry.example/mfl-server:0.2.0"}
    bed.apply(body)
    actions = bed.cycle(now + 1)
    assert writes(actions, "update") == ["Deployment team-a/churn v1"]
    assert "Normal ServingUpdated" in reasons(actions)
    deployment = bed.kube.deployments["team-a/churn"]
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example/mfl-server:0.2.0"
    assert [a for a in bed.cycle(now + 2) if a[0] != "patch-status"] == []  # converged (status shows 3 replicas)


def test_a_hand_edit_of_the_stable_deployment_is_undone_with_a_warning(bed: Harness) -> None:
    now = serving_v1(bed)
    bed.kube.deployments["team-a/churn"]["spec"]["replicas"] = 0  # kubectl scale --replicas=0
    bed.watch()
    actions = bed.cycle(now + 1)
    assert writes(actions, "update") == ["Deployment team-a/churn v1"]
    assert "Warning DriftCorrected" in reasons(actions)
    assert bed.kube.deployments["team-a/churn"]["spec"]["replicas"] == 2
    assert [a for a in bed.cycle(now + 2) if a[0] != "patch-status"] == []


def test_finished_jobs_are_kept_for_the_last_versions_only(bed: Harness) -> None:
    now = serving_v1(bed)
    for version in range(2, 6):  # manual retrainings, each gated and rejected (challenger worse)
        bed.apply(loop(annotations={"feedbackloop.dev/retrain": f"r{version}"}))
        bed.cycle(now)
        bed.kube.finish_job(f"team-a/churn-train-v{version}", True, trained(version, 0.5, champion=0.93))
        bed.cycle(now + 1)
        now += 20
    assert sorted(bed.kube.jobs) == ["team-a/churn-train-v3", "team-a/churn-train-v4", "team-a/churn-train-v5"]


def test_a_loop_being_deleted_is_left_alone(bed: Harness) -> None:
    """Its namespace may be terminating: every create would be refused, and nothing needs making anyway."""
    now = serving_v1(bed)
    del bed.kube.deployments["team-a/churn"]  # garbage-collected first
    bed.kube.loops[KEY]["metadata"]["deletionTimestamp"] = "2027-01-15T08:00:00Z"
    bed.watch()
    assert bed.cycle(now + 1) == []


def test_serving_env_cannot_replace_what_the_operator_sets(bed: Harness) -> None:
    body = loop()
    body["spec"]["model"]["initialVersion"] = 1
    body["spec"]["model"]["serving"] = {
        "env": [{"name": "MFL_MODEL_VERSION", "value": "9"}, {"name": "X", "value": "1"}]
    }
    body["spec"]["retraining"]["dataWindow"] = "90d"
    bed.apply(body)
    bed.cycle(T0)
    env = {
        e["name"]: e.get("value")
        for e in bed.kube.deployments["team-a/churn"]["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["MFL_MODEL_VERSION"] == "1" and env["X"] == "1"
    assert env["MFL_FEEDBACK_MAX_AGE_SECONDS"] == str(90 * 86400)  # labels are taken as long as training reads them


def test_a_deleted_loop_leaves_its_httproute_sending_nothing_to_a_canary(bed: Harness) -> None:
    body = loop()
    body["spec"]["rollout"]["trafficRouting"] = {"httpRoute": {"name": "churn-route"}}
    bed.apply(body)
    bed.cycle(T0)
    bed.kube.route_weights["team-a/churn-route"] = 50  # a canary was at 50 %
    stored = bed.kube.loops.pop(KEY)
    bed.engine.observe_loop("DELETED", stored)
    actions = bed.cycle(T0 + 1)
    assert ("patch", "HTTPRoute churn-route canary=0") in actions
    assert bed.kube.route_weights["team-a/churn-route"] == 0
