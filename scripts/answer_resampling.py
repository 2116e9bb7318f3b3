"""How much of the within-group reward variance the CoT explains versus the answer's sampling, per representer.

One batch of rollouts of the embedded model (B prompts x G samples) per representer; each row's context
(prompt, CoT as it was fed, forced prefix) is kept fixed and M fresh answers are sampled after it at the
answer temperature, stopped as the rollout engine stops them, and scored with the training reward. With
r[g, m] the reward of answer m after CoT g of one prompt, the law of total variance splits the group's
reward variance into

    answer part  E_c[Var(R|c)]  = mean over g of the unbiased variance over m
    CoT part     Var_c(E[R|c])  = variance over g of the means over m, less (answer part) / M
    total        Var(R)         = answer part + CoT part (each term unbiased, so is the sum)

and the answer's share, pooled over prompts, is sum(answer parts) / sum(totals), with a 90% bootstrap
interval over prompts. The CoT part's estimate can be negative (so the answer share can exceed 1) where the
CoTs barely differ.

    python scripts/answer_resampling.py --representers hard,soft,fuzzy --B 16 --G 8 --M 8 \
        --answer-temperature 1.0 --sampling-temperature 1.0 --out resample.json
    python scripts/answer_resampling.py --representers soft --gammas 0.25 --noise-top-k 2 \
        --noise-min-entropy 0.3 --answer-temperature 1.0

Every option of scripts/grad_diagnostics.py but --snr applies (the model, the batch, --gammas, the noise
placement, --prompt-seeds); `--sampling-temperature` is the hard CoT's temperature (default: the answer's).
`--representers` takes every name of conf/representer/, the training-free ones (soft_thinking,
mixture_of_inputs) included, each built as train.py builds it.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from torch import Tensor
from tqdm import tqdm
from transformers import DynamicCache, PreTrainedModel

from soft_tokens.eval.markdown import markdown_table
from soft_tokens.representers import TokenRepresenter
from soft_tokens.representers.sampling import categorical_log_prob, choose_token
from soft_tokens.rewards.math_reward import MathReward
from soft_tokens.rollout import Rollout, RolloutEngine
from soft_tokens.rollout.decode_state import DONE, DecodeState
from soft_tokens.rollout.logprobs import input_embeds

try:
    from scripts import grad_diagnostics as gd
    from scripts.script_inputs import count, number, output_file, usage_errors
except ModuleNotFoundError:  # run as `python scripts/answer_resampling.py`: scripts/ itself is on the path
    import grad_diagnostics as gd
    from script_inputs import count, number, output_file, usage_errors

# ----- the law of total variance -----


def variance_parts(r: Tensor) -> tuple[float, float, float]:
    """(total, answer part, CoT part) of one group's rewards r [G, M] (G CoTs x M answers each)."""
    r = r.double()
    answer = r.var(1).mean()  # E_c[Var(R|c)], unbiased over the M answers
    cot = r.mean(1).var() - answer / r.shape[1]  # Var_c(E[R|c]): the means' variance carries Var(R|c) / M
    return float(answer + cot), float(answer), float(cot)


def pooled_share(part: Tensor, total: Tensor) -> float:
    """sum(part) / sum(total) over prompts (nan when no group has any reward variance)."""
    denom = float(total.sum())
    return float(part.sum()) / denom if denom > 0 else float("nan")


def share_interval(part: Tensor, total: Tensor, draws: int = 1000, level: float = 0.9) -> tuple[float, float]:
    """Percentile bootstrap interval of `pooled_share` over resamples of the prompts."""
    gen = torch.Generator().manual_seed(0)
    idx = torch.randint(len(part), (draws, len(part)), generator=gen)
    vals = part.double()[idx].sum(1) / total.double()[idx].sum(1)
    vals = vals[torch.isfinite(vals)]  # resamples of groups without any variance
    if len(vals) == 0:
        return float("nan"), float("nan")
    lo, hi = torch.quantile(vals, torch.tensor([(1 - level) / 2, (1 + level) / 2]).double())
    return float(lo), float(hi)


def decomposition(r: Tensor) -> dict[str, object]:
    """The variance split of rewards r [B, G, M], pooled over the B prompts."""
    total, answer, cot = torch.tensor([variance_parts(g) for g in r], dtype=torch.float64).unbind(1)
    return {
        "answer_share": pooled_share(answer, total),
        "answer_share_90ci": list(share_interval(answer, total)),
        "cot_share": pooled_share(cot, total),
        "var_total": float(total.mean()),
        "var_answer": float(answer.mean()),
        "var_cot": float(cot.mean()),
        "groups_with_resampled_variance": float((r.flatten(1).std(1) > 0).double().mean()),
        "resampled_reward_mean": float(r.double().mean()),
    }


# ----- a row's context and answers sampled after it -----


def answer_start(ro: Rollout, i: int) -> int:
    """Column of `ro.ids` holding row i's first answer token."""
    return ro.prompt_len + int(ro.answer_mask[i].nonzero()[0])


