"""The continuous-token RL study's table and plot: one row per training run, its knobs and its curves.

Reads each run folder's resolved `config.yaml`, the validation lines (`step N | val/accuracy=...`) that
`callbacks/math_eval.py` writes to the run's log (`<task_name>.log`), `summary.json` and the `train/grad_norm`
scalars of its TensorBoard events; writes a markdown table (stdout or --out) and the validation curves (--plot).

    python scripts/study_table.py outputs/study/*/0 --out outputs/study/runs.md \
        --plot outputs/study/val.png

Every folder given must be a run folder (config.yaml and its log): a missing one, one without them or an
unreadable file is refused with its path and exit status 2, before anything is written (`--out` and `--plot`
into a missing folder too).
"""

from __future__ import annotations

import argparse
import re
import statistics
from pathlib import Path

from omegaconf import OmegaConf

from soft_tokens.eval.markdown import markdown_table

try:
    from scripts import script_inputs as si
except ModuleNotFoundError:  # run as `python scripts/study_table.py`: scripts/ itself is on the path
    import script_inputs as si

VAL_LINE = re.compile(r"step (\d+) \| (val/accuracy=.*)$")
KNOBS = {  # column -> key in the resolved config
    "representer": "representer.name",
    "lr": "module.optim.lr",
    "betas": "module.optim.betas",
    "optim": "module.optim.name",
    "G": "module.samples_per_prompt",
    "B": "data.batch_size",
    "steps": "trainer.max_steps",
    "freeze E": "module.freeze_embeddings",
    "untie": "model.untie_embeddings",
    "E grad": "representer.embedding_grad",
    "CoT grad w": "module.cot_grad_weight",
    "gamma": "representer.gamma",
    "noise top k": "representer.noise_top_k",
    "noise min entropy": "representer.noise_min_entropy",
    "T": "sampling_temperature",
    "tau": "representer.tau",
    "beta": "estimator.beta",
    "seed": "seed",
}


def val_curve(log_file: Path) -> dict[int, float]:
    """Hard-greedy validation accuracy by step, from the math-eval lines of a train.log."""
    curve = {}
    for line in si.read_text(log_file).splitlines():
        m = VAL_LINE.search(line)
        if m:
            fields = dict(kv.split("=") for kv in m.group(2).split())
            curve[int(m.group(1))] = float(fields["val/accuracy"])
    return curve


def grad_norms(run: Path) -> list[float]:
    """The run's train/grad_norm scalars (pre-clipping total norm per optimizer step)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values: list[float] = []
    for ev in sorted(run.glob("tensorboard/**/events.out.tfevents.*")):
        acc = EventAccumulator(str(ev), size_guidance={"scalars": 0})
        acc.Reload()
        if "train/grad_norm" in acc.Tags()["scalars"]:
            values += [e.value for e in acc.Scalars("train/grad_norm")]
    return values


def run_log(run: Path, cfg) -> Path:
    """The run's log: <task_name>.log (Hydra's job log, e.g. embedded_soft.log), else train.log; InputError
    naming both if there is neither."""
    named = run / f"{OmegaConf.select(cfg, 'task_name', default='train')}.log"
    candidates = list(dict.fromkeys((named, run / "train.log")))
    for log in candidates:
        if log.is_file():
            return log
    names = " or ".join(c.name for c in candidates)
    raise si.InputError(f"{run}: no {names} (the run's log, with its validation lines)")


def run_row(run: Path) -> dict:
    """Knobs, validation curve, grad-norm statistics and wall time of one run folder."""
    if not (run / "config.yaml").is_file():
        raise si.InputError(f"{run}: no config.yaml, so not a run folder (train.py writes one into each)")
    cfg = si.read_config(run / "config.yaml")
    row = {k: OmegaConf.select(cfg, key, default="-") for k, key in KNOBS.items()}
    row["betas"] = "/".join(str(b) for b in row["betas"]) if row["betas"] != "-" else "-"
    old_name = OmegaConf.select(cfg, "representer.temperature", default=None)
    if old_name is not None:  # runs from before the rename (and hard runs) keep it under `temperature`
        row["tau"] = old_name
    if row["representer"] == "hard":
        row.update({"E grad": "-", "gamma": "-"})
    curve = val_curve(run_log(run, cfg))
    summary = (
        si.read_json(run / "summary.json") if (run / "summary.json").exists() else {}
    )  # absent while running
    norms = sorted(grad_norms(run))
    row.update(
        run=run.parent.name if run.name.isdigit() else run.name,
        curve=curve,
        start=curve.get(0, float("nan")),
        end=curve[max(curve)] if curve else float("nan"),
        best=max(curve.values()) if curve else float("nan"),
        best_step=max(curve, key=lambda s: (curve[s], -s)) if curve else "-",
        grad_median=statistics.median(norms) if norms else float("nan"),
        grad_p90=norms[int(0.9 * (len(norms) - 1))] if norms else float("nan"),
        wall_s=summary.get("wall_s", "-"),
    )
    return row


def markdown(rows: list[dict]) -> str:
    """One table row per run: knobs, val hard greedy start -> best (step) -> end, grad norms, wall time."""
    knobs = [k for k in KNOBS if len({str(r[k]) for r in rows}) > 1 or k in ("representer", "lr", "seed")]
    head = ["run", *knobs, "val start -> best (step) -> end", "grad norm median / p90", "wall (s)"]
    cells = []
    for r in rows:
        val = f"{r['start']:.3f} -> {r['best']:.3f} ({r['best_step']}) -> {r['end']:.3f}"
        grads = f"{r['grad_median']:.3g} / {r['grad_p90']:.3g}"
        cells.append([r["run"], *(str(r[k]) for k in knobs), val, grads, str(r["wall_s"])])
    return markdown_table(head, cells) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    """Validation curves of every run, one line each, legend outside the axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 5))
    cmap = plt.get_cmap("tab20")
    for i, r in enumerate(rows):
        steps = sorted(r["curve"])
        ax.plot(steps, [r["curve"][s] for s in steps], marker="o", ms=3, color=cmap(i % 20), label=r["run"])
    ax.set_xlabel("training step")
    ax.set_ylabel("val hard-greedy accuracy (200 problems)")
    ax.axhline(rows[0]["start"] if rows else 0.0, color="grey", lw=0.8, ls="--")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "runs", nargs="+", type=si.existing_folder, help="run folders (each with config.yaml and train.log)"
    )
    p.add_argument("--out", type=si.output_file, help="markdown file (default: stdout)")
    p.add_argument("--plot", type=si.output_file, help="PNG of the validation curves")
    args = p.parse_args(argv)
    with si.usage_errors(p):
        rows = [run_row(r) for r in args.runs]
    text = markdown(rows)
    if args.out:
        args.out.write_text(text)
    else:
        print(text)
    if args.plot:
        plot(rows, args.plot)
    return rows


if __name__ == "__main__":
    main()
