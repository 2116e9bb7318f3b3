"""Run folders: one per run, never shared; a resumed run continues in its own; checked writable at start.

conf/hydra/default.yaml names run and sweep folders with the `run_dir` resolver registered here: a new
folder is created atomically, with a suffix (`_1`, `_2`, ...) when one of that name exists (two runs
started in the same second), and a run resumed from `<run>/checkpoints/<file>.ckpt` gets `<run>` back, so
its checkpoint callback keeps tracking the best checkpoint.
"""

from __future__ import annotations

import tempfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import OmegaConf

if TYPE_CHECKING:
    import lightning as L

CHECKPOINT_FOLDER = "checkpoints"


def new_folder(base: str | Path) -> Path:
    """Create and return `base`, or `base_1`, `base_2`, ... if it exists (atomic: mkdir, no check-then-create)."""
    base = Path(base)
    base.parent.mkdir(parents=True, exist_ok=True)
    for k in range(10_000):
        candidate = base if k == 0 else base.with_name(f"{base.name}_{k}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return candidate
    raise FileExistsError(f"{base}: 10,000 run folders of this name exist")


def run_dir(default: str, ckpt_path: str | None = None) -> str:
    """The folder of a run: the one holding `ckpt_path`'s checkpoints folder when resuming, else a new one."""
    if ckpt_path:
        ckpt = Path(ckpt_path).resolve()
        if ckpt.parent.name == CHECKPOINT_FOLDER and ckpt.parent.parent.is_dir():
            return str(ckpt.parent.parent)
    return str(new_folder(default))


def register_resolver() -> None:
    """Register `run_dir` with OmegaConf (cached per config, as Hydra's `now`: one folder per run or sweep)."""
    if not OmegaConf.has_resolver("run_dir"):
        OmegaConf.register_new_resolver("run_dir", run_dir, use_cache=True)


def check_writable(folder: str | Path, what: str) -> None:
    """Create `folder` if needed and write a probe file in it; raise naming it if either fails."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-probe-"):
            pass
    except OSError as err:
        raise PermissionError(f"the {what} {folder} is not a writable folder: {err}") from None


def check_checkpoint_file(path: str | Path) -> None:
    """Refuse a checkpoint to resume from that is missing, empty or not a complete torch archive."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ckpt_path={path}: no such file")
    if path.stat().st_size == 0:
        raise ValueError(f"ckpt_path={path}: the file is empty (0 bytes), not a checkpoint")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"ckpt_path={path}: not a torch checkpoint archive (truncated or corrupt?)")


def check_run(trainer: L.Trainer, out_dir: str | Path, ckpt_path: str | None) -> None:
    """Before fitting: the run folder and every checkpoint folder are writable, the resume checkpoint is sound."""
    check_writable(out_dir, "run folder")
    for callback in trainer.checkpoint_callbacks:
        if getattr(callback, "dirpath", None):
            check_writable(callback.dirpath, "checkpoint folder")
    if ckpt_path:
        check_checkpoint_file(ckpt_path)
