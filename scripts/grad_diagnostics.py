"""Gradient magnitude and signal-to-noise of the CoT term vs the answer term of the RL loss, per representer.

One batch of rollouts of the embedded model (B prompts x G samples) per representer; the RLOO loss is
split into its CoT part (representer log-probs) and its answer part (categorical log-probs), and the
gradient norm of each w.r.t. the policy parameters is printed, with the per-step log-prob scale.
With `--snr K`, K independent batches on the same B prompts give K gradient estimates g_k = s + n_k of each
term; the mean of g_i . g_j over pairs estimates |s|^2, the mean |g_k|^2 minus it estimates E|n|^2, and
their ratio is the signal-to-noise of one batch (docs/continuous_rl_study.md, "Gradient signal-to-noise").

    python scripts/grad_diagnostics.py --representers hard,soft,fuzzy --B 8 --G 8
    python scripts/grad_diagnostics.py --representers hard,soft,fuzzy --B 16 --G 8 --snr 8
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from soft_tokens.data.arith import generate_split
from soft_tokens.data.prompts import PromptBuilder
from soft_tokens.estimators import RLOO
from soft_tokens.logprobs import rollout_log_probs
from soft_tokens.representers import HardRepresenter, SoftRepresenter
from soft_tokens.rewards import MathReward
from soft_tokens.rollout import RolloutConfig, RolloutEngine

SAMPLING_TEMPERATURE = (
    0.7  # the embedded default's hard-token sampling temperature (conf/model/embedded.yaml)
)


def build(name: str, gamma: float, fuzzy_temperature: float = 1e-4):
    """hard (at temperature 0.7, the embedded default), soft (tau 0.5) or fuzzy at noise scale gamma."""
    if name == "hard":
        return HardRepresenter(temperature=SAMPLING_TEMPERATURE)
    tau = 0.5 if name == "soft" else fuzzy_temperature
    return SoftRepresenter(temperature=tau, gamma=gamma, name=name)


def grad_norm(loss: torch.Tensor, params: list[torch.nn.Parameter]) -> float:
    """L2 norm of d loss / d params."""
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return float(torch.sqrt(sum((g.float() ** 2).sum() for g in grads if g is not None)))


def flat_grads(loss: torch.Tensor, params: list[torch.nn.Parameter]) -> torch.Tensor:
    """d loss / d params as one float32 vector (zeros for parameters the loss does not reach)."""
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return torch.cat(
        [(torch.zeros_like(q) if g is None else g).float().reshape(-1) for g, q in zip(grads, params)]
    )


def snr_stats(estimates: torch.Tensor, rollouts_per_estimate: int) -> dict[str, float]:
    """Signal and noise of K independent gradient estimates [K, P] of one expected gradient."""
    K = estimates.shape[0]
    gram = estimates.double() @ estimates.double().T
    off = ~torch.eye(K, dtype=torch.bool)
    signal2 = float(gram[off].mean())  # E[g_i . g_j] = |s|^2 for independent estimates
    noise2 = float(gram.diagonal().mean()) - signal2  # E|g|^2 - |s|^2 = E|n|^2
    norms = gram.diagonal().sqrt()
    cos = gram / (norms[:, None] * norms[None, :]).clamp(min=1e-30)
    snr = signal2 / noise2 if noise2 > 0 else float("inf")
    # Rollouts for an estimate whose cosine with s is 0.5: |s|^2 / (|s|^2 + E|n|^2 / n) = 1/4.
    need = 3 * noise2 / signal2 * rollouts_per_estimate if signal2 > 0 else float("inf")
    return {
        "grad_norm": float(norms.mean()),
        "snr": snr,
        "pair_cosine": float(cos[off].mean()),
        "rollouts_for_cosine_0.5": need,
    }


def snr_rows(model, engine, rep, prompts, golds, args) -> list[dict]:
    """K independent RLOO gradient estimates on the same prompts -> SNR of each term and parameter group."""
    params = [q for q in model.parameters() if q.requires_grad]
    E = model.get_input_embeddings().weight
    is_e = torch.cat([torch.full((q.numel(),), q is E) for q in params])
    reward, est = MathReward(), RLOO()
    terms: dict[str, list[torch.Tensor]] = {"cot": [], "answer": []}
    rewards_seen = []
    for k in range(args.snr):
        model.eval()
        gen = torch.Generator().manual_seed(args.seed * 1_000 + k)
        ro = engine.generate(model, prompts, rep, generator=gen)
        rewards, _ = reward.score_batch(ro.completions, golds)
        rewards_seen.append(float(rewards.mean()))
        adv = est.advantages(rewards.view(args.B, args.G)).view(-1)
        model.train()
        lp = rollout_log_probs(model, ro, rep)
        terms["cot"].append(flat_grads(est.loss(lp.logp, adv, ro.cot_mask)[0], params))
        terms["answer"].append(flat_grads(est.loss(lp.logp, adv, ro.answer_mask)[0], params))
    terms["total"] = [c + a for c, a in zip(terms["cot"], terms["answer"])]
    rows = []
    for term, gs in terms.items():
        g = torch.stack(gs)
        for group, cols in (("all", slice(None)), ("E", is_e), ("body", ~is_e)):
            row = {
                "representer": rep.name,
                "term": term,
                "params": group,
                "reward_mean": sum(rewards_seen) / len(gs),
            }
            row.update(snr_stats(g[:, cols], args.B * args.G))
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="assets/embedded")
    p.add_argument("--representers", default="hard,soft,fuzzy")
    p.add_argument("--B", type=int, default=8)
    p.add_argument("--G", type=int, default=8)
    p.add_argument("--max-cot", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gammas", default="0.33", help="comma list of noise scales for soft/fuzzy")
    p.add_argument("--snr", type=int, default=0, help="K >= 2: signal-to-noise from K independent batches")
    p.add_argument("--fuzzy-temperature", type=float, default=1e-4)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model)
    params = [q for q in model.parameters() if q.requires_grad]
    examples = generate_split("train", args.B, args.seed)
    prompt = PromptBuilder("compact")
    prompts = [prompt(e.question) for e in examples for _ in range(args.G)]
    golds = [e.answer for e in examples for _ in range(args.G)]
    engine = RolloutEngine(
        tok, RolloutConfig(max_cot_tokens=args.max_cot, answer_temperature=SAMPLING_TEMPERATURE)
    )
    reward, est = MathReward(), RLOO()
    out = []
    runs = [(n, float(g)) for n in args.representers.split(",") for g in args.gammas.split(",")]
    for name, gamma in dict.fromkeys((n, 0.0 if n == "hard" else g) for n, g in runs):
        rep = build(name, gamma, args.fuzzy_temperature)
        if args.snr >= 2:
            out += snr_rows(model, engine, rep, prompts, golds, args)
            continue
        model.eval()
        ro = engine.generate(model, prompts, rep, generator=torch.Generator().manual_seed(args.seed))
        rewards, _ = reward.score_batch(ro.completions, golds)
        adv = est.advantages(rewards.view(args.B, args.G)).view(-1)
        model.train()
        lp = rollout_log_probs(model, ro, rep)
        cot, ans = est.loss(lp.logp, adv, ro.cot_mask)[0], est.loss(lp.logp, adv, ro.answer_mask)[0]
        row = {
            "representer": name,
            "gamma": gamma,
            "reward_mean": float(rewards.mean()),
            "cot_logp_per_step": float(lp.logp[ro.cot_mask].mean()),
            "answer_logp_per_step": float(lp.logp[ro.answer_mask].mean()),
            "grad_norm_cot": grad_norm(cot, params),
            "grad_norm_answer": grad_norm(ans, params),
        }
        print(json.dumps(row), flush=True)
        out.append(row)
    return out


if __name__ == "__main__":
    main()
