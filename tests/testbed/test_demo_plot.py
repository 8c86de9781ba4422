"""The demo's plot reads right (issue 23): each drift named by its kind, events a second apart both visible,
the legend off the data; and it can be redrawn from the timeline the demo saves."""

from __future__ import annotations

from typing import Any

import matplotlib
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mfl_testbed import demo

matplotlib.use("Agg")

ABRUPT, GRADUAL = 40.0, 200.0
COINCIDENT = (("BreachStarted", 52.3), ("RetrainingStarted", 52.9))  # a breach and the retraining it starts


def story() -> demo.Timeline:
    """Two drifts, each followed by a dip, a breach and its retraining within a second, canary, promotion."""
    timeline = demo.Timeline(start=1_800_000_000.0)
    for step in range(300):
        t = 1.0 + step
        dip = (ABRUPT < t < 110) or (GRADUAL + 30 < t < 290)
        timeline.samples.append((t, 0.55 if dip else 0.88, "Monitoring", 1 if t < 95 else 2))
    timeline.drifts = [(ABRUPT, 0.0, "abrupt"), (GRADUAL, 60.0, "gradual")]
    timeline.marks = [
        (ABRUPT, "abrupt drift"),
        (GRADUAL, "gradual drift starts"),
        *((at, reason) for reason, at in COINCIDENT),
        (70.0, "CanaryStarted"),
        (95.0, "Promoted"),
        (236.0, "BreachStarted"),
        (236.4, "RetrainingStarted"),
        (255.0, "CanaryStarted"),
        (280.0, "Promoted"),
        (96.0, "MetricsUnavailable"),  # not one of the plot's events
    ]
    return timeline


@pytest.fixture(scope="module")
def drawn(tmp_path_factory) -> tuple[Figure, Any]:
    """`write_plot`'s figure as it was saved, drawn, with its renderer."""
    figures: list[Figure] = []
    save = Figure.savefig

    def keep(self: Figure, *args: Any, **kwargs: Any) -> None:
        figures.append(self)
        save(self, *args, **kwargs)

    path = tmp_path_factory.mktemp("plot") / "demo.png"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Figure, "savefig", keep)
        demo.write_plot(story(), path)
    assert path.stat().st_size > 10_000
    [figure] = figures
    canvas = FigureCanvasAgg(figure)  # pyplot let go of the figure once saved
    canvas.draw()
    return figure, canvas.get_renderer()


def legends(figure: Figure) -> list[Any]:
    return [*figure.legends, *(ax.get_legend() for ax in figure.axes if ax.get_legend() is not None)]


def test_the_legend_is_outside_every_axes(drawn):
    figure, renderer = drawn
    [legend] = legends(figure)
    box = legend.get_window_extent(renderer)
    for ax in figure.axes:
        assert not box.overlaps(ax.get_window_extent(renderer)), (box, ax.get_window_extent(renderer))
    assert min(box.x0, box.y0) >= 0 and box.x1 <= figure.bbox.x1 and box.y1 <= figure.bbox.y1  # in the picture


def test_each_drift_is_named_by_its_kind(drawn):
    figure, _ = drawn
    [legend] = legends(figure)
    texts = [text.get_text() for text in legend.get_texts()]
    assert any("abrupt drift" in text for text in texts), texts
    assert any("gradual drift" in text and "60 s" in text for text in texts), texts


def test_the_gradual_drift_is_a_span_over_its_ramp(drawn):
    figure, renderer = drawn
    [main] = [ax for ax in figure.axes if ax.get_ylabel() == "accuracy"]
    spans = [a for a in main.patches if a.get_gid() == "gradual drift"]
    assert len(spans) == 1
    box = spans[0].get_window_extent(renderer)
    (left, _), (right, _) = main.transData.transform([(GRADUAL, 0.5), (GRADUAL + 60, 0.5)])
    assert box.x0 == pytest.approx(left, abs=1) and box.x1 == pytest.approx(right, abs=1)


def test_events_a_second_apart_are_both_drawn_apart(drawn):
    """The breach and the retraining it starts: each has its own marker, far enough apart not to overlap."""
    figure, _ = drawn
    where = {}
    for reason, at in COINCIDENT:
        points = [
            tuple(ax.transData.transform(offset))
            for ax in figure.axes
            for artist in ax.collections
            if artist.get_gid() == reason and artist.get_visible()
            for offset in artist.get_offsets()
            if abs(offset[0] - at) < 1e-6
        ]
        assert len(points) == 1, (reason, points)
        where[reason] = points[0]
    (x1, y1), (x2, y2) = where.values()
    assert max(abs(x1 - x2), abs(y1 - y2)) > 10  # pixels: more than a marker's size
    for reason, _ in COINCIDENT:  # and each kind named on the plot
        assert any(reason in str(a.get_gid()) for ax in figure.axes for a in ax.collections)


def test_only_the_loops_events_are_drawn(drawn):
    figure, _ = drawn
    gids = {a.get_gid() for ax in figure.axes for a in [*ax.collections, *ax.lines, *ax.patches]}
    assert "MetricsUnavailable" not in gids and {"Promoted", "CanaryStarted"} <= gids


def test_the_timeline_saved_as_json_redraws_the_plot(tmp_path):
    saved = tmp_path / "demo-timeline.json"
    story().save(saved)
    loaded = demo.Timeline.load(saved)
    assert loaded == story()
    assert demo.main(["--replot", str(saved), str(tmp_path / "again.png")]) == 0
    assert (tmp_path / "again.png").stat().st_size > 10_000


def test_a_drift_is_recorded_with_its_kind_and_its_mark():
    timeline = demo.Timeline()
    timeline.drift("abrupt")
    timeline.drift("gradual", demo.GRADUAL_DRIFT_SECONDS)
    assert [(kind, seconds) for _, seconds, kind in timeline.drifts] == [("abrupt", 0.0), ("gradual", 60)]
    assert [label for _, label in timeline.marks] == ["abrupt drift", "gradual drift starts"]
