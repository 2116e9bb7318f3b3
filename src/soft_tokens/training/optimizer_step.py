"""One optimizer step of the module's manual optimisation: clip, skip a non-finite step, step; and stopping a
run whose loss or gradient stays non-finite, with a message that says where to resume.

Without DeepSpeed: clip `p.grad` to the maximum norm and step only when the loss and the gradient are finite
on every rank. Under DeepSpeed ZeRO (docs/method.md, "One training step") the gradients live in ZeRO's own
partitions, not in `p.grad`, and are reduced at every backward pass taken as an accumulation boundary. So
the module (1) marks only the step's last backward as the boundary, so every micro-batch's gradient is kept,
(2) lets the engine clip to `module.optim.max_grad_norm` (`gradient_clipping` in DeepSpeed's config) and skip
a step whose gradient is not finite, and (3) reads the engine's global gradient norm and whether it stepped.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import lightning as L
import torch
from lightning.pytorch.strategies import DeepSpeedStrategy
from torch import Tensor


def clip_and_step(
    opt: Any, params: Iterable[torch.nn.Parameter], max_grad_norm: float, loss: Tensor, trainer: L.Trainer
) -> tuple[bool, float]:
    """Clip p.grad and step when loss and gradient are finite on every rank: (stepped, norm before clipping)."""
    params = [p for p in params if p.grad is not None]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm) if params else loss.new_zeros(())
    finite = bool(torch.isfinite(loss)) and bool(torch.isfinite(grad_norm))
    if trainer.world_size > 1:
        finite = bool(trainer.strategy.reduce_boolean_decision(finite, all=True))
    if finite:
        opt.step()
    return finite, float(grad_norm)


def zero_engine(trainer: L.Trainer | None) -> Any | None:
    """The DeepSpeed engine when `trainer` runs DeepSpeedStrategy and has set it up, else None."""
    strategy = getattr(trainer, "strategy", None)
    if not isinstance(strategy, DeepSpeedStrategy):
        return None
    return strategy.deepspeed_engine


def configure_zero_clipping(trainer: L.Trainer | None, max_grad_norm: float) -> None:
    """Make DeepSpeed clip to `max_grad_norm`; refuse a DeepSpeed config that asks for another value."""
    strategy = getattr(trainer, "strategy", None)
    if not isinstance(strategy, DeepSpeedStrategy):
        return
    config = strategy.config  # a mapping: Lightning has read a JSON file given as trainer.strategy.config
    current = config.get("gradient_clipping")
    if current is not None and float(current) != float(max_grad_norm):
        raise ValueError(
            f"trainer.strategy.config.gradient_clipping={current} disagrees with module.optim.max_grad_norm="
            f"{max_grad_norm}: the module owns clipping; set module.optim.max_grad_norm"
        )
    config["gradient_clipping"] = float(max_grad_norm)


def zero_micro_batch(engine: Any, part: Tensor, is_last: bool) -> Tensor:
    """A micro-batch's loss part, ready for a backward pass through the ZeRO engine.

    Only the step's last backward is marked as ZeRO's accumulation boundary, so every micro-batch's gradient
    is kept. A non-finite part becomes one whose gradient is NaN everywhere: an infinite term with zero
    derivative would otherwise pass, and under ZeRO the engine's gradient check is the only way to skip.
    """
    engine.set_gradient_accumulation_boundary(is_last)
    return part if bool(part.isfinite()) else part * float("nan")


def zero_step(engine: Any, opt: Any) -> tuple[bool, float]:
    """Step through the engine: (whether it applied the update, the global gradient norm before clipping)."""
    opt.step()
    norm = engine.get_global_grad_norm()
    return bool(engine.was_step_applied()), float("inf") if norm is None else float(norm)


class NonFiniteLossError(RuntimeError):
    """Raised after too many consecutive optimisation steps with a non-finite loss or gradient."""


def non_finite_message(trainer: L.Trainer, bad_steps: int) -> str:
    """Why the run stops after `max_bad_steps` non-finite steps, and the checkpoint to resume from, if any."""
    saved = [
        path
        for cb in trainer.checkpoint_callbacks
        for path in (getattr(cb, "last_model_path", ""), getattr(cb, "best_model_path", ""))
        if path and os.path.isfile(path)
    ]
    newest = max(saved, key=os.path.getmtime) if saved else None
    resume = (
        f"Resume from the newest checkpoint with ckpt_path={newest}"
        if newest
        else "No checkpoint was written."
    )
    return (
        f"{bad_steps} optimisation steps in a row had a non-finite loss or gradient (last at step "
        f"{trainer.global_step}); stopping. Check the rewards and advantages, lower module.optim.lr, or raise "
        f"module.max_bad_steps. {resume}"
    )
