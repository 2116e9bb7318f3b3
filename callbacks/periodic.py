"""The base of the evaluation callbacks: their schedule (step 0, every n steps, the last step) and logging."""

from __future__ import annotations

import logging

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger


class PeriodicEval(L.Callback):
    """Runs `measure(trainer, pl_module)` at step 0, every `every_n_steps` optimizer steps and at the last step.

    Each step is measured once (the last step's bookkeeping). The metrics `measure` returns are published:
    written once per evaluation to every logger, at the global step they were measured at (step 0 = the
    model before any update), kept in `trainer.callback_metrics`, and printed as one
    `step N | key=value ...` line (fractions, three decimals) by the subclass's module logger.
    """

    def __init__(self, every_n_steps: int) -> None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self._last_step = -1

    def measure(self, trainer: L.Trainer, pl_module) -> dict[str, float]:
        """The metrics of one evaluation (every process calls it; the metrics are already reduced)."""
        raise NotImplementedError

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == 0 and self._last_step != 0:
            self._run(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        last = trainer.max_steps > 0 and step >= trainer.max_steps
        if step != self._last_step and (step % self.every_n_steps == 0 or last):
            self._run(trainer, pl_module)

    def _run(self, trainer: L.Trainer, pl_module) -> None:
        step = self._last_step = trainer.global_step
        metrics = self.measure(trainer, pl_module)
        self.publish(trainer, metrics, step)
        if trainer.is_global_zero:
            logging.getLogger(type(self).__module__).info(
                "step %d | %s", step, "  ".join(f"{k}={v:.3f}" for k, v in metrics.items())
            )

    @staticmethod
    def publish(trainer: L.Trainer, metrics: dict[str, float], step: int) -> None:
        """Write metrics to every logger at `step` and keep them in callback_metrics (checkpoints, summary).

        Not through LightningModule.log: from a callback, Lightning writes those at the next training step's
        logging, repeats the last value at every step and keeps one of two evaluations in the same batch.
        """
        if not metrics:
            return
        for key, value in metrics.items():
            trainer.callback_metrics[key] = torch.tensor(float(value))
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(dict(metrics), step=step)


def tensorboard_writers(trainer: L.Trainer) -> list:
    """The SummaryWriters of the trainer's TensorBoard loggers (rank zero only; empty elsewhere)."""
    if not trainer.is_global_zero:
        return []
    return [lg.experiment for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
