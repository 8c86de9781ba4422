"""The ML-efficacy benchmark's input-drift check (issue 24: input drift before labels): the loop's spec sets
monitoring.inputDrift, its polls are inputprofile's PSI of the rows the stable track served, the warning comes
after a covariate shift and long before the label-based breach when labels are late, never without drift, and
it changes nothing the loop does. Goal (e) reads the warnings right."""

from dataclasses import replace

import numpy as np
import pytest

from feedbackloop.core import api
from mfl_contracts import inputprofile

LATE = "covariate-very-long-delay"


@pytest.fixture(scope="module")
def late(bench):
    """The loop alone on a small covariate shift whose labels come 10 label delays late (1,000 rows)."""
    settings = bench.quick_settings(rows=5000)
    case = bench.make_case(bench.stream_spec(settings, LATE), settings)
    [loop] = bench.run_case(case, settings, ["loop"])
    return case, settings, loop


@pytest.fixture(scope="module")
def steady(bench):
    """The loop alone on the quick no-drift stream, both default seeds."""
    found = []
    for seed in bench.DEFAULT_SEEDS:
        settings = replace(bench.quick_settings(), seed=seed)
        case = bench.make_case(bench.stream_spec(settings, "no-drift"), settings)
        [loop] = bench.run_case(case, settings, ["loop"])
        found.append((case, settings, loop))
    return found


def test_the_check_has_the_operators_defaults_mapped_to_rows_as_the_accuracy_rule_is(bench):
    full, quick, defaults = bench.Settings(), bench.quick_settings(), api.InputDrift()
    assert (full.input_max_psi, full.input_min_rows) == (defaults.max_psi, defaults.min_rows) == (0.2, 500)
    assert (full.input_window, full.input_for) == (defaults.window.seconds, defaults.for_.seconds) == (1800, 300)
    assert quick.input_window * full.rule_window == full.input_window * quick.rule_window  # 1/3
    assert quick.input_for * full.rule_for == full.input_for * quick.rule_for  # 1/5
    assert quick.input_min_rows <= quick.input_window
    spec = bench.loop_spec(quick, 0.8).monitoring.input_drift
    assert (spec.window.seconds, spec.for_.seconds, spec.max_psi, spec.min_rows) == (600, 60, 0.2, 500)
    assert bench.loop_spec(replace(quick, input_drift=False), 0.8).monitoring.input_drift is None


def test_the_late_label_stream_is_the_covariate_shift_with_the_very_long_delay_and_only_the_loop_runs_it(bench):
    settings = bench.quick_settings()
    [spec] = bench.input_drift_streams(settings)
    covariate = bench.stream_spec(settings, "covariate")
    assert spec.name == LATE and spec.loop_only and spec.inputs_shift
    assert (spec.shape, spec.drifts, spec.seed) == (covariate.shape, covariate.drifts, covariate.seed)
    assert spec.label_delay == bench.VERY_LONG_DELAY_FACTOR * settings.label_delay
    assert LATE not in [s.name for s in bench.stream_specs(settings)]  # nor in (a)-(d)
    late, plain = (bench.make_case(s, settings) for s in (spec, covariate))
    assert np.array_equal(late.X, plain.X) and np.array_equal(late.y, plain.y)


def test_a_poll_is_the_largest_inputprofile_psi_of_the_served_window_against_the_training_rows(bench):
    """By hand: version 1's profile from the base data, count_bins and psi over the window's rows."""
    settings = bench.quick_settings(rows=3000)
    spec = replace(bench.stream_spec(settings, "covariate"), drifts=(1000,))
    case = bench.make_case(spec, settings)
    loop = bench.FeedbackLoop(bench.Lab(case, settings))
    profile = inputprofile.make_profile({f"x{j}": case.base_X[:, j].tolist() for j in range(case.X.shape[1])})
    for now in range(settings.tick, 1500 + 1, settings.tick):
        loop.serve(slice(now - settings.tick, now))
        sample = loop.input_sample(now, 1)
        rows = case.X[max(0, now - settings.input_window) : now]
        psis = {
            name: inputprofile.psi(feature["expected"], inputprofile.count_bins(feature, rows[:, j].tolist()))
            for j, (name, feature) in enumerate(profile["features"].items())
        }
        assert sample.value == pytest.approx(max(psis.values()), abs=1e-12)
        assert sample.samples == len(rows) and sample.version == 1
        above = sorted((value, name) for name, value in psis.items() if value > settings.input_max_psi)[::-1]
        asked = len(rows) >= settings.input_min_rows and bool(above)  # the operator's worth_a_breakdown
        expected = [(name, pytest.approx(value)) for value, name in above[:5]] if asked else None
        assert (None if sample.breakdown is None else list(sample.breakdown)) == expected  # largest first
    assert sample.value > 1 and len(sample.breakdown) == 5  # 500 rows past the shift


