"""Alerts route by the loop's namespace (issue 23's done-when): the labels promtool shows a breach of loop `a` in
team-a firing with (rules_test.yaml) reach team-a's receiver with amtool, and the same loop name in team-b
reaches team-b's, through the example routes docs/monitoring.md ships (docs/examples/alertmanager-routes.yaml)."""

from __future__ import annotations

import shutil
import subprocess

import yaml

from mfl_testbed.pytest_plugin import unavailable

from .tools import ROOT, RULES_TEST, RUNBOOKS

ROUTES = ROOT / "docs" / "examples" / "alertmanager-routes.yaml"


def amtool(*args: str) -> subprocess.CompletedProcess[str]:
    """Debian's `prometheus-alertmanager` package provides it (Makefile APT_PACKAGES); under CI=true a missing
    amtool fails, never skips."""
    binary = shutil.which("amtool")
    if binary is None:
        unavailable("amtool not found: `apt-get install prometheus-alertmanager`")
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=60)


def receiver(labels: dict[str, str], expected: str) -> str:
    """The receiver the example routes give an alert with `labels`, verified by amtool to be `expected`."""
    pairs = [f"{key}={value}" for key, value in sorted(labels.items())]
    done = amtool("config", "routes", "test", f"--config.file={ROUTES}", f"--verify.receivers={expected}", *pairs)
    assert done.returncode == 0, f"{labels} -> {done.stdout.strip()}, expected {expected}\n{done.stderr}"
    return done.stdout.strip()


def fired(alertname: str, eval_time: str) -> list[dict[str, str]]:
    """The labels of the alerts rules_test.yaml expects `alertname` to fire with at `eval_time` (with alertname)."""
    for test in yaml.safe_load(RULES_TEST.read_text())["tests"]:
        for case in test.get("alert_rule_test", []):
            if (case["alertname"], case["eval_time"]) == (alertname, eval_time):
                return [{"alertname": alertname, **alert["exp_labels"]} for alert in case["exp_alerts"]]
    raise AssertionError(f"rules_test.yaml has no case {alertname} at {eval_time}")


def test_the_example_routes_are_a_valid_alertmanager_config_and_the_one_documented() -> None:
    done = amtool("check-config", str(ROUTES))
    assert done.returncode == 0, done.stdout + done.stderr
    assert ROUTES.read_text() in RUNBOOKS.read_text(), "docs/monitoring.md must quote the example routes as they are"


def test_a_breach_of_loop_a_in_team_a_reaches_team_a_and_the_same_loop_name_in_team_b_reaches_team_b() -> None:
    [team_a, team_b] = fired("ModelFeedbackLoopRuleBreaching", "2m")  # promtool: firing, with these labels
    assert (team_a["namespace"], team_a["loop"]) == ("team-a", "a")
    assert receiver(team_a, "team-a") == "team-a"
    assert team_b["namespace"] == "team-b" and receiver(team_b, "team-b") == "team-b"
    assert receiver({**team_a, "namespace": "team-b"}, "team-b") == "team-b"  # loop `a` of the other team
    [breached] = fired("ModelFeedbackLoopBreached", "7m")
    assert receiver(breached, "team-a") == "team-a"


def test_the_operators_own_alerts_reach_the_platform_team() -> None:
    [lag] = fired("ModelFeedbackLoopOperatorPollLagHigh", "42m")
    assert lag["namespace"] == "feedbackloop-system" and "loop" not in lag
    assert receiver(lag, "platform") == "platform"
