"""`mfl`/`kubectl mfl` end to end against a local server that answers like kube-apiserver (tests/cli/apiserver.py):
the real kubernetes client, the real kubeconfig handling, only the cluster is stood in for."""

from __future__ import annotations

import copy
import json
import socket
from pathlib import Path

import pytest
import yaml

from mfl_cli import cli

from .apiserver import FakeApiServer, status_body

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = yaml.safe_load((ROOT / "manifests" / "examples" / "loop.yaml").read_text())
CANARY = {"version": 4, "step": 1, "weight": 50, "analysisPhase": "Running", "startedAt": "2026-12-02T03:00:00Z"}


def loop(name: str = "churn", namespace: str = "prod", **status) -> dict:
    body = copy.deepcopy(EXAMPLE)
    body["metadata"] = {
        "name": name,
        "namespace": namespace,
        "generation": 3,
        "creationTimestamp": "2026-11-30T00:00:00Z",
        "annotations": {"team": "ml"},
    }
    body["status"] = {"phase": "Monitoring", "currentVersion": 3, "observedGeneration": 3, **status}
    return body


@pytest.fixture
def server(tmp_path, monkeypatch):
    with FakeApiServer() as fake:
        monkeypatch.setenv("HOME", str(tmp_path))
        monkeypatch.setenv("KUBECONFIG", str(fake.kubeconfig(tmp_path / "kubeconfig")))
        yield fake