def row_context(model: PreTrainedModel, ro: Rollout, i: int, emb: Tensor | None = None):
    """Inputs [1, a, d], attention mask [1, a] and position ids [1, a] of row i up to its first answer
    token: prompt and forced prefix embedded, the CoT as it was fed (`input_embeds`, the replay's own)."""
    a = answer_start(ro, i)
    emb = input_embeds(model, ro) if emb is None else emb
    return emb[i : i + 1, :a], ro.attention_mask[i : i + 1, :a], ro.position_ids[i : i + 1, :a]


def forward(model: PreTrainedModel, emb: Tensor, attn: Tensor, pos: Tensor, cache=None) -> Tensor:
    """Final hidden states [n, k, d] of inputs [n, k, d] (appended to `cache` when one is given)."""
    out = model.get_decoder()(
        inputs_embeds=emb, attention_mask=attn, position_ids=pos, cache=cache, use_cache=cache is not None
    )
    return out.last_hidden_state


@torch.no_grad()
def answer_log_probs(
    model: PreTrainedModel, ctx: tuple[Tensor, Tensor, Tensor], answer: Tensor, temperature: float
) -> Tensor:
    """Teacher-forced log-probs [k] of the answer ids [k] after the context, at `temperature`."""
    emb, attn, pos = ctx
    k = len(answer)
    emb = torch.cat([emb, model.get_input_embeddings()(answer[None, :-1])], 1)
    attn = torch.cat([attn, attn.new_ones(1, k - 1)], 1)
    pos = torch.cat([pos, pos[:, -1:] + torch.arange(1, k)], 1)
    logits = model.get_output_embeddings()(forward(model, emb, attn, pos)[0, -k:])
    return categorical_log_prob(logits, answer, temperature)


@torch.no_grad()
def sample_answers(
    model: PreTrainedModel,
    engine: RolloutEngine,
    ctx: tuple[Tensor, Tensor, Tensor],
    M: int,
    generator: torch.Generator | None = None,
    greedy: bool = False,
) -> tuple[Tensor, Tensor]:
    """M answers after one context at the engine's answer temperature (argmax when greedy), ended as the
    engine ends them: ids [M, answer_max_tokens] and lengths [M]."""
    cfg, tok = engine.cfg, engine.tokenizer
    embed, head = model.get_input_embeddings(), model.get_output_embeddings()
    tables = engine.tables(embed.weight.shape[0], model.device)
    # The engine's own answer counters and stopping rule (closing brace of the box, EOS, length limit).
    st = DecodeState.start(M, 0, tok.pad_token_id, None, embed.weight.dtype, model.device, no_cot=False)
    emb, attn, pos = (x.expand(M, *x.shape[1:]) for x in ctx)
    cache = DynamicCache(config=model.get_decoder().config)
    hidden = forward(model, emb, attn, pos, cache)[:, -1]
    ids = torch.full((M, cfg.answer_max_tokens), tok.pad_token_id, dtype=torch.long)
    for t in range(cfg.answer_max_tokens):
        live = (st.phase != DONE).nonzero().squeeze(-1)
        ids[live, t], _ = choose_token(head(hidden[live]), cfg.answer_temperature, greedy, generator)
        st.advance_answer(live, ids[live, t], tables, tok.eos_token_id, cfg.answer_max_tokens)
        if bool((st.phase == DONE).all()):
            break
        attn = torch.cat([attn, (st.phase != DONE).long()[:, None]], 1)
        hidden = forward(model, embed(ids[:, t : t + 1]), attn, pos[:, -1:] + t + 1, cache)[:, -1]
    return ids, st.ans_len


def completions(engine: RolloutEngine, ro: Rollout, i: int, ids: Tensor, lengths: Tensor) -> list[str]:
    """The forced prefix + answer text of each answer [M, L] after row i's context, as the engine writes it."""
    P, a = ro.prompt_len, answer_start(ro, i)
    M, L = ids.shape
    gen = torch.cat([ro.ids[i, P:a].expand(M, -1), ids], 1)
    cot = torch.cat([ro.cot_mask[i, : a - P].expand(M, -1), torch.zeros(M, L, dtype=torch.bool)], 1)
    answered = (torch.arange(L) < lengths[:, None]).long()
    return engine.text.texts(gen, cot, torch.cat([ro.attention_mask[i, P:a].expand(M, -1), answered], 1))[1]


