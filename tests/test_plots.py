"""Evaluation figures: one colour per setting, legends beside the data, error bars, rows per entropy position."""

from __future__ import annotations

import math

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgb

from soft_tokens.eval.plots import entropy_figure, heatmap_figure, pass_at_k_figure, setting_colours

SAMPLED = ["hard_sample", "soft_sample", "fuzzy_sample", "gumbel_sample", "moi_sample"]
GREEDY = ["hard_greedy", "soft_greedy", "fuzzy_greedy", "gumbel_greedy", "soft_thinking_greedy", "moi_greedy"]


def _drawn(fig):
    FigureCanvasAgg(fig).draw()  # as savefig does: lays out the figure, the outside legend included
    return fig


def test_pass_at_k_figure_gives_eleven_settings_distinct_colours_and_an_outside_legend():
    curves = {n: {1: 0.2 + 0.01 * i, 2: 0.3, 4: 0.4 + 0.01 * i} for i, n in enumerate(SAMPLED)}
    greedy = {n: 0.25 + 0.01 * i for i, n in enumerate(GREEDY)}
    errors = {n: {1: 0.02, 2: 0.03, 4: 0.04} for n in SAMPLED} | {n: {1: 0.05} for n in GREEDY}
    fig = _drawn(pass_at_k_figure(curves, greedy, errors=errors))
    ax = fig.axes[0]
    legend = fig.legends[0]
    labels = [t.get_text() for t in legend.get_texts()]
    assert sorted(labels) == sorted(SAMPLED + [f"{n} (pass@1)" for n in GREEDY])
    colours = [to_rgb(h.get_color()) for h in legend.legend_handles]
    assert len(set(colours)) == 11
    # the legend lies right of the axes: it covers no data
    assert legend.get_window_extent().x0 >= ax.get_window_extent().x1
    # error bars on every sampled curve (+- 1 s.e., in points of %), a shaded band per greedy level
    bars = [c for c in ax.collections if c.get_segments()]
    assert len(bars) == len(SAMPLED)
    first = bars[0].get_segments()[0]
    assert math.isclose(first[1][1] - first[0][1], 2 * 100 * 0.02, rel_tol=1e-6)
    assert len(ax.patches) == len(GREEDY)


def test_entropy_figure_shows_the_rows_behind_each_position():
    profiles = {"hard_sample": [1.0, 0.8, math.nan], "soft_sample": [1.2, 1.1, 0.9]}
    rows = {"hard_sample": [8, 3, 0], "soft_sample": [8, 8, 5]}
    fig = _drawn(entropy_figure(profiles, rows=rows))
    top, bottom = fig.axes
    assert bottom.get_ylabel() == "rows" and top.get_ylabel() == "entropy (nats)"
    assert [list(line.get_ydata()) for line in bottom.lines] == [rows["hard_sample"], rows["soft_sample"]]
    assert [to_rgb(line.get_color()) for line in top.lines] == [
        to_rgb(line.get_color()) for line in bottom.lines
    ]
    assert fig.legends[0].get_window_extent().x0 >= top.get_window_extent().x1
    assert len(entropy_figure(profiles).axes) == 1  # without counts: one panel


def test_setting_colours_are_distinct_up_to_twenty():
    names = [f"s{i}" for i in range(20)]
    assert len(set(setting_colours(names).values())) == 20


def test_heatmap_cells_carry_value_and_error_on_the_given_scale():
    fig = heatmap_figure(["a", "b"], ["x", "y"], [[35.0, 45.0], [None, 40.0]], errors=[[7.6, 7.9], [None, 7.7]],
                         vmin=0, vmax=100)  # fmt: skip
    ax = fig.axes[0]
    assert sorted(t.get_text() for t in ax.texts) == ["35.0 ± 7.6", "40.0 ± 7.7", "45.0 ± 7.9"]
    assert (ax.images[0].norm.vmin, ax.images[0].norm.vmax) == (0, 100)
