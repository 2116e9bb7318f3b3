"""The optimiser and learning-rate schedule of a run (conf/train.yaml, `module.optim`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from transformers import get_scheduler

OptimizerName = Literal["adamw", "sgd"]  # read by the config check (soft_tokens.config_types)


@dataclass
class OptimConfig:
    """AdamW (or SGD with momentum) with a warm-up then cosine (or constant) schedule."""

    lr: float = 1e-4
    weight_decay: float = 0.0
    name: OptimizerName = "adamw"
    betas: tuple[float, float] = (0.9, 0.999)  # adamw
    eps: float = 1e-8  # adamw
    momentum: float = 0.9  # sgd
    scheduler: str = "cosine"  # any name transformers.get_scheduler knows (cosine, constant_with_warmup, ...)
    warmup_steps: int = 10
    max_grad_norm: float = 1.0


OPTIMIZERS: dict[str, Callable[[list[torch.nn.Parameter], OptimConfig], torch.optim.Optimizer]] = {
    "adamw": lambda params, cfg: torch.optim.AdamW(
        params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay
    ),
    "sgd": lambda params, cfg: torch.optim.SGD(
        params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    ),
}


def build_optimizer(cfg: OptimConfig, params: list[torch.nn.Parameter], max_steps: int) -> dict:
    """Lightning's optimizer dict: the optimiser over `params` and its per-step schedule over `max_steps`.

    `cfg.name` is one of OptimizerName (checked on the config, config_types)."""
    opt = OPTIMIZERS[cfg.name](params, cfg)
    sched = get_scheduler(cfg.scheduler, opt, num_warmup_steps=cfg.warmup_steps, num_training_steps=max_steps)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


# The settings an optimizer keeps in its param groups, so restores from a checkpoint (per optimizer name).
GROUP_SETTINGS = {"adamw": ("weight_decay", "betas", "eps"), "sgd": ("weight_decay", "momentum")}


def apply_changed_settings(
    opt: torch.optim.Optimizer, sched: Any, before: Mapping[str, Any], cfg: OptimConfig
) -> list[str]:
    """Give an optimizer and schedule restored from a checkpoint trained with the settings `before` those of
    `cfg` that differ (a fork's): the learning rate (the schedule's base lr, so the schedule keeps its point),
    weight decay, betas, eps, momentum. Return the names of the settings changed."""
    changed = []
    old_lr = float(before.get("lr", cfg.lr))
    if old_lr != cfg.lr and old_lr > 0:
        for group in opt.param_groups:
            group["lr"] = group["lr"] * (cfg.lr / old_lr)
            group["initial_lr"] = cfg.lr
        sched.base_lrs = [cfg.lr] * len(opt.param_groups)
        # What get_last_lr() reports (and the step logs) until the schedule's next step.
        sched._last_lr = [group["lr"] for group in opt.param_groups]
        changed.append("lr")
    for key in GROUP_SETTINGS.get(cfg.name, ()):
        new = tuple(cfg.betas) if key == "betas" else getattr(cfg, key)
        old = tuple(before[key]) if key == "betas" and key in before else before.get(key, new)
        if old != new:
            for group in opt.param_groups:
                group[key] = new
            changed.append(key)
    return changed
