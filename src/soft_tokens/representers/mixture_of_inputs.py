"""Mixture of Inputs (arXiv 2505.14827; docs/method.md, "Related methods"): training-free.

A token y is sampled (argmax when greedy) as usual, and the next input blends its embedding with the
distribution's mixture: the posterior mean of a Dirichlet prior alpha = H p (p = softmax(logits / T), H its
entropy normalised by log V) updated by the observation y with pseudo-count beta + 1 - H,
    w = (H p + (beta + 1 - H) onehot(y)) / (beta + 1),    input = w @ E
      = H / (beta + 1) * (p @ E) + (beta + 1 - H) / (beta + 1) * E[y].
beta = inf feeds E[y] exactly (ordinary decoding); beta = 0 with a uniform p feeds the pure mixture.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from soft_tokens.representers.base import Rng, Step, TrainingFreeRepresenter
from soft_tokens.representers.sampling import choose_token, entropy_of


class MixtureOfInputsRepresenter(TrainingFreeRepresenter):
    """Feeds the entropy-weighted blend of E[y] (y sampled, or argmax when greedy) and softmax(z / T) @ E."""

    def __init__(
        self, temperature: float = 1.0, beta: float = 1.0, greedy: bool = False, name: str | None = None
    ) -> None:
        super().__init__(greedy=greedy, name=name or "mixture_of_inputs")
        # The ranges of temperature and beta are checked on the config (config_types.RANGES).
        self.temperature = float(temperature)
        self.beta = float(beta)

    def step(self, logits: Tensor, embedding: Tensor, generator: Rng = None) -> Step:
        """The blend of the chosen token's embedding and the distribution's mixture."""
        ids, logp = choose_token(logits, self.temperature, self.greedy, generator)
        token = embedding[ids]
        if math.isinf(self.beta):
            return Step(embeds=token, ids=ids, logp=logp)
        probs = torch.softmax(logits.float() / self.temperature, dim=-1)
        h = (entropy_of(probs) / math.log(probs.shape[-1])).clamp(0.0, 1.0).unsqueeze(-1)
        mix = (probs.to(embedding.dtype) @ embedding).float()
        embeds = (h * mix + (self.beta + 1 - h) * token.float()) / (self.beta + 1)
        return Step(embeds=embeds.to(embedding.dtype), ids=ids, logp=logp)

    def knobs(self) -> str:
        """The temperature and beta."""
        return f", temperature={self.temperature}, beta={self.beta}"
