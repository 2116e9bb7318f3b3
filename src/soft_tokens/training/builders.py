"""A training run's objects from its composed Hydra config: the module, the callbacks and the loggers.

train.py builds its run with these (tests and benchmarks build modules the same way); `RunWandbLogger` and
`RunTensorBoardLogger` are the logger classes conf/logger/wandb.yaml and tensorboard.yaml name.
"""

from __future__ import annotations

import netrc
import os
import socket
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import lightning as L
from lightning.pytorch.loggers import Logger, TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from soft_tokens.configured import instantiate
from soft_tokens.models.model_files import check_chat_template
from soft_tokens.runs.atomic_write import write_failed
from soft_tokens.training.module import SoftTokensModule


def build_module(cfg: DictConfig) -> SoftTokensModule:
    """The LightningModule with its model, representer, estimator, reward and prompt from their groups."""
    # A partial first: objects passed as kwargs to instantiate would be turned back into configs.
    make = instantiate(cfg.module, _partial_=True)
    module = make(
        model=instantiate(cfg.model),
        representer=instantiate(cfg.representer),
        estimator=instantiate(cfg.estimator),
        reward=instantiate(cfg.reward),
        prompt=instantiate(cfg.prompt),
    )
    check_chat_template(
        module.format_prompt, str(module.model_cfg.tokenizer or module.model_cfg.name_or_path)
    )
    return module


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


class RunTensorBoardLogger(TensorBoardLogger):
    """Lightning's TensorBoardLogger; a failed write (a full disk) names the log folder and says the disk may be
    full, where Lightning would say "you tried to log 0.3 which is currently not supported"."""

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        try:
            super().log_metrics(metrics, step)
        except ValueError as err:
            if isinstance(err.__cause__, OSError):
                raise write_failed(Path(self.log_dir), err.__cause__) from err.__cause__
            raise


class RunWandbLogger(WandbLogger):
    """Lightning's WandbLogger, offline unless an API key is set (WANDB_MODE, when set, decides instead).

    The W&B run ends with the fit, so that a second fit in the same process starts its own run.
    """

    def __init__(self, save_dir: str, **kwargs: Any) -> None:
        offline = "WANDB_MODE" not in os.environ and not _wandb_key_set()
        if not offline and os.environ.get("WANDB_MODE", "online") in ("online", "run"):
            check_wandb_online()
        super().__init__(save_dir=save_dir, offline=offline, **kwargs)
        self._wandb_init.pop("anonymous", None)  # deprecated in wandb (a warning at every run), unused here

    @property
    def experiment(self) -> Any:
        """The W&B run (started on first use); a failure to start it says how to log offline."""
        try:
            return super().experiment
        except Exception as err:
            if not type(err).__module__.startswith("wandb"):
                raise
            raise RuntimeError(f"logger=wandb: W&B could not start its run ({err}); {OFFLINE_HINT}") from err

    def finalize(self, status: str) -> None:
        super().finalize(status)
        if self._experiment is not None:
            self._experiment.finish(exit_code=0 if status == "success" else 1)


OFFLINE_HINT = (
    "to train without W&B's server, set WANDB_MODE=offline (runs saved under <run folder>/wandb, "
    "`wandb sync` them later) or use logger=tensorboard"
)


def check_wandb_online(timeout_s: float = 5.0) -> None:
    """Raise, saying how to log offline, when W&B would run online without an API key or cannot reach its server."""
    if not _wandb_key_set():
        raise RuntimeError(
            "logger=wandb runs online (WANDB_MODE=online) but no W&B API key is set (WANDB_API_KEY or "
            f"`wandb login`); {OFFLINE_HINT}"
        )
    url = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai")
    address = (url.hostname or "", url.port or (80 if url.scheme == "http" else 443))
    failure: list[BaseException] = []

    def connect() -> None:
        try:
            socket.create_connection(address, timeout=timeout_s).close()
        except OSError as err:
            failure.append(err)

    probe = threading.Thread(target=connect, daemon=True)  # a thread: name resolution has no timeout
    probe.start()
    probe.join(timeout_s)
    if probe.is_alive() or failure:
        why = failure[0] if failure else f"no answer in {timeout_s:.0f} s"
        raise RuntimeError(
            f"logger=wandb: cannot reach the W&B server {url.geturl()} ({why}); {OFFLINE_HINT}"
        )


def _wandb_key_set() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False
