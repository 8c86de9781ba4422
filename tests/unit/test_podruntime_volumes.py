import os

import pytest
from feedbackloop.localdev.podruntime_env import ConfigError
from feedbackloop.localdev.podruntime_volumes import (
    MountpointRegistry,
    container_mounts,
    missing_path_chain,
    prepare_volumes,
)


class Reader:
    def secret(self, namespace, name):
        return {"token": b"t0k", "ca.crt": b"CA"} if name == "sa-token" else None

    def config_map(self, namespace, name):
        return {"settings.json": b"{}"} if name == "settings" else None


def pod(volumes):
    return {"metadata": {"name": "p", "namespace": "ml", "uid": "u", "labels": {"a": "b"}},
            "spec": {"volumes": volumes, "containers": [{"name": "c"}]}}


def test_each_volume_type_becomes_a_host_directory(tmp_path):
    host_dir = tmp_path / "host" / "data"
    volumes = prepare_volumes(pod([
        {"name": "scratch", "emptyDir": {}},
        {"name": "store", "persistentVolumeClaim": {"claimName": "artifacts"}},
        {"name": "host", "hostPath": {"path": str(host_dir), "type": "DirectoryOrCreate"}},
        {"name": "token", "secret": {"secretName": "sa-token", "defaultMode": 0o600}},
        {"name": "config", "configMap": {"name": "settings", "items": [{"key": "settings.json", "path": "s/x.json"}]}},
        {"name": "info", "downwardAPI": {"items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]}},
    ]), tmp_path / "pod", tmp_path / "work", Reader())
    assert volumes["store"] == tmp_path / "work" / "volumes" / "ml" / "artifacts" and volumes["store"].is_dir()
    assert volumes["host"] == host_dir and host_dir.is_dir()
    assert volumes["scratch"].is_dir() and not any(volumes["scratch"].iterdir())
    assert (volumes["token"] / "token").read_bytes() == b"t0k"
    assert oct((volumes["token"] / "token").stat().st_mode & 0o777) == oct(0o600)
    assert (volumes["config"] / "s" / "x.json").read_bytes() == b"{}"
    assert (volumes["info"] / "labels").read_text() == 'a="b"'


def test_a_claim_keeps_its_directory_across_pods(tmp_path):
    spec = [{"name": "store", "persistentVolumeClaim": {"claimName": "artifacts"}}]
    first = prepare_volumes(pod(spec), tmp_path / "pod1", tmp_path, Reader())["store"]
    (first / "model.joblib").write_text("m")
    second = prepare_volumes(pod(spec), tmp_path / "pod2", tmp_path, Reader())["store"]
    assert (second / "model.joblib").read_text() == "m"


@pytest.mark.parametrize("volume", [
    {"name": "v", "secret": {"secretName": "absent"}},
    {"name": "v", "configMap": {"name": "settings", "items": [{"key": "nope", "path": "x"}]}},
    {"name": "v", "nfs": {"server": "example.com", "path": "/"}},
    {"name": "v", "configMap": {"name": "settings", "items": [{"key": "settings.json", "path": "../../escape"}]}},
])
def test_unusable_volumes_are_config_errors(tmp_path, volume):
    with pytest.raises(ConfigError):
        prepare_volumes(pod([volume]), tmp_path / "pod", tmp_path, Reader())


def test_optional_missing_secret_is_an_empty_volume(tmp_path):
    volumes = prepare_volumes(pod([{"name": "v", "secret": {"secretName": "absent", "optional": True}}]),
                              tmp_path / "pod", tmp_path, Reader())
    assert not any(volumes["v"].iterdir())


def test_mounts_are_ordered_parents_first_with_sub_paths_and_read_only(tmp_path):
    volumes = {"a": tmp_path / "a", "b": tmp_path / "b"}
    for path in volumes.values():
        path.mkdir()
    mounts = container_mounts({"volumeMounts": [
        {"name": "b", "mountPath": "/data/models/", "subPath": "v1", "readOnly": True},
        {"name": "a", "mountPath": "/data"},
    ]}, volumes)
    assert [m.target for m in mounts] == ["/data", "/data/models"]
    assert mounts[1].source == str(tmp_path / "b" / "v1") and mounts[1].read_only
    with pytest.raises(ConfigError):
        container_mounts({"volumeMounts": [{"name": "zzz", "mountPath": "/x"}]}, volumes)


def test_mountpoint_registry_creates_and_removes_only_what_it_made(tmp_path):
    existing = tmp_path / "existing"
    existing.mkdir()
    registry = MountpointRegistry(tmp_path / "state.json")
    registry.ensure(str(existing / "deep" / "dir"), is_file=False)
    registry.ensure(str(existing / "file-log"), is_file=True)
    assert missing_path_chain(str(existing / "deep" / "dir")) == []
    assert (existing / "file-log").is_file()
    assert MountpointRegistry(tmp_path / "state.json")._created  # survives a crash
    (existing / "keep.txt").write_text("x")
    registry.remove_all()
    assert sorted(os.listdir(existing)) == ["keep.txt"]
