"""Periodic math accuracy on a held-out split, under one or more inference settings."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from soft_tokens.distributed import full_parameters
from soft_tokens.evaluate_run import EvalSetting, build_setting
from soft_tokens.evaluation import InferenceSetting, solve
from soft_tokens.metrics import EntropyProfile, MeanAccuracy, PassAtK
from soft_tokens.plots import entropy_figure
from soft_tokens.representers.base import TokenRepresenter

log = logging.getLogger(__name__)


class MathEval(L.Callback):
    """Every `every_n_steps` optimizer steps (and at step 0 and the last step) solve the validation problems.

    `val/accuracy` is hard-greedy accuracy (the paper's "hard truths"), used to pick checkpoints.
    `also_training_representer` adds `val/accuracy_<representer>` with the training representer run greedy.
    Each entry of `settings` (name -> {representer, num_samples, k_values} or a bare representer) logs
    `val/<name>/pass@1` and `val/<name>/pass@<k>` for each k of k_values (default: 1, powers of two, and
    num_samples). Metrics are synchronised over processes (each one solves a disjoint shard of the problems).
    With a TensorBoard logger, the mean CoT entropy by position of every setting run is logged as a figure
    (`val/cot_entropy`).
    """

    def __init__(
        self,
        hard_greedy: TokenRepresenter,
        settings: Mapping[str, Any] | None = None,
        every_n_steps: int = 25,
        batch_size: int = 64,
        max_examples: int | None = None,
        also_training_representer: bool = True,
        num_logged_samples: int = 3,
        log_entropy_figure: bool = True,
    ) -> None:
        self.hard_greedy = hard_greedy
        self.settings = [build_setting(str(name), spec) for name, spec in (settings or {}).items()]
        self.every_n_steps = every_n_steps
        self.batch_size = batch_size
        self.max_examples = max_examples
        self.also_training_representer = also_training_representer
        self.num_logged_samples = num_logged_samples
        self.log_entropy_figure = log_entropy_figure
        self._last_step = -1

    def _settings(self, pl_module) -> list[EvalSetting]:
        """The settings to run for this module, the checkpoint-selection one first."""
        out = [EvalSetting(InferenceSetting("hard_greedy", self.hard_greedy), [1], "val/accuracy")]
        rep = pl_module.representer
        if self.also_training_representer and rep.name != "hard":
            out.append(
                EvalSetting(
                    InferenceSetting(f"{rep.name}_greedy", rep.as_greedy()), [1], f"val/accuracy_{rep.name}"
                )
            )
        return out + self.settings

    def _examples(self, trainer):
        examples = trainer.datamodule.val_examples()
        if self.max_examples is not None:
            examples = examples[: self.max_examples]
        # Each rank scores a disjoint, interleaved shard; the metrics sum their states over ranks.
        return examples[trainer.global_rank :: trainer.world_size]

    @torch.no_grad()
    def evaluate(self, trainer: L.Trainer, pl_module) -> dict[str, float]:
        """Solve the validation split under every setting and log the metrics."""
        step = trainer.global_step
        self._last_step = step
        examples = self._examples(trainer)
        device = pl_module.device
        metrics: dict[str, float] = {}
        profiles: dict[str, torch.Tensor] = {}
        for i, ev in enumerate(self._settings(pl_module)):
            seed = pl_module.seed + 1_000_003 * step + 7919 * trainer.global_rank + 31 * i
            with full_parameters(trainer):  # FSDP: each rank generates alone, with the whole policy
                res = solve(
                    pl_module.policy,
                    pl_module.engine,
                    pl_module.format_prompt,
                    examples,
                    ev.setting,
                    pl_module.reward.score_batch,
                    batch_size=self.batch_size,
                    generator=torch.Generator(device=device).manual_seed(seed),
                )
            if ev.accuracy_key is not None:
                acc = MeanAccuracy().to(device)
                acc.update(res.correct)
                metrics[ev.accuracy_key] = float(acc.compute())
            else:
                pak = PassAtK(ev.k_values).to(device)
                pak.update(res.correct)
                for key, value in pak.compute().items():
                    metrics[f"val/{ev.setting.name}/{key}"] = float(value)
            profile = EntropyProfile(len(res.entropy_sum)).to(device)
            profile.update(res.entropy_sum, res.entropy_count)
            profiles[ev.setting.name] = profile.compute().cpu()
            if ev.accuracy_key == "val/accuracy" and trainer.is_global_zero:
                for q, c in list(zip(examples, res.completions))[: self.num_logged_samples]:
                    log.info("step %d | %s -> %s (gold %s)", step, q.question, c[0], q.answer)
        for key, value in metrics.items():
            pl_module.log(
                key, value, on_step=True, on_epoch=False, prog_bar=key == "val/accuracy", rank_zero_only=True
            )
        if trainer.is_global_zero:
            log.info("step %d | %s", step, "  ".join(f"{k}={v:.3f}" for k, v in metrics.items()))
            if self.log_entropy_figure:
                self._log_entropy_figure(trainer, profiles, step)
        return metrics

    @staticmethod
    def _log_entropy_figure(trainer: L.Trainer, profiles: dict[str, torch.Tensor], step: int) -> None:
        loggers = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        if not loggers:
            return
        fig = entropy_figure(profiles, title=f"CoT entropy by position, step {step}")
        for lg in loggers:
            lg.experiment.add_figure("val/cot_entropy", fig, global_step=step, close=False)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == 0 and self._last_step != 0:
            self.evaluate(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        last = trainer.max_steps > 0 and step >= trainer.max_steps
        if step != self._last_step and (step % self.every_n_steps == 0 or last):
            self.evaluate(trainer, pl_module)