def test_the_warning_comes_after_the_covariate_shift_and_long_before_the_breach(bench, late):
    case, settings, loop = late
    [alert] = bench.drift_alerts(bench.Outcome(case.spec(), [loop], 0.0))
    drift = case.drifts[0]
    assert alert.warning is not None and alert.breach is not None
    assert drift < alert.warning < alert.breach
    assert alert.warning - drift <= settings.input_window + settings.input_for  # a window's turnover at most
    assert alert.breach - drift >= case.label_delay  # the labels had to come first
    assert alert.earlier() >= 3
    assert all(at > drift for at, reason in loop.alerts if reason == "InputDrift")
    checks = [psi for at, psi, rows in loop.input_checks if at <= drift and rows >= settings.input_min_rows]
    assert checks and max(checks) < settings.input_max_psi / 2  # the noise floor before it


def test_without_drift_the_check_judges_every_poll_and_never_warns(bench, steady):
    for case, settings, loop in steady:
        assert bench.warnings(loop) == 0
        assert len(loop.input_checks) == -(-len(case.y) // settings.tick)  # every poll
        judged = [psi for _, psi, rows in loop.input_checks if rows >= settings.input_min_rows]
        assert len(judged) > len(loop.input_checks) / 2 and max(judged) < settings.input_max_psi


def test_the_check_is_no_trigger_the_loop_does_the_same_without_it(bench, late):
    """The warning fired on this stream; switched off, every row, Job and Event but its own is the same."""
    case, settings, loop = late
    [without] = bench.run_case(case, replace(settings, input_drift=False), ["loop"])
    assert bench.warnings(loop) >= 1 and bench.warnings(without) == 0 and not without.input_checks
    assert np.array_equal(loop.correct, without.correct)
    assert (loop.retrains, loop.notes, loop.timeline) == (without.retrains, without.notes, without.timeline)
    labels = [(at, r) for at, r in loop.alerts if r in ("BreachStarted", "Recovered")]
    assert labels == without.alerts


def outcome(bench, name, alerts, rows=8000, seed=7):
    settings = bench.quick_settings()
    loop = bench.Result("loop", np.ones(rows, bool), 0, "", 0.0, alerts=alerts)
    return bench.Outcome(bench.stream_spec(settings, name), [loop], 0.0, seed=seed)


def test_goal_e_asks_for_a_warning_5x_earlier_with_late_labels_and_no_false_warnings(bench):
    settings = bench.quick_settings()
    drift = bench.stream_spec(settings, LATE).drifts[0]
    early = outcome(bench, LATE, [(drift + 200, "InputDrift"), (drift + 1100, "BreachStarted")])
    slow = outcome(bench, LATE, [(drift + 300, "InputDrift"), (drift + 1100, "BreachStarted")], seed=8)
    quiet, noisy = outcome(bench, "no-drift", []), outcome(bench, "noise-burst", [(5000, "InputDrift")])
    line = bench.input_drift_target([early, quiet], settings)
    assert line.startswith("(e) with labels delayed far beyond the drift")
    assert line.endswith(
        f": PASS (warning vs breach: {LATE} s7 5.5x: PASS; "
        "false warnings: 0 in 8000 rows of no-drift (0.0 per 100,000): PASS)"
    )
    assert ": FAIL (" in bench.input_drift_target([early, slow, quiet], settings)  # 3.7x on s8
    assert "(6.2 per 100,000): FAIL" in bench.input_drift_target([early, quiet, noisy], settings)
    never = outcome(bench, LATE, [(drift + 200, "InputDrift")])  # no breach at all: the bound to the end
    assert f"{LATE} s7 >{(8000 - drift) / 200:.1f}x: PASS" in bench.input_drift_target([never, quiet], settings)
    assert "not measured in full" in bench.input_drift_target([quiet], settings)
    # the covariate stream's labels are not late: it is printed, not judged by (e)
    assert bench.late_label_streams([outcome(bench, "covariate", []), early], settings) == [early]
    lines = bench.target_lines([early, quiet], settings)  # a loop-only stream stays out of (a)-(d)
    assert lines[0].endswith("not measured (no drift stream ran)") and lines[-1].startswith("(e)")
