"""One writer per run folder: a lock file, `<run>/run.lock`, holding the writer's pid, host and start time.

A run (runs/run.py) takes it on global rank 0 only before it writes anything of the run, and removes it when the run
ends. A second process starting or resuming in a held folder is refused naming the holder; a lock whose
process is gone (its pid not running on this host, or the host rebooted since) is taken over with a log
line. A lock held from another host cannot be checked from here: it is refused, saying how to remove it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from soft_tokens.runs.summary import RunRefused

log = logging.getLogger(__name__)

LOCK = "run.lock"
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


class RunFolderBusy(RunRefused):
    """The run folder is held by another live process."""

    kind = "run refused"


def _boot_id() -> str:
    try:
        return BOOT_ID.read_text().strip()
    except OSError:
        return ""


def this_holder() -> dict[str, Any]:
    """The lock record of this process: pid, host, boot id, start time."""
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    return {"pid": os.getpid(), "host": socket.gethostname(), "boot_id": _boot_id(), "started": started}


def pid_running(pid: int) -> bool:
    """Whether a process with this pid runs on this host (one of another user counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_stale(holder: dict[str, Any]) -> bool:
    """Whether a lock record's process is gone: same host and (another boot, or its pid not running, or us)."""
    if holder.get("host") != socket.gethostname():
        return False
    if holder.get("boot_id") and _boot_id() and holder["boot_id"] != _boot_id():
        return True
    pid = int(holder.get("pid", -1))
    return pid == os.getpid() or not pid_running(pid)


def _create(path: Path, record: dict[str, Any]) -> bool:
    """Create `path` holding `record` in one step (a complete file or none); False if it exists."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    tmp.write_text(json.dumps(record))
    try:
        os.link(tmp, path)  # atomic, fails if the lock exists, and never shows a half-written lock
        return True
    except FileExistsError:
        return False
    except OSError:  # a filesystem without hard links: exclusive create, then the content
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(record))
        return True
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def read_holder(path: Path) -> dict[str, Any] | None:
    """The lock record in `path`; None if it vanished; {} if it cannot be read."""
    try:
        holder = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def busy_message(folder: Path, holder: dict[str, Any]) -> str:
    """Why a held folder is refused: the holder, and how to go on once it is really gone."""
    lock = folder / LOCK
    if not holder:
        return (
            f"the run folder {folder} is locked by {lock}, which cannot be read; if no training process uses "
            f"this folder, remove {lock} and start again"
        )
    return (
        f"the run folder {folder} is in use by another training process (pid {holder.get('pid')} on "
        f"{holder.get('host')}, since {holder.get('started')}): two processes would write the same log, "
        f"checkpoints and summary. Wait for it to end, or stop it; if that process is gone (another host cannot "
        f"be checked from here), remove {lock} and start again"
    )


def acquire(folder: str | Path) -> dict[str, Any]:
    """Take the lock of `folder` or raise RunFolderBusy naming its holder; return the record written."""
    folder = Path(folder)
    path, record = folder / LOCK, this_holder()
    for _ in range(3):
        if _create(path, record):
            return record
        holder = read_holder(path)
        if holder is None:  # released meanwhile
            continue
        if not holder or not is_stale(holder):
            raise RunFolderBusy(busy_message(folder, holder))
        log.warning(
            "run folder %s: taking over the lock of pid %s on %s (started %s), which is no longer running",
            folder,
            holder.get("pid"),
            holder.get("host"),
            holder.get("started"),
        )
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    raise RunFolderBusy(busy_message(folder, read_holder(path) or {}))


def release(folder: str | Path, record: dict[str, Any]) -> None:
    """Remove the lock of `folder` if it is still `record` (not one another process took over since)."""
    path = Path(folder) / LOCK
    if read_holder(path) == record:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


# Where launchers put a process's rank (Lightning's order: torchrun, Lightning's own, SLURM, LSF).
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")


def launched_as_global_zero() -> bool:
    """Whether this process is global rank 0 as its launcher set the environment (true when started alone),
    known before a Trainer exists."""
    rank = next((os.environ[k] for k in RANK_VARIABLES if os.environ.get(k, "").strip()), "0")
    node = os.environ.get("NODE_RANK", "").strip() or os.environ.get("GROUP_RANK", "").strip() or "0"
    return int(rank) == 0 and int(node) == 0


@contextlib.contextmanager
def run_lock(folder: str | Path, take: bool = True) -> Iterator[None]:
    """Hold the lock of `folder` for the body (when `take`: global rank 0 only)."""
    if not take:
        yield
        return
    record = acquire(folder)
    try:
        yield
    finally:
        release(folder, record)
