"""Training-step time and peak memory of the real `SoftTokensModule.training_step`, per representer.

Each variant fits the module under a Lightning Trainer for a few steps, as train.py does: a rollout of G
samples per prompt (no gradient) -> rewards -> advantages -> teacher-forced log-probs -> RLOO loss ->
backward -> clip -> optimizer step (learning rate 0, so every step sees the same weights). Per representer
(hard, soft, fuzzy), two versions of the log-prob pass inside that step:
- `ours`: the module as it is, `soft_tokens.rollout.logprobs.rollout_log_probs` (one decoder forward, then LM head
  + log-softmax at the generated positions only, `--chunk-size` positions at a time, each chunk under
  activation checkpointing);
- `naive`: the same module with that function replaced by the straightforward one, which materialises
  float32 logits [N, T, V] for every position, the full float32 log-softmax [N, S, V], and the
  representer's log-prob on the full [N, S, V] logits (for soft/fuzzy: the mixture over all positions).
Both give the same per-step log-probs (checked on one rollout, under no_grad). The rewards are seeded
random numbers (a random model never answers right, and equal rewards would make every advantage 0), and
no row stops early (no EOS, a stop string that never appears), so every step has the same positions.
Throughput: generated positions (CoT + prefix + answer) per second of a whole step, median of `reps` steps
after `warmup` (the variants run one after another; on CPU the default clock is this process's CPU time).

Peak memory of the log-prob pass of one step after a warm-up step, above what is held when it starts (the
model, the optimizer state and the step's rollout): on CPU in a fresh subprocess per variant, the
resident-set high-water mark (VmHWM in /proc/self/status, reset through /proc/self/clear_refs as the pass
starts; `resource.getrusage(...).ru_maxrss` where that is unavailable) minus the resident set then; on CUDA,
in this process, `torch.cuda.max_memory_allocated` minus `torch.cuda.memory_allocated` (exact tensor bytes,
not the allocator's cache). Two peaks: up to the backward (log-prob pass and loss: "forward") and to the
backward's end, which also allocates the parameters' gradients, the same for both versions
(`param_grad_MB`).

    python bench/train_step.py              # CPU defaults
    python bench/train_step.py --tiny       # smoke run, seconds
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from _common import (
    NEVER_STOP,
    PROMPTS,
    REPRESENTERS,
    add_common_args,
    describe,
    machine,
    qwen_shaped,
    results_table,
    setup,
    without_eos,
    write_results,
)
from _module_step import RandomReward, StepClock, StepMemory, fit, log_prob_pass, naive_log_probs

from soft_tokens.data.prompts import PromptBuilder
from soft_tokens.estimators import RLOO
from soft_tokens.models.loading import TORCH_DTYPES, ModelConfig
from soft_tokens.rollout import Rollout, RolloutConfig
from soft_tokens.rollout.logprobs import rollout_log_probs
from soft_tokens.training.module import SoftTokensModule
from soft_tokens.training.optim import OptimConfig

IMPLS = ("ours", "naive")
COLUMNS = [
    "representer",
    "impl",
    "positions",
    "median_s",
    "wall_s",
    "tok_per_s",
    "fwd_peak_MB",
    "step_peak_MB",
    "fwd_peak_vs_naive",
    "step_peak_vs_naive",
]


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    p.add_argument("--batch", type=int, default=None, help="rows N = prompts x group (default 8; tiny 2)")
    p.add_argument("--group", type=int, default=None, help="samples per prompt G (default 4; tiny 2)")
    p.add_argument("--cot-len", type=int, default=None, help="CoT tokens L (default 16; tiny 4)")
    p.add_argument("--answer-len", type=int, default=1)
    p.add_argument(
        "--chunk-size", type=int, default=None, help="log-prob chunk of positions (default 32; tiny 16)"
    )
    p.add_argument("--representers", default="hard,soft,fuzzy")
    p.add_argument("--no-memory", action="store_true", help="skip the per-variant memory measurements")
    p.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    # each step runs for seconds; the median of the repetitions drops a cold first one
    p.set_defaults(warmup=0)
    args = p.parse_args(argv)
    tiny = args.tiny
    args.batch = args.batch or (2 if tiny else 8)
    args.group = args.group or (2 if tiny else 4)
    if args.batch % args.group:
        raise SystemExit(f"--batch {args.batch} is not a multiple of --group {args.group}")
    args.cot_len = args.cot_len or (4 if tiny else 16)
    args.chunk_size = args.chunk_size or (16 if tiny else 32)
    args.layers = args.layers or (1 if tiny else 2)
    args.vocab = args.vocab or (2048 if tiny else 151_936)
    args.reps = args.reps or (1 if tiny else 2)
    return args


# ----------------------------------------------------------------------------- the modules


def build_module(args, name: str, model, tokenizer_dir: Path) -> SoftTokensModule:
    """The module for representer `name`, its policy the given model (shared by every variant)."""
    module = SoftTokensModule(
        model=ModelConfig(name_or_path=str(tokenizer_dir), dtype=args.dtype, random_init=True),
        representer=REPRESENTERS[name](),
        estimator=RLOO(),
        reward=RandomReward(args.seed),
        prompt=PromptBuilder("{question}"),  # PROMPTS are whole prompts already
        rollout=RolloutConfig(
            max_cot_tokens=args.cot_len, answer_max_tokens=args.answer_len, stop_string=NEVER_STOP
        ),
        optim=OptimConfig(lr=0.0, warmup_steps=0),
        samples_per_prompt=args.group,
        logprob_chunk_size=args.chunk_size,
        seed=args.seed,
    )
    module.policy = model  # configure_model then loads nothing
    return module


def build(args, device: torch.device, folder: Path) -> tuple[torch.nn.Module, dict[str, SoftTokensModule]]:
    """The Qwen-shaped model (train mode) and one module per representer around it."""
    model, tok = qwen_shaped(args.layers, args.vocab, TORCH_DTYPES[args.dtype], device, args.seed)
    without_eos(tok).save_pretrained(folder)  # no row ends early: the rollouts all have the same length
    model.config.save_pretrained(folder)  # a model folder (config.json) whose weights are never loaded
    modules = {name: build_module(args, name, model.train(), folder) for name in args.representers.split(",")}
    return model, modules


def questions(args) -> list[str]:
    """The B = batch / group prompts of every step."""
    return (PROMPTS * (args.batch // len(PROMPTS) + 1))[: args.batch // args.group]


# ----------------------------------------------------------------------------- memory


def measure_memory(module: SoftTokensModule, impl: str, name: str, args, device: torch.device) -> dict:
    """Peak memory of one step of variant (name, impl), in this process."""
    probe = StepMemory(device)
    with log_prob_pass(impl):
        fit(module, questions(args), device, 2, probe)
    param_bytes = sum(p.numel() * p.element_size() for p in module.policy.parameters())
    return {"impl": impl, "representer": name, "param_grad_MB": param_bytes / 2**20, **probe.result}


def memory_child(args, device: torch.device) -> None:
    """Peak memory of one variant in this (fresh) process; prints one JSON line."""
    impl, name = args.memory_child.split(":")
    args.representers = name
    with tempfile.TemporaryDirectory() as tmp:
        _, modules = build(args, device, Path(tmp))
        res = measure_memory(modules[name], impl, name, args, device)
    print("MEMORY " + json.dumps(res), flush=True)


def memory_in_child(argv: list[str], impl: str, name: str) -> dict:
    """Run one variant's steps in a fresh process, so that nothing of another variant sits in its memory."""
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--no-write"]
    cmd += ["--memory-child", f"{impl}:{name}"]
    # glibc: serve every allocation of 64 KiB or more with its own mmap, returned to the system when freed,
    # so that the resident set follows the live tensors rather than what the heap kept from earlier steps.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    for line in proc.stdout.splitlines():
        if line.startswith("MEMORY "):
            return json.loads(line.removeprefix("MEMORY "))
    raise RuntimeError(f"memory child {impl}:{name} failed:\n{proc.stdout}\n{proc.stderr}")


