"""A training run's objects from its composed Hydra config: the module, the callbacks and the loggers.

train.py builds its run with these (tests and benchmarks build modules the same way); `RunWandbLogger` is the
logger class conf/logger/wandb.yaml names.
"""

from __future__ import annotations

import netrc
import os
from typing import Any

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.loggers import Logger, TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

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


# The metric of TensorBoard's HParams view: the hard-greedy validation accuracy (the last value logged).
HP_METRIC = "val/accuracy"


def build_loggers(cfg: DictConfig) -> list[Logger]:
    """Every logger in cfg.logger that is not null (none: Lightning's logging is off), given the config."""
    loggers = [
        instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None and "_target_" in c
    ]
    log_config(loggers, cfg)
    return loggers


@rank_zero_only
def log_config(loggers: list[Logger], cfg: DictConfig) -> None:
    """Log the resolved config as hyperparameters; for TensorBoard also as an HParams session on HP_METRIC."""
    config = OmegaConf.to_container(cfg, resolve=True)
    for lg in loggers:
        lg.log_hyperparams(config)
        if isinstance(lg, TensorBoardLogger):
            from torch.utils.tensorboard.summary import hparams

            # Written by hand: Lightning's log_hyperparams(metrics=...) would also log a fake HP_METRIC
            # point at step 0. The HParams view reads the metric's value from its scalars in the same run.
            writer = lg.experiment._get_file_writer()
            for summary in hparams(flatten_config(config), {HP_METRIC: 0.0}):
                writer.add_summary(summary)


def flatten_config(config: dict[str, Any], prefix: str = "") -> dict[str, int | float | str | bool]:
    """{"a.b": value} for every leaf; values other than numbers, strings and booleans as their repr."""
    flat: dict[str, int | float | str | bool] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_config(value, f"{name}."))
        else:
            flat[name] = value if isinstance(value, int | float | str | bool) else repr(value)
    return flat


class RunWandbLogger(WandbLogger):
    """Lightning's WandbLogger, offline unless an API key is set (WANDB_MODE, when set, decides instead).

    The W&B run ends with the fit, so that a second fit in the same process starts its own run.
    """

    def __init__(self, save_dir: str, **kwargs: Any) -> None:
        offline = "WANDB_MODE" not in os.environ and not _wandb_key_set()
        super().__init__(save_dir=save_dir, offline=offline, **kwargs)
        self._wandb_init.pop("anonymous", None)  # deprecated in wandb (a warning at every run), unused here

    def finalize(self, status: str) -> None:
        super().finalize(status)
        if self._experiment is not None:
            self._experiment.finish(exit_code=0 if status == "success" else 1)


def _wandb_key_set() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False
