"""Tolerances derived from the numerics, for comparing two float32 computations of the same quantity.

u is float32's unit roundoff. Each bound says which quantity it propagates (a logit difference, amplified
by 1/tau or 1/sigma^2) and adds a few roundings of values of the size involved.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from transformers import PreTrainedModel

from soft_tokens.representers import SoftRepresenter, TokenRepresenter
from soft_tokens.rollout import Rollout
from soft_tokens.rollout.logprobs import hidden_states

U = torch.finfo(torch.float32).eps / 2


def logit_bound(model: PreTrainedModel, hidden: Tensor, logits: Tensor) -> float:
    """How far two float32 forwards of the same inputs (KV-cached decode vs full forward, other batch
    shapes or kernels) may put the logits apart.

    Both compute the same sums in other orders. A float32 sum of n terms moves by at most n u (sum of
    |terms|) when reordered (Higham's gamma_n), n the longest reduction (the MLP's intermediate width or
    the sequence); each layer and the head add that relative error to a normalised hidden state, which the
    head maps with rows of norm at most |W_j|; the logits themselves are rounded (u |z| on either side).
    """
    cfg = model.config
    gamma = max(cfg.intermediate_size, hidden.shape[-2] + 1) * U
    head = model.lm_head.weight.detach()
    sums = gamma * (cfg.num_hidden_layers + 1) * hidden.norm(dim=-1).max() * head.norm(dim=-1).max()
    return float(2 * sums + 2 * U * logits.abs().max())


def teacher_forced_logits(model: PreTrainedModel, rollout: Rollout) -> tuple[Tensor, float]:
    """Logits [N, S, V] of one full forward over the rollout, and `logit_bound` for them."""
    with torch.no_grad():
        hidden = hidden_states(model, rollout)
        logits = model.get_output_embeddings()(hidden)
    return logits, logit_bound(model, hidden, logits)


def categorical_tolerance(logits: Tensor, logp: Tensor, dz: Tensor | float, temperature: float) -> Tensor:
    """|d log softmax(z / T)_k| <= 2 max|dz| / T (z_k / T and the log-sum-exp move by max|dz| / T at most),
    plus a few roundings of values of the size of |z| / T and |log p| on either side."""
    size = logits.abs().amax(-1) / temperature + logp.abs() + math.log(logits.shape[-1])
    return 2 * dz / temperature + 8 * U * size


def mixture_tolerance(
    temperature: float, logits: Tensor, dz_range: Tensor | float, embedding: Tensor
) -> Tensor:
    """A bound on |h' - h| for h = softmax(z / tau) @ E when the logits move by dz.

    Every ratio p'_j / p_j lies in [exp(-r), exp(r)] with r = range(dz) / tau, so
    |p' - p|_1 <= 2 (e^r - 1)(1 - p_max), and as sum(dp) = 0, |dh| <= |dp|_1 max_j |E_j - h|. The 1/tau
    amplification vanishes where the softmax is saturated (1 - p_max = 0) and is large at a near tie.
    Rounding: z / tau in float32 (a logit error of u |z| on each side) and the mixture's V-term sums
    (V u max_j |E_j| on each side).
    """
    z, E = logits.double(), embedding.detach().double()
    p = torch.softmax(z / temperature, -1)
    h = p @ E
    r = (torch.as_tensor(dz_range).double() + 4 * U * z.abs().amax(-1)) / temperature
    spread = (E[None] - h.reshape(-1, E.shape[-1])[:, None]).norm(dim=-1).amax(-1).reshape(h.shape[:-1])
    rounding = 2 * logits.shape[-1] * U * E.norm(dim=-1).max()
    return 2 * torch.expm1(r) * (1 - p.amax(-1)) * spread + rounding


def soft_tolerance(
    rep: SoftRepresenter, logits: Tensor, fed: Tensor, logp: Tensor, dz_range: Tensor, embedding: Tensor
) -> Tensor:
    """How far a soft/fuzzy step's log-density of `fed` may move when its logits move by dz.

    log pi = -|fed - h|^2 / (2 sigma^2) + c moves by at most (|fed - h| |dh| + |dh|^2 / 2) / sigma^2 when
    the mixture moves by dh (`mixture_tolerance`, plus u |fed| for fed's own rounding to float32), plus
    the d-term sums' rounding of values the size of the log-density's two parts.
    """
    sigma = rep.sigma(embedding).double()
    h = torch.softmax(logits.double() / rep.tau, -1) @ embedding.detach().double()
    dh = mixture_tolerance(rep.tau, logits, dz_range, embedding) + U * fed.double().norm(dim=-1)
    dist = (fed.double() - h).norm(dim=-1)
    rounding = 4 * (embedding.shape[-1] + 4) * U * (dist**2 / sigma**2 + logp.double().abs())
    return ((dist * dh + dh**2 / 2) / sigma**2 + rounding).float()


def gumbel_tolerance(q: Tensor, perturbed: Tensor, dz: Tensor | float) -> Tensor:
    """log Gumbel(z; q, 1) = -x - exp(-x), x = z - q, summed over the top-k: q (log-softmax over those k
    logits) moves by 2 max|dz| at most, which moves each term by 2|dz| + exp(-x)(e^(2|dz|) - 1), plus a few
    roundings of values of the size of |x| and exp(-x)."""
    x = perturbed.double() - q.double()
    dq = 2 * torch.as_tensor(dz).double()
    if dq.dim() == x.dim() - 1:
        dq = dq[..., None]
    terms = dq + torch.exp(-x) * torch.expm1(dq) + 8 * U * (x.abs() + torch.exp(-x) + q.double().abs())
    return terms.sum(-1).float()


def record_decode_logits(rep: TokenRepresenter, monkeypatch) -> list[Tensor]:
    """The logits each CoT step of a rollout hands to `rep.step`, in call order (one call per step)."""
    calls = []
    step = rep.step

    def spy(logits, *args, **kwargs):
        calls.append(logits.detach().clone())
        return step(logits, *args, **kwargs)

    monkeypatch.setattr(rep, "step", spy)
    return calls


def decode_logit_differences(
    logits: Tensor, bound: float, rollout: Rollout, calls: list[Tensor]
) -> tuple[Tensor, Tensor]:
    """Per CoT step [N, S]: max |dz| and range(dz) between the teacher-forced and the decode-time logits,
    after checking that they agree within `bound` (the comparison that is well conditioned); the answer
    steps get `bound` itself. Needs a rollout without row compaction: step t's rows are cot_mask[:, t]."""
    dz_max = torch.full(rollout.gen_mask.shape, bound)
    dz_range = torch.zeros(rollout.gen_mask.shape)
    assert len(calls) == int(rollout.cot_mask.any(0).sum())
    for t, decoded in enumerate(calls):
        rows = rollout.cot_mask[:, t].nonzero()[:, 0]
        diff = logits[rows, t] - decoded
        assert diff.abs().max() <= bound, (
            f"CoT step {t}: logits differ by {diff.abs().max():.3g} > {bound:.3g}"
        )
        dz_max[rows, t] = diff.abs().amax(-1)
        dz_range[rows, t] = diff.amax(-1) - diff.amin(-1)
    return dz_max, dz_range
