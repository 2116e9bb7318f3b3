"""Where a soft token's Gaussian noise is added (the paper's Appendix F.2): upstream of the mixture.

The default adds it to the mixture itself, the input embedding (soft.py). The two placements here perturb
what the mixture is made from, and the fed input is softmax(perturbed logits / tau) @ E:

- **logits**: z~ = z + gamma * eps over the whole vocabulary, or over the top-k logits only (the others at
  minus infinity); gamma in logit units;
- **hidden**: h~ = h + sigma * eps on the final hidden state, then z~ = head(h~); sigma = gamma * RMS(h) of
  the step's own hidden state, fixed at the rollout.

The random variable is the perturbed vector; its Gaussian density around the current model's logits (or
hidden state) is the step's log-probability, recomputed at the stored perturbed vector. docs/method.md,
"Noise placements", gives the densities, the scales and what the estimator leaves out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from soft_tokens.representers.base import Aux, Rng

PLACEMENTS = ("embedding", "hidden", "logits", "top_k_logits")


def gaussian_log_density(delta: Tensor, sigma: Tensor | float) -> Tensor:
    """[...] log N(delta; 0, sigma^2 I_m) over the last dimension (m entries); sigma a scalar or [...]."""
    m = delta.shape[-1]
    sigma = torch.as_tensor(sigma, dtype=torch.float32, device=delta.device)
    return -delta.pow(2).sum(-1) / (2 * sigma**2) - 0.5 * m * math.log(2 * math.pi) - m * torch.log(sigma)


def hidden_scale(hidden: Tensor, gamma: float) -> Tensor:
    """[N] sigma = gamma * RMS of each row's final hidden state, float32 and detached."""
    return gamma * hidden.detach().float().pow(2).mean(-1).sqrt()


@dataclass
class LogitAux(Aux):
    """What a step with noise on the logits stores for its replay."""

    perturbed_logits: Tensor  # [N, m] the perturbed logits (all V, or the top k)
    logit_ids: Tensor | None = None  # [N, k] their token ids when only the top k were perturbed


@dataclass
class HiddenAux(Aux):
    """What a step with noise on the final hidden state stores for its replay."""

    noised_hidden: Tensor  # [N, d] the perturbed hidden state, float32
    noise_sigma: Tensor  # [N] its noise scale, fixed at the rollout


@dataclass(frozen=True)
class LogitNoise:
    """Noise of standard deviation `gamma` (logit units) on all logits (`top_k` None) or on the top-k only."""

    gamma: float
    top_k: int | None = None

    def draw(self, logits: Tensor, generator: Rng) -> tuple[Tensor, Tensor | None, Tensor]:
        """(perturbed logits [N, m], their token ids [N, k] or None for all V, log-density [N])."""
        z = logits.detach().float()
        ids = None
        if self.top_k is not None:
            z, ids = z.topk(min(self.top_k, z.shape[-1]), dim=-1)
        eps = torch.randn(z.shape, generator=generator, device=z.device, dtype=torch.float32)
        perturbed = z + self.gamma * eps
        return perturbed, ids, gaussian_log_density(self.gamma * eps, self.gamma)

    def means(self, logits: Tensor, aux: LogitAux) -> Tensor:
        """The current logits at the coordinates the rollout perturbed: all, or its stored top-k ids."""
        z = logits.float()
        return z if self.top_k is None else z.gather(-1, aux.logit_ids)

    def log_density(self, logits: Tensor, aux: LogitAux) -> Tensor:
        """[...] log N(z~; z, gamma^2 I) of the stored perturbed logits around the current ones."""
        return gaussian_log_density(aux.perturbed_logits.float() - self.means(logits, aux), self.gamma)

    def kl(self, logits: Tensor, ref_logits: Tensor, aux: LogitAux) -> Tensor:
        """[...] KL of two such Gaussians around the policy's and the reference's logits: |dz|^2 / (2 gamma^2)."""
        diff = self.means(logits, aux) - self.means(ref_logits, aux).detach()
        return diff.pow(2).sum(-1) / (2 * self.gamma**2)


@dataclass(frozen=True)
class HiddenNoise:
    """Noise sigma * N(0, I_d) on the final hidden state, sigma = `gamma` * RMS of that hidden state."""

    gamma: float

    def draw(self, hidden: Tensor, generator: Rng) -> tuple[Tensor, Tensor, Tensor]:
        """(perturbed hidden states [N, d] float32, sigma [N], log-density [N])."""
        h = hidden.detach().float()
        sigma = hidden_scale(h, self.gamma)
        eps = torch.randn(h.shape, generator=generator, device=h.device, dtype=torch.float32)
        noise = sigma.unsqueeze(-1) * eps
        return h + noise, sigma, gaussian_log_density(noise, sigma)

    def log_density(self, hidden: Tensor, aux: HiddenAux) -> Tensor:
        """[...] log N(h~; h, sigma^2 I) of the stored perturbed hidden state around the current one."""
        return gaussian_log_density(aux.noised_hidden.float() - hidden.float(), stored_sigma(aux))

    def kl(self, hidden: Tensor, ref_hidden: Tensor, aux: HiddenAux) -> Tensor:
        """[...] KL of two such Gaussians (the rollout's sigma): |h - h_ref|^2 / (2 sigma^2)."""
        diff = hidden.float() - ref_hidden.float().detach()
        return diff.pow(2).sum(-1) / (2 * stored_sigma(aux) ** 2)


def stored_sigma(aux: HiddenAux) -> Tensor:
    """The rollout's sigma per step, 1 where it stored none (answer and prefix positions, sigma 0), so that the
    values the scorer discards there stay finite and pass no NaN into the gradient."""
    sigma = aux.noise_sigma.float()
    return torch.where(sigma > 0, sigma, torch.ones_like(sigma))
