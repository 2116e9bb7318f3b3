"""Atomic file writes: a file under its final name is either the old one or the complete new one.

The bytes go to a temporary file in the target's own folder (so the rename never crosses filesystems and
never becomes a copy), which is flushed and fsynced, then renamed over the final name with os.replace.
A save killed midway leaves only a temporary file, `.<name>.<random>.partial`, which the next run started in
that folder removes (`remove_partial_writes`).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger(__name__)

PARTIAL_SUFFIX = ".partial"


def write_failed(path: str | Path, err: OSError) -> OSError:
    """An OSError naming `path` and saying the disk may be full (the library's own messages name neither)."""
    full = err.errno in (errno.ENOSPC, errno.EDQUOT)
    why = "the disk is full or over quota" if full else "the disk may be full, or the folder not writable"
    return OSError(err.errno, f"cannot write {path}: {err.strerror or err} ({why})")


def _fsync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable (not every filesystem can open a folder: then it is left to the OS)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _create_partial(path: Path) -> tuple[int, Path]:
    """A new temporary file beside `path`, created with the umask's permissions (as a plain open would)."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}{PARTIAL_SUFFIX}")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> Path:
    """Write `path` with `write(file)` through a fsynced temporary file beside it, renamed over it at the end."""
    path = Path(path)
    try:
        fd, tmp = _create_partial(path)
    except OSError as err:
        raise write_failed(path, err) from err
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(err, OSError):
            raise write_failed(path, err) from err
        raise
    _fsync_folder(path.parent)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically."""
    return atomic_write(path, lambda f: f.write(text.encode()))


def remove_partial_writes(folders: Iterable[str | Path]) -> list[Path]:
    """Remove the temporary files killed saves left in `folders` (not recursive); return the removed paths."""
    removed = []
    for folder in folders:
        for path in Path(folder).glob(f".*{PARTIAL_SUFFIX}"):
            with contextlib.suppress(OSError):
                path.unlink()
                removed.append(path)
    if removed:
        log.info(
            "removed %d partial file(s) a killed save left: %s", len(removed), ", ".join(map(str, removed))
        )
    return removed
