"""Writes the generated files of manifests/monitoring/ (tests/monitoring fails when they drift):

- dashboards/model-feedback-loop.json: the Grafana dashboard of model_feedback_loop.py;
- prometheusrule.yaml: rules.yaml, the one source of the rules, embedded as a PrometheusRule's spec.

    python -m dashboards.generate            # from the repository root; --check only compares
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from grafana_foundation_sdk.cog.encoder import JSONEncoder

from .model_feedback_loop import build

ROOT = Path(__file__).resolve().parents[1]
MONITORING = ROOT / "manifests" / "monitoring"
RULES = MONITORING / "rules.yaml"
PROMETHEUS_RULE = MONITORING / "prometheusrule.yaml"
DASHBOARD = MONITORING / "dashboards" / "model-feedback-loop.json"

PROMETHEUS_RULE_HEADER = """\
# GENERATED from rules.yaml by `python -m dashboards.generate`: edit rules.yaml, then regenerate.
# spec is that Prometheus rules file, line for line.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: model-feedback-loop
  namespace: feedbackloop-system
  labels: {app.kubernetes.io/part-of: model-feedback-loop}
spec:
"""


def dashboard_json() -> str:
    dashboard = build().build()
    # Grafana keys panel state (links, collapsed rows) by id: unique and stable across regenerations.
    for number, panel in enumerate(dashboard.panels or [], start=1):
        panel.id_val = number
    return JSONEncoder(sort_keys=True, indent=2).encode(dashboard) + "\n"


def prometheus_rule_yaml(rules_text: str) -> str:
    body = "".join(f"  {line}" if line.strip() else line for line in rules_text.splitlines(keepends=True))
    return PROMETHEUS_RULE_HEADER + body


def outputs() -> dict[Path, str]:
    return {DASHBOARD: dashboard_json(), PROMETHEUS_RULE: prometheus_rule_yaml(RULES.read_text())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 if a generated file differs; write nothing")
    args = parser.parse_args(argv)
    stale = [path for path, text in outputs().items() if not path.exists() or path.read_text() != text]
    if args.check:
        for path in stale:
            print(f"{path.relative_to(ROOT)} is stale: run python -m dashboards.generate", file=sys.stderr)
        return 1 if stale else 0
    for path, text in outputs().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
