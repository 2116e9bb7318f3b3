"""Train a policy by RL on its own rollouts: `python train.py representer=soft estimator=rloo`."""

from __future__ import annotations

import logging
import os
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Idle OpenMP threads sleep instead of spinning: on cores shared with other work, spinning threads made
# multi-threaded steps several times slower (docs/benchmarks.md, "Threads").
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Only light imports here: torch, transformers and Lightning load in train(), after Hydra has composed and
# checked the config, so --help, --cfg job and config errors answer in about a second.
import hydra
from omegaconf import DictConfig

from soft_tokens.config_types import ConfigTypeError, check_config_types
from soft_tokens.runs.folder import register_resolver
from soft_tokens.runs.run import Run, as_command, refuse
from soft_tokens.runs.sweep_objective import sweep_objective

if TYPE_CHECKING:
    import lightning as L

    from soft_tokens.training.module import SoftTokensModule

log = logging.getLogger(__name__)
register_resolver()  # run_dir in conf/hydra/default.yaml: unique run folders, resumed runs in their own

# Expected with RL's manual optimisation and the callback-driven validation: not actionable, so not shown.
warnings.filterwarnings("ignore", message=".*no pre-optimization state was saved.*")
warnings.filterwarnings("ignore", message=".*modules? in eval mode at the start of training.*")
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated.*")
logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
    lambda r: "litlogger" not in r.getMessage()
)


def quiet_libraries() -> None:
    """Each message once: no transformers progress bars under the run's bar, Lightning's through Hydra's log."""
    import lightning  # noqa: F401 - loaded first: it adds the console handler removed below
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    lightning_logger = logging.getLogger("lightning")
    if logging.getLogger().handlers:  # Lightning's own console handler would print them a second time
        for handler in list(lightning_logger.handlers):
            lightning_logger.removeHandler(handler)


def build(cfg: DictConfig) -> tuple[L.LightningDataModule, SoftTokensModule, L.Trainer]:
    """Seed, then data, module (which sets the data's prompt budget), callbacks, loggers and trainer."""
    import lightning as L
    import torch

    from callbacks.checkpoint import use_atomic_checkpoints
    from soft_tokens.configured import instantiate
    from soft_tokens.data.lengths import prompt_budget
    from soft_tokens.runs.resume import FollowMovedRun
    from soft_tokens.training.builders import build_callbacks, build_loggers, build_module

    L.seed_everything(cfg.seed, workers=True)
    if cfg.get("torch_threads"):
        torch.set_num_threads(int(cfg.torch_threads))
    datamodule = instantiate(cfg.data)
    module = build_module(cfg)
    datamodule.set_prompt_budget(
        prompt_budget(module.model_cfg, module.tokenizer, module.format_prompt, module.rollout_cfg)
    )
    trainer: L.Trainer = instantiate(
        cfg.trainer, callbacks=[*build_callbacks(cfg), FollowMovedRun()], logger=build_loggers(cfg)
    )
    use_atomic_checkpoints(trainer)  # a kill or a full disk never leaves a truncated checkpoint file
    return datamodule, module, trainer


def export(cfg: DictConfig, module: SoftTokensModule, trainer: L.Trainer, out_dir: Path) -> None:
    """The final policy in `<run>/policy`, the best checkpoint's in `<run>/policy_best` (global rank 0)."""
    if not (cfg.export_policy and trainer.is_global_zero):
        return
    module.save_policy(str(out_dir / "policy"))
    log.info("final policy written to %s", out_dir / "policy")
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if best and Path(best).is_file():
        module.load_policy_from_checkpoint(best)
        module.save_policy(str(out_dir / "policy_best"))
        log.info("best policy (%s) written to %s", Path(best).name, out_dir / "policy_best")


def train(cfg: DictConfig) -> dict[str, float]:
    """Build, fit and export in the run's folder, held for it (runs/run.py); return the final metrics."""
    quiet_libraries()
    with Run(cfg) as run:  # start checks (nothing written if refused), lock, config.yaml
        datamodule, module, trainer = build(cfg)
        start = time.perf_counter()
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
        wall_s = time.perf_counter() - start
        export(cfg, module, trainer, run.folder)
        metrics = run.finish(trainer, wall_s)  # summary.json
        log.info("run folder: %s (fit took %.0f s)", run.folder, wall_s)
        return metrics


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Compose (Hydra) -> validate -> train; return a sweeper's objective (conf/hparams_search/)."""
    try:
        check_config_types(cfg)
    except ConfigTypeError as err:  # the message names the key; no traceback, no folder holding only .hydra/
        refuse(f"config error: {err}")
    metrics = as_command(cfg, train)  # a failure recorded in summary.json; a refusal exits with its message
    return None if metrics is None else sweep_objective(metrics, cfg.get("optimized_metric"))


if __name__ == "__main__":
    main()
