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

SofT-GRPO's published recipe adds four options, each off by default
(docs/method.md, "SofT-GRPO as published"): `top_p` (the candidates whose preceding probability mass is under
top_p, renormalised over those), `gumbel_clamp` (the noise clamped to [low, high], its density evaluated at the clamped value, as the
published code does), `log_density: mean` (the mean over the scored candidates instead of the sum) and
`min_logprob` (only candidates whose renormalised log-probability at the rollout is above it are scored).
The candidates kept and scored are decided at the rollout and stored, so the replay scores the same ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from soft_tokens.representers.base import Aux, Replay, Rng, Step, TokenRepresenter
from soft_tokens.representers.deprecated import renamed_tau
from soft_tokens.representers.sampling import weighted_rows


def gumbel_log_density(z: Tensor, loc: Tensor) -> Tensor:
    """log Gumbel(z; loc, 1) elementwise: -(z - loc) - exp(-(z - loc))."""
    x = z - loc
    return -x - torch.exp(-x)


REDUCTIONS = ("sum", "mean")


def top_p_keep(logits: Tensor, ids: Tensor, top_p: float) -> Tensor:
    """[..., k] bool: candidates `ids` (by decreasing logit) whose preceding probability mass, under the full
    softmax(logits), is under `top_p`; the first (most likely) is always kept (as `filtered_top_k`)."""
    p = torch.exp(logits.float().gather(-1, ids) - torch.logsumexp(logits.float(), dim=-1, keepdim=True))
    keep = (p.cumsum(-1) - p) < top_p
    keep[..., 0] = True
    return keep


