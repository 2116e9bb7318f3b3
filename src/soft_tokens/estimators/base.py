"""The estimator contract and the policy-gradient loss shared by every estimator.

An estimator turns rewards [B, G] (G samples of each of B prompts) into advantages, and per-step log-probs
[N, S] into a scalar loss. The loss is the clipped importance-weighted policy gradient of PPO/GRPO,

    per_step = -min(ratio * A, clip(ratio, 1 - epsilon, 1 + epsilon_high) * A) + beta * kl,
    ratio = exp(logp - old_logp),

aggregated over steps and sequences by `loss_type`. With one optimisation pass per rollout (`old_logp` is
None), the ratio is exactly 1 and the gradient is REINFORCE's, -A * grad logp; the loss value is then the
aggregate of -A over the steps (what TRL logs), not of -A * logp. A step split into micro-batches passes
the `StepTotals` of the whole step, so the micro-batches' losses sum to the unsplit loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor

# The allowed values, read by the config check before torch loads (soft_tokens.config_types).
LossType = Literal["sequence_sum", "grpo", "bnpo", "dapo", "dr_grpo"]
LOSS_TYPES: tuple[str, ...] = get_args(LossType)


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of x over the True entries of mask (0 when there are none)."""
    return torch.where(mask.bool(), x, 0.0).sum() / mask.sum().clamp(min=1).to(x.dtype)


@dataclass(frozen=True)
class StepTotals:
    """Sizes of the whole optimisation step that normalise the loss of each of its micro-batches."""

    sequences: int  # sequences on this rank, over all micro-batches
    tokens: Tensor | float  # log-prob-carrying steps on this rank, over all micro-batches (bnpo)
    global_tokens: Tensor | float  # the same over all ranks, divided by the world size (dapo)
    max_length: int | None = None  # the most steps a rollout can generate (dr_grpo's constant)

    @classmethod
    def of(cls, mask: Tensor) -> StepTotals:
        """The totals of a step that is this one batch on one rank."""
        n = mask.sum().clamp(min=1)
        return cls(sequences=mask.shape[0], tokens=n, global_tokens=n)


def aggregate(
    per_step: Tensor,
    mask: Tensor,
    loss_type: str,
    max_length: int | None = None,
    totals: StepTotals | None = None,
) -> Tensor:
    """Reduce a per-step loss [N, S] over its valid steps to a scalar: this batch's share of the step's loss.

    `totals` (default: this batch's own) describe the whole optimisation step, so every sequence weighs the
    same however the step is split into micro-batches:
    - sequence_sum: each sequence's sum over its steps, averaged over the step's sequences (the paper's RLOO).
    - grpo: each sequence's mean over its steps, averaged over the step's sequences.
    - bnpo: the sum over valid steps divided by the valid steps of this rank's whole step.
    - dapo: the sum over valid steps divided by the valid steps of the whole step on every rank, over the
      world size (DDP then averages the ranks' gradients).
    - dr_grpo: the sum over valid steps divided by sequences x max_length (a constant, Dr. GRPO).
    """
    totals = totals or StepTotals.of(mask)
    m = mask.to(per_step.dtype)
    per_step = torch.where(mask.bool(), per_step, 0.0)  # padding may hold inf/nan: keep it out of the sum
    total = per_step.sum()
    if loss_type == "sequence_sum":
        return total / totals.sequences
    if loss_type == "grpo":
        return (per_step.sum(-1) / m.sum(-1).clamp(min=1)).sum() / totals.sequences
    if loss_type == "bnpo":
        return total / totals.tokens
    if loss_type == "dapo":
        return total / totals.global_tokens
    if loss_type == "dr_grpo":
        return total / (totals.sequences * (max_length or totals.max_length or per_step.shape[1]))
    raise ValueError(f"unknown loss_type {loss_type!r}; choose one of {', '.join(LOSS_TYPES)}")


