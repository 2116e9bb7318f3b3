"""Gradient magnitude and signal-to-noise of the CoT term vs the answer term of the RL loss, per representer.

One batch of rollouts of the embedded model (B prompts x G samples) per representer; the RLOO loss is
split into its CoT part (representer log-probs) and its answer part (categorical log-probs), and the
gradient norm of each w.r.t. the policy parameters is printed, with the per-step log-prob scale.
With `--snr K`, K independent batches on the same B prompts give K gradient estimates g_k = s + n_k of each
term; the mean of g_i . g_j over pairs estimates |s|^2, the mean |g_k|^2 minus it estimates E|n|^2, and
their ratio is the signal-to-noise of one batch (docs/continuous_rl_study.md, "Gradient signal-to-noise").

    python scripts/grad_diagnostics.py --representers hard,soft,fuzzy --B 8 --G 8
    python scripts/grad_diagnostics.py --representers hard,soft,fuzzy --B 16 --G 8 --snr 8
    python scripts/grad_diagnostics.py --representers hard,soft --snr 16 --prompt-seeds 0,1 \
        --answer-temperature 1.0 --noise-top-k 4 --noise-min-entropy 0.3 --gammas 0.5
    python scripts/grad_diagnostics.py --representers soft --snr 16 --noise-on top_k_logits \
        --noise-logits-top-k 5 --gammas 1.0        # the paper's top-5 logit noise (gamma in logit units)
    python scripts/grad_diagnostics.py --representers soft --snr 16 --noise-scale nearest_token \
        --gammas 0.5                              # isotropic noise of norm 0.5 x the nearest-token distance

With `--snr`, each SNR comes with a 90% bootstrap interval over the K batches (pairs of the same batch
left out of each resample), each prompt set (`--prompt-seeds`) gets its own rows, and the CoT's forks are
counted: the share of CoT steps whose next-token entropy (temperature 1) is at least 0.1 / 0.3 / 1 nat,
the distinct CoTs per group (shadow-token text) and the share of groups with any reward variance.
`--control-variate` adds, on the same batches, the CoT term with the score-weighted leave-one-out baseline
(soft_tokens/estimators/control_variate.py) in place of RLOO's (terms `cot_cv`, `total_cv`).

`--representers` names conf/representer/ files (hard, soft, fuzzy, gumbel, soft_grpo, ...), each built as
`train.py representer=<name>` builds it (scripts/representer_configs.py); an unknown or training-free name is
refused. Bad arguments end in the usage message (scripts/script_inputs.py).
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from soft_tokens.data.arith import generate_split
from soft_tokens.data.prompts import PromptBuilder
from soft_tokens.estimators import RLOO
from soft_tokens.estimators.control_variate import noisy_steps, weighted_loo_advantages
from soft_tokens.models.loading import is_local_path
from soft_tokens.representers import SoftRepresenter, TokenRepresenter
from soft_tokens.rewards.math_reward import MathReward
from soft_tokens.rollout import RolloutConfig, RolloutEngine
from soft_tokens.rollout.logprobs import hidden_states, rollout_log_probs

try:
    from scripts import representer_configs as rc
    from scripts.script_inputs import InputError, comma_list, count, number, usage_errors
except ModuleNotFoundError:  # run as `python scripts/grad_diagnostics.py`: scripts/ itself is on the path
    import representer_configs as rc
    from script_inputs import InputError, comma_list, count, number, usage_errors

SAMPLING_TEMPERATURE = (
    0.7  # the embedded default's hard-token sampling temperature (conf/model/embedded.yaml)
)


def build(name: str, gamma: float, args: argparse.Namespace) -> TokenRepresenter:
    """Representer `name` as train.py builds it (conf/representer/<name>.yaml) with this script's knobs: hard
    at the answer temperature, fuzzy at --fuzzy-temperature, and gamma and the noise placement where the
    representer takes them (soft, fuzzy)."""
    knobs = {
        "gamma": gamma,
        "noise_top_k": args.noise_top_k,
        "noise_min_entropy": args.noise_min_entropy,
        "noise_on": args.noise_on,
        "noise_logits_top_k": args.noise_logits_top_k if args.noise_on == "top_k_logits" else None,
        "noise_scale": args.noise_scale,
    }
    if name == "hard":
        knobs["temperature"] = args.answer_temperature
    if name == "fuzzy":
        knobs["tau"] = args.fuzzy_temperature
    return rc.build_representer(name, **knobs)


def noise_knobs(name: str, args: argparse.Namespace) -> dict:
    """The noise flags as representer `name` uses them (None, 0 and "embedding" where it has no such noise)."""
    noise = rc.takes(name, "noise_top_k")
    placed = rc.takes(name, "noise_on")
    return {
        "noise_top_k": args.noise_top_k if noise else None,
        "noise_min_entropy": args.noise_min_entropy if noise else 0.0,
        "noise_on": args.noise_on if placed else "embedding",
        "noise_logits_top_k": args.noise_logits_top_k if placed and args.noise_on == "top_k_logits" else None,
        "noise_scale": args.noise_scale if rc.takes(name, "noise_scale") else "rms",
    }


def settings(args: argparse.Namespace) -> list[tuple[str, float]]:
    """(representer, gamma) pairs to run, in order: a representer without gamma (hard, gumbel) runs once."""
    return list(
        dict.fromkeys((n, g if rc.takes(n, "gamma") else 0.0) for n in args.representers for g in args.gammas)
    )


def check_representers(args: argparse.Namespace, need_log_prob: bool = True) -> None:
    """Build every setting once, before the model loads: an unknown name, a bad knob or (with
    `need_log_prob`) a training-free representer is an InputError naming it."""
    for name, gamma in settings(args):
        rep = build(name, gamma, args)
        if need_log_prob and not rep.trainable:
            trainable = [n for n in rc.representer_names() if build(n, 0.0, args).trainable]
            raise InputError(
                f"--representers {name}: a training-free inference setting, without the CoT log-probability "
                f"this script differentiates; choose from {', '.join(trainable)}"
            )


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


def gram_snr(gram: torch.Tensor, idx: torch.Tensor | None = None) -> float:
    """|s|^2 / E|n|^2 from the Gram matrix of K estimates (or of the resample `idx`: pairs of the same
    original batch left out of the signal, which needs independent pairs)."""
    idx = torch.arange(gram.shape[0]) if idx is None else idx
    sub = gram[idx][:, idx]
    off = idx[:, None] != idx[None, :]
    if not bool(off.any()):  # a resample of one batch only
        return float("nan")
    signal2 = float(sub[off].mean())  # E[g_i . g_j] = |s|^2 for independent estimates
    noise2 = float(sub.diagonal().mean()) - signal2  # E|g|^2 - |s|^2 = E|n|^2
    return signal2 / noise2 if noise2 > 0 else float("inf")


def bootstrap_interval(gram: torch.Tensor, draws: int = 1000, level: float = 0.9) -> tuple[float, float]:
    """Percentile bootstrap interval of `gram_snr` over resamples of the K batches."""
    K = gram.shape[0]
    gen = torch.Generator().manual_seed(0)
    vals = torch.tensor([gram_snr(gram, torch.randint(K, (K,), generator=gen)) for _ in range(draws)])
    vals = vals[torch.isfinite(vals)]
    if len(vals) == 0:  # no signal or no noise in any resample (e.g. no reward variance at all)
        return float("nan"), float("nan")
    lo, hi = torch.quantile(vals.double(), torch.tensor([(1 - level) / 2, (1 + level) / 2]).double())
    return float(lo), float(hi)


def snr_stats(estimates: torch.Tensor, rollouts_per_estimate: int) -> dict[str, float]:
    """Signal and noise of K independent gradient estimates [K, P] of one expected gradient."""
    K = estimates.shape[0]
    gram = estimates.double() @ estimates.double().T
    off = ~torch.eye(K, dtype=torch.bool)
    signal2 = float(gram[off].mean())
    noise2 = float(gram.diagonal().mean()) - signal2
    norms = gram.diagonal().sqrt()
    cos = gram / (norms[:, None] * norms[None, :]).clamp(min=1e-30)
    lo, hi = bootstrap_interval(gram)
    # Rollouts for an estimate whose cosine with s is 0.5: |s|^2 / (|s|^2 + E|n|^2 / n) = 1/4.
    need = 3 * noise2 / signal2 * rollouts_per_estimate if signal2 > 0 else float("inf")
    return {
        "grad_norm": float(norms.mean()),
        "snr": gram_snr(gram),
        "snr_90ci": [lo, hi],
        "pair_cosine": float(cos[off].mean()),
        "rollouts_for_cosine_0.5": need,
    }


def fork_stats(model, ro, rewards: torch.Tensor, G: int) -> dict[str, float]:
    """Forks of one batch: the share of CoT steps at entropy >= 0.1 / 0.3 / 1 nat (next token, temperature
    1), distinct CoTs (shadow text) per group, share of groups with reward variance."""
    with torch.no_grad():
        logits = model.get_output_embeddings()(hidden_states(model, ro))
    logp = torch.log_softmax(logits.float(), -1)
    ent = -(logp.exp() * logp).sum(-1)[ro.cot_mask]
    groups = [ro.cot_texts[i : i + G] for i in range(0, len(ro.cot_texts), G)]
    return {
        **{f"steps_entropy_ge_{t}": float((ent >= t).float().mean()) for t in (0.1, 0.3, 1.0)},
        "distinct_cots_per_group": sum(len(set(g)) for g in groups) / len(groups),
        "groups_with_reward_variance": float((rewards.view(-1, G).std(-1) > 0).float().mean()),
    }


def snr_rows(model, engine, rep, prompts, golds, args, tag: dict) -> list[dict]:
    """K independent RLOO gradient estimates on the same prompts -> SNR of each term and parameter group."""
    params = [q for q in model.parameters() if q.requires_grad]
    E = model.get_input_embeddings().weight
    is_e = torch.cat([torch.full((q.numel(),), q is E) for q in params])
    reward, est = MathReward(), RLOO()
    terms: dict[str, list[torch.Tensor]] = {"cot": [], "answer": [], "cot_cv": []}
    rewards_seen, forks = [], []
    for k in range(args.snr):
        model.eval()
        gen = torch.Generator().manual_seed(args.seed * 1_000 + k)
        ro = engine.generate(model, prompts, rep, generator=gen)
        rewards, _ = reward.score_batch(ro.completions, golds)
        rewards_seen.append(float(rewards.mean()))
        forks.append(fork_stats(model, ro, rewards, args.G))
        adv = est.advantages(rewards.view(args.B, args.G)).view(-1)
        model.train()
        lp = rollout_log_probs(model, ro, rep)
        terms["cot"].append(flat_grads(est.loss(lp.logp, adv, ro.cot_mask)[0], params))
        terms["answer"].append(flat_grads(est.loss(lp.logp, adv, ro.answer_mask)[0], params))
        if args.control_variate and isinstance(rep, SoftRepresenter):  # the baseline of the Gaussian score
            w = noisy_steps(ro.cot_mask, ro.aux).view(args.B, args.G)
            adv_cv = weighted_loo_advantages(rewards.view(args.B, args.G), w).view(-1)
            terms["cot_cv"].append(flat_grads(est.loss(lp.logp, adv_cv, ro.cot_mask)[0], params))
    terms["total"] = [c + a for c, a in zip(terms["cot"], terms["answer"])]
    if terms["cot_cv"]:
        terms["total_cv"] = [c + a for c, a in zip(terms["cot_cv"], terms["answer"])]
    else:
        del terms["cot_cv"]
    fork_means = {key: sum(f[key] for f in forks) / len(forks) for key in forks[0]}
    rows = []
    for term, gs in terms.items():
        g = torch.stack(gs)
        for group, cols in (("all", slice(None)), ("E", is_e), ("body", ~is_e)):
            row = {"representer": rep.name, **tag, "term": term, "params": group}
            row["reward_mean"] = sum(rewards_seen) / len(gs)
            row.update(snr_stats(g[:, cols], args.B * args.G))
            row.update(fork_means)
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def one_batch_row(model, engine, rep, prompts, golds, args, tag: dict) -> dict:
    """Gradient norms and per-step log-prob scale of the CoT and answer terms on one batch."""
    params = [q for q in model.parameters() if q.requires_grad]
    reward, est = MathReward(), RLOO()
    model.eval()
    ro = engine.generate(model, prompts, rep, generator=torch.Generator().manual_seed(args.seed))
    rewards, _ = reward.score_batch(ro.completions, golds)
    adv = est.advantages(rewards.view(args.B, args.G)).view(-1)
    model.train()
    lp = rollout_log_probs(model, ro, rep)
    cot, ans = est.loss(lp.logp, adv, ro.cot_mask)[0], est.loss(lp.logp, adv, ro.answer_mask)[0]
    row = {
        "representer": rep.name,
        **tag,
        "reward_mean": float(rewards.mean()),
        "cot_logp_per_step": float(lp.logp[ro.cot_mask].detach().mean()),
        "answer_logp_per_step": float(lp.logp[ro.answer_mask].detach().mean()),
        "grad_norm_cot": grad_norm(cot, params),
        "grad_norm_answer": grad_norm(ans, params),
        **fork_stats(model, ro, rewards, args.G),
    }
    print(json.dumps(row), flush=True)
    return row


def parser() -> argparse.ArgumentParser:
    """The options of this script (answer_resampling.py takes them all but --snr)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="assets/embedded")
    p.add_argument(
        "--representers",
        type=comma_list(str),
        default="hard,soft,fuzzy",
        help=f"comma list of conf/representer names: {', '.join(rc.representer_names())}",
    )
    p.add_argument("--B", type=count(1), default=8)
    p.add_argument("--G", type=count(2), default=8)
    p.add_argument("--max-cot", type=count(0), default=64)
    p.add_argument("--seed", type=count(0), default=0, help="the rollouts' noise")
    p.add_argument(
        "--prompt-seeds",
        type=comma_list(count(0)),
        default=None,
        help="comma list of prompt sets (default: --seed)",
    )
    p.add_argument(
        "--gammas",
        type=comma_list(number(0.0)),
        default="0.33",
        help="comma list of noise scales for soft/fuzzy",
    )
    p.add_argument(
        "--snr", type=count(0), default=0, help="K >= 2: signal-to-noise from K independent batches"
    )
    p.add_argument("--fuzzy-temperature", type=number(0.0, low_closed=False), default=1e-4)
    p.add_argument("--answer-temperature", type=number(0.0, low_closed=False), default=SAMPLING_TEMPERATURE)
    p.add_argument("--noise-top-k", type=count(2), default=None, help="soft/fuzzy noise in the top-k span")
    p.add_argument("--noise-min-entropy", type=number(0.0), default=0.0, help="noise only at forks (nats)")
    p.add_argument(
        "--noise-on",
        choices=["embedding", "hidden", "logits", "top_k_logits"],
        default="embedding",
        help="where soft/fuzzy noise goes (representer.noise_on; docs/method.md, 'Noise placements')",
    )
    p.add_argument("--noise-logits-top-k", type=count(2), default=5, help="k of --noise-on top_k_logits")
    p.add_argument(
        "--noise-scale",
        choices=["rms", "centred_rms", "nearest_token"],
        default="rms",
        help="the unit of gamma for isotropic embedding noise (representer.noise_scale; docs/method.md, 'Noise scale')",
    )
    p.add_argument(
        "--control-variate",
        action="store_true",
        help="also the CoT term with the score-weighted baseline (soft_tokens/estimators/control_variate.py)",
    )
    return p


