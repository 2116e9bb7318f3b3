"""A score-weighted leave-one-out baseline for the Gaussian CoT score (docs/continuous_rl_study.md, round 5).

RLOO subtracts from each reward the plain mean of the other G-1 rewards of its group. For a score-function
estimator sum_i (r_i - b) s_i, the baseline of least variance weighs each sample by its squared score norm,
b* = E[r |s|^2] / E[|s|^2]. The noise's own coordinates give |s_j|^2 in expectation as the number of noisy
dimensions of row j (each noisy step adds k-1 for the span noise, d for the isotropic one), so

    A_i = r_i - sum_{j != i} w_j r_j / sum_{j != i} w_j,   w_j = noisy CoT steps of row j,

which uses only the other samples of the group and so leaves the gradient unbiased. With equal weights it
is RLOO.
"""

from __future__ import annotations

import torch
from torch import Tensor


def weighted_loo_advantages(rewards: Tensor, weights: Tensor) -> Tensor:
    """A_i = r_i - (weighted mean of the other rewards of the group); [B, G] -> [B, G]."""
    r, w = rewards.double(), weights.double().clamp(min=0)
    G = r.shape[-1]
    w_others = w.sum(-1, keepdim=True) - w
    wr_others = (w * r).sum(-1, keepdim=True) - w * r
    plain = (r.sum(-1, keepdim=True) - r) / (G - 1)
    baseline = torch.where(w_others > 0, wr_others / w_others.clamp(min=1e-30), plain)
    return (r - baseline).float()


def noisy_steps(cot_mask: Tensor, aux: dict[str, Tensor]) -> Tensor:
    """[N] the noisy CoT steps of each row (every CoT step when the noise is not placed)."""
    noisy = aux.get("noisy", cot_mask)
    return (noisy.bool() & cot_mask.bool()).sum(-1)
