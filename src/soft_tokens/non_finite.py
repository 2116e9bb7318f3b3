"""Stopping a run whose loss or gradient stays non-finite, with a message that says where to resume."""

from __future__ import annotations

import os

import lightning as L


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
