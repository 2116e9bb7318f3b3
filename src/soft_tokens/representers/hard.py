"""Hard tokens: the CoT is ordinary sampled (or argmax) tokens."""

from __future__ import annotations

import torch
from torch import Tensor

from soft_tokens.representers.base import Step, TokenRepresenter
from soft_tokens.representers.sampling import categorical_log_prob, choose_token


class HardRepresenter(TokenRepresenter):
    """Feeds E[y] with y ~ softmax(logits / temperature), or y = argmax(logits) when greedy."""

    continuous = False

    def step(self, logits: Tensor, embedding: Tensor, generator: torch.Generator | None = None) -> Step:
        ids, logp = choose_token(logits, self.temperature, self.greedy, generator)
        return Step(embeds=embedding[ids], ids=ids, logp=logp)

    def log_prob(
        self,
        logits: Tensor,
        fed: Tensor | None,
        ids: Tensor,
        embedding: Tensor,
        aux: dict[str, Tensor] | None = None,
    ) -> Tensor:
        return categorical_log_prob(logits, ids, self.temperature)
