"""Policy-gradient estimators: advantages from rewards, and the loss."""

from soft_tokens.estimators.base import Estimator, StepTotals, aggregate
from soft_tokens.estimators.grpo import GRPO
from soft_tokens.estimators.rloo import RLOO

__all__ = ["GRPO", "RLOO", "Estimator", "StepTotals", "aggregate"]
