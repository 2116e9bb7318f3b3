"""Sampling and density helpers shared by the representers, the rollout and the teacher-forced pass."""

from __future__ import annotations

import torch
from torch import Tensor


def categorical_log_prob(logits: Tensor, ids: Tensor, temperature: float = 1.0) -> Tensor:
    """log softmax(logits / temperature)[ids], computed in float32."""
    logits = logits.float() / temperature
    return logits.gather(-1, ids.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def sample_categorical(probs: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One index per row of `probs` [..., V] (non-negative weights), drawn by inversion of the CDF.

    Draws from exactly the distribution torch.multinomial(probs, 1) draws from (an entry of weight zero is
    never drawn), from one uniform per row: torch.multinomial draws V exponential variates per row on CPU
    (its exponential-race path), some 30x slower at a 150k vocabulary. The CDF is summed in float64.
    """
    cdf = probs.double().cumsum(-1)
    total = cdf[..., -1:]
    if not bool(((total > 0) & torch.isfinite(total)).all()):
        raise ValueError("probability tensor contains inf, nan or rows that sum to zero")
    u = torch.rand(total.shape, generator=generator, dtype=cdf.dtype, device=cdf.device)
    ids = torch.searchsorted(cdf, u * total, right=True).squeeze(-1)
    return ids.clamp_(max=probs.shape[-1] - 1)


def sample_tempered(
    logits: Tensor, temperature: float = 1.0, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """y ~ softmax(logits / temperature) and its log-probability, equal to categorical_log_prob(logits, y)."""
    z = logits.float() / temperature
    ids = sample_categorical(torch.softmax(z, dim=-1), generator)
    return ids, z.gather(-1, ids.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(z, dim=-1)


def weighted_rows(weights: Tensor, ids: Tensor, embedding: Tensor) -> Tensor:
    """sum_j weights[..., j] * E[ids[..., j]] [..., d]: a mixture over a few rows of E, summed in float32."""
    rows = embedding[ids].float()  # [..., k, d]
    return (weights.float().unsqueeze(-1) * rows).sum(-2).to(embedding.dtype)


def choose_token(
    logits: Tensor, temperature: float, greedy: bool, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """(ids, log-probs at `temperature`): the argmax when greedy, else a draw from softmax(logits / T)."""
    if greedy:
        ids = logits.argmax(-1)
        return ids, categorical_log_prob(logits, ids, temperature)
    return sample_tempered(logits, temperature, generator)


def entropy_of(probs: Tensor) -> Tensor:
    """Entropy [...] of distributions [..., k] (zero-probability entries contribute 0)."""
    return -(probs * torch.log(probs.clamp(min=torch.finfo(probs.dtype).tiny))).sum(-1)


def k3_kl(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Schulman's k3 estimator of KL(pi || ref) at a sample from pi: exp(r) - r - 1 with r = ref - pi."""
    r = ref_logp - logp
    return torch.exp(r) - r - 1
