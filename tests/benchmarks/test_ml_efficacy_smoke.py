"""The ML-efficacy benchmark's quick path: its strategies run and behave sanely on one abrupt drift and on a
stream without drift, and its oracle only ever learns from labels that have arrived."""

import importlib.util
from types import SimpleNamespace

import pytest


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
    """The quick no-drift stream, through the command line (one process), every strategy."""
    plot = tmp_path_factory.mktemp("plot") / "ml_efficacy.png"
    [outcome] = bench.main(["--quick", "--only", "no-drift", "--jobs", "1", "--plot", str(plot)])
    assert plot.exists()
    return outcome


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
    results = {r.name: r for r in steady.results}
    assert steady.stream.drifts == () and set(results) >= {"none", "loop", "oracle"}
    assert results["oracle"].retrains == 0
    assert results["loop"].retrains <= 1
    assert all(len(r.correct) == len(results["none"].correct) for r in results.values())


def test_target_b_is_also_judged_over_the_drift_streams_together(bench):
    settings = bench.Settings()
    sched = bench.busier_schedule(settings)

    def outcome(name, loop_retrains, loop_accuracy=0.9):
        results = {
            "loop": SimpleNamespace(retrains=loop_retrains, accuracy=lambda: loop_accuracy),
            sched: SimpleNamespace(retrains=15, accuracy=lambda: 0.8),
        }
        return SimpleNamespace(stream=SimpleNamespace(name=name), result=results.__getitem__)

    together = bench.schedule_target_overall([outcome("abrupt", 2), outcome("gradual", 8)], settings)
    assert together.endswith("(10 vs 30: met): met")
    assert bench.schedule_target(outcome("gradual", 8), settings).endswith("NOT met")
    worse_somewhere = [outcome("abrupt", 2), outcome("gradual", 3, loop_accuracy=0.7)]
    assert bench.schedule_target_overall(worse_somewhere, settings).endswith("NOT met")
