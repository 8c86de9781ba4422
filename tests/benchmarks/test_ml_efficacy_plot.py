"""The ML-efficacy plot reads right (issue 23): every panel's legend beside it, off the curves, and the loop's
line the one that stands out (thicker, darker, on top; the baselines lighter)."""

from __future__ import annotations

from typing import Any

import matplotlib
import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure

matplotlib.use("Agg")

ROWS = 6_000
NAMES = ("none", "sched 1000", "ADWIN", "loop", "oracle")


def outcomes(bench) -> list[Any]:
    """Two streams with made-up results: every strategy's accuracy dips at each drift and recovers (or not)."""
    rng = np.random.default_rng(0)
    streams = [
        bench.StreamSpec("abrupt", "hyperplane", "abrupt", (2_000, 4_000), 1, 0.8, 100, 7),
        bench.StreamSpec("gradual", "agrawal", "gradual", (3_000,), 600, 0.85, 100, 7),
    ]
    found = []
    for stream in streams:
        results = []
        for rank, name in enumerate(NAMES):
            level = np.full(ROWS, 0.88)
            for drift in stream.drifts:
                level[drift : drift + 300 * (len(NAMES) - rank)] = 0.55
            correct = rng.random(ROWS) < level
            timeline = [(stream.drifts[0] + 900, "Promoted"), (stream.drifts[0] + 500, "CandidateRejected")]
            results.append(bench.Result(name, correct, 2 * rank, "", 0.0, timeline if name == "loop" else []))
        found.append(bench.Outcome(stream, results, 0.0))
    return found


@pytest.fixture(scope="module")
def drawn(bench, tmp_path_factory) -> tuple[Figure, Any]:
    """`plot`'s figure as it was saved, drawn, with its renderer."""
    figures: list[Figure] = []
    save = Figure.savefig

    def keep(self: Figure, *args: Any, **kwargs: Any) -> None:
        figures.append(self)
        save(self, *args, **kwargs)

    path = tmp_path_factory.mktemp("plot") / "ml_efficacy.png"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Figure, "savefig", keep)
        bench.plot(outcomes(bench), path)
    assert path.stat().st_size > 10_000
    [figure] = figures
    canvas = FigureCanvasAgg(figure)  # pyplot let go of the figure once saved
    canvas.draw()
    return figure, canvas.get_renderer()


def test_no_legend_covers_a_panel(drawn):
    figure, renderer = drawn
    legends = [*figure.legends, *(ax.get_legend() for ax in figure.axes if ax.get_legend() is not None)]
    assert legends
    for legend in legends:
        box = legend.get_window_extent(renderer)
        for ax in figure.axes:
            assert not box.overlaps(ax.get_window_extent(renderer)), (box, ax.get_title())
        assert min(box.x0, box.y0) >= 0 and box.x1 <= figure.bbox.x1 and box.y1 <= figure.bbox.y1
    labels = [text.get_text() for legend in legends for text in legend.get_texts()]
    assert all(any(text.startswith(f"{name}:") for text in labels) for name in NAMES), labels


def darkness(line: Any) -> float:
    """How much the line stands out from the white background: 1 - its luminance, times its opacity."""
    red, green, blue = to_rgb(line.get_color())
    return (1 - (0.2126 * red + 0.7152 * green + 0.0722 * blue)) * (line.get_alpha() or 1.0)


def test_the_loops_line_stands_out_in_every_panel(drawn):
    figure, _ = drawn
    panels = [ax for ax in figure.axes if ax.get_lines()]
    assert len(panels) == 2
    for ax in panels:
        curves = {line.get_label().split(":")[0]: line for line in ax.get_lines() if ":" in line.get_label()}
        assert set(curves) == set(NAMES)
        loop = curves.pop("loop")
        for name, other in curves.items():
            assert loop.get_linewidth() >= 1.5 * other.get_linewidth(), name
            assert loop.get_zorder() > other.get_zorder(), name  # drawn on top
            assert darkness(loop) > darkness(other) + 0.2, name