def parse(argv: list[str] | None, need_log_prob: bool = True) -> argparse.Namespace:
    """The options, checked (a bad value or representer name is a usage error, before the model loads)."""
    p = parser()
    args = p.parse_args(argv)
    if args.snr == 1:
        p.error("argument --snr: K = 1 has no pairs of batches; use K >= 2 (or 0: one batch)")
    args.prompt_seeds = args.prompt_seeds or [args.seed]
    with usage_errors(p):
        check_representers(args, need_log_prob)
    return args


def load(args: argparse.Namespace) -> tuple[PreTrainedModel, RolloutEngine]:
    """The model of `--model` (one torch thread) and its rollout engine; InputError if it cannot be loaded."""
    torch.set_num_threads(1)
    if is_local_path(args.model) and not os.path.exists(os.path.expanduser(args.model)):
        raise InputError(f"--model {args.model}: no such folder")
    try:
        tok = AutoTokenizer.from_pretrained(args.model)
        model = AutoModelForCausalLM.from_pretrained(args.model).eval()
    except OSError as err:
        raise InputError(f"--model {args.model}: cannot load it ({str(err).splitlines()[0]})") from None
    cfg = RolloutConfig(max_cot_tokens=args.max_cot, answer_temperature=args.answer_temperature)
    return model, RolloutEngine(tok, cfg)


def prompt_batch(B: int, G: int, prompt_seed: int) -> tuple[list[str], list[str]]:
    """B train problems of the embedded task, each repeated G times, and their gold answers."""
    prompt = PromptBuilder("compact")
    examples = [e for e in generate_split("train", B, prompt_seed) for _ in range(G)]
    return [prompt(e.question) for e in examples], [e.answer for e in examples]


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse(argv)
    with usage_errors(parser()):
        model, engine = load(args)
    out = []
    for prompt_seed in args.prompt_seeds:
        prompts, golds = prompt_batch(args.B, args.G, prompt_seed)
        for name, gamma in settings(args):
            rep = build(name, gamma, args)
            tag = {"gamma": gamma, "prompt_seed": prompt_seed, **noise_knobs(name, args)}
            tag.update(answer_temperature=args.answer_temperature)
            if args.snr >= 2:
                out += snr_rows(model, engine, rep, prompts, golds, args, tag)
            else:
                out.append(one_batch_row(model, engine, rep, prompts, golds, args, tag))
    return out


if __name__ == "__main__":
    main()
