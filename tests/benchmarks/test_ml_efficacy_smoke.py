"""The ML-efficacy benchmark's quick path: its strategies run and behave sanely on one abrupt drift and on a
stream without drift (both seeds), its oracle only ever learns from labels that have arrived, its streams
are what they say, and its goal lines and gap split add up."""

import importlib.util
from types import SimpleNamespace

import numpy as np
import pytest

from mfl_testbed import datasets


@pytest.fixture(scope="module")
def outcome(bench):
    settings = bench.quick_settings(rows=5000)
    stream = bench.StreamSpec("abrupt", "hyperplane", "abrupt", (1500,), 1, 0.8, settings.label_delay, settings.seed)
    case = bench.make_case(stream, settings)
    names = ["none", "loop", "oracle"] + (["ADWIN"] if importlib.util.find_spec("river") else [])
    results = {r.name: r for r in bench.run_case(case, settings, names)}
    return case, settings, results


@pytest.fixture(scope="module")
def steady(bench, tmp_path_factory):
    """The quick no-drift stream on both default seeds, through the command line (one process), every
    strategy."""
    plot = tmp_path_factory.mktemp("plot") / "ml_efficacy.png"
    outcomes = bench.main(["--quick", "--only", "no-drift", "--jobs", "1", "--plot", str(plot)])
    assert plot.exists()
    assert [o.seed for o in outcomes] == list(bench.DEFAULT_SEEDS) == [7, 8]
    return outcomes


def test_the_oracle_beats_no_retraining_after_the_drift(outcome):
    case, settings, results = outcome
    span = settings.post_drift_span
    [oracle], [none] = (
        results["oracle"].after_drifts(case.drifts, span),
        results["none"].after_drifts(case.drifts, span),
    )
    assert oracle > none + 0.2
    assert results["oracle"].accuracy() >= max(r.accuracy() for r in results.values()) - 0.01


def test_the_oracle_trains_only_on_labels_that_have_arrived_from_the_first_hundred_on(bench, outcome):
    case, settings, results = outcome
    trained = results["oracle"].trained
    assert trained and len(trained) == results["oracle"].retrains
    for at, last_row in trained:
        assert case.drifts[0] <= last_row < at - case.label_delay
    first_possible = case.drifts[0] + case.label_delay + bench.ORACLE_FIRST_FIT
    assert first_possible <= trained[0][0] < first_possible + settings.tick


def test_the_loop_retrains_after_an_abrupt_drift_and_ends_better_than_no_retraining(outcome):
    case, _, results = outcome
    loop, none = results["loop"], results["none"]
    assert loop.retrains >= 1
    assert loop.timeline and min(at for at, _ in loop.timeline) > case.drifts[0]  # nothing happened before it
    assert loop.correct[-1000:].mean() > none.correct[-1000:].mean() + 0.2
    for check in loop.promotions:  # every promotion was scored against the version it replaced
        assert check.at > case.drifts[0] and check.rows > 0 and check.promoted > check.replaced


def test_every_strategy_scores_every_row_and_is_better_than_chance_before_the_drift(outcome):
    case, _, results = outcome
    for result in results.values():
        assert len(result.correct) == len(case.y)
        assert result.correct[: case.drifts[0]].mean() > 0.8, result.name


def test_without_drift_the_oracle_never_retrains_and_the_loop_at_most_once(steady):
    for outcome in steady:
        results = {r.name: r for r in outcome.results}
        assert outcome.stream.drifts == () and set(results) >= {"none", "loop", "oracle"}
        assert results["oracle"].retrains == 0
        assert results["loop"].retrains <= 1
        assert all(len(r.correct) == len(results["none"].correct) for r in results.values())
    first, second = steady
    assert first.stream.seed == 7 and second.stream.seed == 8  # each seed its own rows
    assert not np.array_equal(first.results[0].correct, second.results[0].correct)


def test_target_b_is_also_judged_over_the_drift_streams_together(bench):
    settings = bench.Settings()
    sched = bench.busier_schedule(settings)

    def outcome(name, loop_retrains, loop_accuracy=0.9):
        results = {
            "loop": SimpleNamespace(retrains=loop_retrains, accuracy=lambda: loop_accuracy),
            sched: SimpleNamespace(retrains=15, accuracy=lambda: 0.8),
        }
        return SimpleNamespace(stream=SimpleNamespace(name=name), label=f"{name} s7", result=results.__getitem__)

    together = bench.schedule_target_overall([outcome("abrupt", 2), outcome("gradual", 8)], settings)
    assert together.endswith("(10 vs 30: PASS): PASS")
    assert bench.schedule_target(outcome("gradual", 8), settings).endswith("FAIL")
    assert bench.schedule_target(outcome("gradual", 5), settings).endswith("PASS")
    worse_somewhere = [outcome("abrupt", 2), outcome("gradual", 3, loop_accuracy=0.7)]
    assert bench.schedule_target_overall(worse_somewhere, settings).endswith("FAIL")


NEW_STREAMS = ["covariate", "recurring", "prior", "rotation", "noise-burst", "very-long-delay"]


