"""A training run's summary.json: a run that raises gets its traceback in the run's log and is marked failed."""

from __future__ import annotations

import contextlib
import json
import logging
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from soft_tokens.runs.atomic_write import atomic_write_text

log = logging.getLogger(__name__)

SUMMARY = "summary.json"
LOG = "train.log"  # the run log's name when Hydra's file handler is not there (train.py called directly)
COMPLETED, FAILED, INCOMPLETE = "completed", "failed", "incomplete"


class RunRefused(ValueError):
    """A run refused before it began (an incompatible resume, a folder in use or not writable): its folder is
    left as it was, no summary (a completed run's summary.json is kept)."""

    kind = "run refused"  # how train.py's message starts


class StartRefused(RunRefused, PermissionError):
    """The run folder or a checkpoint folder is not writable: found before anything of the run is written."""


class RunFinished(RunRefused):
    """A resume of a run that already reached trainer.max_steps: nothing to do, nothing written."""

    kind = "nothing to do"


def read_summary(run_dir: str | Path) -> dict[str, Any]:
    """summary.json of a run folder with its `status`: completed, failed, or incomplete (no summary.json)."""
    path = Path(run_dir) / SUMMARY
    if not path.is_file():
        return {"status": INCOMPLETE}
    try:
        summary = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(summary, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(summary).__name__}")
    return {"status": COMPLETED, **summary}


def write_summary(run_dir: str | Path, summary: dict[str, Any]) -> Path:
    """Write a finished run's summary.json atomically (a full disk leaves the old file, naming the path)."""
    return atomic_write_text(Path(run_dir) / SUMMARY, json.dumps(summary, indent=1))


def _log_file_in(run_dir: Path) -> Path | None:
    """The file inside run_dir a handler of the root logger already writes (Hydra's job log), if any."""
    for handler in logging.getLogger().handlers:
        name = getattr(handler, "baseFilename", None)
        if name and Path(name).resolve().parent == run_dir.resolve():
            return Path(name)
    return None


def record_failure(run_dir: str | Path, err: BaseException) -> Path:
    """Log err's traceback to the run's log and write summary.json with status failed; return its path."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    trace = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    log.error("run failed:\n%s", trace.rstrip())
    log_file = _log_file_in(run_dir)
    if log_file is None:
        log_file = run_dir / LOG
        with contextlib.suppress(OSError), log_file.open("a") as f:  # a full disk: the error is raised anyway
            f.write(f"run failed:\n{trace}")
    summary = {"status": FAILED, "error": f"{type(err).__name__}: {err}", "log": log_file.name}
    path = run_dir / SUMMARY
    try:
        atomic_write_text(path, json.dumps(summary, indent=1))
    except OSError as write_err:  # a full disk: the run's own error stays the one raised
        log.error("%s", write_err)
    return path


@contextmanager
def recorded_failure(run_dir: str | Path) -> Iterator[None]:
    """Run the body; if it raises, record the failure in run_dir (on rank zero) and re-raise; a RunRefused
    is re-raised as it is (the folder may be another run's, which a refused resume must leave untouched)."""
    try:
        yield
    except RunRefused:
        raise
    except Exception as err:
        from lightning.fabric.utilities.rank_zero import (
            rank_zero_only,
        )  # imported here: train.py starts light

        if rank_zero_only.rank == 0:
            record_failure(run_dir, err)
        raise
