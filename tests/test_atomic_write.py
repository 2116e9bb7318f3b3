"""Atomic writes of checkpoints and summary.json: a failed or killed save never leaves a truncated file under its
final name, the temporary file sits beside the target, and an OSError names the path and a full disk."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import lightning as L
import pytest
import torch

from callbacks.checkpoint import AtomicCheckpointIO, use_atomic_checkpoints
from soft_tokens.runs import atomic_write as atomic
from soft_tokens.runs.summary import write_summary


def full_disk_at_fsync(monkeypatch) -> None:
    """The disk fills while the new file is written: its fsync fails with ENOSPC (bytes already written)."""

    def fsync(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(atomic.os, "fsync", fsync)


def test_checkpoint_save_on_a_full_disk_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"global_step": 1, "w": torch.ones(1000)}, ckpt)
    old = ckpt.read_bytes()
    full_disk_at_fsync(monkeypatch)
    with pytest.raises(OSError, match=f"cannot write {ckpt}: .*the disk is full"):
        io.save_checkpoint({"global_step": 2, "w": torch.zeros(1000)}, ckpt)
    assert ckpt.read_bytes() == old  # the complete old checkpoint, not a truncated new one
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["last.ckpt"]  # no temporary file left


def test_first_checkpoint_save_that_fails_leaves_no_file(tmp_path, monkeypatch):
    ckpt = tmp_path / "step00001-acc0.000.ckpt"
    full_disk_at_fsync(monkeypatch)
    with pytest.raises(OSError, match="step00001-acc0.000.ckpt"):
        AtomicCheckpointIO().save_checkpoint({"w": torch.ones(10)}, ckpt)
    assert list(tmp_path.iterdir()) == []


def test_temporary_file_is_written_beside_the_target_then_renamed(tmp_path, monkeypatch):
    # In the checkpoint's own folder: a rename there never crosses filesystems (no copy that empties it).
    moves, replace = [], os.replace
    monkeypatch.setattr(atomic.os, "replace", lambda a, b: (moves.append((Path(a), Path(b))), replace(a, b)))
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"global_step": 3}, ckpt)
    ((tmp, final),) = moves
    assert final == ckpt and tmp.parent == ckpt.parent
    assert tmp.name.startswith(".last.ckpt.") and tmp.name.endswith(".partial")
    assert torch.load(ckpt, weights_only=True)["global_step"] == 3


def test_summary_on_a_full_disk_keeps_the_old_summary(tmp_path, monkeypatch):
    write_summary(tmp_path, {"global_step": 4})
    old = (tmp_path / "summary.json").read_text()
    full_disk_at_fsync(monkeypatch)
    with pytest.raises(OSError, match=f"cannot write {tmp_path / 'summary.json'}: .*disk is full"):
        write_summary(tmp_path, {"global_step": 5})
    assert (tmp_path / "summary.json").read_text() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


def test_other_write_errors_name_the_path_and_a_possibly_full_disk(tmp_path):
    def broken(f) -> None:
        f.write(b"half a file")
        raise OSError(errno.EIO, "Input/output error")

    with pytest.raises(OSError, match=f"cannot write {tmp_path / 'x.bin'}: Input/output error .*may be full"):
        atomic.atomic_write(tmp_path / "x.bin", broken)
    assert list(tmp_path.iterdir()) == []


def test_partial_files_of_killed_saves_are_removed(tmp_path):
    left = [tmp_path / ".last.ckpt.1a2b3c4d.partial", tmp_path / ".summary.json.00ff00ff.partial"]
    for p in left:
        p.write_bytes(b"half")
    kept = [tmp_path / "last.ckpt", tmp_path / "notes.partial"]  # not a temporary file of ours
    for p in kept:
        p.write_bytes(b"x")
    assert sorted(atomic.remove_partial_writes([tmp_path])) == sorted(left)
    assert sorted(tmp_path.iterdir()) == sorted(kept)


def test_trainer_writes_checkpoints_atomically_where_lightning_writes_one_file(tmp_path):
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, default_root_dir=tmp_path)
    assert use_atomic_checkpoints(trainer) and isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    assert not use_atomic_checkpoints(trainer)  # a writer already replaced (or a user's own) is left alone


def test_tensorboard_write_on_a_full_disk_names_the_folder(tmp_path, monkeypatch):
    from soft_tokens.training.builders import RunTensorBoardLogger

    logger = RunTensorBoardLogger(save_dir=str(tmp_path), name=None, version="")

    def add_scalar(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(logger.experiment, "add_scalar", add_scalar)
    with pytest.raises(OSError, match=f"cannot write {tmp_path}: .*the disk is full") as raised:
        logger.log_metrics({"train/reward": 0.3}, step=1)
    assert "you tried to log" not in str(raised.value)
