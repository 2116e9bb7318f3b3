"""RLOO: REINFORCE with a leave-one-out baseline (docs/method.md, "Estimators")."""

from __future__ import annotations

import torch
from torch import Tensor

from soft_tokens.estimators.base import Estimator, LossType


def rloo_advantages(rewards: Tensor) -> Tensor:
    """A_i = r_i - mean_{j != i} r_j over the G samples of each prompt; rewards [B, G] -> [B, G]."""
    G = rewards.shape[-1]
    if G < 2:
        raise ValueError(f"RLOO needs at least 2 samples per prompt, got G = {G}")
    rewards = rewards.float()
    others = (rewards.sum(-1, keepdim=True) - rewards) / (G - 1)
    return rewards - others


class RLOO(Estimator):
    """The paper's estimator: leave-one-out advantages, loss -1/(B G) sum_i A_i logp_i (summed log-probs)."""

    needs_group = True

    def __init__(self, loss_type: LossType = "sequence_sum", **kwargs) -> None:
        super().__init__(loss_type=loss_type, **kwargs)

    @torch.no_grad()
    def advantages(self, rewards: Tensor) -> Tensor:
        return rloo_advantages(rewards)
