"""Run folders: one per run, never shared; a resumed run continues in its own; checked writable at start.

conf/hydra/default.yaml names run and sweep folders with the `run_dir` resolver registered here: a new
folder is created atomically, with a suffix (`_1`, `_2`, ...) when one of that name exists (two runs
started in the same second), and a run resumed from `<run>/checkpoints/<file>.ckpt` gets `<run>` back, so
its checkpoint callback keeps tracking the best checkpoint.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
import zipfile
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from soft_tokens.runs.summary import StartRefused

CHECKPOINT_FOLDER = "checkpoints"
HYDRA_SUBDIR, RESUMES = ".hydra", "resumes"


def new_folder(base: str | Path) -> Path:
    """Create and return `base`, or `base_1`, `base_2`, ... if it exists (atomic: mkdir, no check-then-create)."""
    base = Path(base)
    try:
        base.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        blocking = next((p for p in reversed(base.parents) if p.exists() and not p.is_dir()), None)
        why = f"{blocking} is a file, not a folder" if blocking else f"{err.strerror or err}"
        # SystemExit, not an OSError: raised inside a Hydra resolver, an exception would be shown buried in
        # an interpolation traceback; this is shown as it is.
        raise SystemExit(
            f"cannot create the run folder {base}: {why} (set paths.log_dir to a folder)"
        ) from None
    for k in range(10_000):
        candidate = base if k == 0 else base.with_name(f"{base.name}_{k}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return candidate
    raise FileExistsError(f"{base}: 10,000 run folders of this name exist")


def resumed_run(ckpt_path: str | None, fork: bool = False) -> Path | None:
    """The run folder a resume from `ckpt_path` continues in (`<run>` of `<run>/checkpoints/<file>`), if any."""
    if not ckpt_path or fork:
        return None
    ckpt = Path(ckpt_path).resolve()
    if ckpt.parent.name == CHECKPOINT_FOLDER and ckpt.parent.parent.is_dir():
        return ckpt.parent.parent
    return None


def run_dir(default: str, ckpt_path: str | None = None, fork: bool = False) -> str:
    """The folder of a run: the one holding `ckpt_path`'s checkpoints folder when resuming, else a new one."""
    resumed = resumed_run(ckpt_path, fork)
    return str(resumed) if resumed is not None else str(new_folder(default))


def hydra_subdir(ckpt_path: str | None = None, fork: bool = False) -> str:
    """Where Hydra writes the run's composed config: `.hydra`, or for a resume a new `.hydra/resumes/<time>`,
    so the run's own `.hydra/` record is not overwritten (and a refused resume can remove its attempt's)."""
    resumed = resumed_run(ckpt_path, fork)
    if resumed is None:
        return HYDRA_SUBDIR
    folder = new_folder(resumed / HYDRA_SUBDIR / RESUMES / time.strftime("%Y-%m-%d_%H-%M-%S"))
    return str(folder.relative_to(resumed))


def remove_refused_attempt(run: str | Path, subdir: str | None) -> None:
    """Undo what Hydra wrote for a refused resume or fork: a resume's `.hydra/resumes/<time>`, or a fork's new
    folder when it holds nothing else than its `.hydra/`; the run's own files are left as they were."""
    parts = Path(subdir or "").parts
    if len(parts) == 3 and parts[:2] == (HYDRA_SUBDIR, RESUMES):
        shutil.rmtree(Path(run, subdir), ignore_errors=True)
        with contextlib.suppress(OSError):  # left if an earlier resume's record is in it
            Path(run, HYDRA_SUBDIR, RESUMES).rmdir()
    elif parts == (HYDRA_SUBDIR,) and {p.name for p in Path(run).iterdir()} <= {HYDRA_SUBDIR}:
        shutil.rmtree(run, ignore_errors=True)


def register_resolver() -> None:
    """Register `run_dir` and `hydra_subdir` with OmegaConf (cached per config, as Hydra's `now`: one folder
    per run or sweep)."""
    for name, resolver in (("run_dir", run_dir), ("hydra_subdir", hydra_subdir)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver, use_cache=True)


def check_writable(folder: str | Path, what: str) -> None:
    """Create `folder` if needed and write a probe file in it; raise StartRefused naming it if either fails."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-probe-"):
            pass
    except OSError as err:
        raise StartRefused(f"the {what} {folder} is not a writable folder: {err}") from None


# Files that make a folder a checkpoint: DeepSpeed's (`latest` names its tag) and sharded FSDP's metadata.
CHECKPOINT_FOLDER_MARKERS = ("latest", "meta.pt")


def is_checkpoint_folder(path: str | Path) -> bool:
    """Whether `path` is a checkpoint written as a folder (DeepSpeed, sharded FSDP)."""
    return Path(path).is_dir() and any((Path(path) / m).is_file() for m in CHECKPOINT_FOLDER_MARKERS)


def check_checkpoint_file(path: str | Path, option: str = "ckpt_path", folders: bool = False) -> None:
    """Refuse a checkpoint that is missing, a folder, empty or not a complete torch archive (zip), naming
    `option`; with `folders`, a DeepSpeed or sharded checkpoint folder is accepted."""
    path = Path(path)
    if path.is_dir():
        if folders and is_checkpoint_folder(path):
            return
        raise IsADirectoryError(
            f"{option}={path}: a folder, not a checkpoint file; pass a .ckpt file a training run wrote in "
            "<run>/checkpoints/ (e.g. <run>/checkpoints/last.ckpt)"
        )
    if not path.is_file():
        raise FileNotFoundError(f"{option}={path}: no such file")
    if path.stat().st_size == 0:
        raise ValueError(f"{option}={path}: an empty file (0 bytes), not a checkpoint")
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"{option}={path}: not a readable checkpoint: not a torch checkpoint archive (truncated, corrupt, or "
            "not a checkpoint at all); pass a .ckpt file a training run wrote in <run>/checkpoints/"
        )


def check_start(out_dir: str | Path, checkpoint_folders: list[str | Path]) -> None:
    """Before anything of a run is written: the run folder and every checkpoint folder are writable."""
    check_writable(out_dir, "run folder")
    for folder in checkpoint_folders:
        check_writable(folder, "checkpoint folder")


def checkpoint_folders(cfg: DictConfig) -> list[Path]:
    """The folders the configured checkpoint callbacks write to (their `dirpath`), before they are built."""
    callbacks = cfg.get("callbacks") or {}
    return [Path(c.dirpath) for c in callbacks.values() if c is not None and c.get("dirpath")]
