"""The test bed's Prometheus loads rule files at run time (tests/e2e/test_monitoring_component.py relies on it)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mfl_testbed.prometheus import Prometheus, PrometheusError
from mfl_testbed.pytest_plugin import start_component

ALWAYS = {"groups": [{"name": "always", "rules": [{"alert": "Always", "expr": "vector(1)", "labels": {"x": "y"}}]}]}


@pytest.mark.integration
def test_rules_are_loaded_refused_and_removed_at_run_time(tmp_path: Path) -> None:
    prometheus = start_component("prometheus", lambda: Prometheus(tmp_path).start())
    try:
        assert "rule_files" not in yaml.safe_load(prometheus.config_path.read_text()), "no rules: as before"
        prometheus.add_rules("always", ALWAYS)
        prometheus.wait_for('ALERTS{alertname="Always", alertstate="firing"}', timeout=30)
        assert [(a["labels"]["alertname"], a["state"]) for a in prometheus.alerts()] == [("Always", "firing")]
        assert [group["name"] for group in prometheus.rule_groups()] == ["always"]

        with pytest.raises(PrometheusError, match="reload failed"):
            prometheus.add_rules("broken", {"groups": [{"name": "broken", "rules": [{"record": "r", "expr": "sum("}]}]})
        assert [group["name"] for group in prometheus.rule_groups()] == ["always"], "the loaded rules stay"
        prometheus.remove_rules("broken")

        prometheus.remove_rules("always")
        assert prometheus.rule_groups() == []
        assert not (tmp_path / "rules" / "always.yml").exists()
    finally:
        prometheus.stop()