def mfl(capsys, *argv: str) -> tuple[int, str, str]:
    """Run the CLI as the console script does; (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as stop:
        cli.main(list(argv))
    out, err = capsys.readouterr()
    return stop.value.code, out, err


def patches(server: FakeApiServer) -> list[dict]:
    return [r for r in server.requests if r["method"] == "PATCH"]


# --- reading -----------------------------------------------------------------------------------------


def test_get_lists_the_loops_of_the_contexts_namespace(server, capsys):
    server.add(loop("churn", rollout=CANARY, phase="Canary"))
    server.add(loop("fraud"))
    server.add(loop("other", namespace="staging"))
    code, out, _ = mfl(capsys, "get")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "PHASE", "VERSION", "CANARY", "AGE"]
    assert lines[1].split()[:6] == ["churn", "Canary", "3", "v4", "50%", "step"] and "step 2/2" in lines[1]
    assert lines[2].split()[:4] == ["fraud", "Monitoring", "3", "-"] and len(lines) == 3
    assert server.requests[-1]["path"].endswith("/namespaces/prod/modelfeedbackloops")
    assert server.requests[-1]["authorization"] == "Bearer t0ken"


def test_namespace_comes_from_n_then_context_before_or_after_the_verb(server, capsys):
    server.add(loop("other", namespace="staging"))
    for argv in (["get", "-n", "staging"], ["-n", "staging", "get"], ["get", "--context", "other"]):
        code, out, _ = mfl(capsys, *argv)
        assert code == 0 and out.splitlines()[1].startswith("other"), argv


def test_a_kubeconfig_list_is_merged(server, capsys, tmp_path, monkeypatch):
    server.add(loop("other", namespace="staging"))
    extra = {"contexts": [{"name": "extra", "context": {"cluster": "fake", "user": "me", "namespace": "staging"}}]}
    (tmp_path / "extra").write_text(yaml.safe_dump(extra))
    monkeypatch.setenv("KUBECONFIG", f"{tmp_path / 'missing'}:{tmp_path / 'kubeconfig'}:{tmp_path / 'extra'}")
    code, out, _ = mfl(capsys, "get", "--context", "extra")
    assert code == 0 and out.splitlines()[1].startswith("other")


def test_a_context_without_namespace_means_default(server, capsys, tmp_path, monkeypatch):
    server.add(loop("d", namespace="default"))
    monkeypatch.setenv("KUBECONFIG", str(server.kubeconfig(tmp_path / "plain", namespace=None)))
    code, out, _ = mfl(capsys, "get")
    assert code == 0 and out.splitlines()[1].startswith("d ")


def test_all_namespaces_lists_every_loop_with_its_namespace(server, capsys):
    server.add(loop("churn"))
    server.add(loop("other", namespace="staging"))
    code, out, _ = mfl(capsys, "get", "-A")
    rows = [line.split()[:2] for line in out.splitlines()]
    assert code == 0 and rows == [["NAMESPACE", "NAME"], ["prod", "churn"], ["staging", "other"]]
    assert server.requests[-1]["path"] == "/apis/feedbackloop.dev/v1alpha1/modelfeedbackloops"


def test_empty_namespace_says_so_on_stderr(server, capsys):
    code, out, err = mfl(capsys, "get")
    assert (code, out) == (0, "") and "no modelfeedbackloops found in namespace 'prod'" in err


def test_get_output_json_and_yaml_are_the_api_objects(server, capsys):
    stored = server.add(loop("churn"))
    code, out, _ = mfl(capsys, "get", "churn", "-o", "yaml")
    assert code == 0 and yaml.safe_load(out) == stored
    code, out, _ = mfl(capsys, "get", "-o", "json")
    listed = json.loads(out)
    assert code == 0 and listed["kind"] == "List" and listed["items"] == [stored]


def test_status_output_formats_are_the_status_block(server, capsys):
    stored = server.add(loop("churn", rollout=CANARY, phase="Canary"))
    assert yaml.safe_load(mfl(capsys, "status", "churn", "-o", "yaml")[1]) == stored["status"]
    assert json.loads(mfl(capsys, "status", "churn", "--json")[1]) == stored["status"]
    code, out, _ = mfl(capsys, "status", "churn")
    assert code == 0 and "prod/churn: phase Canary" in out and "Canary: version 4, step 2 at 50%" in out


def test_versions_offline_needs_no_cluster(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KUBECONFIG", raising=False)
    folder = tmp_path / "store" / "churn" / "versions" / "1"
    folder.mkdir(parents=True)
    (folder / "metadata.json").write_text(json.dumps({"rows": {"train": 10}}))
    code, out, _ = mfl(capsys, "versions", "churn", "--offline", "--storage", str(tmp_path / "store"))
    assert code == 0 and out.splitlines()[2].startswith("1")


# --- watching ----------------------------------------------------------------------------------------


def test_watch_prints_each_change_once_and_ends_when_the_loop_is_deleted(server, capsys):
    stored = server.add(loop("churn", rollout=CANARY, phase="Canary"))
    promoted = loop("churn", currentVersion=4)
    server.events.put(("MODIFIED", promoted))
    server.events.put(("MODIFIED", {**promoted, "metadata": {**promoted["metadata"], "resourceVersion": "9"}}))
    server.events.put(("DELETED", promoted))
    code, out, err = mfl(capsys, "status", "churn", "--watch")
    assert code == 1 and err == "mfl: modelfeedbackloop 'churn' was deleted from namespace 'prod'\n"
    prints = out.split("\n--- ")
    assert len(prints) == 2  # the unchanged second update is not printed again
    assert "phase Canary" in prints[0] and "phase Monitoring, serving version 4" in prints[1]
    [watch] = [r for r in server.requests if r["query"].get("watch")]
    assert watch["query"]["fieldSelector"] == "metadata.name=churn"
    assert watch["query"]["resourceVersion"] == stored["metadata"]["resourceVersion"]


def test_watch_reads_again_after_410_gone(server, capsys):
    server.add(loop("churn"))
    server.events.put(("ERROR", status_body(410, "Expired", "too old resource version: 1 (5)", {})))
    server.events.put(("MODIFIED", loop("churn", phase="Breached")))
    server.events.put(("DELETED", loop("churn")))
    code, out, _ = mfl(capsys, "status", "churn", "-w", "-o", "yaml")
    assert code == 1
    assert [doc["phase"] for doc in yaml.safe_load_all(out)] == ["Monitoring", "Breached"]
    assert len([r for r in server.requests if r["query"].get("watch")]) == 2


# --- writing requests --------------------------------------------------------------------------------


@pytest.mark.parametrize("verb", ["promote", "abort", "pause", "resume"])
def test_canary_verbs_merge_patch_only_their_annotation(server, capsys, verb):
    before = server.add(loop("churn", rollout=CANARY, phase="Canary"))
    code, out, err = mfl(capsys, verb, "churn")
    assert code == 0 and err == ""
    [patch] = patches(server)
    assert patch["content_type"] == "application/merge-patch+json"
    assert patch["path"] == "/apis/feedbackloop.dev/v1alpha1/namespaces/prod/modelfeedbackloops/churn"
    [(key, token)] = patch["body"]["metadata"]["annotations"].items()
    assert patch["body"] == {"metadata": {"annotations": {key: token}}} and key == f"feedbackloop.dev/{verb}"
    after = server.loops[("prod", "churn")]
    assert after["spec"] == before["spec"] and after["metadata"]["annotations"] == {"team": "ml", key: token}
    assert (
        out.count("\n") == 1
        and out.startswith("prod/churn: requested ")
        and "canary version 4" in out
        and f"{key}={token}" in out
    )
    assert "asynchronously" in out and "mfl status churn -n prod --watch" in out


def test_each_request_is_a_new_token(server, capsys):
    server.add(loop("churn"))
    mfl(capsys, "retrain", "churn")
    mfl(capsys, "retrain", "churn")
    first, second = (p["body"]["metadata"]["annotations"]["feedbackloop.dev/retrain"] for p in patches(server))
    assert first != second


def test_retrain_during_a_canary_is_written_and_says_it_waits(server, capsys):
    server.add(loop("churn", rollout=CANARY, phase="Canary"))
    code, out, _ = mfl(capsys, "retrain", "churn", "-n", "prod")
    assert code == 0 and "starts when the running canary ends" in out and len(patches(server)) == 1


def test_canary_verbs_without_a_canary_are_refused_and_nothing_is_written(server, capsys):
    server.add(loop("churn"))
    code, out, err = mfl(capsys, "promote", "churn")
    assert (code, out) == (1, "") and err == "mfl: churn has no canary running (phase Monitoring): nothing to promote\n"
    assert patches(server) == []


def test_a_retraining_the_operator_would_skip_is_refused_with_its_reason(server, capsys):
    paused = loop("churn")
    paused["spec"]["paused"] = True
    server.add(paused)
    code, _, err = mfl(capsys, "retrain", "churn")
    assert code == 1 and err == "mfl: the operator would skip this retraining: the loop is paused\n"
    assert patches(server) == []


# --- errors: one line, no traceback ------------------------------------------------------------------


def assert_one_line(err: str, expected: str) -> None:
    assert err.count("\n") == 1 and "Traceback" not in err
    assert expected in err, err


def test_missing_loop(server, capsys):
    for argv in (["status", "nope"], ["promote", "nope"], ["get", "nope", "-n", "dev"]):
        code, _, err = mfl(capsys, *argv)
        namespace = "dev" if "dev" in argv else "prod"
        assert code == 1
        assert_one_line(err, f"mfl: modelfeedbackloop 'nope' not found in namespace '{namespace}'")


def test_crd_not_installed(server, capsys):
    server.crd_installed = False
    for argv in (["get"], ["status", "churn"], ["retrain", "churn"]):
        code, _, err = mfl(capsys, *argv)
        assert code == 1
        assert_one_line(err, "the ModelFeedbackLoop resource type is not installed on this cluster")


def test_forbidden_write(server, capsys):
    server.add(loop("churn"))
    server.forbidden.add("PATCH")
    code, _, err = mfl(capsys, "retrain", "churn")
    assert code == 1
    assert_one_line(
        err, 'mfl: forbidden: modelfeedbackloops.feedbackloop.dev "churn" is forbidden: User "me" cannot patch'
    )


def test_connection_refused(tmp_path, capsys, monkeypatch):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with FakeApiServer() as fake:
        monkeypatch.setenv("KUBECONFIG", str(fake.kubeconfig(tmp_path / "k", server=f"http://127.0.0.1:{port}")))
    code, _, err = mfl(capsys, "get")
    assert code == 1
    assert_one_line(err, f"mfl: cannot reach the cluster at http://127.0.0.1:{port}: connection refused")


def test_an_apiserver_that_does_not_answer_times_out(server, capsys):
    server.stall.set()
    code, _, err = mfl(capsys, "status", "churn", "--request-timeout", "0.3")
    assert code == 1
    assert_one_line(err, f"mfl: cannot reach the cluster at {server.url}: no answer in time (read timeout)")


def test_missing_kubeconfig(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    code, _, err = mfl(capsys, "get")
    assert code == 1
    assert_one_line(err, f"mfl: no kubeconfig found (looked at {tmp_path}/.kube/config)")
    code, _, err = mfl(capsys, "get", "--kubeconfig", str(tmp_path / "gone"))
    assert code == 1
    assert_one_line(err, f"mfl: kubeconfig {tmp_path}/gone not found")


def test_broken_kubeconfig_and_unknown_context(server, tmp_path, capsys, monkeypatch):
    code, _, err = mfl(capsys, "get", "--context", "nowhere")
    assert code == 1
    assert_one_line(err, f"mfl: context 'nowhere' not found in {tmp_path}/kubeconfig")
    (tmp_path / "broken").write_text("apiVersion: v1\nkind: Config\nclusters: [\n")
    code, _, err = mfl(capsys, "get", "--kubeconfig", str(tmp_path / "broken"))
    assert code == 1 and err.startswith(f"mfl: cannot use the kubeconfig {tmp_path}/broken") and err.count("\n") == 1
