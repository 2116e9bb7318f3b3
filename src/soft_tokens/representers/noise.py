"""Where a soft token's noise goes: the span of the top-k candidates, and only at forking steps.

The paper's noise is isotropic, sigma * N(0, I_d) around the mixture h. Its score spreads each rollout's
advantage over all d directions, while the next token changes along the few directions between candidate
embeddings. Here the noise is a Gaussian in the coefficients of the candidates' differences,

    fed = h + B a,   B = [E_j - E_c]_{j in top-k, j != c}  [d, k-1],   a ~ N(0, gamma^2 I_{k-1}),

c the shadow (argmax) token: gamma is how far, in units of the distance between two candidates, the input
moves toward each of them. Optionally only at forking steps, where the model's next-token entropy (at
temperature 1) is at least `min_entropy` nats; elsewhere the input is the mixture itself.
docs/method.md, "Noise where the choices are", gives the density and the bias of treating the noise-free
parts (the mixture's component outside span(B), and whole noise-free steps) as constants.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from soft_tokens.representers.base import Aux, Rng


def fork_mask(logits: Tensor, min_entropy: float) -> Tensor:
    """[...] bool: steps whose next-token entropy at temperature 1 is at least `min_entropy` (nats)."""
    if min_entropy <= 0:
        return torch.ones(logits.shape[:-1], dtype=torch.bool, device=logits.device)
    logp = torch.log_softmax(logits.detach().float(), dim=-1)
    return -(logp.exp() * logp).sum(-1) >= min_entropy


def candidate_ids(logits: Tensor, k: int) -> Tensor:
    """[..., k] the top-k token ids, the argmax first (ties as `topk` breaks them)."""
    return logits.detach().topk(k, dim=-1).indices


def candidate_basis(embedding: Tensor, ids: Tensor) -> Tensor:
    """B [..., d, k-1] = E[ids[..., j]] - E[ids[..., 0]] for j >= 1, float32, detached (the subspace is
    given by the rollout's candidates)."""
    rows = embedding.detach()[ids].float()  # [..., k, d]
    return (rows[..., 1:, :] - rows[..., :1, :]).transpose(-1, -2)


def _gram(basis: Tensor, noisy: Tensor) -> Tensor:
    """B^T B in float64, with the identity in rows without noise (whose B may be zero: padding)."""
    gram = basis.double().transpose(-1, -2) @ basis.double()
    eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
    return torch.where(noisy[..., None, None], gram, eye)


def span_coefficients(basis: Tensor, delta: Tensor, noisy: Tensor) -> Tensor:
    """a [..., k-1] with B a the projection of delta [..., d] on span(B): (B^T B)^-1 B^T delta (float32;
    zero in rows without noise)."""
    rhs = (basis.transpose(-1, -2) @ delta.float().unsqueeze(-1)).double()
    a = torch.linalg.solve(_gram(basis, noisy), rhs).squeeze(-1).float()
    return torch.where(noisy.unsqueeze(-1), a, torch.zeros_like(a))


def span_log_density(coeffs: Tensor, basis: Tensor, noisy: Tensor, gamma: float) -> Tensor:
    """[...] log-density of fed = h + B a in the affine subspace h + span(B) (Lebesgue measure on it),
    a ~ N(0, gamma^2 I): log N(a; 0, gamma^2 I) - 1/2 log det(B^T B); 0 at steps without noise."""
    m = coeffs.shape[-1]
    logdet = torch.logdet(_gram(basis, noisy)).float()  # constant in the policy's parameters (B detached)
    logp = -coeffs.pow(2).sum(-1) / (2 * gamma**2) - 0.5 * m * math.log(2 * math.pi * gamma**2) - 0.5 * logdet
    return torch.where(noisy, logp, torch.zeros_like(logp))


def span_noise(
    ids: Tensor, embedding: Tensor, noisy: Tensor, gamma: float, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """(B a [N, d], log-density [N]): a draw of the candidate-span noise for N rows, zero where not noisy."""
    basis = candidate_basis(embedding, ids)
    a = gamma * torch.randn(basis.shape[:-2] + basis.shape[-1:], generator=generator, device=basis.device)
    a = torch.where(noisy.unsqueeze(-1), a, torch.zeros_like(a))
    return (basis @ a.unsqueeze(-1)).squeeze(-1), span_log_density(a, basis, noisy, gamma)


def isotropic_log_density(delta: Tensor, sigma: Tensor, noisy: Tensor) -> Tensor:
    """[...] log N(delta; 0, sigma^2 I_d) where noisy, else 0 (a noise-free step has no density term)."""
    d = delta.shape[-1]
    logp = -delta.pow(2).sum(-1) / (2 * sigma**2) - 0.5 * d * math.log(2 * math.pi) - d * torch.log(sigma)
    return torch.where(noisy, logp, torch.zeros_like(logp))


@dataclass
class PlacedAux(Aux):
    """What a placed-noise step stores for its replay."""

    noisy: Tensor  # [N] bool: the step got noise (a forking step)
    noise_ids: Tensor | None = None  # [N, k] the top-k candidates whose span the noise lies in (span noise)


@dataclass(frozen=True)
class PlacedNoise:
    """Noise in the top-k candidates' span (`top_k`, scale `gamma` in candidate distances) or isotropic
    (`top_k` None, scale sigma = gamma RMS(E)), at forking steps only when `min_entropy` > 0."""

    top_k: int | None
    min_entropy: float
    gamma: float

    def draw(
        self, logits: Tensor, sigma: Tensor, embedding: Tensor, generator: Rng
    ) -> tuple[Tensor, Tensor, PlacedAux]:
        """(noise [N, d], its log-density [N], aux) for one decode step of N rows."""
        noisy = fork_mask(logits, self.min_entropy)
        if self.top_k is None:
            eps = torch.randn(noisy.shape + embedding.shape[-1:], generator=generator, device=logits.device)
            noise = torch.where(noisy.unsqueeze(-1), sigma * eps, torch.zeros_like(eps))
            return noise, isotropic_log_density(noise, sigma, noisy), PlacedAux(noisy)
        ids = candidate_ids(logits, min(self.top_k, logits.shape[-1]))
        noise, logp = span_noise(ids, embedding, noisy, self.gamma, generator)
        return noise, logp, PlacedAux(noisy, ids)

    def log_density(self, delta: Tensor, sigma: Tensor, embedding: Tensor, aux: PlacedAux) -> Tensor:
        """[...] log-density of fed - h = `delta` at the steps the rollout made noisy (0 elsewhere)."""
        noisy = aux.noisy.bool()
        if self.top_k is None:
            return isotropic_log_density(delta, sigma, noisy)
        basis = candidate_basis(embedding, aux.noise_ids)
        return span_log_density(span_coefficients(basis, delta, noisy), basis, noisy, self.gamma)

    def kl(self, diff: Tensor, sigma: Tensor, embedding: Tensor, aux: PlacedAux) -> Tensor:
        """[...] KL of two such Gaussians whose means differ by `diff` = h - h_ref, at noisy steps (0 elsewhere):
        |a(diff)|^2 / (2 gamma^2) in the candidates' coefficients, or |diff|^2 / (2 sigma^2)."""
        noisy = aux.noisy.bool()
        if self.top_k is None:
            kl = diff.pow(2).sum(-1) / (2 * sigma**2)
        else:
            basis = candidate_basis(embedding, aux.noise_ids)
            kl = span_coefficients(basis, diff, noisy).pow(2).sum(-1) / (2 * self.gamma**2)
        return torch.where(noisy, kl, torch.zeros_like(kl))