def test_the_five_original_streams_are_as_they_were_and_six_new_ones_follow(bench):
    settings = bench.quick_settings()
    specs = bench.stream_specs(settings)
    assert [s.name for s in specs] == ["abrupt", "gradual", "irregular", "long-delay", "no-drift", *NEW_STREAMS]
    assert all(s.shape == "concept" and s.span == 0 and s.burst is None for s in specs[:5])
    assert bench.stream_spec(settings, "irregular").seed == settings.seed + 1
    assert bench.stream_spec(settings, "very-long-delay").label_delay == 10 * settings.label_delay


@pytest.mark.parametrize("name", NEW_STREAMS)
def test_every_new_stream_builds_and_says_what_it_is(bench, name):
    settings = bench.quick_settings()
    spec = bench.stream_spec(settings, name)
    case = bench.make_case(spec, settings)
    assert case.X.shape == (settings.rows, len(datasets.feature_names(spec.generator)))
    assert set(np.unique(case.y)) == {0, 1}
    assert spec.describe().startswith(f"{name}: ") and ("no drift" in spec.describe()) == (not spec.drifts)
    assert 0 < spec.after_span(settings) <= settings.rows - (spec.drifts[-1] if spec.drifts else 0)


def test_the_covariate_and_prior_streams_keep_the_concept_and_the_recurring_one_returns_to_it(bench):
    settings = bench.quick_settings()
    for name in ("covariate", "prior"):
        case = bench.make_case(bench.stream_spec(settings, name), settings)
        clean = datasets.concept_labels(case.X, 0, case.generator)
        assert np.mean(case.y != clean) < 0.08, name  # only the 5% label noise
    case = bench.make_case(bench.stream_spec(settings, "recurring"), settings)
    assert [int(case.concept[d]) for d in case.drifts] == [1, 0, 1, 0]


def test_the_noise_burst_stream_is_the_no_drift_stream_outside_its_burst(bench):
    settings = bench.quick_settings()
    burst = bench.make_case(bench.stream_spec(settings, "noise-burst"), settings)
    plain = bench.make_case(bench.stream_spec(settings, "no-drift"), settings)
    start, stop = burst.burst
    differs = burst.y != plain.y
    assert burst.drifts == () and np.array_equal(burst.X, plain.X)
    assert not differs[:start].any() and not differs[stop:].any() and differs[start:stop].mean() > 0.2


def test_the_gap_to_the_oracle_splits_at_the_first_promotion_after_each_drift(bench):
    rows, drift, span = 4000, 1000, 1000
    loop = np.ones(rows, bool)
    loop[drift : drift + 300] = False  # wrong until the promotion at 1300
    loop[drift + 300 : drift + 400] = False  # then 100 more rows wrong: the new model's doing
    oracle = np.ones(rows, bool)
    stream = bench.StreamSpec("abrupt", "hyperplane", "abrupt", (drift,), 1, 0.8, 100, 7, span=span)
    results = [
        bench.Result("loop", loop, 1, "", 0.0, [(drift - 500, "Promoted"), (drift + 300, "Promoted")]),
        bench.Result("oracle", oracle, 1, "", 0.0),
    ]
    split = bench.gap_split(bench.Outcome(stream, results, 0.0), bench.quick_settings())
    assert split.served == [300]
    assert split.before == pytest.approx(0.3) and split.after == pytest.approx(0.1)
    assert split.gap == pytest.approx(split.before + split.after)
    unpromoted = [bench.Result("loop", loop, 1, "", 0.0), results[1]]
    split = bench.gap_split(bench.Outcome(stream, unpromoted, 0.0), bench.quick_settings())
    assert split.served == [None] and split.before == pytest.approx(0.4) and split.after == 0


def test_the_goals_ask_for_95_percent_of_the_oracle_and_no_job_without_drift(bench):
    settings = bench.quick_settings()
    stream = bench.StreamSpec("abrupt", "hyperplane", "abrupt", (1000,), 1, 0.8, 100, 7, span=1000)

    def outcome(loop_correct: float, retrains: int = 1):
        correct = np.ones(4000, bool)
        correct[1000 : 1000 + int(1000 * (1 - loop_correct))] = False
        results = [
            bench.Result("loop", correct, retrains, "", 0.0),
            bench.Result("oracle", np.ones(4000, bool), 1, "", 0.0),
        ]
        return bench.Outcome(stream, results, 0.0, seed=8)

    assert "PASS (abrupt s8 96%)" in bench.oracle_target([outcome(0.96)], settings)
    assert "FAIL (abrupt s8 94%)" in bench.oracle_target([outcome(0.94)], settings)
    steady = bench.Outcome(
        bench.stream_spec(settings, "noise-burst"), [bench.Result("loop", np.ones(9, bool), 1, "", 0.0)], 0.0
    )
    assert bench.false_retraining_target(steady).startswith("(c) 0 loop retraining Jobs on noise-burst s7")
    assert bench.false_retraining_target(steady).endswith("FAIL (1)")
