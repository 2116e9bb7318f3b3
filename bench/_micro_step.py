"""The decode-step micro-benchmark of bench/rollout.py: one step's parts at the realistic vocabulary, the model
forward against `representer.step`, and the soft head and mixture in two passes over E against one."""

from __future__ import annotations

import torch
from _common import QWEN_0_5B, RELATED, REPRESENTERS, interleaved
from transformers import DynamicCache


@torch.no_grad()
def micro_step(model, args, device, context: int = 64) -> list[dict]:
    """One decode step's parts at batch B: model forward (KV cache of `context` tokens) vs representer.step."""
    B = args.batch
    E = model.get_input_embeddings().weight
    V, d = E.shape
    cache = DynamicCache(config=model.config)
    ids = torch.randint(3, 200, (B, context), device=device)
    model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1)
    x = E[torch.randint(3, 200, (B, 1), device=device)]
    pos = torch.full((B, 1), context, device=device)

    def forward():
        out = model(inputs_embeds=x, position_ids=pos, cache=cache, use_cache=True)
        cache.crop(-1)
        return out.logits[:, -1]

    logits = forward()
    hidden = torch.randn(B, d, device=device, dtype=E.dtype)
    head = model.get_output_embeddings()
    fns = {"model forward (decode step)": forward, "  of which LM head": lambda: head(hidden)}
    reps = {n: make() for n, make in {**REPRESENTERS, **RELATED}.items()}
    g = torch.Generator(device).manual_seed(0)
    for n, rep in reps.items():
        fns[f"{n}.step"] = lambda rep=rep: rep.step(logits, E, g)
    fns["soft.mixture only"] = lambda: reps["soft"].mixture(logits, E)

    def two_pass(rep=reps["soft"]):
        return rep.step(head(hidden), E, g)

    def one_pass(rep=reps["soft"]):
        lg, pre = rep.project(hidden, head, E)
        return rep.step(lg, E, g, pre=pre)

    fns["LM head + hard.step"] = lambda rep=reps["hard"]: rep.step(head(hidden), E, g)
    fns["LM head + soft.step (two passes over E)"] = two_pass
    fns["soft.project + soft.step (one pass over E)"] = one_pass
    fns["entropy (logged each CoT step)"] = lambda: reps["hard"].entropy(logits)
    res = interleaved(fns, max(args.reps, 3) * 2, max(args.warmup, 1), device, args.clock)
    fwd = res["model forward (decode step)"]["median"]
    head_t = res["  of which LM head"]["median"]
    layers = model.config.num_hidden_layers
    per_layer = max(fwd - head_t, 0.0) / layers
    full_depth = QWEN_0_5B["num_hidden_layers"]
    fwd_full = head_t + full_depth * per_layer
    rows = []
    for n, r in res.items():
        t = r["median"]
        row = {"part": n, "ms": t * 1e3}
        if n.endswith(".step") or n.startswith("soft.mixture"):
            row["share_of_step"] = t / (fwd + t)
            row[f"share_at_{full_depth}_layers_est"] = t / (fwd_full + t)
        rows.append(row)
    rows.append({"part": f"est. forward at {full_depth} layers", "ms": fwd_full * 1e3})
    return rows
