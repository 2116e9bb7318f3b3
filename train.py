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
# Idle OpenMP threads sleep instead of spinning: on cores shared with other work, spinning threads made
# multi-threaded steps several times slower (docs/benchmarks.md, "Threads").
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Only light imports here: torch, transformers and Lightning load in train(), after Hydra has composed and
# checked the config, so --help, --cfg job and config errors answer in about a second.
import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from soft_tokens.config_types import ConfigTypeError, check_config_types
from soft_tokens.run_folder import check_run, register_resolver, remove_refused_attempt
from soft_tokens.run_summary import RunRefused, recorded_failure

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
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    lightning_logger = logging.getLogger("lightning")
    if logging.getLogger().handlers:  # Lightning's own console handler would print them a second time
        for handler in list(lightning_logger.handlers):
            lightning_logger.removeHandler(handler)


def train(cfg: DictConfig) -> dict[str, float]:
    """Build data, module, callbacks, loggers and trainer from the config, fit, export; return final metrics."""
    import lightning as L
    import torch

    from soft_tokens.builders import build_callbacks, build_loggers, build_module
    from soft_tokens.data.lengths import prompt_budget
    from soft_tokens.resume import FollowMovedRun, check_resume, write_parent

    quiet_libraries()
    parent = check_resume(cfg)  # a resume that would mix two runs is refused here, before anything is written
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    if parent is not None:
        write_parent(out_dir, parent)
    L.seed_everything(cfg.seed, workers=True)
    if cfg.get("torch_threads"):
        torch.set_num_threads(int(cfg.torch_threads))
    datamodule = hydra.utils.instantiate(cfg.data)
    module = build_module(cfg)
    datamodule.set_prompt_budget(
        prompt_budget(module.model_cfg, module.tokenizer, module.format_prompt, module.rollout_cfg)
    )
    trainer: L.Trainer = hydra.utils.instantiate(
        cfg.trainer, callbacks=[*build_callbacks(cfg), FollowMovedRun()], logger=build_loggers(cfg)
    )
    check_run(trainer, out_dir, cfg.ckpt_path)
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
    try:
        check_config_types(cfg)
    except ConfigTypeError as err:
        raise SystemExit(f"config error: {err}") from None  # the message names the key; no traceback
    try:
        with recorded_failure(
            cfg.paths.output_dir
        ):  # a failed run: traceback in its log, summary.json failed
            train(cfg)
    except RunRefused as err:
        remove_refused_attempt(HydraConfig.get().runtime.output_dir, HydraConfig.get().output_subdir)
        raise SystemExit(f"resume refused: {err}") from None


if __name__ == "__main__":
    main()
