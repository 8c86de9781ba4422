"""Issue 10: a Prometheus outage is missing data, never a verdict. Prometheus stops for longer than the
consecutive-error window during Monitoring and during a canary, then comes back on the same address:
no retraining starts on the outage, the canary is neither rolled back nor promoted while the data is
missing, the conditions say why, and the canary resumes and finishes."""

from __future__ import annotations

import time

from mfl_testbed.traffic import TrafficGenerator, service_endpoints

from .conftest import artifact_claim, write_base_data
from .test_loop import history_outcomes, jobs_of, loop_manifest

OUTAGE_SECONDS = 20  # > 4 analysis looks of 2 s (consecutiveErrorLimit) and > the rule's `for` of 6 s


def outage(prometheus, seconds: float, during) -> None:  # noqa: ANN001
    """Prometheus down for `seconds`, `during(elapsed)` called every second; back on the same address."""
    prometheus.stop()
    try:
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            during(time.monotonic() - started)
            time.sleep(1)
    finally:
        prometheus.start()


def test_an_outage_during_monitoring_and_a_canary_decides_nothing(loops, prometheus, kubectl, k8s_namespace):
    ns = k8s_namespace
    claim, storage = artifact_claim(loops.cluster, ns)
    write_base_data(storage, "churn", 3000)
    manifest = loop_manifest(ns, prometheus.url, claim, pauses=("20s", "20s"))
    manifest["spec"]["rollout"]["analysis"]["maxDuration"] = "10m"
    loops.apply(manifest)
    loops.wait_condition(ns, "churn", "Ready", "True", 180)
    traffic = TrafficGenerator(service_endpoints(kubectl, ns, "churn"), rate=80, batch=8, label_delay=1.0).start()
    try:
        loops.wait(ns, "churn", lambda s: (s.get("metrics") or [{}])[0].get("state") == "Healthy", 90, "healthy")

        # During Monitoring: no data for longer than `for`, and nothing starts.
        said: list[str] = []

        def monitoring(elapsed: float) -> None:
            status = loops.status(ns, "churn")
            assert not status.get("retraining"), f"a retraining started {elapsed:.0f}s into the outage"
            condition = next((c for c in status.get("conditions", []) if c["type"] == "MetricsAvailable"), {})
            if condition.get("status") == "False":
                said.append(condition.get("message", ""))

        outage(prometheus, OUTAGE_SECONDS, monitoring)
        status = loops.status(ns, "churn")
        assert jobs_of(kubectl, ns) == ["churn-train-v1"] and status["phase"] == "Monitoring"
        assert any("connection refused" in message.lower() for message in said), said
        loops.wait_condition(ns, "churn", "MetricsAvailable", "True", 60)

        # A drift, a retraining, a canary; then the outage.
        traffic.concept = 1
        # The first candidate after the drift may be rejected by the offline gate; the canary is the next.
        status = loops.wait(ns, "churn", lambda s: s.get("phase") == "Canary", 420, "a candidate's canary")
        canary_version = status["rollout"]["version"]

        evidence: list[str] = []

        def canary(elapsed: float) -> None:
            status = loops.status(ns, "churn")
            rollout = status.get("rollout")
            assert status.get("phase") == "Canary" and rollout, f"the canary ended at {elapsed:.0f}s"
            assert rollout["analysisPhase"] == "Running" and rollout["consecutiveErrors"] == 0, rollout
            evidence.extend(e.get("message", "") for e in rollout.get("evidence", []))

        outage(prometheus, OUTAGE_SECONDS, canary)
        assert any("Prometheus unavailable" in message for message in evidence), evidence
        status = loops.wait(ns, "churn", lambda s: not s.get("rollout"), 300, "the canary to finish")
    finally:
        traffic.stop()
    assert history_outcomes(status)[-1] == (canary_version, "Promoted"), history_outcomes(status)
    assert "RolledBack" not in loops.reasons(ns, "churn")
