"""Merge evaluate.py runs of several models into the paper's tables (markdown + PNG heatmaps).

    python scripts/report.py --run base=outputs/evaluate/runs/A --run hard=outputs/evaluate/runs/B \\
        --run soft=outputs/evaluate/runs/C --run fuzzy=outputs/evaluate/runs/D --out docs

Rows are the models (training modes), columns the inference settings, one table per metric: greedy
pass@1 (the *_greedy settings), sample pass@1 and sample pass@k (the *_sample settings, k the largest k
every run measured). Runs that scored out-of-domain multiple choice add accuracy, NLL and NLL-vs-base tables.
`--run DIR` without a name uses the name stored in the run's results.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path

from soft_tokens.evaluate_run import EvalResults, markdown_table
from soft_tokens.plots import heatmap_figure

log = logging.getLogger("report")
SUFFIXES = ("_greedy", "_sample")


@dataclass
class Table:
    """One metric: rows (models) x columns (settings or datasets); None where a run lacks the value."""

    key: str  # file-name friendly
    title: str
    rows: list[str]
    cols: list[str]
    values: list[list[float | None]]
    percent: bool = True  # values are fractions shown in %
    cmap: str = "viridis"
    xlabel: str = "inference CoT"

    def cell(self, v: float | None) -> str:
        if v is None or math.isnan(v):
            return "-"
        return f"{100 * v:.1f}" if self.percent else f"{v:.3f}"

    def markdown(self) -> str:
        unit = " (%)" if self.percent else ""
        header = [f"model \\ {self.title}{unit}", *self.cols]
        return markdown_table(header, [[r, *map(self.cell, vals)] for r, vals in zip(self.rows, self.values)])


def load_run(spec: str) -> tuple[str, Path, EvalResults]:
    """(name, folder, results) of a `NAME=DIR` or `DIR` argument."""
    name, sep, folder = spec.partition("=")
    if not sep:
        name, folder = "", spec
    path = Path(folder)
    file = path if path.suffix == ".json" else path / "results.json"
    if not file.is_file():
        raise FileNotFoundError(f"--run {spec}: no results.json at {file}")
    res = EvalResults.from_json(json.loads(file.read_text()))
    return name or res.name, file.parent, res


def _shown(path: str) -> str:
    """A path relative to the working directory when it lies inside it (reports name repository files)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return path


def _column(setting: str) -> str:
    for suffix in SUFFIXES:
        if setting.endswith(suffix):
            return setting[: -len(suffix)]
    return setting


def math_tables(runs: list[tuple[str, EvalResults]], k: int | None = None) -> list[Table]:
    """Greedy pass@1, sample pass@1 and sample pass@k tables (rows: runs; columns: CoT representation)."""
    names = [n for n, _ in runs]

    def columns(greedy: bool) -> list[str]:
        cols: list[str] = []
        for _, res in runs:
            cols += [s.name for s in res.settings if s.greedy == greedy and s.name not in cols]
        return cols

    def lookup(res: EvalResults, setting: str, kk: int) -> float | None:
        for s in res.settings:
            if s.name == setting:
                return s.pass_at_k.get(kk)
        return None

    tables = []
    greedy_cols, sample_cols = columns(True), columns(False)
    if greedy_cols:
        tables.append(
            Table(
                "greedy_pass1",
                "greedy pass@1",
                names,
                [_column(c) for c in greedy_cols],
                [[lookup(r, c, 1) for c in greedy_cols] for _, r in runs],
            )
        )
    if sample_cols:
        if k is None:  # the largest k measured by every sampled setting of every run
            common = None
            for _, res in runs:
                for s in res.settings:
                    if not s.greedy:
                        common = set(s.pass_at_k) if common is None else common & set(s.pass_at_k)
            k = max(common) if common else 1
        cols = [_column(c) for c in sample_cols]
        tables.append(
            Table(
                "sample_pass1",
                "sample pass@1",
                names,
                cols,
                [[lookup(r, c, 1) for c in sample_cols] for _, r in runs],
            )
        )
        if k > 1:
            tables.append(
                Table(
                    f"sample_pass{k}",
                    f"sample pass@{k}",
                    names,
                    cols,
                    [[lookup(r, c, k) for c in sample_cols] for _, r in runs],
                )
            )
    return tables


