"""Merge evaluate.py runs of several models into the paper's tables (markdown + PNG heatmaps).

    python scripts/report.py --run base=outputs/evaluate/runs/A --run hard=outputs/evaluate/runs/B \\
        --run soft=outputs/evaluate/runs/C --run fuzzy=outputs/evaluate/runs/D   # writes outputs/report/

Rows are the models (training modes), columns the inference settings, one table per metric: greedy
pass@1 (the *_greedy settings), sample pass@1 and sample pass@k (the *_sample settings, k the largest k
every run measured), each value with one standard error over the problems (markdown "35.0 ± 7.6", and in
the heatmap cells; percent heatmaps share one 0-100 colour scale, so that a gap of one problem is not
stretched over the whole colour range). Runs that scored out-of-domain multiple choice add accuracy (with its
standard error), NLL and NLL-vs-base tables. The report goes to outputs/report/ unless --out says otherwise.
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

from soft_tokens.eval.markdown import markdown_table
from soft_tokens.eval.plots import heatmap_figure
from soft_tokens.eval.results import EvalResults, percent_with_se

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
    errors: list[list[float | None]] | None = None  # standard errors, same shape as values
    symmetric: bool = False  # a colour scale centred on 0 (changes)

    def cell(self, v: float | None, se: float | None = None) -> str:
        if v is None or math.isnan(v):
            return "-"
        return percent_with_se(v, se) if self.percent else f"{v:.3f}"

    def error_rows(self) -> list[list[float | None]]:
        return self.errors or [[None] * len(self.cols) for _ in self.rows]

    def markdown(self) -> str:
        unit = (
            " (%, ± one standard error)" if self.percent and self.errors else " (%)" if self.percent else ""
        )
        header = [f"model \\ {self.title}{unit}", *self.cols]
        rows = zip(self.rows, self.values, self.error_rows())
        return markdown_table(header, [[r, *map(self.cell, vals, errs)] for r, vals, errs in rows])

    def figure(self):
        """The table as a heatmap: percent on a fixed 0-100 scale, changes on a scale centred on 0."""
        scale = 100 if self.percent else 1

        def scaled(rows: list[list[float | None]]) -> list[list[float | None]]:
            return [[None if v is None else scale * v for v in row] for row in rows]

        finite = [abs(v) for row in self.values for v in row if v is not None and not math.isnan(v)]
        limit = max(finite, default=1.0) or 1.0
        vmin, vmax = (0, 100) if self.percent else (-limit, limit) if self.symmetric else (None, None)
        return heatmap_figure(
            self.rows,
            self.cols,
            scaled(self.values),
            title=self.title + ((" (%, ± 1 s.e.)" if self.errors else " (%)") if self.percent else ""),
            fmt="{:.1f}" if self.percent else "{:.3f}",
            cmap=self.cmap,
            xlabel=self.xlabel,
            ylabel="model (training)",
            errors=scaled(self.errors) if self.errors else None,
            vmin=vmin,
            vmax=vmax,
        )


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


def _shown(path: str | Path) -> str:
    """A path relative to the working directory, or `.../<parent>/<name>` outside it: no machine paths in a report."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return "/".join(["...", *Path(path).parts[-2:]])


def _column(setting: str) -> str:
    for suffix in SUFFIXES:
        if setting.endswith(suffix):
            return setting[: -len(suffix)]
    return setting


def _setting(res: EvalResults, name: str):
    return next((s for s in res.settings if s.name == name), None)


def _pass_table(
    runs: list[tuple[str, EvalResults]], key: str, title: str, settings: list[str], k: int
) -> Table:
    """pass@k of each run (row) under each setting (column), with its standard error over problems."""
    values, errors = [], []
    for _, res in runs:
        found = [_setting(res, c) for c in settings]
        values.append([None if s is None else s.pass_at_k.get(k) for s in found])
        errors.append([None if s is None or k not in s.pass_at_k else s.se(k) for s in found])
    cols = [_column(c) for c in settings]
    return Table(key, title, [n for n, _ in runs], cols, values, errors=errors)


def math_tables(runs: list[tuple[str, EvalResults]], k: int | None = None) -> list[Table]:
    """Greedy pass@1, sample pass@1 and sample pass@k tables (rows: runs; columns: CoT representation)."""

    def columns(greedy: bool) -> list[str]:
        cols: list[str] = []
        for _, res in runs:
            cols += [s.name for s in res.settings if s.greedy == greedy and s.name not in cols]
        return cols

    tables = []
    greedy_cols, sample_cols = columns(True), columns(False)
    if greedy_cols:
        tables.append(_pass_table(runs, "greedy_pass1", "greedy pass@1", greedy_cols, 1))
    if sample_cols:
        if k is None:  # the largest k measured by every sampled setting of every run
            measured = [set(s.pass_at_k) for _, res in runs for s in res.settings if not s.greedy]
            k = max(set.intersection(*measured), default=1)
        tables.append(_pass_table(runs, "sample_pass1", "sample pass@1", sample_cols, 1))
        if k > 1:
            tables.append(_pass_table(runs, f"sample_pass{k}", f"sample pass@{k}", sample_cols, k))
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
        return res.ood[d].get(key) if d in res.ood else None

    tables = [
        Table(
            "ood_accuracy",
            "OOD accuracy",
            names,
            datasets,
            [[get(r, d, "accuracy") for d in datasets] for _, r in runs],
            xlabel="dataset",
            errors=[[get(r, d, "accuracy_se") for d in datasets] for _, r in runs],
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
                symmetric=True,
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
    min_problems = min(r.n_problems for _, _, r in runs)
    lines = [f"# {title or 'Evaluation: training mode x inference setting'}", ""]
    lines += [
        "Rows: models (training mode). Columns: CoT representation at inference; answers are greedy. pass@k is the",
        "unbiased estimator (Chen et al. 2021) over each setting's samples, shown as mean ± one standard error",
        f"over the problems (with {min_problems} problems, one problem is {100 / max(min_problems, 1):.1f} points).",
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
                    f"`{_shown(folder)}`",
                ]
                for n, folder, r in runs
            ],
        ),
        "",
    ]
    for t in tables:
        png = out_dir / f"{name}_{t.key}.png"
        fig = t.figure()
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
    parser.add_argument("--out", default="outputs/report", help="output folder (default: outputs/report)")
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
