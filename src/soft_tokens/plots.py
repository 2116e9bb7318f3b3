"""Figures of evaluation results (matplotlib `Figure` objects: no pyplot state, no display needed)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from matplotlib.figure import Figure


def entropy_figure(profiles: Mapping[str, Sequence[float]], title: str = "CoT entropy by position") -> Figure:
    """Mean next-token entropy (nats) against CoT position, one line per setting (nan: no row got there)."""
    fig = Figure(figsize=(6.5, 3.8), dpi=100)
    ax = fig.subplots()
    for name, prof in profiles.items():
        values = torch.as_tensor(prof, dtype=torch.float32).tolist()
        ax.plot(range(1, len(values) + 1), values, label=name)
    ax.set_xlabel("CoT position")
    ax.set_ylabel("entropy (nats)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if profiles:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def pass_at_k_figure(
    curves: Mapping[str, Mapping[int, float]],
    greedy: Mapping[str, float] | None = None,
    title: str = "pass@k",
) -> Figure:
    """pass@k (in %) against k on a log2 axis, one line per sampled setting; greedy pass@1 as dotted levels."""
    fig = Figure(figsize=(6.5, 3.8), dpi=100)
    ax = fig.subplots()
    all_ks: set[int] = set()
    for name, curve in curves.items():
        ks = sorted(curve)
        all_ks.update(ks)
        ax.plot(ks, [100 * curve[k] for k in ks], marker="o", label=name)
    for i, (name, value) in enumerate((greedy or {}).items()):
        ax.axhline(100 * value, linestyle=":", color=f"C{(len(curves) + i) % 10}", label=name)
    ax.set_xscale("log", base=2)
    if all_ks:
        ax.set_xticks(sorted(all_ks), labels=[str(k) for k in sorted(all_ks)])
        ax.minorticks_off()
    ax.set_xlabel("k (samples)")
    ax.set_ylabel("pass@k (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if curves or greedy:
        ax.legend(fontsize=8)
    fig.tight_layout()
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
) -> Figure:
    """A rows x cols table as a heatmap with the values written in the cells (None/nan cells left blank)."""
    data = [[math.nan if v is None else float(v) for v in row] for row in values]
    fig = Figure(figsize=(1.4 * len(cols) + 2.0, 0.5 * len(rows) + 1.6), dpi=100)
    ax = fig.subplots()
    im = ax.imshow(data, cmap=cmap, aspect="auto")
    ax.set_xticks(range(len(cols)), labels=list(cols), rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), labels=list(rows))
    finite = [v for row in data for v in row if not math.isnan(v)]
    mid = (min(finite) + max(finite)) / 2 if finite else 0.0
    for i, row in enumerate(data):
        for j, v in enumerate(row):
            if not math.isnan(v):
                ax.text(j, i, fmt.format(v), ha="center", va="center", color="black" if v > mid else "white")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    return fig
