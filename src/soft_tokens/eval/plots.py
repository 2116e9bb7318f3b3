"""Figures of evaluation results (matplotlib `Figure` objects: no pyplot state, no display needed)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from matplotlib import colormaps
from matplotlib.figure import Figure


def setting_colours(names: Sequence[str]) -> dict[str, tuple[float, ...]]:
    """One distinct colour per name, in order: tab10's ten, then the lighter ten of tab20 (20 in all)."""
    tab20 = colormaps["tab20"].colors
    palette = [*tab20[0::2], *tab20[1::2]]
    return {name: palette[i % len(palette)] for i, name in enumerate(names)}


def _legend_outside(fig: Figure) -> None:
    """The figure's legend right of the axes, so that it covers no data."""
    if any(ax.get_legend_handles_labels()[0] for ax in fig.axes):
        fig.legend(loc="outside right upper", fontsize=8)


def entropy_figure(
    profiles: Mapping[str, Sequence[float]],
    title: str = "CoT entropy by position",
    rows: Mapping[str, Sequence[float]] | None = None,
) -> Figure:
    """Mean next-token entropy (nats) against CoT position, one line per setting (nan: no row got there).

    With `rows` (name -> rows that reached each position), a lower panel shows how many rows each mean is over.
    """
    fig = Figure(figsize=(9.0, 5.2 if rows else 3.8), dpi=100, layout="constrained")
    axes = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1.3]) if rows else [fig.subplots()]
    colours = setting_colours(list(profiles))
    for name, prof in profiles.items():
        values = torch.as_tensor(prof, dtype=torch.float32).tolist()
        axes[0].plot(range(1, len(values) + 1), values, label=name, color=colours[name])
    axes[0].set_ylabel("entropy (nats)")
    axes[0].set_title(title)
    if rows:
        for name, counts in rows.items():
            counts = list(counts)
            axes[1].step(range(1, len(counts) + 1), counts, where="mid", color=colours.get(name), lw=1)
        axes[1].set_ylabel("rows")
        axes[1].set_ylim(bottom=0)
    axes[-1].set_xlabel("CoT position")
    for ax in axes:
        ax.grid(alpha=0.3)
    _legend_outside(fig)
    return fig


def pass_at_k_figure(
    curves: Mapping[str, Mapping[int, float]],
    greedy: Mapping[str, float] | None = None,
    title: str = "pass@k",
    errors: Mapping[str, Mapping[int, float]] | None = None,
) -> Figure:
    """pass@k (in %) against k on a log2 axis, one line per sampled setting; greedy pass@1 as dotted levels.

    `errors` (name -> {k: standard error}, greedy names included under k = 1) adds error bars to the curves
    and a shaded +- 1 standard error band around each greedy level.
    """
    fig = Figure(figsize=(9.0, 4.2), dpi=100, layout="constrained")
    ax = fig.subplots()
    greedy, errors = greedy or {}, errors or {}
    colours = setting_colours([*curves, *greedy])
    all_ks: set[int] = set()
    for name, curve in curves.items():
        ks = sorted(curve)
        all_ks.update(ks)
        se = [100 * errors.get(name, {}).get(k, math.nan) for k in ks]
        yerr = None if all(math.isnan(e) for e in se) else [0.0 if math.isnan(e) else e for e in se]
        ax.errorbar(
            ks,
            [100 * curve[k] for k in ks],
            yerr=yerr,
            marker="o",
            capsize=3,
            label=name,
            color=colours[name],
        )
    for name, value in greedy.items():
        ax.axhline(100 * value, linestyle=":", color=colours[name], label=f"{name} (pass@1)")
        se = errors.get(name, {}).get(1, math.nan)
        if not math.isnan(se):
            ax.axhspan(100 * (value - se), 100 * (value + se), color=colours[name], alpha=0.12, lw=0)
    ax.set_xscale("log", base=2)
    if all_ks:
        ax.set_xticks(sorted(all_ks), labels=[str(k) for k in sorted(all_ks)])
        ax.minorticks_off()
    ax.set_xlabel("k (samples)")
    ax.set_ylabel("pass@k (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    _legend_outside(fig)
    return fig


def heatmap_figure(
    rows: Sequence[str],
    cols: Sequence[str],
    values: Sequence[Sequence[float | None]],
    title: str = "",
    fmt: str = "{:.1f}",
    cmap: str = "viridis",
    xlabel: str = "",
    ylabel: str = "",
    errors: Sequence[Sequence[float | None]] | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
) -> Figure:
    """A rows x cols table as a heatmap with the values written in the cells (None/nan cells left blank).

    `errors` (same shape) writes "value ± error" in the cells; `vmin`/`vmax` fix the colour scale (e.g.
    0-100 for percentages, so that a gap of one problem is not stretched over the whole colour range).
    """
    data = [[math.nan if v is None else float(v) for v in row] for row in values]
    errs = [[math.nan if e is None else float(e) for e in row] for row in errors] if errors else None
    fig = Figure(figsize=(1.6 * len(cols) + 2.4, 0.5 * len(rows) + 1.6), dpi=100)
    ax = fig.subplots()
    im = ax.imshow(data, cmap=cmap, aspect="auto", vmin=vmin, vmax=vmax)
    ax.set_xticks(range(len(cols)), labels=list(cols), rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), labels=list(rows))
    for i, row in enumerate(data):
        for j, v in enumerate(row):
            if math.isnan(v):
                continue
            text = fmt.format(v)
            if errs is not None and not math.isnan(errs[i][j]):
                text += " ± " + fmt.format(errs[i][j])
            light = sum(im.cmap(im.norm(v))[:3]) / 3 > 0.5  # dark text on light cells
            ax.text(j, i, text, ha="center", va="center", fontsize=8, color="black" if light else "white")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    return fig