# ----------------------------------------------------------------------------- the run


@torch.no_grad()
def agreement(modules: dict[str, SoftTokensModule], args) -> tuple[dict[str, float], dict[str, int], Rollout]:
    """Per representer: the max relative difference of ours and the naive log-probs on one module rollout,
    and the generated positions of every step (no row stops early)."""
    agree, positions, tol = {}, {}, 1e-4 if args.dtype == "float32" else 3e-2
    for name, module in modules.items():
        prompts = [q for q in questions(args) for _ in range(args.group)]
        generator = torch.Generator(module.policy.device).manual_seed(args.seed)
        ro = module.engine.generate(module.policy, prompts, module.representer, generator=generator)
        a = rollout_log_probs(module.policy, ro, module.representer, chunk_size=args.chunk_size).logp
        b = naive_log_probs(module.policy, ro, module.representer)
        a, b = a[ro.gen_mask], b[ro.gen_mask]
        agree[name], positions[name] = float(((a - b).abs() / b.abs().clamp(min=1.0)).max()), ro.num_tokens
        if agree[name] > tol:
            msg = f"{name}: ours and naive log-probs differ (max relative error {agree[name]:.2e})"
            if args.dtype == "float32":
                raise SystemExit(msg)
            print("warning: " + msg)
    return agree, positions, ro


