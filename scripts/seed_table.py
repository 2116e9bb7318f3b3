"""Methods side by side over seeds: hard-greedy pass@1 and sampled pass@k of each run's evaluation.

Each `--group LABEL=DIR[,DIR...]` names the `evaluate.py` output folders (results.json) of one method's
seeds; a seed evaluated in two runs (greedy on the whole test split, sampling on part of it) is `DIR1+DIR2`. A row per method: the per-seed scores, their mean and the standard error of that mean over seeds
(sd / sqrt(n)), and the mean of the runs' own standard errors over the test problems.

    python scripts/seed_table.py --group hard=outputs/eval/hard_s0,outputs/eval/hard_s1 \
        --group soft=outputs/eval/soft_s0,outputs/eval/soft_s1 --k 32
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


def summary(values: list[tuple[float, float]]) -> str:
    """'m ± se (a / b / c; per-run SE s)' for per-seed (score, SE) pairs (a single run: its own SE)."""
    scores = [v for v, _ in values]
    if len(scores) == 1:
        return f"{scores[0]:.1f} (one run; its SE {values[0][1]:.1f})"
    mean = statistics.fmean(scores)
    se = statistics.stdev(scores) / math.sqrt(len(scores))
    seeds = " / ".join(f"{v:.1f}" for v in scores)
    return f"{mean:.1f} ± {se:.1f} ({seeds}; per-run SE {statistics.fmean(e for _, e in values):.1f})"


def rows(groups: list[Group], k: int) -> list[list[str]]:
    """One table row per group."""
    out = []
    for label, seeds in groups:
        results = [merged(dirs) for dirs in seeds]
        greedy = [score(r, "hard_greedy", 1) for r in results]
        sample = [score(r, "hard_sample", k) for r in results]
        n = {s["n_problems"] for r in results for s in r["settings"]}
        out.append(
            [
                label,
                str(len(results)),
                "/".join(map(str, sorted(n))),
                summary([g for g in greedy if g]) if all(greedy) else "-",
                summary([s for s in sample if s]) if all(sample) else "-",
            ]
        )
    return out


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--group", type=group, action="append", required=True, help="LABEL=DIR[,DIR...] evaluate.py folders"
    )
    p.add_argument("--k", type=count(1), default=32, help="k of the sampled pass@k column")
    p.add_argument("--out", type=output_file, default=None)
    args = p.parse_args(argv)
    head = ["method", "seeds", "test problems", "hard greedy pass@1 (%)", f"hard sample pass@{args.k} (%)"]
    with usage_errors(p):
        text = markdown_table(head, rows(args.group, args.k))
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return text


if __name__ == "__main__":
    main()
