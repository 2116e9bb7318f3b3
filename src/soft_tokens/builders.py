"""Turning a composed Hydra config into the objects of a run (shared by train.py, evaluate.py and tests)."""

from __future__ import annotations

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig

from soft_tokens.module import SoftTokensModule


def build_module(cfg: DictConfig) -> SoftTokensModule:
    """The LightningModule with its model, representer, estimator, reward and prompt from their groups."""
    # A partial first: objects passed as kwargs to instantiate would be turned back into configs.
    make = instantiate(cfg.module, _partial_=True)
    return make(
        model=instantiate(cfg.model),
        representer=instantiate(cfg.representer),
        estimator=instantiate(cfg.estimator),
        reward=instantiate(cfg.reward),
        prompt=instantiate(cfg.prompt),
    )


def build_callbacks(cfg: DictConfig) -> list[L.Callback]:
    """Every callback in cfg.callbacks that is not null."""
    return [
        instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None and "_target_" in c
    ]


def build_loggers(cfg: DictConfig) -> list:
    """Every logger in cfg.logger that is not null (none: Lightning's logging is off)."""
    return [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None and "_target_" in c]
