"""Gumbel-softmax soft tokens (SofT-GRPO, arXiv 2511.06411; docs/method.md, "Related methods").

At each CoT step the k most likely tokens are kept with their log-probabilities renormalised over the k,
q = log softmax(logits)[top k] - logsumexp(...); Gumbel noise perturbs them, z = q + g with g ~ Gumbel(0, 1);
the input is the Gumbel-softmax mixture softmax(z / tau) @ E[top k]. The sampled token (the shadow id) is
the Gumbel-max one, argmax z, an exact draw from the renormalised top-k distribution.

Log-probability (the Gumbel reparameterisation): given the top-k set, each z_i is Gumbel(q_i, 1), so the
density of the perturbed logits is
    log pi(z) = sum_i log Gumbel(z_i; q_i, 1) = sum_i [-(z_i - q_i) - exp(-(z_i - q_i))],
differentiable in the logits through q. The rollout stores z and the top-k ids per step (`aux`), and the
fed mixture is a fixed function of z, so the ratio pi_new(z) / pi_old(z) is that of the fed input.
**Decision**: the density is over the top-k candidates of the rollout (SofT-GRPO restricts to top-k too),
which are kept fixed when the policy is re-evaluated.
"""

from __future__ import annotations

import torch
from torch import Tensor

from soft_tokens.representers.base import Replay, Rng, Step, TokenRepresenter, positive, renamed_tau
from soft_tokens.representers.sampling import weighted_rows


def gumbel_log_density(z: Tensor, loc: Tensor) -> Tensor:
    """log Gumbel(z; loc, 1) elementwise: -(z - loc) - exp(-(z - loc))."""
    x = z - loc
    return -x - torch.exp(-x)


def sample_gumbel(shape: torch.Size, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """Standard Gumbel(0, 1) noise, -log(-log u) with u ~ U(0, 1), float32."""
    u = torch.rand(shape, generator=generator, device=device, dtype=torch.float32)
    return -torch.log(-torch.log(u.clamp(min=torch.finfo(torch.float32).tiny)))


class GumbelSoftmaxRepresenter(TokenRepresenter):
    """Feeds softmax((q + g) / tau) @ E over the top-k tokens, g ~ Gumbel(0, 1); without noise when greedy."""

    continuous = True

    def __init__(
        self,
        tau: float = 0.1,
        top_k: int = 10,
        greedy: bool = False,
        name: str | None = None,
        temperature: float | None = None,
    ) -> None:
        super().__init__(greedy=greedy, name=name or "gumbel")
        self.tau = positive("tau", renamed_tau(tau, temperature, type(self).__name__))
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        self.top_k = int(top_k)

    def candidates(self, logits: Tensor, ids: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(q, ids): renormalised log-probabilities [..., k] of the top-k tokens (or of the given `ids`).

        log softmax restricted to k tokens only needs their logits: the full normaliser cancels."""
        if ids is None:
            z, ids = logits.float().topk(min(self.top_k, logits.shape[-1]), dim=-1)
        else:
            z = logits.float().gather(-1, ids)
        return z - torch.logsumexp(z, dim=-1, keepdim=True), ids

    def step(
        self, logits: Tensor, embedding: Tensor, generator: Rng = None, pre: Tensor | None = None
    ) -> Step:
        """The Gumbel-softmax mixture over the top k and the log-density of the perturbed logits."""
        q, top = self.candidates(logits)
        if self.greedy:
            z, logp = q, torch.zeros(q.shape[:-1], device=q.device)
        else:
            z = q + sample_gumbel(q.shape, generator, q.device)
            logp = gumbel_log_density(z, q).sum(-1)
        embeds = weighted_rows(torch.softmax(z / self.tau, dim=-1), top, embedding)
        ids = top.gather(-1, z.argmax(-1, keepdim=True)).squeeze(-1)
        return Step(embeds=embeds, ids=ids, logp=logp, aux={"topk_ids": top, "perturbed": z})

    def log_prob(self, replay: Replay) -> Tensor:
        """sum over the stored top-k of log Gumbel(z_i; q_i, 1), q from the current logits."""
        aux = replay.aux
        if aux is None or "perturbed" not in aux or "topk_ids" not in aux:
            raise ValueError(f"{self!r}.log_prob needs the rollout's aux tensors 'topk_ids' and 'perturbed'")
        q, _ = self.candidates(replay.logits, aux["topk_ids"])
        return gumbel_log_density(aux["perturbed"].float(), q).sum(-1)

    def knobs(self) -> str:
        """tau and k."""
        return f", tau={self.tau}, top_k={self.top_k}"
