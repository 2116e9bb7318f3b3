"""Time and peak memory of full RL training steps of a paper preset on one GPU (bf16-mixed), per representer.

The model is the preset's architecture with random weights (assets/architectures/, no download); the
tokenizer is the embedded one (ids < its vocabulary are valid inputs; a random model never writes the stop
string, so every CoT runs to the maximum length: the worst case). Usage, on a machine with a GPU:

    python bench/gpu_train_step.py --model llama3_2_3b --out outputs/bench/gpu_train_step.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PROJECT_ROOT", str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import lightning as L  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import open_dict  # noqa: E402

import train as train_script  # noqa: E402
from soft_tokens.training import builders  # noqa: E402


class StepTimer(L.Callback):
    """Wall time of each training step (CUDA-synchronised) and the peak memory."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        sync()
        self._t = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        sync()
        self.times.append(time.perf_counter() - self._t)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run(
    model: str,
    representer: str,
    steps: int,
    G: int,
    B: int,
    L_cot: int,
    layers: int | None,
    trainer: str,
    tokenizer: str,
) -> dict:
    overrides = [
        f"model={model}",
        "+model.random_init=true",
        f"+model.tokenizer={tokenizer}",
        f"representer={representer}",
        f"trainer={trainer}",
        f"trainer.max_steps={steps}",
        "data=arith",
        f"data.batch_size={B}",
        f"module.samples_per_prompt={G}",
        "module.rollout_micro_batch=1",
        f"module.rollout.max_cot_tokens={L_cot}",
        "callbacks.math_eval=null",
        "callbacks.model_checkpoint=null",
        "callbacks.rich_progress_bar=null",
        "logger=csv",
        "export_policy=false",
        "+trainer.enable_checkpointing=false",
    ]
    if layers:
        overrides.append(f"+model.config_overrides={{num_hidden_layers: {layers}}}")
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    out_dir = ROOT / "outputs" / "bench" / f"gpu_{model}_{representer}"
    with open_dict(cfg):
        cfg.paths.output_dir = str(out_dir)
    timer = StepTimer()
    build = builders.build_callbacks  # train() imports it when it runs: add the timer there
    builders.build_callbacks = lambda c: [*build(c), timer]
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    train_script.train(cfg)
    builders.build_callbacks = build
    steady = timer.times[1:] or timer.times
    return {
        "model": model,
        "representer": representer,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "B": B,
        "G": G,
        "max_cot_tokens": L_cot,
        "layers": layers or "all",
        "step_s": [round(t, 3) for t in timer.times],
        "median_step_s": sorted(steady)[len(steady) // 2],
        "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="llama3_2_3b")
    p.add_argument("--representers", default="hard,soft,fuzzy")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--G", type=int, default=32)
    p.add_argument("--B", type=int, default=2)
    p.add_argument("--max-cot", type=int, default=128)
    p.add_argument("--tokenizer", default=str(ROOT / "assets" / "embedded"))
    p.add_argument("--trainer", default="gpu", help="trainer config (gpu; cpu for a wiring check)")
    p.add_argument("--layers", type=int, default=None, help="fewer decoder layers (default: the full model)")
    p.add_argument("--out", default=str(ROOT / "outputs" / "bench" / "gpu_train_step.json"))
    args = p.parse_args(argv)
    results = []
    for rep in args.representers.split(","):
        res = run(
            args.model,
            rep,
            args.steps,
            args.G,
            args.B,
            args.max_cot,
            args.layers,
            args.trainer,
            args.tokenizer,
        )
        print(json.dumps(res), flush=True)
        results.append(res)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
