"""A training run's summary.json: a run that raises gets its traceback in the run's log and is marked failed."""

from __future__ import annotations

import json
import logging
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SUMMARY = "summary.json"
LOG = "train.log"  # the run log's name when Hydra's file handler is not there (train.py called directly)
COMPLETED, FAILED, INCOMPLETE = "completed", "failed", "incomplete"


class RunRefused(ValueError):
    """A run refused before it began (an incompatible resume): its folder is left as it was, no summary."""


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
        with log_file.open("a") as f:
            f.write(f"run failed:\n{trace}")
    summary = {"status": FAILED, "error": f"{type(err).__name__}: {err}", "log": log_file.name}
    path = run_dir / SUMMARY
    path.write_text(json.dumps(summary, indent=1))
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
