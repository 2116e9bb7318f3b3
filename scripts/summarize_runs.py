"""Markdown tables of training runs from their folders: one row per run (its overrides, seed and status), then
each setting run with several seeds as mean +- standard error over its completed seeds.

    python scripts/summarize_runs.py outputs/train/runs/A outputs/train/runs/B [--out table.md]
    python scripts/summarize_runs.py outputs/train/multiruns/<time>     # every job of a sweep

Per run: validation accuracy at the first and last evaluation (and the best) for hard greedy and for the
training representer's own greedy setting (from TensorBoard), the mean train reward of the last 10 steps, and
the status from summary.json: completed, failed (with the error; the traceback is in the run's log) or
incomplete (no summary.json: still running, or killed).
"""

from __future__ import annotations

import argparse
import math
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from soft_tokens.eval.markdown import markdown_table
from soft_tokens.runs.summary import COMPLETED, FAILED, read_summary

METRICS = ("hard_last", "hard_best", "own_last", "reward_last10")


def scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series of a run's TensorBoard logs: name -> [(step, value)]."""
    out: dict[str, list[tuple[int, float]]] = {}
    for events in sorted((run / "tensorboard").rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return {k: sorted(v) for k, v in out.items()}


def _yaml(path: Path, default):
    """A YAML file's content (safe loader), or default when the file is missing."""
    if not path.is_file():
        return default
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML ({err})") from err


@dataclass
class Run:
    """What one run folder says about its run."""

    folder: Path
    representer: str
    seed: int | None
    overrides: list[str]  # Hydra's command-line overrides, seed excluded
    status: str
    error: str = ""
    steps: int | None = None
    wall_s: float | None = None
    values: dict[str, float | None] = field(default_factory=dict)

    @property
    def setting(self) -> tuple[str, ...]:
        """What the run's seeds have in common: its representer and its overrides other than the seed."""
        return (self.representer, *self.overrides)


def read_run(run: Path) -> Run:
    """The Run of a training run folder (config.yaml, .hydra/overrides.yaml, summary.json, tensorboard/)."""
    cfg = _yaml(run / "config.yaml", {}) or {}
    overrides = [str(o) for o in _yaml(run / ".hydra" / "overrides.yaml", []) or []]
    seed = cfg.get("seed")
    summary = read_summary(run)
    s = scalars(run)
    name = str((cfg.get("representer") or {}).get("name", "?"))
    hard = s.get("val/accuracy", [])
    own = s.get(f"val/accuracy_{name}", hard)
    reward = [v for _, v in s.get("train/reward", [])[-10:]]
    values = {
        "hard_first": hard[0][1] if hard else None,
        "hard_last": hard[-1][1] if hard else None,
        "hard_best": max(v for _, v in hard) if hard else None,
        "own_first": own[0][1] if own else None,
        "own_last": own[-1][1] if own else None,
        "reward_last10": sum(reward) / len(reward) if reward else None,
    }
    return Run(
        folder=run,
        representer=name,
        seed=None if seed is None else int(seed),
        overrides=[o for o in overrides if not re.match(r"^\+*seed=", o)],
        status=str(summary["status"]),
        error=str(summary.get("error", "")),
        steps=summary.get("global_step"),
        wall_s=summary.get("wall_s"),
        values=values,
    )


def expand(paths: list[Path]) -> list[Path]:
    """Run folders: each path that is one, else the job folders of a sweep folder (by job number)."""

    def is_run(p: Path) -> bool:
        return (p / "config.yaml").is_file() or (p / ".hydra").is_dir() or (p / "summary.json").is_file()

    def job_number(p: Path) -> tuple[float, str]:
        m = re.match(r"(\d+)", p.name)
        return (int(m.group(1)) if m else math.inf, p.name)

    out = []
    for path in paths:
        if is_run(path):
            out.append(path)
            continue
        jobs = (
            sorted((p for p in path.iterdir() if p.is_dir() and is_run(p)), key=job_number)
            if path.is_dir()
            else []
        )
        if not jobs:
            raise FileNotFoundError(f"{path}: neither a run folder nor a sweep folder holding run folders")
        out += jobs
    return out


def fmt(x: float | int | None) -> str:
    """A table cell: '-' for a missing value, three decimals for a float."""
    return "-" if x is None else (f"{x:.3f}" if isinstance(x, float) else str(x))


def status_cell(run: Run) -> str:
    if run.status == FAILED:
        error = run.error if len(run.error) <= 80 else run.error[:77] + "..."
        return f"**failed**: {error.replace('|', '/')}"
    return run.status


def runs_table(runs: list[Run]) -> str:
    """One row per run: training, overrides, seed, status, steps, time and the validation accuracies."""
    header = [
        "training",
        "overrides",
        "seed",
        "status",
        "steps",
        "time (s)",
        "val hard greedy: start -> end (best)",
        "val own greedy: start -> end",
        "train reward (last 10 steps)",
    ]
    rows = []
    for r in runs:
        v = r.values
        reward = "-" if v["reward_last10"] is None else f"{v['reward_last10']:.1f}"
        rows.append(
            [
                r.representer,
                " ".join(r.overrides) or "-",
                fmt(r.seed),
                status_cell(r),
                fmt(r.steps),
                fmt(r.wall_s),
                f"{fmt(v['hard_first'])} -> {fmt(v['hard_last'])} ({fmt(v['hard_best'])})",
                f"{fmt(v['own_first'])} -> {fmt(v['own_last'])}",
                reward,
            ]
        )
    return markdown_table(header, rows)


def mean_se(values: list[float], digits: int = 3) -> str:
    """'mean +- standard error' of the values (the standard error needs two or more)."""
    if not values:
        return "-"
    mean = statistics.fmean(values)
    if len(values) < 2:
        return f"{mean:.{digits}f}"
    se = statistics.stdev(values) / math.sqrt(len(values))
    return f"{mean:.{digits}f} +- {se:.{digits}f}"


def seeds_table(runs: list[Run]) -> str | None:
    """Settings run more than once, as mean +- standard error over their completed runs; None if none."""
    groups: dict[tuple[str, ...], list[Run]] = {}
    for r in runs:
        groups.setdefault(r.setting, []).append(r)
    repeated = {k: g for k, g in groups.items() if len(g) > 1}
    if not repeated:
        return None
    header = [
        "training",
        "overrides",
        "seeds completed / run",
        "val hard greedy: end",
        "val hard greedy: best",
        "val own greedy: end",
        "train reward (last 10 steps)",
    ]
    rows = []
    for (name, *overrides), group in repeated.items():
        done = [r for r in group if r.status == COMPLETED]
        cols = {m: [r.values[m] for r in done if r.values[m] is not None] for m in METRICS}
        seeds = ",".join(fmt(r.seed) for r in done)
        rows.append(
            [
                name,
                " ".join(overrides) or "-",
                f"{len(done)} / {len(group)} ({seeds or '-'})",
                mean_se(cols["hard_last"]),
                mean_se(cols["hard_best"]),
                mean_se(cols["own_last"]),
                mean_se(cols["reward_last10"], 1),
            ]
        )
    return markdown_table(header, rows)


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="run folders, or sweep folders holding them")
    p.add_argument("--out", type=Path, default=None, help="also write the tables to this markdown file")
    args = p.parse_args(argv)
    runs = [read_run(r) for r in expand(args.runs)]
    parts = [runs_table(runs)]
    seeds = seeds_table(runs)
    if seeds:
        parts += [
            "",
            "Settings run with several seeds (mean +- standard error over the completed seeds):",
            "",
            seeds,
        ]
    table = "\n".join(parts)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")
    return table


if __name__ == "__main__":
    main()