def ood_tables(runs: list[tuple[str, EvalResults]], base: str | None) -> list[Table]:
    """Accuracy and NLL per OOD dataset, and the NLL change against the base run when there is one."""
    datasets: list[str] = []
    for _, res in runs:
        datasets += [d for d in res.ood if d not in datasets]
    if not datasets:
        return []
    names = [n for n, _ in runs]

    def get(res: EvalResults, d: str, key: str) -> float | None:
        return res.ood[d][key] if d in res.ood else None

    tables = [
        Table(
            "ood_accuracy",
            "OOD accuracy",
            names,
            datasets,
            [[get(r, d, "accuracy") for d in datasets] for _, r in runs],
            xlabel="dataset",
        ),
        Table(
            "ood_nll",
            "OOD NLL / token of the correct choice",
            names,
            datasets,
            [[get(r, d, "nll") for d in datasets] for _, r in runs],
            percent=False,
            cmap="viridis_r",
            xlabel="dataset",
        ),
    ]
    base_res = dict(runs).get(base) if base else None
    if base_res is not None:
        deltas = []
        for _, r in runs:
            row = []
            for d in datasets:
                a, b = get(r, d, "nll"), get(base_res, d, "nll")
                row.append(None if a is None or b is None else a - b)
            deltas.append(row)
        tables.append(
            Table(
                "ood_nll_delta",
                f"OOD NLL change vs {base}",
                names,
                datasets,
                deltas,
                percent=False,
                cmap="coolwarm",
                xlabel="dataset",
            )
        )
    return tables


def write_report(
    runs: list[tuple[str, Path, EvalResults]],
    out_dir: Path,
    name: str = "evaluation_report",
    title: str | None = None,
    k: int | None = None,
    base: str | None = "base",
    append: Path | None = None,
) -> Path:
    """Write <out_dir>/<name>.md and one <name>_<metric>.png heatmap per table; return the markdown path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    pairs = [(n, r) for n, _, r in runs]
    tables = math_tables(pairs, k) + ood_tables(pairs, base)
    datas = {(r.data, r.split, r.n_problems) for _, _, r in runs}
    if len(datas) > 1:
        log.warning("the runs were evaluated on different data: %s", sorted(map(str, datas)))
    lines = [f"# {title or 'Evaluation: training mode x inference setting'}", ""]
    lines += [
        "Rows: models (training mode). Columns: CoT representation at inference; answers are greedy. pass@k is the",
        "unbiased estimator (Chen et al. 2021) over each setting's samples.",
        "",
        markdown_table(
            ["model", "checkpoint", "data", "split", "problems", "samples", "max CoT tokens", "run folder"],
            [
                [
                    n,
                    f"`{_shown(r.model)}`",
                    r.data,
                    r.split,
                    r.n_problems,
                    max((s.num_samples for s in r.settings), default=0),
                    r.meta.get("max_cot_tokens", "?"),
                    f"`{folder}`",
                ]
                for n, folder, r in runs
            ],
        ),
        "",
    ]
    for t in tables:
        png = out_dir / f"{name}_{t.key}.png"
        fig = heatmap_figure(
            t.rows,
            t.cols,
            [[None if v is None else (100 * v if t.percent else v) for v in row] for row in t.values],
            title=t.title + (" (%)" if t.percent else ""),
            fmt="{:.1f}" if t.percent else "{:.3f}",
            cmap=t.cmap,
            xlabel=t.xlabel,
            ylabel="model (training)",
        )
        fig.savefig(png)
        lines += [f"## {t.title}", "", t.markdown(), "", f"![{t.title}]({png.name})", ""]
    if append is not None:
        lines += ["", append.read_text().rstrip(), ""]
    md = out_dir / f"{name}.md"
    md.write_text("\n".join(lines))
    return md


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--run", action="append", required=True, help="NAME=DIR (or DIR) of an evaluate.py run"
    )
    parser.add_argument("--out", default="docs", help="output folder (default: docs)")
    parser.add_argument("--name", default="evaluation_report", help="file-name stem of the outputs")
    parser.add_argument("--title", default=None, help="title of the markdown report")
    parser.add_argument(
        "--k", type=int, default=None, help="k of the sample pass@k table (default: the largest common)"
    )
    parser.add_argument("--base", default="base", help="run whose OOD NLL the others are compared to")
    parser.add_argument("--append", type=Path, default=None, help="a markdown file appended to the report")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    runs = [load_run(spec) for spec in args.run]
    names = [n for n, _, _ in runs]
    if len(set(names)) != len(names):
        parser.error(f"run names must be distinct, got {names}")
    md = write_report(runs, Path(args.out), args.name, args.title, args.k, args.base, args.append)
    log.info("report written to %s", md)
    return md


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
