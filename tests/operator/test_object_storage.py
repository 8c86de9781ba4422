"""Object storage and the label database (issue 20): the spec (storage.s3, storage.database, model.retention),
the Pods of an s3 loop (emptyDir, the `fetch` init container, env from Secrets), and the binding of the bucket's
keys to the endpoint's host (annotation feedbackloop.dev/s3-hosts)."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from feedbackloop import crdgen
from feedbackloop.core import api, credentials, resources, validation
from feedbackloop.core.credentials import MISSING, NOT_BOUND, S3_HOSTS, s3_refusal
from feedbackloop.core.settings import AdminSettings
from feedbackloop.runtime import act

from .fake_kube import FakeKube, FakePrometheus, Harness

ROOT = Path(__file__).resolve().parents[2]
LOOP = {"metadata": {"name": "churn", "namespace": "team-a", "uid": "u-1"}}
S3 = {"endpoint": "http://seaweedfs.storage:8333", "bucket": "churn-models", "credentialsSecret": "churn-s3"}
DATABASE = {"urlSecret": {"name": "churn-db"}}
BASE: dict[str, Any] = {
    "model": {"name": "churn", "storage": {"s3": S3, "database": DATABASE}},
    "monitoring": {"prometheus": {"url": "http://prometheus:9090"}},
    "retraining": {"features": ["a", "b"], "target": "y"},
}
SPEC_SCHEMA = crdgen.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
S3_SCHEMA = SPEC_SCHEMA["properties"]["model"]["properties"]["storage"]["properties"]["s3"]["properties"]


def with_(path: str, value: Any, base: dict[str, Any] = BASE) -> dict[str, Any]:
    """A copy of `base` with `value` at the dotted `path` (None removes the field)."""
    spec = copy.deepcopy(base)
    *parents, leaf = path.split(".")
    node = spec
    for key in parents:
        node = node.setdefault(key, {})
    if value is None:
        node.pop(leaf, None)
    else:
        node[leaf] = value
    return spec


HOST_PATH_ALLOWED = AdminSettings(allow_host_path=True)  # these specs store on a hostPath


def parsed(raw: dict[str, Any]) -> api.ModelFeedbackLoopSpec:
    spec, error = validation.parse_spec(raw, HOST_PATH_ALLOWED)
    assert spec is not None, error
    return spec


def error_of(raw: dict[str, Any]) -> str:
    spec, error = validation.parse_spec(raw, HOST_PATH_ALLOWED)
    assert spec is None, "the spec should be refused"
    return error


def env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def pod(raw: dict[str, Any], version: int = 3) -> dict[str, Any]:
    return resources.server_deployment(LOOP, parsed(raw), version, "stable", 2)["spec"]["template"]["spec"]


def job(raw: dict[str, Any], parent: int | None = 2, canary: int | None = None) -> dict[str, Any]:
    body = resources.training_job(LOOP, parsed(raw), "churn-train-v3", 3, parent, "Breach", canary=canary)
    return body["spec"]["template"]["spec"]


def secret_ref(name: str, key: str) -> dict[str, Any]:
    return {"secretKeyRef": {"name": name, "key": key}}


# --- the spec ---------------------------------------------------------------------------------------------


def test_an_s3_loop_parses_with_its_defaults() -> None:
    spec = parsed(BASE)
    s3, database = spec.model.storage.s3, spec.model.storage.database
    assert s3 is not None and database is not None
    assert (s3.prefix, s3.region, s3.ca_secret, s3.insecure_skip_verify) == ("", "", None, False)
    assert (database.url_secret.name, database.url_secret.key) == ("churn-db", "url")
    assert spec.model.storage.mount_path == "/var/lib/mfl/artifacts"
    assert spec.model.retention.versions == 10 and spec.model.retention.logs is None
    assert spec.log_retention() == 32 * 86400  # the feedback max age (30d) + 2 days


def test_a_database_beside_a_volume_is_allowed() -> None:
    spec = parsed(with_("model.storage", {"hostPath": {"path": "/data"}, "database": DATABASE}))
    assert spec.model.storage.database is not None and spec.model.storage.s3 is None


@pytest.mark.parametrize(
    ("storage", "expected"),
    [
        ({"s3": S3, "database": DATABASE, "hostPath": {"path": "/d"}}, "exactly one of persistentVolumeClaim"),
        ({"s3": S3, "database": DATABASE, "persistentVolumeClaim": {"claimName": "c"}}, "exactly one of"),
        ({"database": DATABASE}, "exactly one of persistentVolumeClaim, hostPath or s3"),
        ({"s3": S3}, "spec.model.storage.database: s3 needs a database"),
        ({"s3": S3, "database": {}}, "spec.model.storage.database.urlSecret:"),
        ({"s3": S3, "database": DATABASE, "mountPath": api.S3_CA_PATH}, "spec.model.storage.mountPath:"),
    ],
)
def test_exactly_one_source_and_s3_needs_a_database(storage: dict[str, Any], expected: str) -> None:
    assert expected in error_of(with_("model.storage", storage))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("endpoint", "ftp://seaweedfs:8333"),
        ("endpoint", "http://"),
        ("endpoint", "http://seaweedfs:8333/churn"),
        ("endpoint", "http://key:secret@seaweedfs:8333"),
        ("endpoint", "http://seaweedfs:99999"),
        ("endpoint", "https://s3.example.com?x=1"),
        ("endpoint", "http://seaweed fs:8333"),
        ("bucket", "Churn_Models"),
        ("bucket", "ab"),
        ("bucket", "-churn"),
        ("bucket", "churn..models"),
        ("bucket", "192.168.1.10"),
        ("bucket", "xn--churn"),
        ("bucket", "churn-s3alias"),
        ("bucket", "c" * 64),
        ("prefix", "/team-a"),
        ("prefix", "team-a/"),
        ("prefix", "team-a//churn"),
        ("prefix", "team-a/../team-b"),
        ("prefix", ".."),
        ("prefix", "./team-a"),
        ("prefix", "team a"),
        ("region", "us east 1"),
        ("credentialsSecret", "Churn_S3"),
    ],
)
def test_a_bad_s3_field_is_refused_naming_it(field: str, value: str) -> None:
    assert f"spec.model.storage.s3.{field}:" in error_of(with_(f"model.storage.s3.{field}", value))


@pytest.mark.parametrize(
    ("field", "value"),
    [("bucket", "Churn_Models"), ("bucket", "ab"), ("prefix", "/team-a"), ("prefix", "team-a//b"), ("endpoint", "s3")],
)
def test_the_crd_schema_refuses_what_it_can_at_kubectl_apply(field: str, value: str) -> None:
    """The API server matches a pattern anywhere; these never reach the operator."""
    node = S3_SCHEMA[field]
    fits = re.search(node["pattern"], value) and node.get("minLength", 0) <= len(value) <= node["maxLength"]
    assert not fits


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("prefix", "team-a/churn_v2.x"),
        ("bucket", "churn.models-1"),
        ("endpoint", "https://[fd00::1]:9000"),
        ("endpoint", "http://seaweedfs:8333/"),
    ],
)
def test_good_s3_values_pass(field: str, value: str) -> None:
    s3 = parsed(with_(f"model.storage.s3.{field}", value)).model.storage.s3
    assert s3 is not None and getattr(s3, field) == value


def test_retention_of_versions_is_at_least_two() -> None:
    assert "spec.model.retention.versions:" in error_of(with_("model.retention", {"versions": 1}))
    assert parsed(with_("model.retention", {"versions": 2})).model.retention.versions == 2


@pytest.mark.parametrize(
    ("window", "logs", "problem"),
    [
        (None, "30d", "shorter than the feedback max age 30d"),
        (None, "30d23h", "use at least 31d"),
        (None, "31d", ""),
        ("60d", "45d", "feedback max age 60d"),
        ("60d", "61d", ""),
        ("400d", "366d", "feedback max age 366d"),  # the max age stops at 366d
        ("400d", "367d", ""),
        ("60d", "1000d", ""),
    ],
)
def test_logs_outlive_the_labels_they_could_take(window: str | None, logs: str, problem: str) -> None:
    raw = with_("model.retention", {"logs": logs})
    if window:
        raw = with_("retraining.dataWindow", window, raw)
    if problem:
        error = error_of(raw)
        assert error.startswith("spec.model.retention.logs:") and problem in error
        assert "retraining.dataWindow" in error and "counted twice" in error
    else:
        assert parsed(raw).log_retention() == api.parse_duration(logs)


def test_the_default_log_retention_follows_the_feedback_max_age() -> None:
    assert parsed(with_("retraining.dataWindow", "90d")).log_retention() == 92 * 86400
    assert parsed(with_("retraining", None)).log_retention() == 32 * 86400


def test_every_new_field_is_described_in_the_crd() -> None:
    for name, node in S3_SCHEMA.items():
        assert node.get("description"), name
    retention = SPEC_SCHEMA["properties"]["model"]["properties"]["retention"]
    assert retention["properties"]["versions"]["default"] == 10
    assert "default" not in retention["properties"]["logs"]  # depends on retraining.dataWindow


# --- the Pods of an s3 loop -------------------------------------------------------------------------------

S3_ENV = {
    "MFL_S3_ENDPOINT": "http://seaweedfs.storage:8333",
    "MFL_S3_BUCKET": "churn-models",
    "MFL_S3_INSECURE_SKIP_VERIFY": "false",
    "MFL_S3_ACCESS_KEY_ID": secret_ref("churn-s3", "accessKeyId"),
    "MFL_S3_SECRET_ACCESS_KEY": secret_ref("churn-s3", "secretAccessKey"),
}
STORE_ENV = {**S3_ENV, "MFL_DATABASE_URL": secret_ref("churn-db", "url")}


def test_an_s3_server_pod_fetches_its_version_into_an_empty_dir() -> None:
    spec = pod(BASE)
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["artifacts"] == {"name": "artifacts", "emptyDir": {}}
    assert not any("persistentVolumeClaim" in v or "hostPath" in v for v in spec["volumes"])
    (fetch,) = spec["initContainers"]
    assert fetch["name"] == "fetch" and fetch["command"] == ["mfl-fetch"]
    assert fetch["image"] == "ghcr.io/feedbackloop/mfl-server:0.1.0"
    assert fetch["securityContext"] == resources.restricted_container_security()
    assert fetch["resources"]["limits"] == {"memory": "512Mi"}
    assert env(fetch) == {
        "MFL_MODEL_NAME": "churn",
        "MFL_MODEL_VERSION": "3",
        "MFL_STORAGE_ROOT": "/var/lib/mfl/artifacts",
        **S3_ENV,
        "TMPDIR": api.SCRATCH_PATH,
    }
    assert {"name": "artifacts", "mountPath": "/var/lib/mfl/artifacts"} in fetch["volumeMounts"]
    (server,) = spec["containers"]
    server_env = env(server)
    assert STORE_ENV.items() <= server_env.items()
    assert server_env["MFL_RETENTION_LOG_SECONDS"] == str(32 * 86400)
    assert server_env["MFL_STORAGE_ROOT"] == "/var/lib/mfl/artifacts"


def test_optional_s3_settings_and_the_ca_bundle_reach_the_pods() -> None:
    s3 = {
        **S3,
        "prefix": "team-a",
        "region": "eu-west-1",
        "insecureSkipVerify": True,
        "caSecret": {"name": "store-ca", "key": "ca.pem"},
    }
    raw = with_("model.storage.database.urlSecret", {"name": "churn-db", "key": "dsn"}, with_("model.storage.s3", s3))
    spec = pod(raw)
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["s3-ca"]["secret"] == {"secretName": "store-ca", "items": [{"key": "ca.pem", "path": "ca.crt"}]}
    ca_mount = {"name": "s3-ca", "mountPath": api.S3_CA_PATH, "readOnly": True}
    for container in (*spec["initContainers"], *spec["containers"], *job(raw)["containers"]):
        values = env(container)
        assert values["MFL_S3_PREFIX"] == "team-a" and values["MFL_S3_REGION"] == "eu-west-1"
        assert values["MFL_S3_INSECURE_SKIP_VERIFY"] == "true"
        assert values["MFL_S3_CA_FILE"] == f"{api.S3_CA_PATH}/ca.crt"
        assert ca_mount in container["volumeMounts"]
    assert env(spec["containers"][0])["MFL_DATABASE_URL"] == secret_ref("churn-db", "dsn")


def test_empty_optional_settings_are_left_out_not_empty() -> None:
    """The API server drops an empty value: the Deployment would look drifted at every reconcile."""
    for container in (*pod(BASE)["initContainers"], *pod(BASE)["containers"]):
        assert all(e.get("value") != "" for e in container["env"]), container["name"]
        assert not {"MFL_S3_PREFIX", "MFL_S3_REGION", "MFL_S3_CA_FILE"} & set(env(container))


def test_in_v2_mode_the_sidecar_reaches_the_store_and_the_server_only_reads_files() -> None:
    raw = with_("model.serving", {"image": "ghcr.io/feedbackloop/mlserver:1.7.1", "runtime": {}})
    raw = with_("model.storage.s3.caSecret", {"name": "store-ca", "key": "ca.crt"}, raw)
    spec = pod(raw)
    (fetch,) = spec["initContainers"]
    assert fetch["image"] == "ghcr.io/feedbackloop/mfl-sidecar:0.1.0"
    server, feedback = spec["containers"]
    assert not [name for name in env(server) if name.startswith(("MFL_S3", "MFL_DATABASE", "MFL_RETENTION"))]
    assert [m["name"] for m in server["volumeMounts"]] == ["artifacts", "scratch"]
    assert server["args"] == ["mlserver", "start", "/var/lib/mfl/artifacts/churn/versions/3"]
    assert STORE_ENV.items() <= env(feedback).items()
    assert env(feedback)["MFL_RETENTION_LOG_SECONDS"] == str(32 * 86400)
    assert "s3-ca" in [m["name"] for m in feedback["volumeMounts"]]


def test_the_trainer_of_an_s3_loop() -> None:
    raw = with_("model.retention", {"versions": 4})
    spec = job(raw, parent=2)
    assert {"name": "artifacts", "emptyDir": {}} in spec["volumes"]
    (trainer,) = spec["containers"]
    values = env(trainer)
    assert STORE_ENV.items() <= values.items() and "MFL_RETENTION_LOG_SECONDS" not in values
    config = json.loads(values["MFL_TRAINER_CONFIG"])
    assert (config["retainVersions"], config["protectedVersions"]) == (4, [2])
    assert config["storageRoot"] == "/var/lib/mfl/artifacts"
    config = json.loads(env(job(raw, parent=2, canary=5)["containers"][0])["MFL_TRAINER_CONFIG"])
    assert config["protectedVersions"] == [2, 5]
    config = json.loads(env(job(raw, parent=None)["containers"][0])["MFL_TRAINER_CONFIG"])
    assert config["protectedVersions"] == []


def test_a_volume_loop_with_a_database_gets_the_url_and_no_fetch() -> None:
    raw = with_("model.storage", {"persistentVolumeClaim": {"claimName": "c"}, "database": DATABASE})
    spec = pod(raw)
    assert "initContainers" not in spec
    assert {"name": "artifacts", "persistentVolumeClaim": {"claimName": "c"}} in spec["volumes"]
    for container in (spec["containers"][0], job(raw)["containers"][0]):
        values = env(container)
        assert values["MFL_DATABASE_URL"] == secret_ref("churn-db", "url")
        assert not [name for name in values if name.startswith("MFL_S3")]


def test_a_volume_loop_without_a_database_is_as_before_plus_retention() -> None:
    raw = with_("model.storage", {"hostPath": {"path": "/data"}})
    spec = pod(raw)
    assert "initContainers" not in spec and len(spec["volumes"]) == 2
    values = env(spec["containers"][0])
    assert not [name for name in values if name.startswith(("MFL_S3", "MFL_DATABASE"))]
    assert values["MFL_RETENTION_LOG_SECONDS"] == str(32 * 86400)
    config = json.loads(env(job(raw)["containers"][0])["MFL_TRAINER_CONFIG"])
    assert (config["retainVersions"], config["protectedVersions"]) == (10, [2])


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("model.storage.s3.bucket", "other-models"),
        ("model.storage.s3.endpoint", "https://s3.example.com"),
        ("model.storage.s3.credentialsSecret", "other-s3"),
        ("model.storage.s3.caSecret", {"name": "ca", "key": "ca.crt"}),
        ("model.storage.database.urlSecret", {"name": "other-db"}),
        ("model.retention", {"logs": "40d"}),
    ],
)
def test_a_storage_change_rolls_out(path: str, value: Any) -> None:
    before = resources.server_deployment(LOOP, parsed(BASE), 3, "stable", 2)
    after = resources.server_deployment(LOOP, parsed(with_(path, value)), 3, "stable", 2)
    template = resources.TEMPLATE_ANNOTATION
    assert before["metadata"]["annotations"][template] != after["metadata"]["annotations"][template]
    assert act.drifted(before, after)


# --- the keys go only where their Secret allows -----------------------------------------------------------

KEYS = ["accessKeyId", "secretAccessKey"]


@pytest.mark.parametrize(
    ("endpoint", "annotation", "reason"),
    [
        ("http://seaweedfs.storage:8333", "seaweedfs.storage", None),
        ("http://seaweedfs.storage:8333", "seaweedfs.storage:8333", None),
        ("http://SEAWEEDFS.storage:8333", "minio.storage, Seaweedfs.Storage", None),
        ("https://s3.eu-west-1.amazonaws.com", "s3.eu-west-1.amazonaws.com", None),
        ("https://[fd00::1]:9000", "fd00::1", None),
        ("http://seaweedfs.storage:8333", "seaweedfs.storage:9000", NOT_BOUND),
        ("https://s3.example.com", "s3.example.com:443", NOT_BOUND),  # only an explicit port matches host:port
        ("http://attacker.example.com", "seaweedfs.storage", NOT_BOUND),
        ("http://seaweedfs.storage.attacker.example.com", "seaweedfs.storage", NOT_BOUND),
        ("http://seaweedfs.storage:8333", None, NOT_BOUND),
        ("http://seaweedfs.storage:8333", "", NOT_BOUND),
    ],
)
def test_the_keys_go_only_where_the_secret_allows(endpoint: str, annotation: str | None, reason: str | None) -> None:
    annotations = {} if annotation is None else {S3_HOSTS: annotation}
    refusal = s3_refusal(endpoint, "team-a", "churn-s3", annotations, KEYS)
    assert (refusal.reason if refusal else None) == reason


def test_a_refusal_says_exactly_which_annotation_to_add() -> None:
    refusal = s3_refusal("http://seaweedfs.storage:8333", "team-a", "churn-s3", {}, KEYS)
    assert refusal is not None
    assert f"{S3_HOSTS}=seaweedfs.storage " in refusal.message
    assert f"kubectl -n team-a annotate secret churn-s3 --overwrite {S3_HOSTS}=seaweedfs.storage)" in refusal.message
    refusal = s3_refusal("http://minio.storage:9000", "team-a", "churn-s3", {S3_HOSTS: "seaweedfs.storage"}, KEYS)
    assert refusal is not None and "allows its keys only to seaweedfs.storage, not minio.storage:9000" in (
        refusal.message
    )
    assert f"{S3_HOSTS}=seaweedfs.storage,minio.storage " in refusal.message  # added to what is there


def test_a_missing_secret_or_key_is_refused_with_what_to_create() -> None:
    refusal = s3_refusal("http://seaweedfs.storage:8333", "team-a", "churn-s3", None)
    assert refusal is not None and refusal.reason == MISSING
    assert "Secret team-a/churn-s3 (storage.s3.credentialsSecret) does not exist" in refusal.message
    assert f"accessKeyId and secretAccessKey and the annotation {S3_HOSTS}=seaweedfs.storage" in refusal.message
    bound = {S3_HOSTS: "seaweedfs.storage"}
    refusal = s3_refusal("http://seaweedfs.storage:8333", "team-a", "churn-s3", bound, ["accessKeyId"])
    assert refusal is not None and refusal.reason == MISSING and "no key secretAccessKey" in refusal.message
    assert credentials.unreadable("team-a", "churn-s3", "403 Forbidden").reason == MISSING


# --- the operator holds the Pods until the Secret is bound ------------------------------------------------

T0 = 1_800_000_000.0


def s3_loop(**model: Any) -> dict[str, Any]:
    return {
        "apiVersion": "feedbackloop.dev/v1alpha1",
        "kind": "ModelFeedbackLoop",
        "metadata": {"name": "churn", "namespace": "team-a", "uid": "uid-churn", "generation": 1, "annotations": {}},
        "spec": {
            **copy.deepcopy(BASE),
            "model": {**copy.deepcopy(BASE["model"]), **model},
            "monitoring": {
                "prometheus": {"url": "http://prometheus:9090"},
                "interval": "10s",
                "metrics": [{"name": "accuracy", "query": 'acc{model="{{model}}"}', "min": 0.8}],
            },
        },
    }


@pytest.fixture
def bed() -> Harness:
    harness = Harness(FakeKube(), FakePrometheus())
    harness.prometheus.answer("acc{", [({"model": "churn"}, 0.95)])
    return harness


def conditions(bed: Harness) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in bed.status()["conditions"]}


def test_no_job_until_the_secret_allows_the_endpoint(bed: Harness) -> None:
    bed.kube.secrets["team-a/churn-s3"] = {"accessKeyId": "AK", "secretAccessKey": "SK"}
    bed.apply(s3_loop())
    actions = bed.cycle(T0)
    assert not [what for verb, what in actions if verb == "create"]
    assert ("event", f"Warning {NOT_BOUND}") in actions
    found = conditions(bed)
    assert (found["Ready"]["status"], found["Ready"]["reason"]) == ("False", NOT_BOUND)
    assert (found["Stalled"]["status"], found["Stalled"]["reason"]) == ("True", NOT_BOUND)
    assert f"{S3_HOSTS}=seaweedfs.storage" in found["Ready"]["message"]
    assert "SK" not in json.dumps(bed.status())
    assert bed.status()["retrainBlockedBy"] == found["Ready"]["message"]
    again = bed.cycle(T0 + 10)
    assert not [what for verb, what in again if verb in ("create", "event")]  # the Warning once, not each round

    bed.kube.secret_annotations["team-a/churn-s3"] = {S3_HOSTS: "seaweedfs.storage"}
    actions = bed.cycle(T0 + 20)
    assert ("create", "Job team-a/churn-train-v1") in actions
    found = conditions(bed)
    assert found["Stalled"]["status"] == "False" and found["Ready"]["reason"] != NOT_BOUND


def test_no_deployment_for_a_missing_secret_and_none_updated_once_unbound(bed: Harness) -> None:
    bed.apply(s3_loop(initialVersion=4))
    actions = bed.cycle(T0)
    assert not [what for verb, what in actions if verb in ("create", "update")]
    assert ("event", f"Warning {MISSING}") in actions
    assert "does not exist" in conditions(bed)["Ready"]["message"]

    bed.kube.secrets["team-a/churn-s3"] = {"accessKeyId": "AK", "secretAccessKey": "SK"}
    bed.kube.secret_annotations["team-a/churn-s3"] = {S3_HOSTS: "seaweedfs.storage:8333"}
    actions = bed.cycle(T0 + 10)
    assert ("create", "Deployment team-a/churn v4") in actions
    assert bed.kube.deployments["team-a/churn"]["spec"]["template"]["spec"]["initContainers"][0]["name"] == "fetch"

    # Someone points the loop elsewhere: the running Deployment is left as it is, not updated.
    body = s3_loop(initialVersion=4)
    body["spec"]["model"]["storage"]["s3"]["endpoint"] = "http://attacker.example.com"
    bed.apply(body)
    actions = bed.cycle(T0 + 20)
    assert not [what for verb, what in actions if verb in ("create", "update")]
    assert ("event", f"Warning {NOT_BOUND}") in actions
    deployment = bed.kube.deployments["team-a/churn"]["spec"]["template"]["spec"]["containers"][0]
    assert env(deployment)["MFL_S3_ENDPOINT"] == "http://seaweedfs.storage:8333"


# --- the shipped example ----------------------------------------------------------------------------------


def test_the_example_loop_is_valid_and_its_secret_allows_its_endpoint() -> None:
    documents = [d for d in yaml.safe_load_all((ROOT / "docs" / "examples" / "loop-s3.yaml").read_text()) if d]
    (loop,) = [d for d in documents if d["kind"] == api.KIND]
    secrets = {d["metadata"]["name"]: d for d in documents if d["kind"] == "Secret"}
    spec = parsed(loop["spec"])
    s3, database = spec.model.storage.s3, spec.model.storage.database
    assert s3 is not None and database is not None
    keys = secrets[s3.credentials_secret]
    assert s3_refusal(s3.endpoint, "team-a", keys["metadata"]["name"], keys["metadata"]["annotations"], KEYS) is None
    assert sorted(keys["stringData"]) == KEYS
    assert secrets[database.url_secret.name]["stringData"][database.url_secret.key].startswith("postgresql://")
