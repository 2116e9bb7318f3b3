"""Rewards: the math reward, the boxed-answer extraction and the Math-Verify worker process."""

from typing import Any


def __getattr__(name: str) -> Any:
    """`soft_tokens.rewards.MathReward`, the old `_target_`, imported on first use (the worker process
    imports this package without torch)."""
    if name == "MathReward":
        from soft_tokens.rewards.math_reward import MathReward

        return MathReward
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
