"""Checkpoints every n optimizer steps and at the last step, so a run shorter than n still keeps its best."""

from __future__ import annotations

from lightning.pytorch.callbacks import ModelCheckpoint


class StepCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint (every `every_n_train_steps`), plus a save at `max_steps`.

    The evaluation callbacks also run at the last step; without this, a run whose length is not a multiple
    of the interval would keep neither that evaluation's checkpoint nor, when shorter than the interval,
    any best checkpoint at all.
    """

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        step = trainer.global_step
        last = trainer.max_steps > 0 and step >= trainer.max_steps
        if not last or self._should_skip_saving_checkpoint(trainer):
            return
        candidates = self._monitor_candidates(trainer)
        self._save_topk_checkpoint(trainer, candidates)
        self._save_last_checkpoint(trainer, candidates)