class Estimator:
    """Base estimator: subclasses define `advantages`; the clipped policy-gradient loss is shared."""

    # Whether the advantages compare the G samples of a prompt with each other (then G must be >= 2).
    needs_group: bool = False

    def __init__(
        self,
        loss_type: LossType = "sequence_sum",
        beta: float = 0.0,
        epsilon: float = 0.2,
        epsilon_high: float | None = None,
        num_iterations: int = 1,
        max_length: int | None = None,
    ) -> None:
        # loss_type's choices (LossType) and the ranges (config_types.RANGES) are checked on the config.
        self.loss_type = loss_type
        self.beta = float(beta)
        self.epsilon = float(epsilon)
        self.epsilon_high = float(epsilon if epsilon_high is None else epsilon_high)
        self.num_iterations = int(num_iterations)
        self.max_length = max_length

    @property
    def needs_reference(self) -> bool:
        """Whether the frozen reference model is needed (only for the KL term)."""
        return self.beta > 0

    def advantages(self, rewards: Tensor) -> Tensor:
        """Advantages [B, G] from rewards [B, G]; no gradient."""
        raise NotImplementedError

    def loss(
        self,
        logp: Tensor,
        advantages: Tensor,
        mask: Tensor,
        old_logp: Tensor | None = None,
        kl: Tensor | None = None,
        totals: StepTotals | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Scalar loss and detached metrics from per-step log-probs [N, S], advantages [N] and mask [N, S].

        The loss is this batch's share of the step's loss, given the step's `totals` (default: this batch).
        """
        # On-policy (old_logp None) the ratio is exp(0) = 1 exactly: the value is the surrogate -A per step
        # (as TRL logs it), the gradient is REINFORCE's -A * grad logp, the paper's loss gradient.
        old = logp.detach() if old_logp is None else old_logp
        ratio = torch.exp(logp - old)
        adv = advantages.to(logp.dtype).unsqueeze(-1)
        clipped_ratio = ratio.clamp(1 - self.epsilon, 1 + self.epsilon_high)
        per_step = -torch.min(ratio * adv, clipped_ratio * adv)
        if self.beta > 0:
            if kl is None:
                raise ValueError("beta > 0 but no KL was computed (the reference model is missing)")
            per_step = per_step + self.beta * kl
        loss = aggregate(per_step, mask, self.loss_type, self.max_length, totals)
        with torch.no_grad():
            low = (ratio < 1 - self.epsilon) & (adv < 0)
            high = (ratio > 1 + self.epsilon_high) & (adv > 0)
            metrics = {
                "clip_ratio/low_mean": masked_mean(low.float(), mask),
                "clip_ratio/high_mean": masked_mean(high.float(), mask),
                "clip_ratio/region_mean": masked_mean((low | high).float(), mask),
            }
            if kl is not None:
                metrics["kl"] = masked_mean(kl.detach().float(), mask)
        return loss, metrics

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(loss_type={self.loss_type!r}, beta={self.beta}, epsilon={self.epsilon}, "
            f"epsilon_high={self.epsilon_high}, num_iterations={self.num_iterations})"
        )


def check_group_size(estimator: Estimator, samples_per_prompt: int, rollout_micro_batch: int | None) -> None:
    """Raise, naming the option, if G or the micro-batch cannot give the estimator what it needs."""
    if samples_per_prompt < 1:
        raise ValueError(f"module.samples_per_prompt={samples_per_prompt} must be >= 1")
    if estimator.needs_group and samples_per_prompt < 2:
        raise ValueError(
            f"module.samples_per_prompt={samples_per_prompt}: {type(estimator).__name__}'s advantages compare "
            "the samples of each prompt with each other, which needs module.samples_per_prompt >= 2"
        )
    if rollout_micro_batch is not None and rollout_micro_batch < 1:
        raise ValueError(f"module.rollout_micro_batch={rollout_micro_batch} must be >= 1 (or null: no split)")
