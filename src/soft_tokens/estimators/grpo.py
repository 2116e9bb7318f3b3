"""GRPO: group-normalised advantages with PPO clipping (DeepSeekMath; knobs and defaults as in TRL)."""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import Tensor

from soft_tokens.estimators.base import Estimator, LossType

ScaleRewards = Literal["group", "batch", "none"]  # read by the config check (soft_tokens.config_types)
SCALE_REWARDS: tuple[str, ...] = get_args(ScaleRewards)


def grpo_advantages(rewards: Tensor, scale_rewards: str = "group", eps: float = 1e-4) -> Tensor:
    """(r - mean_group) / (std + eps), std over the group, the whole batch, or 1 ("none"); [B, G] -> [B, G]."""
    rewards = rewards.float()
    centred = rewards - rewards.mean(-1, keepdim=True)
    if scale_rewards == "group":
        return centred / (rewards.std(-1, keepdim=True) + eps)
    if scale_rewards == "batch":
        return centred / (rewards.std() + eps)
    if scale_rewards == "none":
        return centred
    raise ValueError(f"unknown scale_rewards {scale_rewards!r}; choose one of {', '.join(SCALE_REWARDS)}")


class GRPO(Estimator):
    """Group-relative advantages; std is the unbiased sample std (torch.std), as TRL computes it.

    `advantages` must see the whole batch for `scale_rewards="batch"`: the module hands it every
    micro-batch's rewards, gathered over ranks.
    """

    needs_group = True  # with G = 1 every centred reward is 0 (and the group std is NaN)

    def __init__(
        self, scale_rewards: ScaleRewards = "group", eps: float = 1e-4, loss_type: LossType = "dapo", **kwargs
    ) -> None:
        super().__init__(loss_type=loss_type, **kwargs)
        self.scale_rewards = scale_rewards
        self.eps = float(eps)

    @torch.no_grad()
    def advantages(self, rewards: Tensor) -> Tensor:
        return grpo_advantages(rewards, self.scale_rewards, self.eps)
