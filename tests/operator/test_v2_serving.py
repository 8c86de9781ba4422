"""V2 serving (issue 19): any Open Inference Protocol server behind the feedback sidecar, and the Pods a platform
brings (env from Secrets and ConfigMaps, placement, pull secrets) for the server and the trainer."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from feedbackloop.core import api, resources, validation
from feedbackloop.core.settings import AdminSettings
from feedbackloop.runtime import act, kube

ROOT = Path(__file__).resolve().parents[2]
BASE: dict[str, Any] = {
    "model": {
        "name": "churn",
        "storage": {"hostPath": {"path": "/data"}, "mountPath": "/mnt/store"},
        "serving": {"image": "ghcr.io/feedbackloop/mlserver:1.7.1", "runtime": {}},
    },
    "monitoring": {"prometheus": {"url": "http://prometheus:9090"}},
    "retraining": {"features": ["a", "b"], "target": "y"},
}
LOOP = {"metadata": {"name": "churn", "namespace": "team-a", "uid": "u-1"}}


def with_(path: str, value: Any, base: dict[str, Any] = BASE) -> dict[str, Any]:
    spec = copy.deepcopy(base)
    *parents, leaf = path.split(".")
    node = spec
    for key in parents:
        node = node.setdefault(key, {})
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


def pod(raw: dict[str, Any], version: int = 3, track: str = "stable") -> dict[str, Any]:
    return resources.server_deployment(LOOP, parsed(raw), version, track, 2)["spec"]["template"]


def containers(raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in pod(raw)["spec"]["containers"]}


def env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


# --- the V2 Pod -------------------------------------------------------------------------------------------


def test_runtime_defaults() -> None:
    runtime = parsed(BASE).model.serving.runtime
    assert runtime is not None
    assert (runtime.kind, runtime.port, runtime.args, runtime.command) == ("mlserver", 9000, [], [])
    assert runtime.server_args() == ["mlserver", "start", "{versionDir}"]
    assert runtime.sidecar.image == "ghcr.io/feedbackloop/mfl-sidecar:0.1.0"
    assert parsed(with_("model.serving.runtime", None)).model.serving.runtime is None


def test_without_runtime_the_pod_is_the_one_mfl_server_as_before() -> None:
    spec = with_("model.serving", {})
    (server,) = pod(spec)["spec"]["containers"]
    assert server["name"] == "server" and server["image"] == "ghcr.io/feedbackloop/mfl-server:0.1.0"
    assert server["ports"] == [{"name": "http", "containerPort": 8080}]
    assert server["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert "readOnly" not in server["volumeMounts"][0] and "args" not in server
    assert env(server)["MFL_MODEL_VERSION"] == "3" and "MFL_UPSTREAM_URL" not in env(server)


def test_the_mlserver_pod_runs_the_server_beside_the_feedback_sidecar() -> None:
    template = pod(with_("model.serving.port", 8081))
    spec = template["spec"]
    server, feedback = spec["containers"]
    assert (server["name"], feedback["name"]) == ("server", "feedback")
    # The server: the version's folder, MLServer's ports inside the Pod, liveness on its own port, read-only store.
    assert server["image"] == "ghcr.io/feedbackloop/mlserver:1.7.1"
    assert server["args"] == ["mlserver", "start", "/mnt/store/churn/versions/3"] and "command" not in server
    assert server["ports"] == [{"name": "runtime", "containerPort": 9000}]
    assert server["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": 9000}
    assert server["startupProbe"]["httpGet"] == {"path": "/v2/health/live", "port": 9000}
    assert "readinessProbe" not in server  # the sidecar's /readyz asks the server's model readiness
    assert env(server) == {
        "MLSERVER_HTTP_PORT": "9000",
        "MLSERVER_GRPC_PORT": "9001",
        "MLSERVER_METRICS_PORT": "9002",
        "MLSERVER_METRICS_DIR": f"{api.SCRATCH_PATH}/mlserver-metrics",
        "MLSERVER_PARALLEL_WORKERS": "0",
        "MLSERVER_LOAD_MODELS_AT_STARTUP": "true",
        "TMPDIR": api.SCRATCH_PATH,
    }
    mounts = {m["name"]: m for m in server["volumeMounts"]}
    assert mounts["artifacts"] == {"name": "artifacts", "mountPath": "/mnt/store", "readOnly": True}
    assert "readOnly" not in mounts["scratch"]
    # The sidecar: the named port `http` (serving.port), probes, the server's contract plus the upstream.
    assert feedback["image"] == "ghcr.io/feedbackloop/mfl-sidecar:0.1.0"
    assert feedback["ports"] == [{"name": "http", "containerPort": 8081}]
    assert feedback["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert feedback["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    sidecar_env = env(feedback)
    assert sidecar_env["MFL_UPSTREAM_URL"] == "http://127.0.0.1:9000"
    assert sidecar_env["MFL_PORT"] == "8081" and sidecar_env["MFL_MODEL_VERSION"] == "3"
    assert sidecar_env["MFL_STORAGE_ROOT"] == "/mnt/store" and sidecar_env["MFL_TRACK"] == "stable"
    assert sidecar_env["MFL_SIGNING_KEY"] == {"secretKeyRef": {"name": "churn-signing-key", "key": "key"}}
    assert {"name": "artifacts", "mountPath": "/mnt/store"} in feedback["volumeMounts"]
    # Both restricted; the scrape target and the Service's target are the sidecar's port.
    for container in (server, feedback):
        assert container["securityContext"] == resources.restricted_container_security()
    assert spec["securityContext"] == resources.restricted_pod_security()
    annotations = template["metadata"]["annotations"]
    assert (annotations["prometheus.io/port"], annotations["prometheus.io/path"]) == ("8081", "/metrics")
    named = [p["name"] for c in spec["containers"] for p in c.get("ports", [])]
    assert named.count("http") == 1
    service = resources.service(LOOP, parsed(BASE))
    assert service["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http"}]


def test_a_custom_server_gets_its_command_and_args_with_the_placeholders_replaced() -> None:
    runtime = {
        "kind": "custom",
        "port": 8500,
        "command": ["/bin/serve"],
        "args": ["--repo={versionDir}", "--model", "{modelName}", "--http-port={port}", '{"json": 1}'],
        "sidecar": {"image": "registry.example/sidecar:2", "resources": {"limits": {"memory": "128Mi"}}},
    }
    server, feedback = pod(with_("model.serving.runtime", runtime), version=12)["spec"]["containers"]
    assert server["command"] == ["/bin/serve"]
    assert server["args"] == [
        "--repo=/mnt/store/churn/versions/12",
        "--model",
        "churn",
        "--http-port=8500",
        '{"json": 1}',
    ]
    assert env(server) == {"TMPDIR": api.SCRATCH_PATH}  # no MLSERVER_* for a custom server
    assert server["livenessProbe"]["httpGet"]["port"] == 8500
    assert env(feedback)["MFL_UPSTREAM_URL"] == "http://127.0.0.1:8500"
    assert feedback["image"] == "registry.example/sidecar:2"
    assert feedback["resources"] == {"requests": {}, "limits": {"memory": "128Mi"}}


def test_the_canary_pod_serves_its_own_version() -> None:
    server, feedback = pod(BASE, version=4, track="canary")["spec"]["containers"]
    assert server["args"][-1] == "/mnt/store/churn/versions/4"
    assert (env(feedback)["MFL_TRACK"], env(feedback)["MFL_MODEL_VERSION"]) == ("canary", "4")


@pytest.mark.parametrize(
    "path, value, field",
    [
        ("model.serving.runtime.port", 8080, "spec.model.serving.runtime.port:"),  # the sidecar's port
        ("model.serving.runtime.port", 8079, "spec.model.serving.runtime.port:"),  # gRPC on 8080
        ("model.serving.runtime.port", 8078, "spec.model.serving.runtime.port:"),  # metrics on 8080
        ("model.serving.runtime.port", 65534, "spec.model.serving.runtime.port:"),  # metrics beyond 65535
        ("model.serving.runtime.port", 0, "spec.model.serving.runtime.port:"),
        ("model.serving.runtime.kind", "triton", "spec.model.serving.runtime.kind:"),
        ("model.serving.runtime", {"kind": "custom"}, "spec.model.serving.runtime.args:"),  # nothing to run
        ("model.serving.runtime.args", ["serve", "{model}"], "spec.model.serving.runtime.args.1:"),
        ("model.serving.runtime.command", ["{versiondir}"], "spec.model.serving.runtime.command.0:"),
        ("model.serving.runtime.args", ["x"] * 33, "spec.model.serving.runtime.args:"),
        ("model.serving.runtime.args", ["x" * 1025], "spec.model.serving.runtime.args.0:"),
        ("model.serving.runtime.args", [""], "spec.model.serving.runtime.args.0:"),
        ("model.serving.runtime.sidecar.image", "", "spec.model.serving.runtime.sidecar.image:"),
        ("model.serving.runtime.sidecar.env", [{"name": "1 2"}], "spec.model.serving.runtime.sidecar.env.0.name:"),
        (
            "model.serving.runtime.sidecar.resources",
            {"requests": {"cpu": "2"}, "limits": {"cpu": "1"}},
            "spec.model.serving.runtime.sidecar.resources.requests.cpu:",
        ),  # fmt: skip
        ("model.serving.runtime.unknown", 1, "spec.model.serving.runtime.unknown:"),
    ],
)
def test_a_runtime_that_cannot_run_is_an_invalid_spec_naming_the_field(path: str, value: Any, field: str) -> None:
    assert error_of(with_(path, value)).startswith(field)


def test_a_custom_server_may_take_any_port_but_the_sidecars() -> None:
    runtime = {"kind": "custom", "port": 8081, "args": ["serve"]}  # 8081 and 8082 are free without MLServer's
    assert parsed(with_("model.serving.runtime", runtime)).model.serving.runtime is not None
    assert error_of(with_("model.serving.runtime", {**runtime, "port": 8080})).startswith(
        "spec.model.serving.runtime.port:"
    )


# --- bring-your-own Pods ---------------------------------------------------------------------------------

POD_SETTINGS: dict[str, Any] = {
    "env": [
        {"name": "LOG_LEVEL", "value": "debug"},
        {"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}},
        {"name": "REGION", "valueFrom": {"configMapKeyRef": {"name": "site", "key": "region", "optional": True}}},
    ],
    "envFrom": [{"secretRef": {"name": "s3-credentials"}}, {"configMapRef": {"name": "tuning"}, "prefix": "T_"}],
    "nodeSelector": {"kubernetes.io/arch": "amd64", "pool": "ml"},
    "tolerations": [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        {"key": "pool", "value": "ml", "effect": "NoExecute", "tolerationSeconds": 60},
    ],
    "affinity": {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}]
            }
        }
    },
    "imagePullSecrets": [{"name": "registry"}],
}
EXPECTED_ENV = [
    {"name": "LOG_LEVEL", "value": "debug"},
    {"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password", "optional": False}}},
    {"name": "REGION", "valueFrom": {"configMapKeyRef": {"name": "site", "key": "region", "optional": True}}},
]
EXPECTED_POD = {
    "nodeSelector": {"kubernetes.io/arch": "amd64", "pool": "ml"},
    "tolerations": [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        {"key": "pool", "operator": "Equal", "value": "ml", "effect": "NoExecute", "tolerationSeconds": 60},
    ],
    "affinity": POD_SETTINGS["affinity"],
    "imagePullSecrets": [{"name": "registry"}],
}
EXPECTED_ENV_FROM = [
    {"secretRef": {"name": "s3-credentials", "optional": False}},
    {"configMapRef": {"name": "tuning", "optional": False}, "prefix": "T_"},
]


def _check_pod(template: dict[str, Any], container: dict[str, Any]) -> None:
    assert container["env"][: len(EXPECTED_ENV)] == EXPECTED_ENV  # the user's first, then the operator's
    assert container["envFrom"] == EXPECTED_ENV_FROM
    assert {key: template["spec"][key] for key in EXPECTED_POD} == EXPECTED_POD


@pytest.mark.parametrize("runtime", [None, {}], ids=["mfl-server", "v2"])
def test_the_servers_pod_settings_reach_the_deployment(runtime: dict[str, Any] | None) -> None:
    raw = with_("model.serving", {**POD_SETTINGS, "runtime": runtime})
    template = pod(raw)
    by_name = {c["name"]: c for c in template["spec"]["containers"]}
    _check_pod(template, by_name["server"])
    if runtime is not None:  # the user's server gets them, not the sidecar
        assert "envFrom" not in by_name["feedback"] and "LOG_LEVEL" not in env(by_name["feedback"])


def test_the_trainers_pod_settings_reach_the_job() -> None:
    raw = with_("retraining.trainer", POD_SETTINGS)
    job = resources.training_job(LOOP, parsed(raw), "churn-train-v2", 2, 1, "Breach")
    template = job["spec"]["template"]
    (trainer,) = template["spec"]["containers"]
    _check_pod(template, trainer)
    assert {"MFL_TRAINER_CONFIG", "MFL_TRAINER_THREADS", "TMPDIR"} <= set(env(trainer))


def test_unset_pod_settings_leave_the_manifests_as_they_were() -> None:
    spec = parsed(with_("model.serving", {}))
    template = resources.server_deployment(LOOP, spec, 1, "stable", 2)["spec"]["template"]
    job = resources.training_job(LOOP, spec, "churn-train-v2", 2, 1, "Breach")["spec"]["template"]
    for pod_spec in (template["spec"], job["spec"]):
        assert not {"nodeSelector", "tolerations", "affinity", "imagePullSecrets"} & set(pod_spec)
        assert "envFrom" not in pod_spec["containers"][0]


@pytest.mark.parametrize(
    "path, name, container",
    [
        ("model.serving.env", "MFL_MODEL_VERSION", "server"),  # mfl-server mode
        ("model.serving.env", "TMPDIR", "server"),
        ("retraining.trainer.env", "MFL_TRAINER_CONFIG", "trainer"),
        ("retraining.trainer.env", "MFL_TRAINER_THREADS", "trainer"),
    ],
)
def test_the_operators_variables_cannot_be_overridden(path: str, name: str, container: str) -> None:
    raw = with_(path, [{"name": name, "value": "mine"}, {"name": "KEPT", "value": "1"}], with_("model.serving", {}))
    spec = parsed(raw)
    if container == "trainer":
        found = resources.training_job(LOOP, spec, "j", 2, 1, "Breach")["spec"]["template"]["spec"]["containers"][0]
    else:
        found = resources.server_deployment(LOOP, spec, 3, "stable", 2)["spec"]["template"]["spec"]["containers"][0]
    names = [e["name"] for e in found["env"]]
    assert names.count(name) == 1 and env(found)[name] != "mine" and env(found)["KEPT"] == "1"


def test_in_v2_mode_the_operators_variables_win_in_both_containers() -> None:
    raw = with_(
        "model.serving.env", [{"name": "MLSERVER_HTTP_PORT", "value": "1"}, {"name": "MFL_TRACK", "value": "x"}]
    )
    raw["model"]["serving"]["runtime"] = {
        "sidecar": {
            "env": [{"name": "MFL_UPSTREAM_URL", "value": "http://evil"}, {"name": "MFL_UPSTREAM_MODEL", "value": "m"}]
        }
    }
    found = containers(raw)
    assert env(found["server"])["MLSERVER_HTTP_PORT"] == "9000"
    assert env(found["server"])["MFL_TRACK"] == "x"  # not the operator's in the server container: passed on
    assert env(found["feedback"])["MFL_UPSTREAM_URL"] == "http://127.0.0.1:9000"
    assert env(found["feedback"])["MFL_UPSTREAM_MODEL"] == "m"
    for container in found.values():
        names = [e["name"] for e in container["env"]]
        assert len(names) == len(set(names))


@pytest.mark.parametrize("owner", ["model.serving", "retraining.trainer"])
@pytest.mark.parametrize(
    "field, value, error",
    [
        ("env", [{"name": "A"}, {"name": "A"}], "env:"),
        (
            "env",
            [{"name": "A", "value": "v", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}],
            "env.0.valueFrom:",
        ),
        ("env", [{"name": "A", "valueFrom": {}}], "env.0.valueFrom:"),
        (
            "env",
            [{"name": "A", "valueFrom": {"secretKeyRef": {"name": "Bad_Name", "key": "k"}}}],
            "env.0.valueFrom.secretKeyRef.name:",
        ),  # fmt: skip
        ("env", [{"name": "A", "value": "x" * 16385}], "env.0.value:"),
        ("env", [{"name": f"V{i}"} for i in range(65)], "env:"),
        ("envFrom", [{}], "envFrom.0:"),
        ("envFrom", [{"secretRef": {"name": "s"}, "configMapRef": {"name": "c"}}], "envFrom.0:"),
        ("envFrom", [{"secretRef": {"name": "s"}, "prefix": "1 2"}], "envFrom.0.prefix:"),
        ("nodeSelector", {"bad key": "x"}, "nodeSelector:"),
        ("nodeSelector", {"pool": "not valid!"}, "nodeSelector:"),
        ("nodeSelector", {"UPPER.example/pool": "x"}, "nodeSelector:"),
        ("nodeSelector", {f"k{i}": "v" for i in range(21)}, "nodeSelector:"),
        ("tolerations", [{"value": "x"}], "tolerations.0.operator:"),  # no key: Exists only
        ("tolerations", [{"key": "a", "operator": "Exists", "value": "x"}], "tolerations.0.value:"),
        ("tolerations", [{"key": "a", "tolerationSeconds": 5}], "tolerations.0.tolerationSeconds:"),
        ("tolerations", [{"key": "a b"}], "tolerations.0.key:"),
        ("tolerations", [{"key": "a", "effect": "Sometimes"}], "tolerations.0.effect:"),
        ("affinity", {"nodeAffinty": {}}, "affinity:"),  # a typo the API server would prune
        ("affinity", {"nodeAffinity": []}, "affinity:"),
        ("affinity", {"podAffinity": {"x": "y" * 17000}}, "affinity:"),
        ("affinity", {"podAffinity": {"weight": float("nan")}}, "affinity:"),
        ("imagePullSecrets", [{"name": "Registry!"}], "imagePullSecrets.0.name:"),
        ("imagePullSecrets", [{"name": f"r{i}"} for i in range(11)], "imagePullSecrets:"),
    ],
)
def test_pod_settings_kubernetes_would_refuse_are_invalid_specs_naming_the_field(
    owner: str, field: str, value: Any, error: str
) -> None:
    assert error_of(with_(f"{owner}.{field}", value)).startswith(f"spec.{owner}.{error}")


# --- rolling out a change of the Pod ---------------------------------------------------------------------


def test_any_change_of_the_pod_is_drift_and_the_same_spec_is_not() -> None:
    def deployment(raw: dict[str, Any]) -> dict[str, Any]:
        return resources.server_deployment(LOOP, parsed(raw), 3, "stable", 2)

    current = deployment(BASE)
    assert not act.drifted(current, deployment(BASE))
    for raw in (
        with_("model.serving.runtime", None),  # back to mfl-server: the sidecar goes
        with_("model.serving.nodeSelector", {"pool": "ml"}),
        with_("model.serving.runtime.sidecar.image", "ghcr.io/feedbackloop/mfl-sidecar:0.2.0"),
        with_("model.serving.runtime.args", ["mlserver", "start", "{versionDir}", "--debug"]),
    ):
        assert act.drifted(current, deployment(raw))
    changes = act.drift_of(current, deployment(with_("model.serving.runtime.sidecar.image", "s:2")))
    assert any("s:2" in change for change in changes), changes


def test_the_deployment_patch_replaces_the_pod_spec() -> None:
    """A strategic merge would keep a removed sidecar (two `http` ports: the API server refuses the Pod)."""

    class Apps:
        def __init__(self) -> None:
            self.patches: list[dict[str, Any]] = []

        def create_namespaced_deployment(self, namespace: str, body: dict[str, Any]) -> None:
            raise AssertionError("exists")

        def read_namespaced_deployment(self, name: str, namespace: str) -> None:
            raise AssertionError("not read")

        def patch_namespaced_deployment(self, name: str, namespace: str, body: dict[str, Any]) -> None:
            self.patches.append(body)

    client = kube.Kube.__new__(kube.Kube)
    client.apps = Apps()  # type: ignore[assignment]
    client._create_or_check = lambda *args: None  # type: ignore[method-assign]
    desired = resources.server_deployment(LOOP, parsed(with_("model.serving.runtime", None)), 3, "stable", 2)
    client.ensure_deployment(LOOP, desired)
    (patch,) = client.apps.patches  # type: ignore[attr-defined]
    pod_spec = patch["spec"]["template"]["spec"]
    assert pod_spec["$patch"] == "replace"
    assert [c["name"] for c in pod_spec["containers"]] == ["server"]
    assert "$patch" not in desired["spec"]["template"]["spec"]  # the desired object is left as it was


# --- the example -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted((ROOT / "manifests" / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_loop_is_valid(path: Path) -> None:
    for document in yaml.safe_load_all(path.read_text()):
        if document and document.get("kind") == api.KIND:
            api.validate_spec(document["spec"])


def test_the_mlserver_example_is_served_by_mlserver_behind_the_sidecar() -> None:
    (loop,) = [d for d in yaml.safe_load_all((ROOT / "manifests/examples/loop-mlserver.yaml").read_text()) if d]
    loop["metadata"]["uid"] = "u-1"
    spec = api.validate_spec(loop["spec"])
    assert spec.model.serving.image == "ghcr.io/feedbackloop/mlserver:1.7.1"
    assert spec.model.serving.runtime is not None and spec.model.serving.runtime.kind == "mlserver"
    names = [
        c["name"]
        for c in resources.server_deployment(loop, spec, 1, "stable", 1)["spec"]["template"]["spec"]["containers"]
    ]
    assert names == ["server", "feedback"]
