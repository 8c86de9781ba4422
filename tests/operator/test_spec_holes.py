"""Specs the CRD accepted that the operator could not run (issue 10, item 1): each is now InvalidSpec naming
the field, or works. tests/operator/test_spec_properties.py draws specs at random; these pin each hole."""

from __future__ import annotations

import copy
import json
import math
from typing import Any

import pytest

from feedbackloop import crdgen
from feedbackloop.core import api, canary, phases, resources, validation
from feedbackloop.core.monitoring import Sample, rules_of
from feedbackloop.core.phases import JobObservation, World, decide
from feedbackloop.core.timeutil import format_time
from mfl_trainer import config as trainer_config
from mfl_trainer import estimators as trainer_estimators
from mfl_trainer import evaluation

NOW = 1_800_000_000.0
BASE: dict[str, Any] = {
    "model": {"name": "churn", "storage": {"persistentVolumeClaim": {"claimName": "artifacts"}}},
    "monitoring": {"prometheus": {"url": "http://prometheus:9090"}},
    "retraining": {"features": ["a", "b"], "target": "y"},
}
SPEC_SCHEMA = crdgen.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]


def with_(path: str, value: Any) -> dict[str, Any]:
    """BASE with one nested field set ('rollout.analysis.alpha')."""
    spec = copy.deepcopy(BASE)
    *parents, leaf = path.split(".")
    node = spec
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value
    return spec


def error_of(raw: dict[str, Any]) -> str:
    spec, error = validation.parse_spec(raw)
    assert spec is None, "the spec should be refused"
    return error


def parsed(raw: dict[str, Any]) -> api.ModelFeedbackLoopSpec:
    spec, error = validation.parse_spec(raw)
    assert spec is not None, error
    return spec


# --- the canary analysis: what used to raise at the first look ----------------------------------------


@pytest.mark.parametrize(
    "analysis, field",
    [
        ({"maxDegradation": 0.05, "detectableDegradation": 0.05}, "spec.rollout.analysis.detectableDegradation:"),
        ({"maxDegradation": 0.05, "detectableDegradation": 0.03}, "spec.rollout.analysis.detectableDegradation:"),
        ({"maxDegradation": 0.7}, "spec.rollout.analysis.maxDegradation:"),  # 1.5 x 0.7 >= 1
        ({"availabilityMaxDegradation": 0.7}, "spec.rollout.analysis.availabilityMaxDegradation:"),
        ({"alpha": 5e-324}, "spec.rollout.analysis.alpha:"),  # alpha / checks underflowed to 0
        ({"maxDegradation": 5e-324}, "spec.rollout.analysis.maxDegradation:"),
        ({"latency": {"minSamples": 1}}, "spec.rollout.analysis.latency.minSamples:"),
        ({"checks": [{"name": "gpu", "query": "x"}]}, "spec.rollout.analysis.checks.0:"),  # neither min nor max
        ({"checks": [{"name": "gpu", "query": "x", "min": 2, "max": 1}]}, "spec.rollout.analysis.checks.0:"),
    ],
)
def test_an_analysis_the_core_would_refuse_is_an_invalid_spec(analysis: dict[str, Any], field: str) -> None:
    assert error_of(with_("rollout.analysis", analysis)).startswith(field)


@pytest.mark.parametrize(
    "analysis",
    [
        {"maxDegradation": 0.05, "detectableDegradation": 0.06},
        {"maxDegradation": 0.7, "detectableDegradation": 0.9},  # large margins work with an explicit target
        {"maxDegradation": 0.66, "availabilityMaxDegradation": 0.66, "alpha": 0.0001, "beta": 0.0001},
        {"latency": {"minSamples": 2}, "checks": [{"name": "gpu", "query": "x", "max": 1}]},
    ],
)
def test_the_analysis_of_an_accepted_spec_configures_and_judges(analysis: dict[str, Any]) -> None:
    spec = parsed(with_("rollout.analysis", analysis))
    for task in ("classification", "regression"):
        canary.analysis_config(spec.rollout.analysis, task)
    rollout = {"version": 2, "step": 0, "startedAt": format_time(NOW - 60)}
    counts = (canary.ArmCounts(90, 100), canary.ArmCounts(900, 1000))
    observation = canary.CanaryObservation(accuracy=counts, availability=counts, checks={"gpu": 0.5})
    verdict = canary.judge_canary(spec.rollout.analysis, "classification", rollout, observation, NOW)
    assert verdict.phase in ("Running", "Successful", "Failed", "Inconclusive")


def test_an_unknown_placeholder_in_a_threshold_check_is_an_invalid_spec() -> None:
    checks = [{"name": "gpu", "query": 'ok{model="{{model}}"}', "max": 1}, {"name": "q", "query": "x{{job}}", "max": 1}]
    assert error_of(with_("rollout.analysis.checks", checks)).startswith("spec.rollout.analysis.checks[1].query:")
    rule = {"name": "acc", "query": "x", "min": 0.5, "minSamples": 5, "samplesQuery": "n{{jobs}}"}
    assert error_of(with_("monitoring.metrics", [rule])).startswith("spec.monitoring.metrics[0].samplesQuery:")


