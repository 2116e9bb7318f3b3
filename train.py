"""Train a policy by RL on its own rollouts: `python train.py representer=soft estimator=rloo`."""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from pathlib import Path

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import hydra
import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from soft_tokens.builders import build_callbacks, build_loggers, build_module

log = logging.getLogger(__name__)

# Expected with RL's manual optimisation and the callback-driven validation: not actionable, so not shown.
warnings.filterwarnings("ignore", message=".*no pre-optimization state was saved.*")
warnings.filterwarnings("ignore", message=".*val_dataloader.* but have no .validation_step.*")
warnings.filterwarnings("ignore", message=".*modules? in eval mode at the start of training.*")


def train(cfg: DictConfig) -> dict[str, float]:
    """Build data, module, callbacks, loggers and trainer from the config, fit, export; return final metrics."""
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    L.seed_everything(cfg.seed, workers=True)
    if cfg.get("torch_threads"):
        torch.set_num_threads(int(cfg.torch_threads))
    datamodule = hydra.utils.instantiate(cfg.data)
    module = build_module(cfg)
    trainer: L.Trainer = hydra.utils.instantiate(
        cfg.trainer, callbacks=build_callbacks(cfg), logger=build_loggers(cfg)
    )
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
    wall_s = time.perf_counter() - start
    if cfg.export_policy and trainer.is_global_zero:
        module.save_policy(str(out_dir / "policy"))
        log.info("final policy written to %s", out_dir / "policy")
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        if best and Path(best).is_file():
            module.load_policy_from_checkpoint(best)
            module.save_policy(str(out_dir / "policy_best"))
            log.info("best policy (%s) written to %s", Path(best).name, out_dir / "policy_best")
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    if trainer.is_global_zero:
        summary = {"wall_s": round(wall_s, 1), "global_step": trainer.global_step, "metrics": metrics}
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    log.info("run folder: %s (fit took %.0f s)", out_dir, wall_s)
    return metrics


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    train(cfg)


if __name__ == "__main__":
    main()
