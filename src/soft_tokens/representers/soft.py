"""Soft and fuzzy tokens (Soft Tokens, Hard Truths, arXiv 2509.19170, section "Token representations").

The CoT input is the probability-weighted mixture of embeddings h = softmax(logits / tau) @ E plus
Gaussian noise sigma * N(0, I_d), with sigma = gamma * RMS(E). Fuzzy tokens are the same class at
tau = 1e-4, where the mixture is essentially the argmax embedding.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from soft_tokens.representers.base import Step, TokenRepresenter


def embedding_rms(embedding: Tensor) -> Tensor:
    """RMS over all entries of the embedding matrix, sqrt(mean(E**2)), in float32 and detached."""
    return embedding.detach().float().pow(2).mean().sqrt()


class SoftRepresenter(TokenRepresenter):
    """Feeds h~ = softmax(logits / tau) @ E + sigma * eps over the full vocabulary; no noise when greedy.

    The returned id is the argmax "shadow" token, used for stop detection and for logging the CoT as text.
    """

    continuous = True

    def __init__(
        self, temperature: float = 0.5, gamma: float = 0.33, greedy: bool = False, name: str | None = None
    ) -> None:
        super().__init__(temperature=temperature, greedy=greedy, name=name)
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        self.gamma = float(gamma)
        self._sigma_key: tuple | None = None
        self._sigma = torch.tensor(0.0)

    def sigma(self, embedding: Tensor) -> Tensor:
        """Noise scale gamma * RMS(E); recomputed only when E changes (new storage or in-place update)."""
        key = (embedding.data_ptr(), embedding._version, embedding.shape, embedding.device)
        if key != self._sigma_key:
            self._sigma = self.gamma * embedding_rms(embedding)
            self._sigma_key = key
        return self._sigma

    def prepare(self, embedding: Tensor) -> None:
        """Recompute sigma at every rollout, even if an optimizer changed E without bumping its version."""
        self._sigma_key = None
        self.sigma(embedding)

    def mixture(self, logits: Tensor, embedding: Tensor) -> Tensor:
        """h = softmax(logits / tau) @ E: one matmul in E's dtype, softmax in float32."""
        probs = torch.softmax(logits.float() / self.temperature, dim=-1)
        return probs.to(embedding.dtype) @ embedding

    def step(self, logits: Tensor, embedding: Tensor, generator: torch.Generator | None = None) -> Step:
        h = self.mixture(logits, embedding)
        ids = logits.argmax(-1)
        d = h.shape[-1]
        if self.greedy or self.gamma == 0:
            return Step(embeds=h, ids=ids, logp=torch.zeros(h.shape[:-1], device=h.device))
        sigma = self.sigma(embedding)
        eps = torch.randn(h.shape, generator=generator, device=h.device, dtype=torch.float32)
        fed = (h.float() + sigma * eps).to(h.dtype)
        # log N(fed; h, sigma^2 I) evaluated from the noise itself: -|eps|^2 / 2 - d/2 log(2 pi sigma^2).
        logp = -0.5 * eps.pow(2).sum(-1) - 0.5 * d * math.log(2 * math.pi) - d * torch.log(sigma)
        return Step(embeds=fed, ids=ids, logp=logp)

    def log_prob(self, logits: Tensor, fed: Tensor | None, ids: Tensor, embedding: Tensor) -> Tensor:
        """Gaussian log-density of the fed input around the current mixture (PAPER.md, "Log-probability").

        log pi(h~ | past) = -|h~ - h|^2 / (2 sigma^2) - d/2 log(2 pi sigma^2). sigma is detached, so the
        constant carries no gradient and cancels in every ratio against another policy with the same sigma;
        it is kept so the value is a true log-density. Differentiable in the logits and in E through h.
        """
        if fed is None:
            raise ValueError(f"{self!r}.log_prob needs the fed embeddings")
        sigma = self.sigma(embedding)
        if sigma == 0:
            raise ValueError(f"{self!r} has sigma = 0 (gamma = 0): the fed input has no density")
        h = self.mixture(logits, embedding).float()
        d = h.shape[-1]
        sq = (fed.float() - h).pow(2).sum(-1)
        return -sq / (2 * sigma**2) - 0.5 * d * math.log(2 * math.pi) - d * torch.log(sigma)

    def kl(
        self,
        logits: Tensor,
        ref_logits: Tensor,
        fed: Tensor | None,
        ids: Tensor,
        embedding: Tensor,
        ref_embedding: Tensor,
    ) -> Tensor:
        """Exact KL between the two Gaussian input policies of one CoT step.

        Both policies put N(mean, sigma^2 I_d) around their own mixture: h = softmax(z / tau) @ E for the
        policy, h_ref = softmax(z_ref / tau) @ E_ref for the reference, with the same sigma. For two
        Gaussians with equal covariance sigma^2 I,
            KL(N(h, s^2 I) || N(h_ref, s^2 I)) = 1/2 [tr(I) - d + (h_ref - h)^T (s^2 I)^-1 (h_ref - h)
                                                     + log det(s^2 I) / det(s^2 I)]
                                               = |h - h_ref|^2 / (2 sigma^2),
        so the term needs no sample: it is the closed form in the two means (zero iff they coincide).
        The fed input is not used. sigma is the policy's (detached).
        """
        sigma = self.sigma(embedding)
        h = self.mixture(logits, embedding).float()
        h_ref = self.mixture(ref_logits, ref_embedding).float().detach()
        return (h - h_ref).pow(2).sum(-1) / (2 * sigma**2)
