"""The rollouts of one training step and the metrics logged for it (TRL's names: docs/metrics.md)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from soft_tokens.rollout import Rollout


@dataclass
class Group:
    """One micro-batch of whole prompt groups: the rollout and its rewards, correctness and advantages."""

    rollout: Rollout
    rewards: Tensor | None = None  # [b, G], from `score`
    correct: Tensor | None = None  # [b, G] bool
    advantages: Tensor | None = None  # [b * G], from `assign_advantages`


def step_metrics(
    groups: list[Group], metrics: list[dict], loss: Tensor, lr: float, world_size: int
) -> dict[str, Tensor | float]:
    """`train/*` values of one step from its groups, the estimator's per-micro-batch metrics and the loss."""
    rewards = torch.cat([g.rewards for g in groups])
    advs = torch.cat([g.advantages for g in groups])
    ros = [g.rollout for g in groups]
    cot_len = torch.cat([ro.cot_lengths for ro in ros]).float()
    gen_len = torch.cat([ro.attention_mask[:, ro.prompt_len :].sum(1) for ro in ros]).float()
    entropy = sum(float((ro.entropy * ro.cot_mask).sum()) for ro in ros) / max(1.0, float(cot_len.sum()))
    seconds = sum(ro.seconds for ro in ros)
    G = rewards.shape[1]
    values = {
        "train/reward": rewards.mean(),
        "train/reward_std": rewards.std(-1).mean() if G > 1 else rewards.new_zeros(()),
        "train/frac_reward_zero_std": (rewards.std(-1) == 0).float().mean(),
        "train/accuracy": torch.cat([g.correct for g in groups]).float().mean(),
        "train/completions/mean_length": gen_len.mean(),
        "train/completions/mean_cot_length": cot_len.mean(),
        "train/completions/clipped_ratio": torch.cat([ro.clipped for ro in ros]).float().mean(),
        "train/entropy": entropy,
        "train/loss": loss.detach(),
        "train/lr": lr,
        "train/rollout_tokens_per_s": sum(ro.num_tokens for ro in ros) / max(seconds, 1e-9),
        "train/advantages_std": advs.std() if advs.numel() > 1 else advs.new_zeros(()),
        # Rollouts per optimizer step over all ranks: prompts per rank x G x ranks (micro-batches included).
        "train/effective_batch": float(rewards.numel() * world_size),
    }
    for key in metrics[0]:
        values[f"train/{key}"] = torch.stack([m[key] for m in metrics]).mean()
    return values
