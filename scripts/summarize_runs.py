"""Markdown table of training runs from their TensorBoard logs: validation accuracy at the first and last
evaluation (and the best), for hard greedy and the training representer's own greedy setting.

    python scripts/summarize_runs.py outputs/train/runs/A outputs/train/runs/B [--out table.md]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series of a run's TensorBoard logs: name -> [(step, value)]."""
    out: dict[str, list[tuple[int, float]]] = {}
    for events in sorted((run / "tensorboard").rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return {k: sorted(v) for k, v in out.items()}


def row(run: Path) -> dict:
    """First, last and best of val/accuracy and val/accuracy_<representer>, the run time and steps."""
    s = scalars(run)
    cfg = (run / "config.yaml").read_text()
    name = next(
        (line.split(":", 1)[1].strip() for line in cfg.splitlines() if line.startswith("  name:")), "?"
    )
    summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").exists() else {}
    own = s.get(f"val/accuracy_{name}", s.get("val/accuracy", []))
    hard = s.get("val/accuracy", [])
    return {
        "run": run.name,
        "representer": name,
        "steps": summary.get("global_step"),
        "wall_s": summary.get("wall_s"),
        "hard_first": hard[0][1] if hard else None,
        "hard_last": hard[-1][1] if hard else None,
        "hard_best": max(v for _, v in hard) if hard else None,
        "own_first": own[0][1] if own else None,
        "own_last": own[-1][1] if own else None,
        "reward_last10": sum(v for _, v in s.get("train/reward", [])[-10:])
        / max(1, len(s.get("train/reward", [])[-10:])),
    }


def fmt(x) -> str:
    return "-" if x is None else (f"{x:.3f}" if isinstance(x, float) else str(x))


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    head = (
        "| training | steps | time (s) | val hard greedy: start -> end (best) | val own greedy: start -> end |"
        " train reward (last 10 steps) |\n|---|---|---|---|---|---|"
    )
    lines = [head]
    for run in args.runs:
        r = row(run)
        lines.append(
            f"| {r['representer']} | {fmt(r['steps'])} | {fmt(r['wall_s'])} | {fmt(r['hard_first'])} -> "
            f"{fmt(r['hard_last'])} ({fmt(r['hard_best'])}) | {fmt(r['own_first'])} -> {fmt(r['own_last'])} | "
            f"{r['reward_last10']:.1f} |"
        )
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")
    return table


if __name__ == "__main__":
    main()
