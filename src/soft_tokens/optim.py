"""The optimiser and learning-rate schedule of a run (conf/train.yaml, `module.optim`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import get_scheduler


@dataclass
class OptimConfig:
    """AdamW (or SGD with momentum) with a warm-up then cosine (or constant) schedule."""

    lr: float = 1e-4
    weight_decay: float = 0.0
    name: str = "adamw"  # adamw or sgd
    betas: tuple[float, float] = (0.9, 0.999)  # adamw
    eps: float = 1e-8  # adamw
    momentum: float = 0.9  # sgd
    scheduler: str = "cosine"  # any name transformers.get_scheduler knows (cosine, constant_with_warmup, ...)
    warmup_steps: int = 10
    max_grad_norm: float = 1.0


def build_optimizer(cfg: OptimConfig, params: list[torch.nn.Parameter], max_steps: int) -> dict:
    """Lightning's optimizer dict: the optimiser over `params` and its per-step schedule over `max_steps`."""
    if cfg.name == "adamw":
        opt = torch.optim.AdamW(
            params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay
        )
    elif cfg.name == "sgd":
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    else:
        raise ValueError(f"module.optim.name={cfg.name!r} is not one of adamw, sgd")
    sched = get_scheduler(cfg.scheduler, opt, num_warmup_steps=cfg.warmup_steps, num_training_steps=max_steps)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
