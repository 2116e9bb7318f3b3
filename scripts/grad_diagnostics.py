"""Gradient magnitude of the CoT term vs the answer term of the RL loss, per representer.

One batch of rollouts of the embedded model (B prompts x G samples) per representer; the RLOO loss is
split into its CoT part (representer log-probs) and its answer part (categorical log-probs), and the
gradient norm of each w.r.t. the policy parameters is printed, with the per-step log-prob scale.

    python scripts/grad_diagnostics.py --representers hard,soft,fuzzy --B 8 --G 8
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


def build(name: str, gamma: float):
    """hard, soft (tau 0.5) or fuzzy (tau 1e-4) at noise scale gamma."""
    if name == "hard":
        return HardRepresenter()
    return SoftRepresenter(temperature=0.5 if name == "soft" else 1e-4, gamma=gamma, name=name)


def grad_norm(loss: torch.Tensor, params: list[torch.nn.Parameter]) -> float:
    """L2 norm of d loss / d params."""
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return float(torch.sqrt(sum((g.float() ** 2).sum() for g in grads if g is not None)))


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="assets/embedded")
    p.add_argument("--representers", default="hard,soft,fuzzy")
    p.add_argument("--B", type=int, default=8)
    p.add_argument("--G", type=int, default=8)
    p.add_argument("--max-cot", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gammas", default="0.33", help="comma list of noise scales for soft/fuzzy")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model)
    params = [q for q in model.parameters() if q.requires_grad]
    examples = generate_split("train", args.B, args.seed)
    prompt = PromptBuilder("compact")
    prompts = [prompt(e.question) for e in examples for _ in range(args.G)]
    golds = [e.answer for e in examples for _ in range(args.G)]
    engine = RolloutEngine(tok, RolloutConfig(max_cot_tokens=args.max_cot))
    reward, est = MathReward(), RLOO()
    out = []
    runs = [(n, float(g)) for n in args.representers.split(",") for g in args.gammas.split(",")]
    for name, gamma in dict.fromkeys((n, 0.0 if n == "hard" else g) for n, g in runs):
        rep = build(name, gamma)
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
