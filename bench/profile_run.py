"""Where the time of a training run goes: `train.py` under `torch.profiler`, broken down by phase.

Runs the real `train.py` (any overrides; default: 4 steps of the embedded default with one validation at the
end, plus the one at step 0) under the CPU profiler and prints, per phase, the wall time summed over the run
and its share of the fit: validation (the math-eval callback), and inside the training steps: rollout
(decode), reward, logprobs (teacher-forced pass + loss), backward, optimizer. Then the operators with the
largest self time. The profiler's own overhead (some microseconds per operator) inflates Python-heavy phases
a little; the shares, not the absolute seconds, are the result.

    python bench/profile_run.py                                  # embedded default, 4 steps
    python bench/profile_run.py representer=soft trainer.max_steps=2
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from hydra import compose, initialize_config_dir
from torch.profiler import ProfilerActivity, profile, record_function

import train as train_script
from callbacks.math_eval import MathEval

ROOT = Path(__file__).resolve().parents[1]
PHASES = ("validation", "rollout", "reward", "logprobs", "backward", "optimizer")
DEFAULT_OVERRIDES = ["trainer.max_steps=4", "callbacks.math_eval.every_n_steps=4"]


def labelled(method):
    """`method` inside a profiler range named "validation"."""

    def wrapper(*args, **kwargs):
        with record_function("validation"):
            return method(*args, **kwargs)

    return wrapper


def phase_table(prof: profile, fit_s: float) -> list[tuple[str, float, float]]:
    """(phase, seconds, share of the fit) for each labelled phase, from the profiler's ranges."""
    totals = {e.key: e.cpu_time_total / 1e6 for e in prof.key_averages() if e.key in PHASES}
    rows = [(name, totals.get(name, 0.0), totals.get(name, 0.0) / fit_s) for name in PHASES]
    other = fit_s - sum(s for _, s, _ in rows)
    return rows + [("other (Lightning, logging, checkpoints)", other, other / fit_s)]


def main(overrides: list[str]) -> None:
    overrides = overrides or DEFAULT_OVERRIDES
    out = tempfile.mkdtemp(prefix="profile_")
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, f"paths.output_dir={out}", "export_policy=false"])
    MathEval.measure = labelled(MathEval.measure)
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        train_script.train(cfg)
    total_s = time.perf_counter() - start
    fit_s = json.loads((Path(out) / "summary.json").read_text())["wall_s"]
    print(
        f"\ntrain.py {' '.join(overrides)}: fit {fit_s:.1f} s ({total_s:.1f} s with set-up), torch threads "
        f"{torch.get_num_threads()}, {os.cpu_count()} CPUs\n"
    )
    print("| phase | seconds | share of fit |\n|---|---:|---:|")
    for name, seconds, share in phase_table(prof, fit_s):
        print(f"| {name} | {seconds:.1f} | {100 * share:.0f}% |")
    print("\nOperators by self CPU time:")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main(sys.argv[1:])
