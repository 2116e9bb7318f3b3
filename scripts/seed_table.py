"""Methods side by side over seeds: hard-greedy pass@1 and sampled pass@k of each run's evaluation.

Each `--group LABEL=DIR[,DIR...]` names the `evaluate.py` output folders (results.json) of one method's
seeds; a seed evaluated in two runs (greedy on the whole test split, sampling on part of it) is `DIR1+DIR2`. A row per method: the per-seed scores, their mean and the standard error of that mean over seeds
(sd / sqrt(n)), and the mean of the runs' own standard errors over the test problems.

    python scripts/seed_table.py --group hard=outputs/eval/hard_s0,outputs/eval/hard_s1 \
        --group soft=outputs/eval/soft_s0,outputs/eval/soft_s1 --k 32

`--column SETTING@K` (repeated) picks other columns than hard greedy pass@1 and hard sample pass@k, e.g.
`--column hard_greedy@1 --column soft_greedy@1`. `--baseline LABEL` adds, per column, each method's mean
minus the baseline's with the standard error of that difference, sqrt(SE_a^2 + SE_b^2) from the unrounded
per-seed scores (the seeds of two methods are independent runs); `*` marks a difference with a one-run group
(e.g. the base model), whose seed variance is taken as 0.
"""

from __future__ import annotations

import argparse
import math
import statistics
from pathlib import Path

from soft_tokens.eval.markdown import markdown_table

try:
    from scripts.script_inputs import InputError, count, existing_folder, output_file, read_json, usage_errors
except ModuleNotFoundError:  # run as `python scripts/seed_table.py`: scripts/ itself is on the path
    from script_inputs import InputError, count, existing_folder, output_file, read_json, usage_errors

Group = tuple[str, list[list[Path]]]  # label, per seed the evaluate.py folders of that seed
Column = tuple[str, int]  # an evaluate.py setting and the k of its pass@k


def score(results: dict, setting: str, k: int) -> tuple[float, float] | None:
    """(pass@k in %, its standard error over the problems in %) of one setting of a results.json, or None."""
    for s in results["settings"]:
        if s["name"] == setting and str(k) in s["pass_at_k"]:
            p, n = s["pass_at_k"][str(k)], s["n_problems"]
            se = s.get("pass_at_k_se", {}).get(str(k), math.sqrt(p * (1 - p) / n))
            return 100 * p, 100 * se
    return None


def merged(dirs: list[Path]) -> dict:
    """The settings of several results.json files of one model as one results dict."""
    parts = [results_file(d) for d in dirs]
    return {"settings": [s for p in parts for s in p["settings"]], "n_problems": parts[0]["n_problems"]}


def results_file(folder: Path) -> dict:
    """An evaluate.py folder's results.json, or InputError naming it."""
    path = folder / "results.json"
    if not path.is_file():
        raise InputError(f"{folder}: no results.json (not an evaluate.py output folder?)")
    results = read_json(path)
    settings = results.get("settings") if isinstance(results, dict) else None
    if not isinstance(settings, list) or "n_problems" not in results:
        raise InputError(f"{path}: not an evaluate.py results.json (no settings list or n_problems)")
    return results


def group(text: str) -> Group:
    """`LABEL=DIR[,DIR...]` (a seed evaluated in two runs: DIR1+DIR2), each folder checked (argparse type)."""
    label, sep, dirs = text.partition("=")
    if not sep or not label.strip() or not dirs.strip():
        raise argparse.ArgumentTypeError(f"{text!r}: expected LABEL=DIR[,DIR...]")
    return label.strip(), [[existing_folder(d) for d in seed.split("+")] for seed in dirs.split(",")]


def column(text: str) -> Column:
    """`SETTING@K`, e.g. `soft_greedy@1` (argparse type)."""
    setting, sep, k = text.partition("@")
    if not sep or not setting.strip() or not k.strip().isdigit() or int(k) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected SETTING@K, e.g. hard_greedy@1")
    return setting.strip(), int(k)


def mean_se(scores: list[float]) -> tuple[float, float]:
    """The mean of per-seed scores and its standard error (sd / sqrt(n); 0 for one seed)."""
    se = statistics.stdev(scores) / math.sqrt(len(scores)) if len(scores) > 1 else 0.0
    return statistics.fmean(scores), se


def difference(a: list[float], b: list[float], digits: int = 2) -> str:
    """'d ± se' of mean(a) - mean(b), the SE of the difference from both groups' per-seed SEs; '*' marks a
    one-run group (e.g. the base model), which adds no seed variance."""
    (ma, sa), (mb, sb) = mean_se(a), mean_se(b)
    one = "*" if min(len(a), len(b)) == 1 else ""
    return f"{ma - mb:+.{digits}f} ± {math.hypot(sa, sb):.{digits}f}{one}"


def summary(values: list[tuple[float, float]]) -> str:
    """'m ± se (a / b / c; per-run SE s)' for per-seed (score, SE) pairs (a single run: its own SE)."""
    scores = [v for v, _ in values]
    if len(scores) == 1:
        return f"{scores[0]:.1f} (one run; its SE {values[0][1]:.1f})"
    mean, se = mean_se(scores)
    seeds = " / ".join(f"{v:.1f}" for v in scores)
    return f"{mean:.1f} ± {se:.1f} ({seeds}; per-run SE {statistics.fmean(e for _, e in values):.1f})"


def rows(groups: list[Group], columns: list[Column], baseline: str | None = None) -> list[list[str]]:
    """One table row per group: its scores per column, and with a baseline the differences to it."""
    scores: dict[str, list[list[tuple[float, float]] | None]] = {}
    out = []
    for label, seeds in groups:
        results = [merged(dirs) for dirs in seeds]
        per_column = [[score(r, setting, k) for r in results] for setting, k in columns]
        scores[label] = [vals if all(vals) else None for vals in per_column]
        n = {s["n_problems"] for r in results for s in r["settings"]}
        cells = [summary(vals) if vals else "-" for vals in scores[label]]
        out.append([label, str(len(results)), "/".join(map(str, sorted(n))), *cells])
    if baseline is not None:
        if baseline not in scores:
            raise InputError(f"--baseline {baseline!r} is not one of the groups {list(scores)}")
        for row in out:
            for a, b in zip(scores[row[0]], scores[baseline]):
                same = row[0] == baseline or not a or not b
                row.append("-" if same else difference([v for v, _ in a], [v for v, _ in b]))
    return out


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--group", type=group, action="append", required=True, help="LABEL=DIR[,DIR...] evaluate.py folders"
    )
    p.add_argument("--k", type=count(1), default=32, help="k of the sampled pass@k column")
    p.add_argument(
        "--column",
        type=column,
        action="append",
        help="SETTING@K columns (default: hard greedy pass@1 and hard sample pass@k)",
    )
    p.add_argument("--baseline", default=None, help="a group LABEL: add each method's difference to it")
    p.add_argument("--out", type=output_file, default=None)
    args = p.parse_args(argv)
    columns = args.column or [("hard_greedy", 1), ("hard_sample", args.k)]
    names = [f"{s.replace('_', ' ')} pass@{k} (%)" for s, k in columns]
    head = ["method", "seeds", "test problems", *names]
    if args.baseline is not None:
        head += [f"{n[:-4]} - {args.baseline}" for n in names]
    with usage_errors(p):
        text = markdown_table(head, rows(args.group, columns, args.baseline))
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return text


if __name__ == "__main__":
    main()