def sample_gumbel(shape: torch.Size, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """Standard Gumbel(0, 1) noise, -log(-log u) with u ~ U(0, 1), float32."""
    u = torch.rand(shape, generator=generator, device=device, dtype=torch.float32)
    return -torch.log(-torch.log(u.clamp(min=torch.finfo(torch.float32).tiny)))


@dataclass
class GumbelAux(Aux):
    """What a Gumbel-softmax step stores for its replay."""

    topk_ids: Tensor  # [N, k] the candidates, by decreasing logit
    perturbed: Tensor  # [N, k] their perturbed logits q + g (0 at the dropped ones)
    kept: Tensor | None = None  # [N, k] bool: in the mixture (top-p)
    scored: Tensor | None = None  # [N, k] bool: in the density (min_logprob)


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
        top_p: float = 1.0,
        gumbel_clamp: list[float] | None = None,
        log_density: str = "sum",
        min_logprob: float | None = None,
    ) -> None:
        super().__init__(greedy=greedy, name=name or "gumbel")
        # The ranges of tau, top_k, top_p and min_logprob are checked on the config (config_types.RANGES).
        self.tau = float(renamed_tau(tau, temperature, type(self).__name__))
        if gumbel_clamp is not None and (len(gumbel_clamp) != 2 or not gumbel_clamp[0] < gumbel_clamp[1]):
            raise ValueError(
                f"gumbel_clamp must be [low, high] with low < high (or null), got {gumbel_clamp}"
            )
        if log_density not in REDUCTIONS:
            raise ValueError(f"log_density must be one of {', '.join(REDUCTIONS)}, got {log_density!r}")
        self.top_k = int(top_k)
        self.top_p = float(top_p)
        self.clamp = None if gumbel_clamp is None else (float(gumbel_clamp[0]), float(gumbel_clamp[1]))
        self.log_density = log_density
        self.min_logprob = None if min_logprob is None else float(min_logprob)

    def candidates(
        self, logits: Tensor, ids: Tensor | None = None, kept: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """(q, ids): renormalised log-probabilities [..., k] of the top-k tokens (or of the given `ids`),
        renormalised over the `kept` ones only when given (-inf at the others).

        log softmax restricted to k tokens only needs their logits: the full normaliser cancels."""
        if ids is None:
            z, ids = logits.float().topk(min(self.top_k, logits.shape[-1]), dim=-1)
        else:
            z = logits.float().gather(-1, ids)
        if kept is not None:
            z = z.masked_fill(~kept, -torch.inf)
        return z - torch.logsumexp(z, dim=-1, keepdim=True), ids

    def filtered(self) -> bool:
        """Whether candidates are dropped (top-p) or left out of the density (min_logprob)."""
        return self.top_p < 1.0 or self.min_logprob is not None

    def reduce(self, q: Tensor, perturbed: Tensor, scored: Tensor | None) -> Tensor:
        """The log-density of the perturbed logits: log Gumbel(z_i; q_i, 1) summed (or averaged) over the
        `scored` candidates (all when None)."""
        if scored is None:
            terms = gumbel_log_density(perturbed, q)
        else:  # the offset is 0 off the scored candidates, where q may be -inf
            x = torch.where(scored, perturbed - q, torch.zeros_like(q))
            terms = torch.where(scored, -x - torch.exp(-x), torch.zeros_like(q))
        if self.log_density == "sum":
            return terms.sum(-1)
        count = terms.shape[-1] if scored is None else scored.sum(-1).clamp(min=1)
        return terms.sum(-1) / count

    def step(self, logits: Tensor, embedding: Tensor, generator: Rng = None) -> Step:
        """The Gumbel-softmax mixture over the top k and the log-density of the perturbed logits."""
        if self.filtered():
            return self._filtered_step(logits, embedding, generator)
        q, top = self.candidates(logits)
        if self.greedy:
            z, logp = q, torch.zeros(q.shape[:-1], device=q.device)
        else:
            z = q + self.noise(q.shape, generator, q.device)
            logp = self.reduce(q, z, None)
        embeds = weighted_rows(torch.softmax(z / self.tau, dim=-1), top, embedding)
        ids = top.gather(-1, z.argmax(-1, keepdim=True)).squeeze(-1)
        return Step(embeds=embeds, ids=ids, logp=logp, aux=GumbelAux(topk_ids=top, perturbed=z))

    def noise(self, shape: torch.Size, generator: Rng, device: torch.device) -> Tensor:
        """Gumbel(0, 1) noise, clamped to `gumbel_clamp` when set."""
        g = sample_gumbel(shape, generator, device)
        return g if self.clamp is None else g.clamp(*self.clamp)

    def _filtered_step(self, logits: Tensor, embedding: Tensor, generator: Rng) -> Step:
        """The step with top-p and/or min_logprob: the dropped candidates are out of the mixture (their
        perturbed logit is stored as 0), the unscored ones out of the density; both masks go to `aux`."""
        _, top = self.candidates(logits)
        kept = top_p_keep(logits, top, self.top_p)
        q, _ = self.candidates(logits, top, kept)
        scored = kept if self.min_logprob is None else kept & (q > self.min_logprob)
        if self.greedy:
            z, logp = q, torch.zeros(q.shape[:-1], device=q.device)
        else:
            z = q + self.noise(q.shape, generator, q.device)
            logp = self.reduce(q, z, scored)
        embeds = weighted_rows(torch.softmax(z / self.tau, dim=-1), top, embedding)
        ids = top.gather(-1, z.argmax(-1, keepdim=True)).squeeze(-1)
        stored = torch.where(kept, z, torch.zeros_like(z))
        aux = GumbelAux(topk_ids=top, perturbed=stored, kept=kept, scored=scored)
        return Step(embeds=embeds, ids=ids, logp=logp, aux=aux)

    def log_prob(self, replay: Replay) -> Tensor:
        """sum (or mean) over the stored top-k (the scored ones) of log Gumbel(z_i; q_i, 1), q from the current
        logits renormalised over the stored kept candidates."""
        aux = GumbelAux.from_replay(replay, self, ("kept", "scored") if self.filtered() else ())
        if not self.filtered():
            q, _ = self.candidates(replay.logits, aux.topk_ids)
            return self.reduce(q, aux.perturbed.float(), None)
        q, _ = self.candidates(replay.logits, aux.topk_ids, aux.kept.bool())
        return self.reduce(q, aux.perturbed.float(), aux.scored.bool())

    def knobs(self) -> str:
        """tau, k and the published recipe's options that are on."""
        out = f", tau={self.tau}, top_k={self.top_k}"
        out += "" if self.top_p == 1.0 else f", top_p={self.top_p}"
        out += "" if self.clamp is None else f", gumbel_clamp={list(self.clamp)}"
        out += "" if self.log_density == "sum" else f", log_density={self.log_density}"
        return out + ("" if self.min_logprob is None else f", min_logprob={self.min_logprob}")
