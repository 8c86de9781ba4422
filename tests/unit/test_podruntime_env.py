import pytest
from feedbackloop.localdev.podruntime_env import ConfigError, container_env, expand, expand_argv


class Reader:
    def __init__(self, secrets=None, config_maps=None):
        self.secrets, self.config_maps = secrets or {}, config_maps or {}

    def secret(self, namespace, name):
        return self.secrets.get((namespace, name))

    def config_map(self, namespace, name):
        return self.config_maps.get((namespace, name))


POD = {"metadata": {"name": "web-1", "namespace": "ml", "uid": "u-1", "labels": {"app": "web"}},
       "spec": {"nodeName": "mfl-node", "serviceAccountName": "default"}}
HOST = {"PATH": "/host/bin:/usr/bin", "HOME": "/root", "SECRET_OF_HOST": "no", "KUBECONFIG": "/k"}


def env_of(container, reader=None):
    return container_env(POD, container, pod_ip="10.244.0.9", host_ip="10.244.0.1", reader=reader or Reader(),
                         host_env=HOST, hostname="web-1")


def test_base_environment_keeps_the_host_path_and_nothing_else_of_the_host():
    env = env_of({"name": "c"})
    assert env["PATH"] == "/host/bin:/usr/bin" and env["PYTHONUNBUFFERED"] == "1" and env["HOSTNAME"] == "web-1"
    assert "SECRET_OF_HOST" not in env and "KUBECONFIG" not in env


def test_values_field_refs_and_references_to_earlier_variables():
    env = env_of({"name": "c", "env": [
        {"name": "NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
        {"name": "URL", "value": "http://$(IP):8080/$(MISSING)/$$(IP)"},
    ]})
    assert (env["NAME"], env["NS"], env["IP"], env["APP"]) == ("web-1", "ml", "10.244.0.9", "web")
    assert env["URL"] == "http://10.244.0.9:8080/$(MISSING)/$(IP)"


def test_secret_and_config_map_key_refs_and_env_from():
    reader = Reader(secrets={("ml", "s"): {"key": b"hunter2"}},
                    config_maps={("ml", "cm"): {"A": b"1", "B": b"2"}})
    env = env_of({"name": "c", "envFrom": [{"configMapRef": {"name": "cm"}, "prefix": "CM_"}], "env": [
        {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "s", "key": "key"}}},
        {"name": "B", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "B"}}},
        {"name": "OPT", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "k", "optional": True}}},
    ]}, reader)
    assert env["PASSWORD"] == "hunter2" and env["B"] == "2" and env["CM_A"] == "1" and "OPT" not in env


@pytest.mark.parametrize("ref", [
    {"secretKeyRef": {"name": "absent", "key": "k"}},
    {"configMapKeyRef": {"name": "cm", "key": "absent"}},
])
def test_missing_references_are_config_errors(ref):
    reader = Reader(config_maps={("ml", "cm"): {"A": b"1"}})
    with pytest.raises(ConfigError) as raised:
        env_of({"name": "c", "env": [{"name": "X", "valueFrom": ref}]}, reader)
    assert raised.value.reason == "CreateContainerConfigError"


def test_resource_field_ref_uses_the_limit_or_the_node():
    env = env_of({"name": "c", "resources": {"limits": {"memory": "1Gi"}}, "env": [
        {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
        {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
    ]})
    assert env["MEM"] == "1024" and env["CPU"] == "2"


def test_expand_and_argv():
    assert expand("$(A)-$(B)", {"A": "x"}) == "x-$(B)"
    assert expand_argv(["echo", "$(A)"], {"A": "1"}) == ["echo", "1"]
