"""The out-of-domain table of runs trained with `callbacks=ood` (the paper's Table 2) and its curves.

Each `--group LABEL=RUN[,RUN...]` names one method's run folders (one per seed). From each run's TensorBoard
scalars `ood/<dataset>/accuracy` and `ood/<dataset>/nll` (per-token NLL of the correct answer), a row per
method and dataset: the value at the last evaluation, mean ± standard error over seeds with the per-seed
values, and its change from the base (the same run's step-0 value, i.e. the model before RL), again mean ±
SE over seeds; a `base` row shows the step-0 values. `--plot` draws each method's mean curves over training.
`--baseline LABEL` adds each method's change minus the baseline method's change, with the standard error of
that difference, sqrt(SE_a^2 + SE_b^2), from the unrounded per-seed changes (`*`: a one-run group, whose
seed variance is taken as 0; scripts/seed_table.py's `difference`).

    python scripts/ood_table.py --group hard=runs/hard_s0,runs/hard_s1 --group soft=runs/soft_s0 \
        --out ood.md --plot ood.png
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from soft_tokens.eval.markdown import markdown_table

try:
    from scripts.script_inputs import InputError, existing_folder, output_file, usage_errors
    from scripts.seed_table import difference, mean_se
    from scripts.summarize_runs import scalars
except ModuleNotFoundError:  # run as `python scripts/ood_table.py`: scripts/ itself is on the path
    from script_inputs import InputError, existing_folder, output_file, usage_errors
    from seed_table import difference, mean_se
    from summarize_runs import scalars

Curves = dict[str, list[tuple[int, float]]]  # "<dataset>/<metric>" -> [(step, value)]
METRICS = (("accuracy", 100.0, 1), ("nll", 1.0, 3))  # name, scale for the table, digits


def group(text: str) -> tuple[str, list[Path]]:
    """`LABEL=RUN[,RUN...]`, each run folder checked (argparse type)."""
    label, sep, runs = text.partition("=")
    if not sep or not label.strip() or not runs.strip():
        raise argparse.ArgumentTypeError(f"{text!r}: expected LABEL=RUN[,RUN...]")
    return label.strip(), [existing_folder(r) for r in runs.split(",")]


def ood_curves(run: Path) -> Curves:
    """The run's `ood/<dataset>/{accuracy,nll}` series; InputError if it logged none."""
    curves = {
        tag.removeprefix("ood/"): values
        for tag, values in scalars(run).items()
        if tag.startswith("ood/") and tag.rsplit("/", 1)[-1] in ("accuracy", "nll")
    }
    if not curves:
        raise InputError(f"{run}: no ood/<dataset>/accuracy or nll scalars (trained without callbacks=ood?)")
    if any(values[0][0] != 0 for values in curves.values()):
        raise InputError(f"{run}: its ood curves do not start at step 0, so the base is unknown")
    return curves


def cell(values: list[float], digits: int, signed: bool = False) -> str:
    """'mean ± SE (a / b / c)' over seeds (one seed: the value alone)."""
    f = f"{{:{'+' if signed else ''}.{digits}f}}"
    if len(values) == 1:
        return f.format(values[0])
    mean, se = mean_se(values)
    return f"{f.format(mean)} ± {se:.{digits}f} ({' / '.join(f.format(v) for v in values)})"


def changes(runs: list[Curves], key: str, scale: float) -> list[float]:
    """Per run, the last value of `key` minus its step-0 value, scaled."""
    return [(c[key][-1][1] - c[key][0][1]) * scale for c in runs if key in c]


def rows(groups: list[tuple[str, list[Curves]]], baseline: str | None = None) -> list[list[str]]:
    """A base row, then one row per method and dataset: the last value and its change from step 0 (and with
    a baseline, that change minus the baseline's)."""
    datasets = sorted({key.rsplit("/", 1)[0] for _, runs in groups for c in runs for key in c})
    out = []
    for ds in datasets:
        base = []
        for name, scale, digits in METRICS:
            firsts = [
                c[f"{ds}/{name}"][0][1] * scale for _, runs in groups for c in runs if f"{ds}/{name}" in c
            ]
            base += [cell([statistics.fmean(firsts)], digits), "-"]
        out.append(["base (step 0)", ds, "-", *base] + (["-", "-"] if baseline else []))
        ref = dict(groups).get(baseline) if baseline else None
        for label, runs in groups:
            have = [c for c in runs if f"{ds}/accuracy" in c and f"{ds}/nll" in c]
            if not have:
                continue
            row = [label, ds, str(len(have))]
            for name, scale, digits in METRICS:
                last = [c[f"{ds}/{name}"][-1][1] * scale for c in have]
                delta = [c[f"{ds}/{name}"][-1][1] * scale - c[f"{ds}/{name}"][0][1] * scale for c in have]
                row += [cell(last, digits), cell(delta, digits, signed=True)]
            if baseline is not None:
                for name, scale, digits in METRICS:
                    key, mine = f"{ds}/{name}", changes(have, f"{ds}/{name}", scale)
                    theirs = changes(ref or [], key, scale)
                    same = label == baseline or not theirs
                    row.append("-" if same else difference(mine, theirs, digits + 1))
            out.append(row)
    return out


def plot(groups: list[tuple[str, list[Curves]]], path: Path) -> None:
    """Per dataset, accuracy and NLL over training: each method's mean over its seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted({key.rsplit("/", 1)[0] for _, runs in groups for c in runs for key in c})
    fig, axes = plt.subplots(len(datasets), 2, figsize=(10, 3.5 * len(datasets)), squeeze=False)
    for (ax_acc, ax_nll), ds in zip(axes, datasets):
        for label, runs in groups:
            for ax, (name, scale, _) in ((ax_acc, METRICS[0]), (ax_nll, METRICS[1])):
                series = [dict(c[f"{ds}/{name}"]) for c in runs if f"{ds}/{name}" in c]
                steps = sorted(set.intersection(*(set(s) for s in series))) if series else []
                ax.plot(
                    steps,
                    [statistics.fmean(s[t] * scale for s in series) for t in steps],
                    marker="o",
                    ms=3,
                    label=f"{label} ({len(series)} seeds)",
                )
        ax_acc.set_ylabel(f"ood {ds} accuracy (%)")
        ax_nll.set_ylabel(f"ood {ds} NLL per token")
        for ax in (ax_acc, ax_nll):
            ax.set_xlabel("training step")
    axes[0][1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--group", type=group, action="append", required=True, help="LABEL=RUN[,RUN...] run folders"
    )
    p.add_argument("--out", type=output_file, default=None, help="write the markdown table here")
    p.add_argument("--plot", type=output_file, default=None, help="write the curves here (.png)")
    p.add_argument("--baseline", default=None, help="a group LABEL: each change minus its change")
    args = p.parse_args(argv)
    with usage_errors(p):
        groups = [(label, [ood_curves(r) for r in runs]) for label, runs in args.group]
        if args.baseline is not None and args.baseline not in dict(groups):
            raise InputError(
                f"--baseline {args.baseline!r} is not one of the groups {[g for g, _ in groups]}"
            )
        head = ["method", "ood set", "seeds", "accuracy (%)", "accuracy - base", "NLL", "NLL - base"]
        if args.baseline is not None:
            head += [f"accuracy change - {args.baseline}'s", f"NLL change - {args.baseline}'s"]
        text = markdown_table(head, rows(groups, args.baseline))
    if args.out:
        args.out.write_text(text + "\n")
    if args.plot:
        plot(groups, args.plot)
    print(text)
    return text


if __name__ == "__main__":
    main()