# --- a regression loop gets defaults that work ---------------------------------------------------------


def test_a_regression_loop_defaults_to_a_regressor_and_a_regression_metric() -> None:
    spec = parsed(with_("model.task", "regression"))
    assert spec.retraining is not None
    assert (spec.retraining.estimator, spec.retraining.gate.metric) == ("hist_gradient_boosting_regressor", "mae")
    classification = parsed(BASE).retraining
    assert classification is not None
    assert (classification.estimator, classification.gate.metric) == ("hist_gradient_boosting", "accuracy")


def test_task_defaults_are_not_in_the_crd() -> None:
    """The API server fills a schema default in before the operator sees model.task."""
    retraining = SPEC_SCHEMA["properties"]["retraining"]["properties"]
    assert "default" not in retraining["estimator"] and "default" not in retraining["gate"]["properties"]["metric"]


@pytest.mark.parametrize(
    "task, retraining, field",
    [
        ("regression", {"estimator": "random_forest"}, "spec.retraining.estimator:"),
        ("classification", {"estimator": "ridge"}, "spec.retraining.estimator:"),
        ("regression", {"gate": {"metric": "accuracy"}}, "spec.retraining.gate.metric:"),
        ("classification", {"gate": {"metric": "mae"}}, "spec.retraining.gate.metric:"),
        ("regression", {"estimator": "ridge", "incremental": True}, "spec.retraining.incremental:"),
        ("classification", {"features": ["a", "a"]}, "spec.retraining.features:"),
        ("classification", {"features": ["a", "y"]}, "spec.retraining.target:"),
        ("classification", {"features": [""]}, "spec.retraining.features.0:"),
        ("classification", {"dataWindow": "0s"}, "spec.retraining.dataWindow:"),
    ],
)
def test_retraining_the_trainer_would_refuse_is_an_invalid_spec(
    task: str, retraining: dict[str, Any], field: str
) -> None:
    raw = with_("model.task", task)
    raw["retraining"].update(retraining)
    assert error_of(raw).startswith(field)


def test_the_task_defaults_and_sets_are_the_trainers() -> None:
    assert api.DEFAULT_ESTIMATOR == trainer_config.DEFAULT_ESTIMATOR
    for task, names in api.TASK_ESTIMATORS.items():
        assert {trainer_estimators.ESTIMATORS[name].task for name in names} == {task}
        assert set(api.TASK_METRICS[task]) == set(evaluation.metrics(task, [1.0, 0.0], [1.0, 0.0]))
        assert api.TASK_METRICS[task][0] == evaluation.PRIMARY_METRIC[task]  # the gate's default
    assert set(api.NOT_INCREMENTAL) == {n for n, s in trainer_estimators.ESTIMATORS.items() if s.incremental is None}


# --- bounded, finite numbers --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path, value, field",
    [
        ("monitoring.metrics", [{"name": "acc", "query": "x", "min": math.nan}], "spec.monitoring.metrics.0.min:"),
        ("monitoring.metrics", [{"name": "acc", "query": "x", "max": math.inf}], "spec.monitoring.metrics.0.max:"),
        ("retraining.recentWeight", math.nan, "spec.retraining.recentWeight:"),
        ("retraining.gate", {"minScore": -math.inf}, "spec.retraining.gate.minScore:"),
        ("retraining.hyperparameters", {"alpha": [1, math.nan]}, "spec.retraining.hyperparameters.alpha.1:"),
        (
            "rollout.analysis.checks",
            [{"name": "g", "query": "x", "max": math.nan}],
            "spec.rollout.analysis.checks.0.max:",
        ),
        ("monitoring.defaultLatencyP99MaxSeconds", math.inf, "spec.monitoring.defaultLatencyP99MaxSeconds:"),
        ("retraining.failureBackoff", "99999999d", "spec.retraining.failureBackoff:"),  # now + it is no date
        ("model.initialVersion", 2**63 - 1, "spec.model.initialVersion:"),  # the next version overflows int64
    ],
)
def test_non_finite_and_unbounded_numbers_are_invalid_specs(path: str, value: Any, field: str) -> None:
    assert error_of(with_(path, value)).startswith(field)


def test_the_longest_backoff_still_dates_a_failed_training() -> None:
    spec = parsed(with_("retraining.failureBackoff", f"{api.MAX_DURATION_SECONDS // 86400}d"))  # the longest allowed
    run = {"version": 2, "jobName": "j", "trigger": "Breach", "startedAt": format_time(NOW), "parentVersion": 1}
    status = {"currentVersion": 1, "phase": phases.RETRAINING, "retraining": run}
    world = World(now=NOW, name="churn", generation=1, spec=spec, status=status, job=JobObservation("j", "Failed"))  # type: ignore[arg-type]
    assert decide(world).status["failureBackoffUntil"].startswith("2037-")  # 2027 + 3650d


# --- what the API server would refuse in the objects the operator creates -----------------------------


