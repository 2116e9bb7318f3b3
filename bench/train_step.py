"""Training-step throughput and peak memory: teacher-forced log-probs + RLOO loss + backward.

For each representer (hard, soft, fuzzy), two implementations of the same step on the same rollout:
- `ours`: `soft_tokens.logprobs.rollout_log_probs` (one decoder forward, then LM head + log-softmax at the
  generated positions only, `--chunk-size` positions at a time, each chunk under activation checkpointing),
  then `RLOO().loss` and `backward()`;
- `naive`: the model's full forward, which materialises float32 logits [N, T, V] for every position, the
  full float32 log-softmax [N, S, V], and the representer's log-prob on the full [N, S, V] logits (for
  soft/fuzzy: the mixture over all positions); then the same loss and backward.
Both give the same per-step log-probs (checked, under no_grad). Throughput: generated positions (CoT + prefix + answer, the ones that
carry a log-prob or are replayed) per second, median of `reps` runs after a warm-up, interleaved.

Peak memory: on CPU, in a fresh subprocess per variant (so that nothing of another variant or of a
warm-up sits in the allocator), the process's resident-set high-water mark (VmHWM in /proc/self/status,
reset through /proc/self/clear_refs just before the step; `resource.getrusage(...).ru_maxrss` where that
is unavailable) minus the resident set just before the step (model and rollout loaded, no gradients); on
CUDA, in this process, `torch.cuda.max_memory_allocated` (reset before the step) minus
`torch.cuda.memory_allocated` before it: exact tensor bytes, not the allocator's cache. Two peaks: after the log-prob pass and loss ("forward"),
and over the whole step including backward (which also allocates the parameters' gradients, the same for
both implementations: reported separately as `param_grad_MB`).

    python bench/train_step.py              # CPU defaults
    python bench/train_step.py --tiny       # smoke run, seconds
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
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
    interleaved,
    machine,
    qwen_shaped,
    results_table,
    setup,
    without_eos,
    write_results,
)

from soft_tokens.estimators import RLOO
from soft_tokens.logprobs import input_embeds, rollout_log_probs
from soft_tokens.models import TORCH_DTYPES
from soft_tokens.rollout import Rollout, RolloutConfig, RolloutEngine

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
        "--chunk-size",
        type=int,
        default=None,
        help="rollout_log_probs chunk of positions (default 32; tiny 16)",
    )
    p.add_argument("--representers", default="hard,soft,fuzzy")
    p.add_argument("--no-memory", action="store_true", help="skip the per-variant memory subprocesses")
    p.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--rollouts", default=None, help=argparse.SUPPRESS)
    p.set_defaults(
        warmup=0
    )  # each step runs for seconds; the median of the repetitions drops a cold first one
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


def naive_log_probs(model, ro: Rollout, rep, answer_temperature: float = 1.0) -> torch.Tensor:
    """The straightforward version: full float32 logits and log-softmax over [N, T, V]; [N, S] log-probs."""
    logits = model(
        inputs_embeds=input_embeds(model, ro),
        attention_mask=ro.attention_mask,
        position_ids=ro.position_ids,
        use_cache=False,
    ).logits.float()  # [N, T, V]
    P = ro.prompt_len
    logits = logits[:, P - 1 : -1]  # [N, S, V]: the logits that predict each generated position
    ids = ro.ids[:, P:]
    logp_all = torch.log_softmax(logits / answer_temperature, dim=-1)  # [N, S, V] float32
    logp = logp_all.gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    E = model.get_input_embeddings().weight
    cot = rep.log_prob(logits, ro.fed, ids, E)  # the representer on every position, [N, S]
    logp = torch.where(ro.cot_mask, cot, logp)
    return logp * ro.gen_mask


def make_step(model, ro: Rollout, rep, adv: torch.Tensor, impl: str, chunk_size: int):
    """A function running one step (zero grads, log-probs, loss, backward); returns the loss value."""
    est = RLOO()

    def forward() -> torch.Tensor:
        if impl == "ours":
            lp = rollout_log_probs(model, ro, rep, chunk_size=chunk_size)
            logp, mask = lp.logp, lp.mask
        else:
            logp, mask = naive_log_probs(model, ro, rep), ro.gen_mask
        loss, _ = est.loss(logp, adv, mask)
        return loss

    def step() -> float:
        model.zero_grad(set_to_none=True)
        loss = forward()
        loss.backward()
        return float(loss.detach())

    step.forward = forward  # type: ignore[attr-defined]
    return step


def build(args, device, dtype):
    """Model (train mode), tokenizer, and one rollout per representer, all rows the same length; the
    rollouts and advantages are read from `args.rollouts` when given (memory subprocesses)."""
    model, tok = qwen_shaped(args.layers, args.vocab, dtype, device, args.seed)
    model.train()
    if args.rollouts:
        saved = torch.load(args.rollouts, weights_only=False)
        rollouts = {
            n: (REPRESENTERS[n](), saved["rollouts"][n].to(device)) for n in args.representers.split(",")
        }
        return model, tok, rollouts, saved["adv"].to(device)
    prompts = (PROMPTS * (args.batch // len(PROMPTS) + 1))[: args.batch // args.group]
    prompts = [p for p in prompts for _ in range(args.group)]
    cfg = RolloutConfig(
        max_cot_tokens=args.cot_len, answer_max_tokens=args.answer_len, stop_string=NEVER_STOP
    )
    engine = RolloutEngine(without_eos(tok), cfg)
    g = torch.Generator(device).manual_seed(args.seed)
    rewards = 30.0 * torch.randn((args.batch // args.group, args.group), generator=g, device=device)
    adv = RLOO().advantages(rewards).flatten()
    rollouts = {}
    for name in args.representers.split(","):
        rep = REPRESENTERS[name]()
        rollouts[name] = (rep, engine.generate(model, prompts, rep, generator=g))
    return model, tok, rollouts, adv


def rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def peak_memory(step, device: torch.device) -> dict:
    """Peak memory (bytes above what was allocated before) of the log-prob pass + loss, and of the whole
    step with backward; run on a process whose memory high-water mark reflects only this step."""
    gc.collect()
    res: dict = {}
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        loss = step.forward()
        torch.cuda.synchronize()
        fwd = torch.cuda.max_memory_allocated() - base
        loss.backward()
        torch.cuda.synchronize()
        total = torch.cuda.max_memory_allocated() - base
        res["method"] = "torch.cuda.max_memory_allocated - memory_allocated before the step"
    else:
        try:
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
            read_peak, res["method"] = (lambda: rss_kb("VmHWM") * 1024), "VmHWM (reset) - VmRSS before"
            base = rss_kb("VmRSS") * 1024
        except OSError:
            read_peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # noqa: E731
            base, res["method"] = read_peak(), "ru_maxrss - ru_maxrss before (not resettable)"
        loss = step.forward()
        fwd = read_peak() - base
        loss.backward()
        total = read_peak() - base
    res.update(fwd_peak_MB=fwd / 2**20, step_peak_MB=total / 2**20, loss=float(loss.detach()))
    return res


def memory_child(args, device, dtype) -> None:
    """Peak memory of one variant's first step in this (fresh) process; prints one JSON line."""
    impl, name = args.memory_child.split(":")
    args.representers = name
    model, _, rollouts, adv = build(args, device, dtype)
    rep, ro = rollouts[name]
    step = make_step(model, ro, rep, adv, impl, args.chunk_size)
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    step()  # warm-up: libraries' one-time buffers and caches are in the baseline, not in the peak
    model.zero_grad(set_to_none=True)
    res = {"impl": impl, "representer": name, "param_grad_MB": param_bytes / 2**20}
    res.update(peak_memory(step, device))
    print("MEMORY " + json.dumps(res), flush=True)


