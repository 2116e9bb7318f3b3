"""A callback for multi-process tests: records each rank's prompt ids and rollout shapes per step."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L


class RecordBatches(L.Callback):
    """Appends {rank, step, ids, G} per training batch to <path>/batches.rank<r>.jsonl."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        row = {"rank": trainer.global_rank, "step": trainer.global_step, "ids": batch["id"], "G": pl_module.G}
        row["world"] = trainer.world_size
        # A checksum of the policy: equal on every rank iff gradients were synchronised.
        row["param_sum"] = float(sum(p.detach().double().abs().sum() for p in pl_module.policy.parameters()))
        row["metrics"] = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")}
        with open(self.path / f"batches.rank{trainer.global_rank}.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")


class NanLossOnce(L.Callback):
    """Makes one rank's loss NaN in one training step (a non-finite step that every rank must skip)."""

    def __init__(self, step: int = 0, rank: int = 1) -> None:
        self.step, self.rank = step, rank

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        estimator = pl_module.estimator
        estimator.__dict__.pop("loss", None)  # the class's loss again after the poisoned step
        if trainer.global_step != self.step or trainer.global_rank != self.rank:
            return
        original = estimator.loss

        def nan_loss(*args, **kwargs):
            loss, metrics = original(*args, **kwargs)
            return loss * float("nan"), metrics

        estimator.loss = nan_loss
