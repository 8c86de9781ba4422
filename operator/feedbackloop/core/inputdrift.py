"""Input drift before labels (monitoring.inputDrift): served inputs against the serving version's training data.

The server counts every served value into the bins of the version's input profile (mfl_contracts.inputprofile)
and exports the training shares beside the counts; the queries here turn a window of those counts into each
feature's population stability index, in PromQL, with the same floor as `inputprofile.psi`. The poll asks for
the largest PSI (one series per loop: batched with the other loops of its tenant) and the rows behind it; only
a loop above the threshold is asked which features moved (the breakdown, one query). The verdict is an
alerting rule's: above `maxPsi` for `for`, with `minRows` rows in the window. It sets the InputDrift condition
and Events and never a breach, a retraining or a promotion: a shift of inputs may or may not cost accuracy,
and only labels can say which.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from feedbackloop.core import conditions as cond
from feedbackloop.core.api import INPUT_DRIFT_RULE, InputDrift, MetricRule, ModelFeedbackLoopSpec
from feedbackloop.core.monitoring import (
    BREACHING,
    NO_DATA,
    PENDING,
    Round,
    RuleState,
    Sample,
    evaluate_rule,
    rule_state_from_status,
    rule_state_to_status,
    rules_of,
)
from feedbackloop.core.status import FeatureDrift, InputDriftState
from mfl_contracts import metrics as names
from mfl_contracts.inputprofile import FLOOR

RULE_NAME = INPUT_DRIFT_RULE
TOP_FEATURES = 5
_SELECTOR = 'model="{{model}}",namespace="{{namespace}}",version="{{version}}",track="stable"'
_BY_LOOP = "model, namespace, version"


def _counts(window: str) -> str:
    return f"increase({names.FEATURE_BINS}{{{_SELECTOR}}}[{window}])"


def psi_by_feature(settings: InputDrift) -> str:
    """Each feature's PSI over the window (a series per feature), as `inputprofile.psi` computes it."""
    window = str(settings.window)
    share = (
        f"sum by ({_BY_LOOP}, feature, bin) ({_counts(window)}) / on ({_BY_LOOP}, feature) group_left "
        f"sum by ({_BY_LOOP}, feature) ({_counts(window)})"
    )
    actual = f"clamp_min({share}, {FLOOR})"
    expected = f"clamp_min(max by ({_BY_LOOP}, feature, bin) ({names.FEATURE_BIN_EXPECTED}{{{_SELECTOR}}}), {FLOOR})"
    return f"sum by ({_BY_LOOP}, feature) (({actual} - {expected}) * ln({actual} / {expected}))"


def rule(settings: InputDrift) -> MetricRule:
    """The check as a rule of the poll: the largest PSI, the window's rows as its samples."""
    rows = f"max by ({_BY_LOOP}) (sum by ({_BY_LOOP}, feature) ({_counts(str(settings.window))}))"
    return MetricRule.model_validate(
        {
            "name": RULE_NAME,
            "query": f"max by ({_BY_LOOP}) ({psi_by_feature(settings)})",
            "max": settings.max_psi,
            "for": str(settings.for_),
            "onNoData": "ignore",  # no rows, or no profile: no verdict, never a held warning
            "minSamples": settings.min_rows,
            "samplesQuery": rows,
        }
    )


def polled_rules(spec: ModelFeedbackLoopSpec) -> list[MetricRule]:
    """What a poll asks of Prometheus for a loop: its health rules, and the input-drift check when set."""
    settings = spec.monitoring.input_drift
    return [*rules_of(spec.monitoring, spec.model.task), *([rule(settings)] if settings is not None else [])]


def worth_a_breakdown(settings: InputDrift, sample: Sample) -> bool:
    """Above the threshold on enough rows: the only polls that ask which features moved."""
    enough = sample.samples is not None and sample.samples >= settings.min_rows
    return not sample.error and sample.value is not None and sample.value > settings.max_psi and enough


def ranked(series: Sequence[tuple[Mapping[str, str], float]]) -> tuple[tuple[str, float], ...]:
    """A breakdown's series as (feature, PSI), largest first, at most TOP_FEATURES."""
    pairs = [(labels.get("feature", "?")[:63], value) for labels, value in series if math.isfinite(value)]
    return tuple(sorted(pairs, key=lambda pair: -pair[1])[:TOP_FEATURES])


def breakdown_query(settings: InputDrift) -> str:
    """The features above the threshold, largest first: asked only of a loop whose largest PSI is above it."""
    return f"topk({TOP_FEATURES}, {psi_by_feature(settings)} > {settings.max_psi})"


def judge(
    settings: InputDrift, previous: InputDriftState | None, rounds: Sequence[Round], version: int | None
) -> tuple[RuleState, list[FeatureDrift]]:
    """The check's state stepped by this round's polls (those of the serving version only) and the features
    behind it: the last breakdown while above the threshold, none once within."""
    check = rule(settings)
    state = rule_state_from_status(previous) if previous else RuleState()
    features = list(previous.get("features", [])) if previous else []
    for samples in rounds:
        sample = samples.get(RULE_NAME)
        if sample is None or (sample.version is not None and version is not None and sample.version != version):
            continue
        state = evaluate_rule(check, state, sample)
        if sample.breakdown is not None:
            features = [{"name": name, "psi": round(psi, 4)} for name, psi in sample.breakdown]
        if state.state not in (PENDING, BREACHING):
            features = []
    return state, features


def to_status(state: RuleState, features: list[FeatureDrift]) -> InputDriftState:
    entry: InputDriftState = {**rule_state_to_status(RULE_NAME, state), "features": features}
    return entry


def condition(
    settings: InputDrift, state: RuleState, features: list[FeatureDrift], version: int | None
) -> cond.ConditionUpdate:
    """InputDrift: True once above the threshold for `for`; False within it; Unknown without a verdict."""
    if state.state == BREACHING:
        return cond.ConditionUpdate(cond.INPUT_DRIFT, True, "InputsShifted", drift_message(settings, features, version))
    if state.state == NO_DATA or state.value is None:
        why = state.message or "no served rows counted yet"
        return cond.ConditionUpdate(cond.INPUT_DRIFT, None, "AwaitingRows", f"no verdict for version {version}: {why}")
    if state.state == PENDING:
        return cond.ConditionUpdate(cond.INPUT_DRIFT, False, "ShiftPending", state.message)
    return cond.ConditionUpdate(
        cond.INPUT_DRIFT,
        False,
        "InputsAsTrained",
        f"largest PSI {state.value:.3f} <= {settings.max_psi:g} over the last {settings.window}",
    )


def drift_message(settings: InputDrift, features: list[FeatureDrift], version: int | None) -> str:
    moved = ", ".join(f"{f['name']} (PSI {f['psi']:.2f})" for f in features) or "features not named yet"
    return (
        f"served inputs differ from version {version}'s training data over the last {settings.window}: {moved}; "
        f"threshold {settings.max_psi:g}. Labels will say whether accuracy suffers"
    )