def measure_memory(argv: list[str], impl: str, name: str, rollouts: Path) -> dict:
    """Run one variant's step in a fresh process, on the rollouts saved by this one."""
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--no-write"]
    cmd += ["--memory-child", f"{impl}:{name}", "--rollouts", str(rollouts)]
    # glibc: serve every allocation of 64 KiB or more with its own mmap, returned to the system when freed,
    # so that the resident set follows the live tensors rather than what the heap kept from earlier steps.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    for line in proc.stdout.splitlines():
        if line.startswith("MEMORY "):
            return json.loads(line.removeprefix("MEMORY "))
    raise RuntimeError(f"memory child {impl}:{name} failed:\n{proc.stdout}\n{proc.stderr}")


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(argv)
    device = setup(args)
    dtype = TORCH_DTYPES[args.dtype]
    if args.memory_child:
        memory_child(args, device, dtype)
        return {}
    info = machine()
    print(f"machine: {info}")
    model, _, rollouts, adv = build(args, device, dtype)
    shape = describe(model)
    print(f"model: {shape}", flush=True)
    fns, positions = {}, {}
    for name, (rep, ro) in rollouts.items():
        positions[name] = int(ro.attention_mask[:, ro.prompt_len :].sum())
        for impl in IMPLS:
            fns[(name, impl)] = make_step(model, ro, rep, adv, impl, args.chunk_size)
    # Both implementations compute the same per-step log-probs (the loss value alone would not show it:
    # RLOO advantages sum to zero over a group, so the surrogate loss is about 0 whatever the log-probs).
    agree, tol = {}, 1e-4 if dtype == torch.float32 else 3e-2
    with torch.no_grad():
        for name, (rep, ro) in rollouts.items():
            a = rollout_log_probs(model, ro, rep, chunk_size=args.chunk_size).logp[ro.gen_mask]
            b = naive_log_probs(model, ro, rep)[ro.gen_mask]
            agree[name] = float(((a - b).abs() / b.abs().clamp(min=1.0)).max())
            if agree[name] > tol:
                msg = f"{name}: ours and naive log-probs differ (max relative error {agree[name]:.2e})"
                if dtype == torch.float32:
                    raise SystemExit(msg)
                print("warning: " + msg)
    mem = {}
    if device.type == "cuda" and not args.no_memory:  # exact allocator statistics: measured in this process
        param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        for (name, impl), f in fns.items():
            model.zero_grad(set_to_none=True)
            mem[(name, impl)] = {"impl": impl, "representer": name, "param_grad_MB": param_bytes / 2**20}
            mem[(name, impl)].update(peak_memory(f, device))
            print(f"memory {name}/{impl}: {mem[(name, impl)]}", flush=True)
    res = interleaved(
        {f"{n}/{i}": f for (n, i), f in fns.items()}, args.reps, args.warmup, device, args.clock
    )
    del model, fns
    gc.collect()
    if device.type != "cuda" and not args.no_memory:  # RSS high-water mark: a fresh process per variant
        with tempfile.TemporaryDirectory() as tmp:
            saved = Path(tmp) / "rollouts.pt"
            torch.save({"rollouts": {n: ro for n, (_, ro) in rollouts.items()}, "adv": adv}, saved)
            for name in rollouts:
                for impl in IMPLS:
                    mem[(name, impl)] = measure_memory(argv, impl, name, saved)
                    print(f"memory {name}/{impl}: {mem[(name, impl)]}", flush=True)
    rows = []
    for name in rollouts:
        for impl in IMPLS:
            r = res[f"{name}/{impl}"]
            row = {
                "representer": name,
                "impl": impl,
                "positions": positions[name],
                "median_s": r["median"],
                "wall_s": r["median_wall"],
                "times_s": [round(t, 3) for t in r[args.clock]],
                "tok_per_s": positions[name] / r["median"],
                "loss": r["out"],
                "logp_max_rel_err": agree[name],
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
    tgt = []
    for row in rows:
        if row["impl"] == "ours" and mem:
            tgt.append(
                {
                    "target": f"{row['representer']}: log-prob pass peak <= 0.25x naive",
                    "value": row["fwd_peak_vs_naive"],
                    "holds": row["fwd_peak_vs_naive"] <= 0.25,
                }
            )
            # Not a target (the target is the teacher-forced log-prob pass): the whole step adds backward,
            # which allocates the parameters' gradients alike in both versions. Shown for the record.
            tgt.append(
                {
                    "target": f"{row['representer']}: whole step with backward, for the record: peak vs naive",
                    "value": row["step_peak_vs_naive"],
                    "holds": None,
                }
            )
    ro = next(iter(rollouts.values()))[1]
    lines = [
        "# Training step: teacher-forced log-probs + RLOO loss + backward",
        "",
        f"Machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']} ({info['torch_threads']} threads),"
        f" transformers {info['transformers']}{', GPU ' + info['gpu'] if 'gpu' in info else ''};"
        f" load average at start {info['load_avg_1m_at_start']}.",
        f"Model: {shape}. Device {args.device}, dtype {args.dtype}.",
        f"Rollout: N = {args.batch} rows ({args.batch // args.group} prompts x G = {args.group}),"
        f" prompt {ro.prompt_len} + generated {ro.ids.shape[1] - ro.prompt_len} positions"
        f" (CoT {args.cot_len}); chunk size {args.chunk_size}; median of {args.reps} after {args.warmup} warm-up,"
        f" clock: {args.clock}.",
        "",
        results_table(rows, COLUMNS),
    ]
    if mem:
        m = next(iter(mem.values()))
        lines += [
            "",
            f"Memory method: {m['method']}"
            f"{', in this process' if device.type == 'cuda' else ', a fresh process per variant'};"
            " parameter gradients alone:"
            f" {m['param_grad_MB']:.0f} MB (allocated by backward in both implementations).",
            "",
            "Targets:",
            "",
            results_table(tgt, ["target", "value", "holds"]),
        ]
    md = "\n".join(lines)
    print("\n" + md)
    payload = {"machine": info, "args": vars(args), "model": shape, "rows": rows, "targets": tgt}
    if not args.no_write:
        write_results(args.out, "train_step" + ("_tiny" if args.tiny else ""), payload, md)
    return payload


if __name__ == "__main__":
    main()
