"""Issue 21: retraining.engine Dask. The spec and its validation, the DaskJob builder (pure), the observation
of a DaskJob and its runner through the engine over the in-memory API, a missing DaskJob CRD said plainly, and
OOMKilled said plainly on both engines."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from feedbackloop.core import api, phases, resources, validation
from feedbackloop.runtime import kube

from .fake_kube import FakeKube, FakePrometheus, Harness
from .test_engine_cycle import KEY, T0, loop, reasons, trained, writes

LOOP = {"metadata": {"name": "churn", "namespace": "team-a", "uid": "u-1"}}
DASK_RETRAINING = {
    "features": ["a", "b"],
    "target": "label",
    "estimator": "lightgbm",
    "engine": "Dask",
    "cooldown": "10s",
    "maxRetrainsPerDay": 5,
    "trainer": {"resources": {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"memory": "256Mi"}}},
}


def raw(retraining: dict[str, Any] | None = None, storage: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "model": {"name": "churn", "storage": storage or {"persistentVolumeClaim": {"claimName": "artifacts"}}},
        "monitoring": {
            "prometheus": {"url": "http://prometheus:9090"},
            "metrics": [{"name": "accuracy", "query": "accuracy_of", "min": 0.8}],
        },
        "retraining": copy.deepcopy(DASK_RETRAINING if retraining is None else retraining),
    }


def parsed(spec: dict[str, Any]) -> api.ModelFeedbackLoopSpec:
    result, error = validation.parse_spec(spec)
    assert result is not None, error
    return result


def build(spec: api.ModelFeedbackLoopSpec, name: str = "churn-train-v3") -> dict[str, Any]:
    return resources.dask_job(LOOP, spec, name, 3, 2, "Breach", canary=None, started_at=T0)


def pods(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    cluster = job["spec"]["cluster"]["spec"]
    return {
        "runner": job["spec"]["job"]["spec"],
        "worker": cluster["worker"]["spec"],
        "scheduler": cluster["scheduler"]["spec"],
    }


# --- the spec --------------------------------------------------------------------------------------------


def test_the_engine_defaults_to_job_and_dask_has_its_defaults() -> None:
    spec = parsed(raw({"features": ["a"], "target": "label"}))
    assert spec.retraining is not None
    assert spec.retraining.engine == "Job"
    dask = spec.retraining.dask
    assert dask.image == "ghcr.io/feedbackloop/mfl-trainer-dask:0.1.0"
    assert (dask.workers, dask.worker_threads) == (2, 1)
    assert dask.worker_resources.model_dump(by_alias=True, exclude_none=True) == {
        "requests": {"cpu": "500m", "memory": "1Gi"},
        "limits": {"memory": "1Gi"},
    }
    assert dask.scheduler_resources.model_dump(by_alias=True, exclude_none=True) == {
        "requests": {"cpu": "100m", "memory": "256Mi"},
        "limits": {"memory": "512Mi"},
    }


def test_the_dask_fields_are_camel_case_on_the_wire() -> None:
    retraining = {
        **DASK_RETRAINING,
        "dask": {
            "image": "registry.local/dask:1",
            "workers": 4,
            "workerThreads": 2,
            "workerResources": {"limits": {"memory": "2Gi"}},
            "schedulerResources": {"requests": {"cpu": "50m"}},
        },
    }
    dask = parsed(raw(retraining)).retraining.dask  # type: ignore[union-attr]
    assert (dask.image, dask.workers, dask.worker_threads) == ("registry.local/dask:1", 4, 2)
    assert dask.worker_resources.limits.memory == "2Gi" and dask.scheduler_resources.requests.cpu == "50m"


@pytest.mark.parametrize("estimator", ["hist_gradient_boosting", "random_forest", "keras_dense"])
def test_engine_dask_needs_lightgbm_naming_the_estimator(estimator: str) -> None:
    spec, error = validation.parse_spec(raw({**DASK_RETRAINING, "estimator": estimator}))
    assert spec is None
    assert "spec.retraining.estimator" in error and "engine Dask" in error and "lightgbm" in error, error


def test_engine_dask_without_an_estimator_is_refused_too() -> None:
    retraining = {k: v for k, v in DASK_RETRAINING.items() if k != "estimator"}
    spec, error = validation.parse_spec(raw(retraining))
    assert spec is None and "spec.retraining.estimator" in error, error


def test_a_regression_loop_trains_lightgbm_regressor_on_dask() -> None:
    spec = raw({**DASK_RETRAINING, "estimator": "lightgbm_regressor"})
    spec["model"]["task"] = "regression"
    assert parsed(spec).retraining.engine == "Dask"  # type: ignore[union-attr]


def test_a_dask_block_without_engine_dask_is_harmless() -> None:
    retraining = {"features": ["a"], "target": "label", "dask": {"workers": 8}}
    spec = parsed(raw(retraining))
    assert spec.retraining is not None and spec.retraining.engine == "Job"


@pytest.mark.parametrize(
    "dask, field",
    [
        ({"workers": 0}, "workers"),
        ({"workers": 65}, "workers"),
        ({"workerThreads": 0}, "workerThreads"),
        ({"workerResources": {"requests": {"memory": "2Gi"}, "limits": {"memory": "1Gi"}}}, "workerResources"),
        ({"image": ""}, "image"),
        ({"replicas": 2}, "replicas"),
    ],
)
def test_dask_bounds(dask: dict[str, Any], field: str) -> None:
    spec, error = validation.parse_spec(raw({**DASK_RETRAINING, "dask": dask}))
    assert spec is None and f"spec.retraining.dask.{field}" in error, error


def test_the_crd_has_the_engine_and_the_dask_block() -> None:
    from feedbackloop import crdgen

    schema = crdgen.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    retraining = schema["properties"]["spec"]["properties"]["retraining"]["properties"]
    assert retraining["engine"]["enum"] == ["Job", "Dask"] and retraining["engine"]["default"] == "Job"
    dask = retraining["dask"]["properties"]
    assert set(dask) == {"image", "workers", "workerResources", "schedulerResources", "workerThreads"}
    assert (dask["workers"]["minimum"], dask["workers"]["maximum"], dask["workers"]["default"]) == (1, 64, 2)
    status = schema["properties"]["status"]["properties"]["retraining"]["properties"]
    assert status["engine"]["enum"] == ["Job", "Dask"]


# --- the DaskJob -------------------------------------------------------------------------------------------


def test_the_daskjob_is_the_dask_kubernetes_shape_owned_by_the_loop() -> None:
    job = build(parsed(raw()))
    assert (job["apiVersion"], job["kind"]) == ("kubernetes.dask.org/v1", "DaskJob")
    assert job["metadata"]["name"] == "churn-train-v3" and job["metadata"]["namespace"] == "team-a"
    assert job["metadata"]["ownerReferences"] == [resources.owner_reference(LOOP)]
    training = resources.training_job(LOOP, parsed(raw()), "churn-train-v3", 3, 2, "Breach", started_at=T0)
    assert job["metadata"]["labels"] == training["metadata"]["labels"]
    cluster = job["spec"]["cluster"]["spec"]
    assert cluster["worker"]["replicas"] == 2
    assert cluster["scheduler"]["service"] == {
        "type": "ClusterIP",
        "selector": {"dask.org/cluster-name": "churn-train-v3", "dask.org/component": "scheduler"},
        "ports": [
            {"name": "tcp-comm", "protocol": "TCP", "port": 8786, "targetPort": "tcp-comm"},
            {"name": "http-dashboard", "protocol": "TCP", "port": 8787, "targetPort": "http-dashboard"},
        ],
    }


def test_the_runner_is_the_trainer_container_in_the_dask_image() -> None:
    spec = parsed(raw())
    job = build(spec)
    runner = job["spec"]["job"]["spec"]
    assert runner["restartPolicy"] == "Never"
    assert runner["activeDeadlineSeconds"] == 3600
    (container,) = runner["containers"]
    training = resources.training_job(LOOP, spec, "churn-train-v3", 3, 2, "Breach", started_at=T0)
    (trainer,) = training["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "ghcr.io/feedbackloop/mfl-trainer-dask:0.1.0"
    assert "command" not in container  # the image's entry point: mfl-trainer
    same = ("name", "resources", "volumeMounts", "securityContext", "terminationMessagePath")
    assert {k: container[k] for k in same} == {k: trainer[k] for k in same}
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert runner["volumes"] == training["spec"]["template"]["spec"]["volumes"]
    env = {e["name"]: e for e in container["env"]}
    job_env = {e["name"]: e for e in trainer["env"]}
    assert set(env) == set(job_env)
    config = json.loads(env["MFL_TRAINER_CONFIG"]["value"])
    job_config = json.loads(job_env["MFL_TRAINER_CONFIG"]["value"])
    assert config["engine"] == "dask" and config["dask"] == {"workers": 2, "waitSeconds": 300}
    assert config["trainerImage"] == "ghcr.io/feedbackloop/mfl-trainer-dask:0.1.0"
    assert {k: v for k, v in config.items() if k not in ("engine", "dask", "trainerImage")} == {
        k: v for k, v in job_config.items() if k != "trainerImage"
    }


def test_the_workers_read_the_store_and_the_scheduler_serves_the_comm_port() -> None:
    storage = {
        "s3": {"endpoint": "https://s3.example.com", "bucket": "models", "credentialsSecret": "s3-keys"},
        "database": {"urlSecret": {"name": "ledger", "key": "url"}},
    }
    spec = parsed(raw(storage=storage))
    job = build(spec)
    worker_pod = job["spec"]["cluster"]["spec"]["worker"]["spec"]
    (worker,) = worker_pod["containers"]
    assert worker["name"] == "worker" and worker["image"] == spec.retraining.dask.image  # type: ignore[union-attr]
    assert worker["command"] == ["dask"]
    assert worker["args"] == [
        "worker",
        "--nthreads",
        "1",
        "--memory-limit",
        str(2**30),
        "--name",
        "$(DASK_WORKER_NAME)",
        "--dashboard-address",
        ":8788",
    ]
    names = [e["name"] for e in worker["env"]]
    assert {e["name"] for e in resources.store_env(spec)} <= set(names)
    assert "MFL_DATABASE_URL" in names and "MFL_S3_SECRET_ACCESS_KEY" in names and "TMPDIR" in names
    assert "MFL_TRAINER_THREADS" in names and "MFL_TRAINER_CONFIG" not in names
    assert worker["resources"] == {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "1Gi"}}
    runner = job["spec"]["job"]["spec"]
    assert worker_pod["volumes"] == runner["volumes"]
    assert worker["volumeMounts"] == runner["containers"][0]["volumeMounts"]
    (scheduler,) = job["spec"]["cluster"]["spec"]["scheduler"]["spec"]["containers"]
    assert scheduler["command"] == ["dask"] and scheduler["args"] == ["scheduler"]
    assert [(p["name"], p["containerPort"]) for p in scheduler["ports"]] == [
        ("tcp-comm", 8786),
        ("http-dashboard", 8787),
    ]
    assert scheduler["readinessProbe"]["tcpSocket"] == {"port": "tcp-comm"}
    assert scheduler["resources"] == {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "512Mi"}}


def test_a_worker_without_a_memory_limit_gets_auto_and_its_threads() -> None:
    retraining = {**DASK_RETRAINING, "dask": {"workers": 3, "workerThreads": 4, "workerResources": {}}}
    job = build(parsed(raw(retraining)))
    worker = job["spec"]["cluster"]["spec"]["worker"]
    assert worker["replicas"] == 3
    args = worker["spec"]["containers"][0]["args"]
    assert args[args.index("--memory-limit") + 1] == "auto" and args[args.index("--nthreads") + 1] == "4"
    config = json.loads(job["spec"]["job"]["spec"]["containers"][0]["env"][0]["value"])
    assert config["dask"]["workers"] == 3


def test_every_dask_pod_is_restricted_with_scratch_and_no_token() -> None:
    for role, pod in pods(build(parsed(raw()))).items():
        assert pod["securityContext"] == resources.restricted_pod_security(), role
        assert pod["automountServiceAccountToken"] is False, role
        scratch = [v for v in pod["volumes"] if v["name"] == "scratch"]
        assert scratch == [{"name": "scratch", "emptyDir": {}}], role
        for container in pod["containers"]:
            assert container["securityContext"] == resources.restricted_container_security(), role
            assert {"name": "scratch", "mountPath": resources.SCRATCH} in container["volumeMounts"], role
            assert {"name": "TMPDIR", "value": resources.SCRATCH} in container["env"], role


def test_the_trainers_pod_settings_reach_every_dask_pod() -> None:
    retraining = {
        **DASK_RETRAINING,
        "trainer": {
            "nodeSelector": {"pool": "training"},
            "imagePullSecrets": [{"name": "registry"}],
            "env": [{"name": "EXTRA", "value": "1"}],
        },
    }
    job = build(parsed(raw(retraining)))
    for role, pod in pods(job).items():
        assert pod["nodeSelector"] == {"pool": "training"}, role
        assert pod["imagePullSecrets"] == [{"name": "registry"}], role
    runner_env = [e["name"] for e in job["spec"]["job"]["spec"]["containers"][0]["env"]]
    assert "EXTRA" in runner_env  # trainer.env: the runner's, not the workers'
    assert "EXTRA" not in [e["name"] for e in pods(job)["worker"]["containers"][0]["env"]]


def test_the_daskjob_is_deterministic() -> None:
    spec = parsed(raw())
    assert build(spec) == build(parsed(raw()))
    assert json.dumps(build(spec), sort_keys=True) == json.dumps(build(spec), sort_keys=True)


LONG = "a" * 200 + ".b" * 20


@pytest.mark.parametrize("loop_name", ["churn", "x", "1churn", "churn.v2", "a" * 60, LONG, "Z-y"[1:] + "q" * 250])
@pytest.mark.parametrize("version", [1, 12, 999999, api.MAX_VERSION])
def test_dask_job_names_fit_and_every_derived_name_fits_63(loop_name: str, version: int) -> None:
    name = phases.dask_job_name(loop_name, version)
    assert len(name) <= phases.MAX_DASK_JOB_NAME and resources.DNS1035_LABEL.fullmatch(name), name
    assert phases.dask_job_name(loop_name, version) == name  # deterministic
    # What the dask-kubernetes operator derives from it: Services, Deployments, Pods of workers, the runner.
    assert phases.MAX_DASK_JOB_NAME <= 42
    derived = [f"{name}-scheduler", f"{name}-default-worker-abcdef0123", resources.dask_runner_pod(name)]
    assert all(len(d) <= 63 and resources.DNS1035_LABEL.fullmatch(d) for d in derived), derived
    assert phases.run_job_name(loop_name, version, "Dask") == name
    assert phases.run_job_name(loop_name, version, "Job") == phases.job_name(loop_name, version)


def test_a_short_loop_names_its_daskjob_as_its_job() -> None:
    assert phases.dask_job_name("churn", 7) == phases.job_name("churn", 7) == "churn-train-v7"
    assert phases.dask_job_name("a" * 40, 7) != phases.dask_job_name("a" * 41, 7)


# --- OOMKilled said plainly ----------------------------------------------------------------------------


def test_the_oom_message_names_the_limit_and_what_to_change() -> None:
    text = phases.oom_message("trainer", "256Mi", "Job")
    assert text == (
        "the trainer was killed for using more memory than its limit (OOMKilled, limit 256Mi): raise "
        "spec.retraining.trainer.resources.limits.memory, shorten retraining.dataWindow, or use "
        "retraining.engine: Dask"
    )
    assert "spec.retraining.dask.workers" in phases.oom_message("trainer (the Dask runner)", "1Gi", "Dask")
    assert "no memory limit" in phases.oom_message("trainer", None, "Job")


# --- the engine over the in-memory API -------------------------------------------------------------------


@pytest.fixture
def bed() -> Harness:
    harness = Harness(FakeKube(), FakePrometheus())
    harness.prometheus.answer("accuracy_of", [({"model": "churn", "namespace": "team-a"}, 0.95)])
    return harness


def dask_loop(**retraining: Any) -> dict[str, Any]:
    body = loop()
    body["spec"]["retraining"].update({"estimator": "lightgbm", "engine": "Dask", **retraining})
    return body


def test_engine_dask_creates_a_daskjob_and_records_the_engine(bed: Harness) -> None:
    bed.apply(dask_loop())
    actions = bed.cycle(T0)
    assert writes(actions, "create") == ["DaskJob team-a/churn-train-v1"]
    assert bed.kube.jobs == {}
    run = bed.status()["retraining"]
    assert run["engine"] == "Dask" and run["jobName"] == "churn-train-v1"
    assert any("DaskJob churn-train-v1" in m for m in bed.kube.event_messages)
    for state in ("", "JobCreated", "ClusterCreated", "Running"):  # still running: nothing written
        bed.kube.finish_dask_job("team-a/churn-train-v1", state)
        assert bed.cycle(T0 + 5) == []


def test_a_successful_daskjob_is_promoted_from_its_runners_summary(bed: Harness) -> None:
    bed.apply(dask_loop())
    bed.cycle(T0)
    summary = json.loads(trained(1, 0.93).splitlines()[-1])
    bed.kube.finish_dask_job(
        "team-a/churn-train-v1", "Successful", "done\n" + json.dumps({**summary, "engine": "dask", "workers": 2})
    )
    actions = bed.cycle(T0 + 5)
    assert "Normal Promoted" in reasons(actions)
    status = bed.status()
    assert status["currentVersion"] == 1 and not status.get("retraining")


def test_a_failed_daskjob_reports_the_runners_error(bed: Harness) -> None:
    bed.apply(dask_loop())
    bed.cycle(T0)
    error = json.dumps({"ok": False, "error": "only 1 of 2 Dask workers joined within 300s"})
    bed.kube.finish_dask_job("team-a/churn-train-v1", "Failed", error, "Error (exit code 1)")
    actions = bed.cycle(T0 + 5)
    assert "Warning RetrainingFailed" in reasons(actions)
    failure = bed.status()["lastFailure"]
    assert failure.startswith("DaskJob Failed") and "only 1 of 2 Dask workers" in failure, failure


def test_a_runner_killed_for_memory_is_said_plainly(bed: Harness) -> None:
    bed.apply(dask_loop(trainer={"resources": {"limits": {"memory": "300Mi"}}}))
    bed.cycle(T0)
    bed.kube.finish_dask_job("team-a/churn-train-v1", "Failed", "Killed", "OOMKilled (exit code 137)")
    bed.cycle(T0 + 5)
    failure = bed.status()["lastFailure"]
    assert "OOMKilled, limit 300Mi" in failure and "spec.retraining.dask.workers" in failure, failure


def test_a_job_trainer_killed_for_memory_is_said_plainly_in_status_and_an_event(bed: Harness) -> None:
    body = loop()
    body["spec"]["retraining"]["trainer"] = {"resources": {"limits": {"memory": "256Mi"}}}
    bed.apply(body)
    bed.cycle(T0)
    bed.kube.finish_job("team-a/churn-train-v1", False, "some last log line")
    bed.kube.reasons["team-a/churn-train-v1"] = "OOMKilled (exit code 137)"
    actions = bed.cycle(T0 + 5)
    assert "Warning RetrainingFailed" in reasons(actions)
    expected = phases.oom_message("trainer", "256Mi", "Job")
    assert bed.status()["lastFailure"] == expected
    assert any(expected in m for m in bed.kube.event_messages)


def test_a_missing_daskjob_is_created_again(bed: Harness) -> None:
    bed.apply(dask_loop())
    bed.cycle(T0)
    bed.kube.dask_jobs.clear()
    actions = bed.cycle(T0 + 5)
    assert writes(actions, "create") == ["DaskJob team-a/churn-train-v1"]


def test_a_restarted_operator_follows_the_daskjob_even_when_the_spec_went_back_to_job(bed: Harness) -> None:
    bed.apply(dask_loop())
    bed.cycle(T0)
    bed.apply(loop(generation=2))  # engine Job now: the run in flight stays on Dask
    bed.new_engine()
    bed.kube.dask_jobs.clear()
    actions = bed.cycle(T0 + 5)
    assert writes(actions, "create") == ["DaskJob team-a/churn-train-v1"] and bed.kube.jobs == {}


def test_without_the_daskjob_crd_the_run_fails_saying_so_without_a_crash_loop(bed: Harness) -> None:
    bed.kube.dask_installed = False
    bed.apply(dask_loop())
    actions = bed.cycle(T0)
    assert "Warning EngineUnavailable" in reasons(actions)
    assert writes(actions, "create") == []
    actions = bed.cycle(T0 + 5)
    assert "Warning RetrainingFailed" in reasons(actions)
    status = bed.status()
    assert not status.get("retraining") and status["failureBackoffUntil"]
    assert status["lastFailure"] == kube.DASK_MISSING
    assert "its DaskJob CRD is not installed" in status["lastFailure"]
    assert any(kube.DASK_MISSING in m for m in bed.kube.event_messages)
    assert writes(bed.cycle(T0 + 10), "create") == []  # backing off: nothing retried in a loop


def test_old_daskjobs_are_deleted_like_old_jobs(bed: Harness) -> None:
    bed.apply(dask_loop())
    for version in range(1, 5):
        now = T0 + version * 100
        if version > 1:
            bed.kube.loops[KEY]["metadata"]["annotations"] = {"feedbackloop.dev/retrain": f"r{version}"}
            bed.apply(bed.kube.loops[KEY])
        bed.cycle(now)
        key = f"team-a/churn-train-v{version}"
        assert key in bed.kube.dask_jobs, bed.status()
        bed.kube.finish_dask_job(key, "Successful", trained(version, 0.5, champion=0.93))
        bed.cycle(now + 5)
    assert "team-a/churn-train-v1" not in bed.kube.dask_jobs
    assert ("delete", "DaskJob team-a/churn-train-v1") in bed.kube.actions


# --- the Kubernetes adapter: a missing CRD, RBAC --------------------------------------------------------


class Refusing:
    """The custom objects API answering every call with `status` (list: `list_status`)."""

    def __init__(self, status: int, list_status: int | None = None) -> None:
        self.status, self.list_status = status, list_status

    def get_namespaced_custom_object(self, *args: Any) -> Any:
        raise ApiException(status=self.status, reason="refused")

    def create_namespaced_custom_object(self, *args: Any) -> Any:
        raise ApiException(status=self.status, reason="refused")

    def list_namespaced_custom_object(self, *args: Any, **kwargs: Any) -> Any:
        if self.list_status is None:
            return {"items": []}
        raise ApiException(status=self.list_status, reason="refused")


def adapter(custom: Any) -> kube.Kube:
    k = kube.Kube.__new__(kube.Kube)
    k.custom = custom
    return k


def test_the_adapter_tells_a_missing_crd_from_a_missing_daskjob() -> None:
    assert adapter(Refusing(404)).read_dask_job("team-a", "churn-train-v1") is None
    with pytest.raises(kube.EngineUnavailable, match="DaskJob CRD is not installed"):
        adapter(Refusing(404, list_status=404)).read_dask_job("team-a", "churn-train-v1")
    with pytest.raises(kube.EngineUnavailable, match="DaskJob CRD is not installed"):
        adapter(Refusing(404)).create_dask_job(LOOP, {"metadata": {"name": "churn-train-v1"}})


def test_the_adapter_says_rbac_forbids_daskjobs() -> None:
    with pytest.raises(kube.EngineUnavailable, match="may not read DaskJobs"):
        adapter(Refusing(403)).read_dask_job("team-a", "churn-train-v1")
    with pytest.raises(kube.EngineUnavailable, match="may not create DaskJobs"):
        adapter(Refusing(403)).create_dask_job(LOOP, {"metadata": {"name": "churn-train-v1"}})
    with pytest.raises(ApiException):  # anything else is no verdict on the engine
        adapter(Refusing(500)).read_dask_job("team-a", "churn-train-v1")
