"""Train a policy by RL on its own rollouts: `python train.py representer=soft estimator=rloo`."""

from __future__ import annotations

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

from soft_tokens.atomic_write import remove_partial_writes
from soft_tokens.config_types import ConfigTypeError, check_config_types
from soft_tokens.run_folder import check_start, checkpoint_folders, register_resolver, remove_refused_attempt
from soft_tokens.run_summary import RunFinished, RunRefused, recorded_failure, write_summary

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
    from soft_tokens.distributed import launched_as_global_zero
    from soft_tokens.resume import check_resume, check_unfinished
    from soft_tokens.run_lock import run_lock

    quiet_libraries()
    # Every start check before anything of the run is written: a refused resume leaves its run as it was.
    parent = check_resume(cfg)  # a resume that would mix two runs is refused here
    check_unfinished(cfg)  # a resume of a run that already reached trainer.max_steps has nothing to do
    out_dir = Path(cfg.paths.output_dir)
    check_start(out_dir, checkpoint_folders(cfg))
    first = launched_as_global_zero()
    with run_lock(out_dir, take=first):  # one writer per run folder
        if first:
            remove_partial_writes([out_dir, *checkpoint_folders(cfg)])
        return fit(cfg, out_dir, parent)


def fit(cfg: DictConfig, out_dir: Path, parent: dict | None) -> dict[str, float]:
    """The run itself, once its start checks passed and its folder is held."""
    import lightning as L
    import torch

    from callbacks.checkpoint import use_atomic_checkpoints
    from soft_tokens.builders import build_callbacks, build_loggers, build_module
    from soft_tokens.data.lengths import prompt_budget
    from soft_tokens.resume import FollowMovedRun, write_parent

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
    use_atomic_checkpoints(trainer)  # a kill or a full disk never leaves a truncated checkpoint file
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
        write_summary(
            out_dir, {"wall_s": round(wall_s, 1), "global_step": trainer.global_step, "metrics": metrics}
        )
    log.info("run folder: %s (fit took %.0f s)", out_dir, wall_s)
    return metrics


def undo_hydra_record() -> None:
    """Remove what Hydra wrote for a run refused at start: a resume's `.hydra/resumes/<time>`, or a new
    folder holding nothing but `.hydra/` (nothing, when the config was composed without a Hydra run)."""
    try:
        run, subdir = HydraConfig.get().runtime.output_dir, HydraConfig.get().output_subdir
    except Exception:  # noqa: BLE001 - no Hydra run: nothing of Hydra's to remove
        return
    if run:
        remove_refused_attempt(run, subdir)


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        check_config_types(cfg)
    except ConfigTypeError as err:
        undo_hydra_record()  # a config error leaves no run folder holding only .hydra/
        raise SystemExit(f"config error: {err}") from None  # the message names the key; no traceback
    try:
        # A failed run: traceback in its log, summary.json failed.
        with recorded_failure(cfg.paths.output_dir):
            metrics = train(cfg)
    except RunRefused as err:  # refused before anything of the run was written: undo Hydra's record only
        undo_hydra_record()
        if isinstance(err, RunFinished):
            print(f"{err.kind}: {err}")
            return
        raise SystemExit(f"{err.kind}: {err}") from None
    from soft_tokens.sweep_objective import sweep_objective  # a sweeper's objective (conf/hparams_search/)

    return sweep_objective(metrics, cfg.get("optimized_metric"))


if __name__ == "__main__":
    main()
