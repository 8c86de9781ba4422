"""The CLI's pure parts: table cells, the write verbs' policy and messages, error wording, kubeconfig lookup."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from feedbackloop.core import phases
from feedbackloop.core.timeutil import parse_time
from mfl_cli import actions, cli, kube, views

EXAMPLE = yaml.safe_load((Path(__file__).resolve().parents[2] / "manifests" / "examples" / "loop.yaml").read_text())
NOW = parse_time("2026-12-02T12:00:00Z") or 0.0


def loop(spec_changes=None, **status):
    body = copy.deepcopy(EXAMPLE)
    body["spec"].update(spec_changes or {})
    body["metadata"] = {"name": "churn", "namespace": "prod"}
    body["status"] = {"phase": "Monitoring", "currentVersion": 3, **status}
    return body


@pytest.mark.parametrize(
    "seconds, shown",
    [(5, "5s"), (119, "119s"), (125, "2m5s"), (600, "10m"), (3 * 3600 + 120, "3h2m"), (30 * 3600, "30h"),
     (4 * 86400 + 7200, "4d2h"), (200 * 86400, "200d"), (3 * 365 * 86400 + 86400, "3y1d")],
)  # fmt: skip
def test_age_reads_like_kubectl(seconds, shown):
    assert views.age("2026-12-02T12:00:00Z", NOW + seconds) == shown


def test_age_of_a_missing_timestamp():
    assert views.age(None, NOW) == "<unknown>"


def test_canary_cell():
    assert views.canary(loop()) == "-"
    rollout = {"version": 5, "step": 0, "weight": 20, "paused": True}
    assert views.canary(loop(rollout=rollout)) == "v5 20% step 1/2 paused"
    no_steps = loop(rollout=rollout)
    del no_steps["spec"]["rollout"]
    assert views.canary(no_steps) == "v5 20% step 1 paused"


def test_write_verbs_are_exactly_the_requests_the_operator_reads():
    assert set(cli.WRITE_VERBS) == set(phases.REQUEST_ANNOTATIONS)
    assert actions.annotation_key("abort") == "feedbackloop.dev/abort"
    with pytest.raises(ValueError):
        actions.annotation_key("delete")


def test_tokens_differ_within_a_second():
    first = actions.new_token(datetime(2026, 12, 2, 3, 0, 0, 1, tzinfo=UTC))
    second = actions.new_token(datetime(2026, 12, 2, 3, 0, 0, 2, tzinfo=UTC))
    assert first == "2026-12-02T03:00:00.000001Z" and first != second


def test_retrain_follows_the_operators_policy():
    recent = [f"2026-12-02T0{h}:00:00Z" for h in (1, 2, 3)]
    assert actions.refusal("retrain", loop(retrainTimes=recent), NOW) == (
        "the operator would skip this retraining: daily budget used: 3 of maxRetrainsPerDay 3"
    )
    # A manual request skips the cooldown: a retraining an hour ago does not block it.
    assert actions.refusal("retrain", loop(lastRetrainAt="2026-12-02T11:00:00Z"), NOW) == ""
    disabled = loop({"retraining": {**EXAMPLE["spec"]["retraining"], "enabled": False}})
    assert actions.refusal("retrain", disabled, NOW).endswith("retraining is disabled")
    # While a retraining runs the request waits for it (the operator handles it afterwards).
    assert actions.refusal("retrain", loop(retraining={"version": 4}, retrainTimes=recent), NOW) == ""


def test_retrain_of_an_invalid_spec_is_refused():
    broken = loop({"rollout": {"steps": "many"}})
    assert "has an invalid spec" in actions.refusal("retrain", broken, NOW)


def test_canary_verbs_need_a_canary():
    assert actions.refusal("abort", loop(rollout={"version": 4}), NOW) == ""
    assert actions.refusal("resume", loop(phase="Breached"), NOW) == (
        "churn has no canary running (phase Breached): nothing to resume"
    )


def test_confirmation_names_loop_request_and_follow_up():
    line = actions.confirmation("retrain", loop(retraining={"version": 4}), "T", "kubectl mfl")
    assert line == (
        "prod/churn: requested a retraining (it starts when the running retraining ends) "
        "(feedbackloop.dev/retrain=T); the operator acts on it asynchronously: "
        "kubectl mfl status churn -n prod --watch"
    )


def test_api_errors_in_words():
    missing = '{"kind":"Status","reason":"NotFound","details":{"name":"churn","kind":"modelfeedbackloops"}}'
    assert (
        kube.api_error_message(404, missing, "churn", "prod")
        == "modelfeedbackloop 'churn' not found in namespace 'prod'"
    )
    # An older apiserver answers an unknown resource path with plain text.
    assert "resource type is not installed" in kube.api_error_message(404, "404 page not found", "churn", "prod")
    assert kube.api_error_message(401, '{"message": "Unauthorized"}', None, "prod").startswith("unauthorized:")
    assert kube.api_error_message(500, b"etcdserver: request timed out\n", None, None) == (
        "the API server answered 500: etcdserver: request timed out"
    )


def test_network_failures_in_words():
    import socket

    from urllib3.exceptions import MaxRetryError, NameResolutionError, ReadTimeoutError

    lookup = NameResolutionError("no-such.invalid", None, socket.gaierror(-2, "Name or service not known"))
    assert kube.unreachable_message("https://no-such.invalid", MaxRetryError(None, "/", lookup)) == (
        "cannot reach the cluster at https://no-such.invalid: "
        "Failed to resolve 'no-such.invalid' ([Errno -2] Name or service not known)"
    )
    assert kube.network_reason(MaxRetryError(None, "/", ReadTimeoutError(None, "/", "t"))) == (
        "no answer in time (read timeout)"
    )


def test_kubeconfig_is_found_as_kubectl_finds_it(tmp_path):
    second = tmp_path / "b"
    second.write_text("{}")
    env = {"KUBECONFIG": f"{tmp_path / 'a'}:{second}", "HOME": str(tmp_path)}
    assert kube.kubeconfig_files(None, env) == [str(second)]
    (tmp_path / ".kube").mkdir()
    (tmp_path / ".kube" / "config").write_text("{}")
    assert kube.kubeconfig_files(None, {"HOME": str(tmp_path)}) == [str(tmp_path / ".kube" / "config")]
    assert kube.kubeconfig_files(str(second), env) == [str(second)]
    with pytest.raises(kube.CliError, match="not found"):
        kube.kubeconfig_files(str(tmp_path / "nope"), env)


def test_watch_separators_keep_json_and_yaml_streams_parseable():
    now = datetime(2026, 12, 2, 3, 4, 5, tzinfo=UTC)
    assert (cli.watch_separator("yaml", now), cli.watch_separator("json", now)) == ("---\n", "")
    assert cli.watch_separator(None, now) == "\n--- 03:04:05 ---\n"


def test_program_name_follows_how_kubectl_runs_the_plugin():
    assert cli.program_name("/usr/local/bin/kubectl-mfl") == "kubectl mfl"
    assert cli.program_name("/usr/local/bin/mfl") == "mfl"
