"""Periodic math accuracy on a held-out split, under one or more inference settings."""

from __future__ import annotations

import logging

import lightning as L
import torch

from soft_tokens.evaluation import InferenceSetting, solve
from soft_tokens.representers.base import TokenRepresenter

log = logging.getLogger(__name__)


class MathEval(L.Callback):
    """Every `every_n_steps` optimizer steps (and at step 0 and the last step) solve the validation problems.

    `val/accuracy` is hard-greedy accuracy (the paper's "hard truths"), used to pick checkpoints. Each extra
    setting logs `val/<name>/pass@1`; `also_training_representer` adds `val/accuracy_<representer>` with the
    training representer run greedy.
    """

    def __init__(
        self,
        hard_greedy: TokenRepresenter,
        settings: dict[str, TokenRepresenter] | None = None,
        every_n_steps: int = 25,
        batch_size: int = 64,
        max_examples: int | None = None,
        also_training_representer: bool = True,
        num_logged_samples: int = 3,
    ) -> None:
        self.hard_greedy = hard_greedy
        self.settings = dict(settings or {})
        self.every_n_steps = every_n_steps
        self.batch_size = batch_size
        self.max_examples = max_examples
        self.also_training_representer = also_training_representer
        self.num_logged_samples = num_logged_samples
        self._last_step = -1

    def _settings(self, pl_module) -> list[tuple[str, InferenceSetting]]:
        """(metric key, setting) pairs for this module."""
        out = [("val/accuracy", InferenceSetting("hard_greedy", self.hard_greedy))]
        rep = pl_module.representer
        if self.also_training_representer and rep.name != "hard":
            out.append((f"val/accuracy_{rep.name}", InferenceSetting(f"{rep.name}_greedy", rep.as_greedy())))
        out += [(f"val/{name}/pass@1", InferenceSetting(name, r)) for name, r in self.settings.items()]
        return out

    def _examples(self, trainer):
        examples = trainer.datamodule.val_examples()
        if self.max_examples is not None:
            examples = examples[: self.max_examples]
        # Each rank scores a disjoint, interleaved shard; results are gathered before logging.
        return examples[trainer.global_rank :: trainer.world_size]

    @torch.no_grad()
    def evaluate(self, trainer: L.Trainer, pl_module) -> dict[str, float]:
        """Solve the validation split under every setting and log the accuracies."""
        step = trainer.global_step
        self._last_step = step
        examples = self._examples(trainer)
        metrics = {}
        for key, setting in self._settings(pl_module):
            res = solve(
                pl_module.policy,
                pl_module.engine,
                pl_module.format_prompt,
                examples,
                setting,
                pl_module.reward.score_batch,
                batch_size=self.batch_size,
                generator=torch.Generator(device=pl_module.device).manual_seed(pl_module.seed + step),
            )
            correct = res.correct.float().to(pl_module.device)
            total = pl_module.all_gather(correct.sum()).sum()
            count = pl_module.all_gather(torch.tensor(float(correct.numel()), device=pl_module.device)).sum()
            metrics[key] = float(total / count.clamp(min=1))
            if key == "val/accuracy" and trainer.is_global_zero:
                for q, c in list(zip(examples, res.completions))[: self.num_logged_samples]:
                    log.info("step %d | %s -> %s (gold %s)", step, q.question, c[0], q.answer)
        for key, value in metrics.items():
            pl_module.log(key, value, on_step=True, on_epoch=False, prog_bar=key == "val/accuracy", rank_zero_only=True)
        if trainer.is_global_zero:
            log.info("step %d | %s", step, "  ".join(f"{k}={v:.3f}" for k, v in metrics.items()))
        return metrics

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == 0 and self._last_step != 0:
            self.evaluate(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        last = trainer.max_steps > 0 and step >= trainer.max_steps
        if step != self._last_step and (step % self.every_n_steps == 0 or last):
            self.evaluate(trainer, pl_module)
