"""Periodic math accuracy on a held-out split, under one or more inference settings."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch

from callbacks.periodic import PeriodicEval, tensorboard_writers
from soft_tokens.data.types import Example
from soft_tokens.eval.metrics import EntropyProfile, MeanAccuracy, PassAtK
from soft_tokens.eval.plots import entropy_figure
from soft_tokens.eval.solve import EvalSetting, InferenceSetting, build_setting, solve
from soft_tokens.representers.base import TokenRepresenter
from soft_tokens.rollout.seeding import mix_seed
from soft_tokens.training.distributed import full_parameters

log = logging.getLogger(__name__)


class MathEval(PeriodicEval):
    """Every `every_n_steps` optimizer steps (and at step 0 and the last step) solve the validation problems.

    `val/accuracy` is hard-greedy accuracy (the paper's "hard truths"), used to pick checkpoints.
    `also_training_representer` adds `val/accuracy_<representer>` with the training representer run greedy.
    Each entry of `settings` (name -> {representer, num_samples, k_values} or a bare representer) logs
    `val/<name>/pass@1` and `val/<name>/pass@<k>` for each k of k_values (default: 1, powers of two, and
    num_samples). Metrics are synchronised over processes (each one solves a disjoint shard of the problems).
    With a TensorBoard logger, the mean CoT entropy by position of every setting run is logged as a figure
    (`val/cot_entropy`) and the first `num_logged_samples` hard-greedy completions as text
    (`val/completions`: question, chain of thought, answer, gold); the same are printed to the log.
    """

    def __init__(
        self,
        hard_greedy: TokenRepresenter,
        settings: Mapping[str, Any] | None = None,
        every_n_steps: int = 40,
        batch_size: int = 200,
        max_examples: int | None = None,
        also_training_representer: bool = True,
        num_logged_samples: int = 3,
        log_entropy_figure: bool = True,
    ) -> None:
        super().__init__(every_n_steps)
        self.hard_greedy = hard_greedy
        self.settings = [build_setting(str(name), spec) for name, spec in (settings or {}).items()]
        self.batch_size = batch_size
        self.max_examples = max_examples
        self.also_training_representer = also_training_representer
        self.num_logged_samples = num_logged_samples
        self.log_entropy_figure = log_entropy_figure

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
    def measure(self, trainer: L.Trainer, pl_module) -> dict[str, float]:
        """Solve the validation split under every setting: the metrics; completions and entropy figure logged."""
        step = trainer.global_step
        examples = self._examples(trainer)
        device = pl_module.device
        metrics: dict[str, float] = {}
        profiles: dict[str, torch.Tensor] = {}
        for i, ev in enumerate(self._settings(pl_module)):
            seed = mix_seed(pl_module.seed, step, trainer.global_rank, i)
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
                self._log_completions(trainer, examples, res, step)
        if trainer.is_global_zero and self.log_entropy_figure:
            self._log_entropy_figure(trainer, profiles, step)
        return metrics

    def _log_completions(self, trainer: L.Trainer, examples: list[Example], res, step: int) -> None:
        """Print the first completions (CoT, for soft/fuzzy its argmax shadow, then the answer) and log them."""
        rows = list(zip(examples, res.cot_texts, res.completions, res.correct))[: self.num_logged_samples]
        for ex, cot, answer, ok in rows:
            log.info(
                "step %d | Q: %s\n  CoT: %s\n  answer: %s | gold %s (%s)",
                step,
                ex.question,
                cot[0],
                answer[0],
                ex.answer,
                "correct" if bool(ok[0]) else "wrong",
            )
        writers = tensorboard_writers(trainer)
        if rows and writers:
            text = completions_markdown(
                [(ex.question, c[0], a[0], ex.answer, bool(k[0])) for ex, c, a, k in rows]
            )
            for writer in writers:
                writer.add_text("val/completions", text, global_step=step)

    @staticmethod
    def _log_entropy_figure(trainer: L.Trainer, profiles: dict[str, torch.Tensor], step: int) -> None:
        writers = tensorboard_writers(trainer)
        if not writers:
            return
        fig = entropy_figure(profiles, title=f"CoT entropy by position, step {step}")
        for writer in writers:
            writer.add_figure("val/cot_entropy", fig, global_step=step, close=False)


def completions_markdown(rows: list[tuple[str, str, str, str, bool]]) -> str:
    """A markdown table of (question, CoT, answer, gold, correct) rows, for TensorBoard's text tab."""

    def cell(text: str) -> str:
        return " ".join(str(text).split()).replace("|", "\\|")

    lines = ["| question | chain of thought | answer | gold | correct |", "|---|---|---|---|---|"]
    lines += [f"| {cell(q)} | {cell(c)} | {cell(a)} | {cell(g)} | {ok} |" for q, c, a, g, ok in rows]
    return "\n".join(lines)