@pytest.mark.parametrize(
    "requests, limits, field",
    [
        ({"cpu": "2"}, {"cpu": "500m"}, "spec.model.serving.resources.requests.cpu:"),
        ({"memory": "2Gi"}, {"memory": "1024Mi"}, "spec.model.serving.resources.requests.memory:"),
    ],
)
def test_a_request_above_its_limit_is_an_invalid_spec(
    requests: dict[str, str], limits: dict[str, str], field: str
) -> None:
    assert error_of(with_("model.serving.resources", {"requests": requests, "limits": limits})).startswith(field)
    assert parsed(with_("model.serving.resources", {"requests": limits, "limits": limits}))


@pytest.mark.parametrize(
    "path, value, field",
    [
        ("model.storage.mountPath", "/var/run/mfl-scratch/", "spec.model.storage.mountPath:"),  # two volumes, one path
        ("model.storage.mountPath", "/", "spec.model.storage.mountPath:"),
        (
            "model.storage",
            {"persistentVolumeClaim": {"claimName": "My Claim"}},
            "spec.model.storage.persistentVolumeClaim.claimName:",
        ),
        ("monitoring.prometheus.url", "http://", "spec.monitoring.prometheus.url:"),
        ("monitoring.prometheus.url", "http://prometheus:99999", "spec.monitoring.prometheus.url:"),
        (
            "monitoring.prometheus.bearerTokenSecretRef",
            {"name": "Token!", "key": "t"},
            "spec.monitoring.prometheus.bearerTokenSecretRef.name:",
        ),
    ],
)
def test_what_kubernetes_or_prometheus_would_refuse_is_an_invalid_spec(path: str, value: Any, field: str) -> None:
    assert error_of(with_(path, value)).startswith(field)


def _loop(name: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "team-a", "uid": "u-1"}}


def test_names_that_worked_stay_as_they_were() -> None:
    spec = parsed(BASE)
    loop = _loop("churn")
    assert resources.server_deployment(loop, spec, 1, "stable", 2)["metadata"]["name"] == "churn"
    assert resources.server_deployment(loop, spec, 1, "canary", 1)["metadata"]["name"] == "churn-canary"
    assert [resources.service(loop, spec, t)["metadata"]["name"] for t in (None, "stable", "canary")] == [
        "churn",
        "churn-stable",
        "churn-canary",
    ]
    assert resources.signing_secret(loop, "k")["metadata"]["name"] == "churn-signing-key"
    assert resources.common_labels("churn")[resources.LOOP_LABEL] == "churn"


@pytest.mark.parametrize("name", ["1churn", "churn.v2", "a" * 64, "b" * 253, "c" * 52 + ".de"])
def test_every_loop_name_the_api_server_accepts_gives_valid_children(name: str) -> None:
    spec = parsed(BASE)
    loop = _loop(name)
    for track in (None, "stable", "canary"):
        service = resources.service(loop, spec, track)["metadata"]["name"]
        assert len(service) <= 63 and resources.DNS1035_LABEL.fullmatch(service), service
    deployment = resources.server_deployment(loop, spec, 1, "canary", 1)
    assert len(deployment["metadata"]["name"]) <= resources.MAX_DEPLOYMENT
    for value in (*deployment["metadata"]["labels"].values(), *deployment["spec"]["selector"]["matchLabels"].values()):
        assert len(value) <= 63 and resources.LABEL_VALUE.fullmatch(value), value


def test_two_long_loop_names_never_share_a_child() -> None:
    first, second = "a" * 70 + "x", "a" * 70 + "y"
    assert resources.loop_label(first) != resources.loop_label(second)
    assert resources.service_name(first, "canary") != resources.service_name(second, "canary")
    assert resources.service_name("churn.v2") != resources.service_name("churn-v2")


# --- found, and left to the owners of phases.py, monitoring.py and crdgen.py (see the report) -----------


def test_training_job_names_are_valid_and_distinct() -> None:
    dotted = phases.job_name("c" * 53 + ".de", 1)
    assert resources.DNS1123_SUBDOMAIN.fullmatch(dotted), dotted  # 'ccc.-train-v1'
    assert phases.job_name("a" * 70 + "x", 1) != phases.job_name("a" * 70 + "y", 1)  # one loop follows the other's Job


def test_the_status_history_bound_is_what_the_operator_keeps() -> None:
    status = crdgen.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    assert status["properties"]["history"]["maxItems"] == phases.HISTORY_LIMIT


def test_an_infinite_metric_value_leaves_a_valid_status() -> None:
    spec = parsed(BASE)
    rules = rules_of(spec.monitoring, spec.model.task)  # latencyP99: histogram_quantile says +Inf past the last bucket
    polled = ({r.name: Sample(math.inf, NOW) for r in rules},)
    status = {"currentVersion": 1, "phase": phases.MONITORING}
    world = World(now=NOW, name="churn", generation=1, spec=spec, status=status, samples=polled)  # type: ignore[arg-type]
    json.dumps(decide(world).status, allow_nan=False)
