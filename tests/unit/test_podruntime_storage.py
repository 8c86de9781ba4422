from pathlib import Path

from feedbackloop.localdev.podruntime_storage import PROVISIONED_BY, needs_volume, volume_for_claim, volume_name


def claim(**spec):
    return {"metadata": {"name": "artifacts", "namespace": "ml", "uid": "c-1"},
            "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "5Gi"}}, **spec},
            "status": {"phase": "Pending"}}


def test_unbound_filesystem_claims_need_a_volume():
    assert needs_volume(claim())
    assert not needs_volume(claim(volumeName="pv-1"))
    assert not needs_volume(claim(volumeMode="Block"))
    assert not needs_volume(claim(selector={"matchLabels": {"a": "b"}}))
    bound = claim()
    bound["status"]["phase"] = "Bound"
    assert not needs_volume(bound)


def test_the_volume_is_a_pre_bound_host_path_with_the_claims_shape():
    volume = volume_for_claim(claim(storageClassName="standard"), Path("/w/volumes/ml/artifacts"), "mfl-node")
    assert volume["metadata"] == {"name": volume_name(claim()), "labels": {PROVISIONED_BY: "mfl-node"}}
    spec = volume["spec"]
    assert spec["hostPath"]["path"] == "/w/volumes/ml/artifacts"
    assert spec["capacity"] == {"storage": "5Gi"} and spec["accessModes"] == ["ReadWriteMany"]
    assert spec["storageClassName"] == "standard" and spec["persistentVolumeReclaimPolicy"] == "Retain"
    assert spec["claimRef"]["uid"] == "c-1" and spec["claimRef"]["namespace"] == "ml"