def resample(
    model: PreTrainedModel, engine: RolloutEngine, ro: Rollout, M: int, generator: torch.Generator
) -> tuple[list[list[str]], float]:
    """M completions after each row's fixed context, and the largest |teacher-forced - rollout| log-prob of
    the original answers' tokens under the same context (a check that the context is the engine's)."""
    emb, T = input_embeds(model, ro), engine.cfg.answer_temperature
    out, err = [], 0.0
    for i in tqdm(range(len(ro.ids)), desc="answers", leave=False):
        ctx, a = row_context(model, ro, i, emb), answer_start(ro, i)
        original = ro.ids[i, a : a + int(ro.answer_lengths[i])]
        lp = answer_log_probs(model, ctx, original, T)
        err = max(err, float((lp - ro.logp[i][ro.answer_mask[i]]).abs().max()))
        out.append(completions(engine, ro, i, *sample_answers(model, engine, ctx, M, generator)))
    return out, err


# ----- the run -----


def representer(name: str, gamma: float, args: argparse.Namespace) -> TokenRepresenter:
    """As grad_diagnostics builds it, hard at the CoT sampling temperature (default: the answer's)."""
    if name == "hard" and args.sampling_temperature is not None:
        args = argparse.Namespace(**{**vars(args), "answer_temperature": args.sampling_temperature})
    return gd.build(name, gamma, args)


def setting_row(model, engine, rep, prompts, golds, args, tag: dict) -> dict:
    """Roll out B x G, resample M answers per row, score everything, split the variance."""
    start, reward = time.perf_counter(), MathReward()
    ro = engine.generate(model, prompts, rep, generator=torch.Generator().manual_seed(args.seed))
    rewards, _ = reward.score_batch(ro.completions, golds)
    texts, err = resample(model, engine, ro, args.M, torch.Generator().manual_seed(10**6 + args.seed))
    r, _ = reward.score_batch([c for row in texts for c in row], [g for g in golds for _ in range(args.M)])
    row = {"representer": rep.name, **tag, "B": args.B, "G": args.G, "M": args.M, "seed": args.seed}
    row.update(decomposition(r.view(args.B, args.G, args.M)))
    row.update(reward_mean=float(rewards.mean()), **gd.fork_stats(model, ro, rewards, args.G))
    row.update(answer_logp_max_error=err, seconds=time.perf_counter() - start)
    return row


HEADER = ["representer", "gamma", "top-k", "min H", "answer share [90% CI]", "CoT share", "Var(R)"]
HEADER += ["groups with variance", "reward (rollouts / resampled)", "distinct CoTs"]


def table_row(row: dict) -> list[str]:
    """One markdown table row of a setting."""
    lo, hi = row["answer_share_90ci"]
    return [
        row["representer"],
        f"{row['gamma']:g}",
        str(row["noise_top_k"] or "-"),
        f"{row['noise_min_entropy']:g}",
        f"{row['answer_share']:.2f} [{lo:.2f}, {hi:.2f}]",
        f"{row['cot_share']:.2f}",
        f"{row['var_total']:.0f}",
        f"{row['groups_with_reward_variance']:.2f}",
        f"{row['reward_mean']:.1f} / {row['resampled_reward_mean']:.1f}",
        f"{row['distinct_cots_per_group']:.1f}",
    ]


def parser() -> argparse.ArgumentParser:
    """This script's own options; the rest are grad_diagnostics' (all but --snr)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--M", type=count(2), default=8, help="answers re-sampled per CoT (>= 2: unbiased variances)"
    )
    p.add_argument(
        "--sampling-temperature",
        type=number(0.0, low_closed=False),
        default=None,
        help="hard CoT temperature",
    )
    p.add_argument("--out", type=output_file, default=None, help="write the rows to this JSON file")
    return p


def parse(argv: list[str] | None) -> argparse.Namespace:
    """This script's options and grad_diagnostics' (all but --snr), checked before the model loads."""
    own, rest = parser().parse_known_args(argv)
    args = gd.parse(rest, need_log_prob=False)  # answers are resampled; no CoT log-probability is needed
    if args.snr:
        parser().error("--snr is grad_diagnostics' own option")
    return argparse.Namespace(**vars(args), **vars(own))


def setting_tag(
    name: str, rep: TokenRepresenter, gamma: float, prompt_seed: int, args: argparse.Namespace
) -> dict:
    """The knobs of one setting (representer `name` built as `rep`), for its row."""
    return {
        "gamma": gamma,
        "tau": getattr(rep, "tau", getattr(rep, "temperature", None)),  # hard: the CoT's sampling temperature
        **gd.noise_knobs(name, args),
        "answer_temperature": args.answer_temperature,
        "prompt_seed": prompt_seed,
    }


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse(argv)
    with usage_errors(parser()):
        model, engine = gd.load(args)
    out = []
    print(markdown_table(HEADER, []), flush=True)
    for prompt_seed in args.prompt_seeds:
        prompts, golds = gd.prompt_batch(args.B, args.G, prompt_seed)
        for name, gamma in gd.settings(args):
            rep = representer(name, gamma, args)
            tag = setting_tag(name, rep, gamma, prompt_seed, args)
            out.append(setting_row(model, engine, rep, prompts, golds, args, tag))
            print(markdown_table(HEADER, [table_row(out[-1])]).splitlines()[-1], flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
