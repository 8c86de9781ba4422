"""The model-feedback-loop Grafana dashboard, built with grafana-foundation-sdk's typed builders.

Fleet rows read the operator's metrics (operator/feedbackloop/runtime/metrics.py) and the recording rules of
manifests/monitoring/rules.yaml; the Loops row reads the operator's per-loop series (mfl_loop_*, labelled with
the loop's `namespace` and `loop`), selected by `$namespace` and `$loop`; the per-model row reads the model
servers' series (docs/contracts.md), selected by `$namespace` and `$model` (a loop's `spec.model.name`, the
label every server series has).
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import stat, timeseries
from grafana_foundation_sdk.builders.common import ReduceDataOptions, StackingConfig, VizLegendOptions
from grafana_foundation_sdk.builders.dashboard import Dashboard, DatasourceVariable, QueryVariable, Row
from grafana_foundation_sdk.builders.prometheus import Dataquery
from grafana_foundation_sdk.models.common import (
    BigValueGraphMode,
    BigValueTextMode,
    LegendDisplayMode,
    LegendPlacement,
    StackingMode,
)
from grafana_foundation_sdk.models.dashboard import DataSourceRef, VariableRefresh, VariableSort

UID = "model-feedback-loop"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
# The server series of the loops chosen in the dashboard's namespace and model variables.
LOOP = 'namespace=~"$namespace",model=~"$model"'
# The operator's per-loop series of the loops chosen in the namespace and loop variables.
LOOPS = 'namespace=~"$namespace",loop=~"$loop"'
NAMED = "{{namespace}}/{{loop}}"
EVENTS_1H = "namespace_job_reason:mfl_operator_events:increase1h"
# The operator judges accuracy over 5 minutes (monitoring.default_rules): the per-loop panels do too.
WINDOW = "5m"


def query(expr: str, legend: str = "", ref: str = "A") -> Dataquery:
    return Dataquery().expr(expr).legend_format(legend or "__auto").ref_id(ref).datasource(DATASOURCE)


def graph(title: str, description: str, unit: str, *queries: Dataquery, width: int = 12) -> timeseries.Panel:
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .span(width)
        .height(8)
        .legend(
            VizLegendOptions().show_legend(True).display_mode(LegendDisplayMode.LIST).placement(LegendPlacement.BOTTOM)
        )
    )
    for q in queries:
        panel = panel.with_target(q)
    return panel


def counts(title: str, description: str, expr: str, legend: str, width: int = 8) -> timeseries.Panel:
    """Stacked series: how many of each kind, adding up to the whole."""
    stacked = StackingConfig().mode(StackingMode.NORMAL)
    return graph(title, description, "short", query(expr, legend), width=width).stacking(stacked)


def events(reasons: str) -> str:
    return f'sum by (reason) ({EVENTS_1H}{{reason=~"{reasons}"}})'


Panel = stat.Panel | timeseries.Panel


def fleet_panels() -> list[Panel]:
    return [
        (
            stat.Panel()
            .title("Loops by phase")
            .description("mfl_operator_loops: every loop the operator watches, by status.phase.")
            .datasource(DATASOURCE)
            .span(8)
            .height(8)
            .reduce_options(ReduceDataOptions().calcs(["lastNotNull"]).values(False))
            .graph_mode(BigValueGraphMode.NONE)
            .text_mode(BigValueTextMode.VALUE_AND_NAME)
            .with_target(query("sum by (phase) (mfl_operator_loops)", "{{phase}}").instant())
        ),
        (
            counts(
                "Loops by phase over time",
                "Breached: a rule breaks its threshold and nothing retrains the model yet.",
                "sum by (phase) (mfl_operator_loops)",
                "{{phase}}",
                width=16,
            )
        ),
        (
            counts(
                "Breaches (last hour)",
                "Events BreachStarted and Recovered per hour (recording rule " + EVENTS_1H + ").",
                events("BreachStarted|Recovered"),
                "{{reason}}",
            )
        ),
        (
            counts(
                "Retrainings (last hour)",
                "Retraining Jobs started and failed, candidates passed or rejected by the offline gate.",
                events("RetrainingStarted|RetrainingFailed|CandidatePassedGate|CandidateRejected"),
                "{{reason}}",
            )
        ),
        (
            counts(
                "Canaries (last hour)",
                "Canaries started and stepped, versions promoted, canaries rolled back.",
                events("CanaryStarted|CanaryStep|Promoted|RolledBack"),
                "{{reason}}",
            )
        ),
    ]


def loops_panels() -> list[Panel]:
    """Each loop by name, as the replica acting on it exports it (max by: one series per loop whatever replica)."""
    return [
        (
            stat.Panel()
            .title("Phase by loop")
            .description("mfl_loop_info: each loop's phase, serving version and canary version.")
            .datasource(DATASOURCE)
            .span(8)
            .height(8)
            .reduce_options(ReduceDataOptions().calcs(["lastNotNull"]).values(False))
            .graph_mode(BigValueGraphMode.NONE)
            .text_mode(BigValueTextMode.NAME)
            .with_target(
                query(
                    f"max by (namespace, loop, phase, version, canary_version) (mfl_loop_info{{{LOOPS}}})",
                    NAMED + ": {{phase}} v{{version}} {{canary_version}}",
                ).instant()
            )
        ),
        (
            graph(
                "Breaching rules by loop",
                "mfl_loop_rule_breaching: 1 while a rule of the loop is past its threshold for its `for`.",
                "short",
                query(f"max by (namespace, loop, rule) (mfl_loop_rule_breaching{{{LOOPS}}})", NAMED + " {{rule}}"),
                width=8,
            )
            .min(0)
            .max(1)
        ),
        (
            graph(
                "Canary weight by loop",
                "mfl_loop_canary_weight: the running canary's traffic weight (0: none runs).",
                "percent",
                query(f"max by (namespace, loop) (mfl_loop_canary_weight{{{LOOPS}}})", NAMED),
                width=8,
            )
        ),
        (
            graph(
                "Metrics unavailable by loop",
                "mfl_loop_metrics_unavailable: 1 during an outage of the serving version's data; a version "
                "awaiting its first data (after a promotion) is not one.",
                "short",
                query(f"max by (namespace, loop) (mfl_loop_metrics_unavailable{{{LOOPS}}})", NAMED),
                width=12,
            )
            .min(0)
            .max(1)
        ),
        (
            graph(
                "Since the last retraining ended, by outcome",
                "mfl_loop_last_retraining_timestamp_seconds: how long ago each loop's last retraining ended, "
                "labelled with its outcome (Promoted, RolledBack, Rejected, TrainingFailed).",
                "s",
                query(
                    f"max by (namespace, loop, outcome) "
                    f"(time() - mfl_loop_last_retraining_timestamp_seconds{{{LOOPS}}})",
                    NAMED + " {{outcome}}",
                ),
                width=12,
            )
        ),
    ]


def operator_panels() -> list[Panel]:
    def quantile(q: str, metric: str) -> str:
        return f"histogram_quantile({q}, sum by (le) (rate({metric}_bucket[$__rate_interval])))"

    return [
        (
            graph(
                "Poll lag",
                "How late a loop's poll starts against its interval: breaches are detected that much later.",
                "s",
                query(quantile("0.99", "mfl_operator_poll_lag_seconds"), "p99", "A"),
                query(quantile("0.5", "mfl_operator_poll_lag_seconds"), "p50", "B"),
                width=8,
            )
        ),
        (
            graph(
                "Poll duration",
                "One fleet poll: every due loop's queries, batched per PromQL template.",
                "s",
                query(quantile("0.99", "mfl_operator_poll_duration_seconds"), "p99", "A"),
                query(quantile("0.5", "mfl_operator_poll_duration_seconds"), "p50", "B"),
                width=8,
            )
        ),
        (
            graph(
                "Prometheus queries",
                "PromQL queries the operator sends, and those that fail (its loops then see no data).",
                "reqps",
                query("sum(rate(mfl_operator_prometheus_queries_total[$__rate_interval]))", "queries", "A"),
                query("sum(rate(mfl_operator_prometheus_query_errors_total[$__rate_interval]))", "errors", "B"),
                width=8,
            )
        ),
        (
            graph(
                "Status writes",
                "Status patches: `change` on a state change, `refresh` for live values (every 5 minutes).",
                "ops",
                query("sum by (reason) (rate(mfl_operator_status_writes_total[$__rate_interval]))", "{{reason}}"),
                width=12,
            )
        ),
        (
            graph(
                "Reconcile errors",
                "Reconciles that raised; the operator's log names the loop.",
                "ops",
                query("sum(rate(mfl_operator_reconcile_errors_total[$__rate_interval]))", "errors"),
                width=12,
            )
        ),
    ]


def ratio(numerator: str, denominator: str, selector: str, by: str = "namespace, model, version, track") -> str:
    return (
        f"sum by ({by}) (rate({numerator}{{{selector}}}[{WINDOW}]))"
        f" / sum by ({by}) (rate({denominator}{{{selector}}}[{WINDOW}]))"
    )


def loop_panels() -> list[Panel]:
    version_track = "{{model}} v{{version}} {{track}}"
    canary, stable = (
        ratio("mfl_feedback_correct_total", "mfl_feedback_total", f'{LOOP},track="{track}"', "namespace, model")
        for track in ("canary", "stable")
    )

    def latency(q: str) -> str:
        buckets = f"rate(mfl_prediction_latency_seconds_bucket{{{LOOP}}}[{WINDOW}])"
        return f"histogram_quantile({q}, sum by (namespace, model, version, track, le) ({buckets}))"

    return [
        (
            graph(
                "Accuracy by version and track",
                "Labelled predictions that were right, by the version and track that made them: what the "
                "default accuracy rule judges (stable track, serving version).",
                "percentunit",
                query(ratio("mfl_feedback_correct_total", "mfl_feedback_total", LOOP), version_track),
            )
            .min(0)
            .max(1)
        ),
        (
            graph(
                "Mean absolute error by version and track (regression)",
                "For regression loops: the mean absolute error of labelled predictions.",
                "short",
                query(ratio("mfl_feedback_abs_error_sum", "mfl_feedback_abs_error_count", LOOP), version_track),
            )
        ),
        (
            graph(
                "Canary evidence: accuracy, canary minus stable",
                "The difference the canary analysis tests against rollout.analysis.maxDegradation; "
                "empty when no canary runs.",
                "percentunit",
                query(f"({canary}) - ({stable})", "{{model}} canary - stable"),
                width=8,
            )
        ),
        (
            graph(
                "Canary evidence: labels per track",
                "Labelled predictions per second and track: the sample size each side of the canary test gets.",
                "short",
                query(f"sum by (model, track) (rate(mfl_feedback_total{{{LOOP}}}[{WINDOW}]))", "{{model}} {{track}}"),
                width=8,
            )
        ),
        (
            graph(
                "Labels per prediction",
                "Ground truth arriving per prediction made (no label-delay metric exists yet): "
                "low values mean the rules judge few samples.",
                "percentunit",
                query(
                    f"sum by (model) (rate(mfl_feedback_total{{{LOOP}}}[{WINDOW}]))"
                    f" / sum by (model) (rate(mfl_predictions_total{{{LOOP}}}[{WINDOW}]))",
                    "{{model}}",
                ),
                width=8,
            )
        ),
        (
            graph(
                "Latency",
                "Per /predict request, by version and track; the default rule's p99 ceiling is 0.5 s.",
                "s",
                query(latency("0.99"), "p99 " + version_track, "A"),
                query(latency("0.5"), "p50 " + version_track, "B"),
            )
        ),
        (
            graph(
                "Predictions and 5xx ratio",
                "Rows predicted per second by version and track, and the share of API requests answered 5xx.",
                "short",
                query(
                    f"sum by (model, version, track) (rate(mfl_predictions_total{{{LOOP}}}[{WINDOW}]))",
                    "rows/s " + version_track,
                    "A",
                ),
                query(
                    f'sum by (model, version, track) (rate(mfl_http_requests_total{{{LOOP},code=~"5.."}}[{WINDOW}]))'
                    f" / sum by (model, version, track) (rate(mfl_http_requests_total{{{LOOP}}}[{WINDOW}]))",
                    "5xx ratio " + version_track,
                    "B",
                ),
            )
        ),
    ]


def variables() -> list[DatasourceVariable | QueryVariable]:
    return [
        DatasourceVariable("datasource").label("Prometheus").type("prometheus"),
        QueryVariable("namespace")
        .label("Namespace")
        .datasource(DATASOURCE)
        .query("label_values(mfl_loop_info, namespace)")
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True),
        QueryVariable("loop")
        .label("Loop")
        .datasource(DATASOURCE)
        .query('label_values(mfl_loop_info{namespace=~"$namespace"}, loop)')
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True),
        QueryVariable("model")
        .label("Loop (spec.model.name)")
        .datasource(DATASOURCE)
        .query('label_values(mfl_predictions_total{namespace=~"$namespace"}, model)')
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True),
    ]


def build() -> Dashboard:
    dashboard = (
        Dashboard("Model feedback loop")
        .uid(UID)
        .description("Fleet and per-loop view of model-feedback-loop: phases, breaches, retrainings, canaries.")
        .tags(["model-feedback-loop", "mlops"])
        .time("now-6h", "now")
        .refresh("30s")
        .editable()
    )
    for variable in variables():
        dashboard = dashboard.with_variable(variable)
    for title, panels in (
        ("Fleet", fleet_panels()),
        ("Loops in $namespace", loops_panels()),
        ("Operator", operator_panels()),
        ("Loop: $model in $namespace", loop_panels()),
    ):
        # Panels follow their (expanded) row on the dashboard: Grafana drops panels nested in an open row.
        dashboard = dashboard.with_row(Row(title))
        for panel in panels:
            dashboard = dashboard.with_panel(panel)
    return dashboard
