"""Checkpoints every n optimizer steps and at the last step, so a run shorter than n still keeps its best;
each checkpoint file written atomically (a kill or a full disk never leaves a truncated one)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint

from soft_tokens.runs.atomic_write import atomic_write


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


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint file writer, but through a fsynced temporary file in the checkpoint's own folder
    renamed over the final name (Lightning's own temporary file may sit on another filesystem, where the
    move becomes a copy that first empties the target)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        if "://" in str(path):  # a remote (fsspec) location: Lightning's own transaction
            return super().save_checkpoint(checkpoint, path)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()  # serialised first (as Lightning does): a write error is then a plain OSError
        torch.save(checkpoint, buffer)
        atomic_write(path, lambda f: f.write(buffer.getbuffer()))


def use_atomic_checkpoints(trainer: L.Trainer) -> bool:
    """Make the trainer write checkpoint files atomically, where its strategy writes one file with Lightning's
    plain writer (single device, DDP, FSDP with full state dicts); DeepSpeed's and sharded checkpoint folders,
    and any writer a user configured, are left as they are. True when installed."""
    strategy = trainer.strategy
    if type(strategy.checkpoint_io) is not TorchCheckpointIO:
        return False
    strategy.checkpoint_io = AtomicCheckpointIO()
    return True