def measure(args, argv: list[str], device: torch.device) -> tuple[dict, dict, dict, dict, Rollout]:
    """Shape, log-prob agreement, positions, step clocks and peak memory of every variant."""
    with tempfile.TemporaryDirectory() as tmp:
        model, modules = build(args, device, Path(tmp))
        shape = describe(model)
        print(f"model: {shape}", flush=True)
        agree, positions, ro = agreement(modules, args)
        clocks, mem = {}, {}
        for name, module in modules.items():
            for impl in IMPLS:
                clocks[(name, impl)] = StepClock(device)
                with log_prob_pass(impl):
                    fit(module, questions(args), device, args.warmup + args.reps, clocks[(name, impl)])
                if (
                    device.type == "cuda" and not args.no_memory
                ):  # exact allocator statistics, in this process
                    mem[(name, impl)] = measure_memory(module, impl, name, args, device)
        del model, modules
    gc.collect()
    if device.type != "cuda" and not args.no_memory:  # RSS high-water mark: a fresh process per variant
        mem = {(name, impl): memory_in_child(argv, impl, name) for name, impl in clocks}
    for key, m in mem.items():
        print(f"memory {key[0]}/{key[1]}: {m}", flush=True)
    return shape, {"agree": agree, "positions": positions}, clocks, mem, ro


def result_rows(args, checks: dict, clocks: dict, mem: dict) -> list[dict]:
    """One row per variant: positions, median step time and throughput, and peaks relative to naive."""
    rows = []
    for (name, impl), clock in clocks.items():
        times = getattr(clock, args.clock)[args.warmup :]
        median = statistics.median(times)
        positions = checks["positions"][name]
        row = {
            "representer": name,
            "impl": impl,
            "positions": positions,
            "median_s": median,
            "wall_s": statistics.median(clock.wall[args.warmup :]),
            "times_s": [round(t, 3) for t in times],
            "tok_per_s": positions / median,
            "loss": clock.loss[-1],
            "logp_max_rel_err": checks["agree"][name],
        }
        if mem:
            m, n = mem[(name, impl)], mem[(name, "naive")]
            row.update(
                fwd_peak_MB=m["fwd_peak_MB"],
                step_peak_MB=m["step_peak_MB"],
                param_grad_MB=m["param_grad_MB"],
                fwd_peak_vs_naive=m["fwd_peak_MB"] / n["fwd_peak_MB"],
                step_peak_vs_naive=m["step_peak_MB"] / n["step_peak_MB"],
                memory_method=m["method"],
            )
        rows.append(row)
    return rows


def targets(rows: list[dict]) -> list[dict]:
    """The memory target of each representer's log-prob pass, and the whole step's ratio for the record."""
    tgt = []
    for row in rows:
        if row["impl"] != "ours" or "fwd_peak_vs_naive" not in row:
            continue
        name = row["representer"]
        tgt.append(
            {
                "target": f"{name}: log-prob pass peak <= 0.25x naive",
                "value": row["fwd_peak_vs_naive"],
                "holds": row["fwd_peak_vs_naive"] <= 0.25,
            }
        )
        # Not a target: the whole step adds backward, which allocates the parameters' gradients alike in both.
        tgt.append(
            {
                "target": f"{name}: whole step with backward, for the record: peak vs naive",
                "value": row["step_peak_vs_naive"],
                "holds": None,
            }
        )
    return tgt


def render(info: dict, shape: dict, args, ro: Rollout, rows: list[dict], mem: dict, tgt: list[dict]) -> str:
    """The markdown report."""
    lines = [
        "# Training step: the module's training_step (rollout, RLOO loss, backward, optimizer step)",
        "",
        f"Machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']} ({info['torch_threads']} threads),"
        f" transformers {info['transformers']}{', GPU ' + info['gpu'] if 'gpu' in info else ''};"
        f" load average at start {info['load_avg_1m_at_start']}.",
        f"Model: {shape}. Device {args.device}, dtype {args.dtype}.",
        f"Step: N = {args.batch} rows ({args.batch // args.group} prompts x G = {args.group}),"
        f" prompt {ro.prompt_len} + generated {ro.ids.shape[1] - ro.prompt_len} positions"
        f" (CoT {args.cot_len}); chunk size {args.chunk_size}; median of {args.reps} after {args.warmup} warm-up,"
        f" clock: {args.clock}.",
        "",
        results_table(rows, COLUMNS),
    ]
    if mem:
        m = next(iter(mem.values()))
        where = ", in this process" if args.device.startswith("cuda") else ", a fresh process per variant"
        lines += [
            "",
            f"Memory method: {m['method']}{where}; parameter gradients alone: {m['param_grad_MB']:.0f} MB"
            " (allocated by backward in both versions).",
            "",
            "Targets:",
            "",
            results_table(tgt, ["target", "value", "holds"]),
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(argv)
    device = setup(args)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # no per-fit GPU/TPU banner
    if args.memory_child:
        memory_child(args, device)
        return {}
    info = machine()
    print(f"machine: {info}")
    shape, checks, clocks, mem, ro = measure(args, argv, device)
    rows = result_rows(args, checks, clocks, mem)
    tgt = targets(rows)
    md = render(info, shape, args, ro, rows, mem, tgt)
    print("\n" + md)
    payload = {"machine": info, "args": vars(args), "model": shape, "rows": rows, "targets": tgt}
    if not args.no_write:
        write_results(args.out, "train_step" + ("_tiny" if args.tiny else ""), payload, md)
    return payload


if __name__ == "__main__":
    main()
