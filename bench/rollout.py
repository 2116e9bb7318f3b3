"""Rollout throughput: our RolloutEngine (hard, soft, fuzzy, and Gumbel-softmax; sampled) against Hugging
Face `model.generate`.

Same model, batch, prompts and number of generated tokens for every variant, in one process:
- `generate`: `model.generate(do_sample=True, top_k=0, top_p=1, temperature=1)`, EOS disabled, exactly
  `n` new tokens;
- ours: `RolloutEngine.generate` with `max_cot_tokens=L`, a stop string that never matches (it ends with
  ':' like the real one, so stop detection still runs) and no EOS, so every row feeds its L CoT tokens, the
  forced " The final answer is: \\boxed{" prefix and `answer_len` sampled answer tokens: the same `n`
  tokens per row as generate.
Each variant runs once untimed (at the first length); then `reps` rounds (`small_reps` for the small
model), each running every variant at CoT lengths L and 4L in a rotated order, so that a slow spell of a
shared machine falls on all of them alike. Times are medians over rounds, of this process's CPU time on CPU
(see `--clock`); ratios (against generate, against hard, 4L against L) are medians over rounds of each
round's ratio. A micro-benchmark times one decode step's parts at the realistic vocabulary: the model
forward against `representer.step`, and the soft head and mixture in two passes over E against one
(`SoftRepresenter.project`, the path the rollout takes on CPU).

Models: (a) the embedded model `assets/embedded` (a tiny random Llama when it is absent); (b) Qwen2.5-0.5B's
shape (vocab 151,936, hidden 896, 14 heads, 2 KV heads, intermediate 4864, tied embeddings) with random
weights and fewer layers.

    python bench/rollout.py                 # CPU defaults, a few minutes
    python bench/rollout.py --tiny          # smoke run, seconds
    python bench/rollout.py --device cuda --dtype bfloat16 --layers 24 --batch 64 --cot-len 128
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from _common import (
    NEVER_STOP,
    PROMPTS,
    RELATED,
    REPRESENTERS,
    add_common_args,
    describe,
    interleaved,
    machine,
    qwen_shaped,
    results_table,
    setup,
    small_model,
    sync,
    without_eos,
    write_results,
)
from _micro_step import micro_step
from _rollout_report import COLUMNS, render, targets
from torch import Tensor
from transformers import CompileConfig

from soft_tokens.models.loading import TORCH_DTYPES
from soft_tokens.rollout import RolloutConfig, RolloutEngine, encode_prompts


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    p.add_argument("--models", default="small,qwen", help="comma list of: small (embedded), qwen")
    p.add_argument("--batch", type=int, default=None, help="rows per rollout (default 8; tiny 2)")
    p.add_argument("--cot-len", type=int, default=None, help="L for the small model (default 64)")
    p.add_argument("--qwen-cot-len", type=int, default=None, help="L for the Qwen-shaped model (default 16)")
    p.add_argument("--long-factor", type=int, default=4, help="the long run's CoT is this times L")
    p.add_argument(
        "--small-reps", type=int, default=None, help="repetitions for the small model (default 15)"
    )
    p.add_argument("--answer-len", type=int, default=1, help="sampled answer tokens after the prefix")
    p.add_argument(
        "--no-static-anchor",
        action="store_true",
        help="skip generate_static (static cache + compiled forward: a compile of about a minute per length)",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the decoder forward (all variants)")
    p.add_argument("--compile-backend", default="inductor")
    p.add_argument("--no-micro", action="store_true", help="skip the decode-step micro-benchmark")
    args = p.parse_args(argv)
    tiny = args.tiny
    args.batch = args.batch or (2 if tiny else 8)
    args.cot_len = args.cot_len or (4 if tiny else 64)
    args.qwen_cot_len = args.qwen_cot_len or (4 if tiny else 16)
    args.layers = args.layers or (1 if tiny else 2)
    args.vocab = args.vocab or (2048 if tiny else 151_936)
    args.reps = args.reps or (1 if tiny else 5)
    args.small_reps = args.small_reps or (
        1 if tiny else 15
    )  # its runs take a second: more of them, less noise
    return args


def maybe_compile(model, args: argparse.Namespace):
    """torch.compile the decoder's forward (dynamic shapes: the KV cache grows and done rows leave the batch).

    The decoder, not the whole model: the rollout engine calls the decoder and the head apart, and
    `model.forward` (generate's path) calls the same decoder, so both run the compiled code."""
    if args.compile:
        decoder = model.get_decoder()
        decoder.forward = torch.compile(decoder.forward, dynamic=True, backend=args.compile_backend)
    return model


def bench_lengths(label: str, model, tokenizer, L0: int, reps: int, args, device) -> tuple[list[dict], dict]:
    """Time generate and the rollouts at CoT lengths L0 and long_factor * L0, both lengths in every round.

    Returns the rows and, per variant, the median over rounds of time(long) / time(short).
    """
    prompts = (PROMPTS * (args.batch // len(PROMPTS) + 1))[: args.batch]
    enc = encode_prompts(tokenizer, prompts, device)
    lengths = tuple(dict.fromkeys((L0, args.long_factor * L0)))  # one length when --long-factor 1
    anchors = ("generate",) if args.no_static_anchor else ("generate", "generate_static")
    variants = (*anchors, *REPRESENTERS, *RELATED)
    fns: dict[str, Any] = {}
    for L in lengths:
        fns.update(variants_at(L, model, tokenizer, prompts, enc, anchors, args, device))
    for _ in range(args.warmup):  # warm-up at the short length: the process is then warm for the long one
        for v in variants:
            fns[f"{v}@{L0}"]()
    # Every round runs all variants at both lengths, so that a slow spell of the machine falls on the two
    # lengths alike (their time ratio is a target) as well as on the variants.
    res = interleaved(fns, reps, 0, device, args.clock)
    rows = []
    for L in lengths:
        rows += rows_at(label, L, {v: res[f"{v}@{L}"] for v in variants}, anchors, enc[0], args)
    long_over_short = {
        v: statistics.median(
            [
                t4 / t1
                for t1, t4 in zip(res[f"{v}@{lengths[0]}"][args.clock], res[f"{v}@{lengths[-1]}"][args.clock])
            ]
        )
        for v in variants
    }
    return rows, long_over_short


def variants_at(
    L: int, model, tokenizer, prompts: list[str], enc, anchors: tuple, args, device
) -> dict[str, Any]:
    """The timed callables at CoT length L, named `<variant>@<L>`: generate (and its static-cache anchor)
    for as many tokens as a rollout feeds, and a rollout per representer; `enc` the encoded prompts."""
    ids, mask = enc
    cfg = RolloutConfig(max_cot_tokens=L, answer_max_tokens=args.answer_len, stop_string=NEVER_STOP)
    engine = RolloutEngine(without_eos(tokenizer), cfg)
    engine.tables(model.get_input_embeddings().weight.shape[0], device)  # per-vocabulary tables, built once
    n_new = L + len(tokenizer.encode(cfg.limit_prefix, add_special_tokens=False)) + args.answer_len
    gen_kwargs: dict[str, Any] = dict(
        input_ids=ids,
        attention_mask=mask,
        do_sample=True,
        max_new_tokens=n_new,
        min_new_tokens=n_new,
        eos_token_id=None,
        pad_token_id=tokenizer.pad_token_id,
        top_k=0,
        top_p=1.0,
        temperature=1.0,
    )
    fns: dict[str, Any] = {f"generate@{L}": lambda kw=gen_kwargs: model.generate(**kw)}
    if "generate_static" in anchors:
        static_kwargs = {**gen_kwargs, "cache_implementation": "static", "compile_config": compile_all()}
        fns[f"generate_static@{L}"] = lambda kw=static_kwargs: model.generate(**kw)
        fns[f"generate_static@{L}"]()  # compiles for this length: not timed
    for name, make in {**REPRESENTERS, **RELATED}.items():
        rep = make()

        def run(rep=rep, engine=engine):
            g = torch.Generator(device).manual_seed(args.seed)
            return engine.generate(model, prompts, rep, generator=g)

        fns[f"{name}@{L}"] = run
    return fns


def rows_at(label: str, L: int, at: dict[str, dict], anchors: tuple, prompt_ids: Tensor, args) -> list[dict]:
    """The result rows of every variant at CoT length L from their timings `at` (printed as a table)."""
    variants, (batch, P) = list(at), prompt_ids.shape
    tokens = {a: int(at[a]["out"][:, P:].numel()) for a in anchors}
    for v in variants[len(anchors) :]:
        tokens[v] = at[v]["out"].num_tokens
    ratio = paired_ratios(at, tokens, args.clock)
    rows = []
    for v in variants:
        rows.append(
            {
                "model": label,
                "L": L,
                "variant": v,
                "batch": batch,
                "prompt_len": P,
                "tokens": tokens[v],
                "median_s": at[v]["median"],
                "wall_s": at[v]["median_wall"],
                "times_s": [round(t, 4) for t in at[v][args.clock]],
                "ms_per_token": 1e3 * at[v]["median"] / tokens[v],
                "tok_per_s": tokens[v] / at[v]["median"],
                "vs_generate": ratio(v, "generate"),
                "vs_generate_static": ratio(v, "generate_static") if len(anchors) > 1 else None,
                "vs_hard": ratio(v, "hard") if v not in anchors else None,
            }
        )
    if len(set(tokens.values())) != 1:
        print(f"warning: {label} L={L}: generated token counts differ: {tokens}")
    print(results_table(rows, COLUMNS), flush=True)
    return rows


def paired_ratios(res: dict[str, dict[str, Any]], tokens: dict[str, int], clock: str):
    """ratio(a, b): tokens/s of `a` over tokens/s of `b`, the median over rounds of the per-round ratio.

    Each round of `interleaved` runs every variant back to back, so a slow spell of a shared machine that
    lasts a round cancels in that round's ratio; the ratio of the two medians does not have that property.
    """

    def ratio(a: str, b: str) -> float:
        per_round = [(tokens[a] / ta) / (tokens[b] / tb) for ta, tb in zip(res[a][clock], res[b][clock])]
        return statistics.median(per_round)

    return ratio


def compile_all():
    """Hugging Face's CompileConfig for generate with a static cache, compiling on every device (generate
    compiles by itself on CUDA only)."""
    cfg = CompileConfig(mode="default" if not torch.cuda.is_available() else "reduce-overhead")
    cfg._compile_all_devices = True
    return cfg


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    device = setup(args)
    dtype = TORCH_DTYPES[args.dtype]
    info = machine()
    print(f"machine: {info}")
    rows, length_ratios, models, micro = [], {}, {}, []
    wanted = [m.strip() for m in args.models.split(",") if m.strip()]
    for which in wanted:
        if which == "small":
            model, tok, label = small_model(dtype, device, args.seed)
            L0, reps = args.cot_len, args.small_reps
        elif which == "qwen":
            model, tok = qwen_shaped(args.layers, args.vocab, dtype, device, args.seed)
            label = f"Qwen2.5-0.5B shape, {args.layers} layers (random)"
            L0, reps = args.qwen_cot_len, args.reps
        else:
            raise SystemExit(f"unknown model {which!r}: choose small or qwen")
        models[label] = describe(model)
        print(f"\n## {label}: {models[label]}", flush=True)
        maybe_compile(model, args)
        r, length_ratios[label] = bench_lengths(label, model, tok, L0, reps, args, device)
        rows += r
        if which == "qwen" and not args.no_micro:
            micro = micro_step(model, args, device)
            print(results_table(micro, list(micro[0]) + [k for k in micro[2] if k not in micro[0]]))
        del model
        sync(device)
    tgt = targets(rows, length_ratios, args.long_factor)
    md = render(info, args, models, rows, micro, tgt)
    print("\n" + md)
    payload = {"machine": info, "args": vars(args), "models": models, "rows": rows, "micro": micro}
    payload["targets"] = tgt
    if not args.no_write:
        write_results(args.out, "rollout" + ("_tiny" if args.tiny else ""), payload, md)
    return payload


if __name__ == "__main__":
    main()
