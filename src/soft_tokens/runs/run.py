"""A training run as one object: its start checks, its folder's lock and records, its summary.

`with Run(cfg) as run:` checks the start before anything of the run is written (a resume that would mix two
runs, a finished run, a folder that is not writable), holds the run folder (run.lock, global rank 0), removes
what a killed save left there, writes config.yaml (and a fork's parent.json), and releases the folder when
the body ends; `run.finish(trainer, wall_s)` writes summary.json. `as_command(cfg, train)` runs the whole as
the command line does: a failure is recorded in summary.json, a refusal leaves no trace of the attempt.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from soft_tokens.runs.atomic_write import remove_partial_writes
from soft_tokens.runs.folder import check_start, checkpoint_folders, remove_refused_attempt
from soft_tokens.runs.summary import RunFinished, RunRefused, recorded_failure, write_summary

if TYPE_CHECKING:
    import lightning as L


class Run:
    """One training run in its folder `cfg.paths.output_dir`, held for the body of a `with` block."""

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        self.folder = Path(cfg.paths.output_dir)
        self.parent: dict[str, Any] | None = None  # a fork's parent record (parent.json)
        self._held = contextlib.ExitStack()

    def __enter__(self) -> Run:
        # imported here: train.py starts light (resume.py loads Lightning)
        from soft_tokens.runs.lock import launched_as_global_zero, run_lock
        from soft_tokens.runs.resume import RECORD, check_resume, check_unfinished, write_parent

        # Every start check before anything of the run is written: a refused resume leaves its run as it was.
        self.parent = check_resume(self.cfg)  # a resume that would mix two runs is refused here
        check_unfinished(self.cfg)  # a resume of a run already at trainer.max_steps: nothing to do
        check_start(self.folder, checkpoint_folders(self.cfg))
        first = launched_as_global_zero()
        with contextlib.ExitStack() as held:  # released here if what follows raises, else in __exit__
            held.enter_context(run_lock(self.folder, take=first))  # one writer per run folder
            if first:
                remove_partial_writes([self.folder, *checkpoint_folders(self.cfg)])
            (self.folder / RECORD).write_text(OmegaConf.to_yaml(self.cfg, resolve=True))
            if self.parent is not None:
                write_parent(self.folder, self.parent)
            self._held = held.pop_all()
        return self

    def __exit__(self, *exc: object) -> None:
        self._held.close()

    def finish(self, trainer: L.Trainer, wall_s: float) -> dict[str, float]:
        """The run's final metrics; summary.json (wall time, global step, metrics) written on global rank 0."""
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        if trainer.is_global_zero:
            summary = {"wall_s": round(wall_s, 1), "global_step": trainer.global_step, "metrics": metrics}
            write_summary(self.folder, summary)
        return metrics


def undo_hydra_record() -> None:
    """Remove what Hydra wrote for a run refused at start: a resume's `.hydra/resumes/<time>`, or a new
    folder holding nothing but `.hydra/` (nothing, when the config was composed without a Hydra run)."""
    try:
        run, subdir = HydraConfig.get().runtime.output_dir, HydraConfig.get().output_subdir
    except Exception:  # noqa: BLE001 - no Hydra run: nothing of Hydra's to remove
        return
    if run:
        remove_refused_attempt(run, subdir)


def refuse(message: str) -> NoReturn:
    """Stop a run refused before it began with `message` (no traceback), leaving no folder of its attempt."""
    undo_hydra_record()
    raise SystemExit(message) from None


def as_command(cfg: DictConfig, train: Callable[[DictConfig], dict[str, float]]) -> dict[str, float] | None:
    """train(cfg) as `python train.py` runs it: a failure gets its traceback in the run's log and summary.json
    failed; a refusal exits with its message; a finished run says "nothing to do" and returns None."""
    try:
        with recorded_failure(cfg.paths.output_dir):
            return train(cfg)
    except RunRefused as err:  # refused before anything of the run was written: undo Hydra's record only
        if isinstance(err, RunFinished):
            undo_hydra_record()
            print(f"{err.kind}: {err}")
            return None
        refuse(f"{err.kind}: {err}")
