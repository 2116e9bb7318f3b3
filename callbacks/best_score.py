"""The run's best checkpoint score as a metric (`val/accuracy_best`): what a hyper-parameter search optimizes."""

from __future__ import annotations

import lightning as L
import torch


class BestScore(L.Callback):
    """At the end of training, put the best score of the trainer's checkpoint callback in
    `trainer.callback_metrics` as `<monitor>_best` (`val/accuracy_best`: the best hard-greedy validation
    accuracy, the checkpoint the paper selects), so train.py returns it and summary.json records it.

    Step 0 (the model before any update) is measured but never checkpointed, so it never counts: a run whose
    updates only lower the accuracy scores its best trained checkpoint, not the base model. With no
    checkpoint callback, or none saved, nothing is added (a sweep reading the metric then names it missing).
    """

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        ckpt = trainer.checkpoint_callback
        score = getattr(ckpt, "best_model_score", None)
        if ckpt is None or score is None or not ckpt.monitor:
            return
        trainer.callback_metrics[f"{ckpt.monitor}_best"] = torch.as_tensor(score).detach().float().cpu()
