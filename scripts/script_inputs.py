"""The scripts' command-line inputs, checked: a missing or unreadable path or a malformed value ends in the
script's usage message naming it (exit status 2), never in a traceback or a silently skipped input.

The `argparse` types (`existing_folder`, `output_file`, `count`, `number_list`, ...) are checked while the
arguments are parsed, so an `--out` into a missing folder is refused before any computation; what is read
later (`read_json`, `read_config`, `read_text`) raises InputError, which `usage_errors` turns into the same
usage message.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class InputError(ValueError):
    """An input a script cannot use; the message names the path or option and what is wrong."""


def existing_folder(text: str) -> Path:
    """A folder that exists and can be listed (argparse type)."""
    path = Path(text).expanduser()
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{text}: no such folder")
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: not a folder")
    if not os.access(path, os.R_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"{text}: the folder cannot be read (permissions)")
    return path


def output_file(text: str) -> Path:
    """A file to write: its folder exists and is writable, and it is not itself a folder (argparse type)."""
    path = Path(text).expanduser()
    folder = path.parent
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: a folder, not a file to write")
    if not folder.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: no such folder {folder} (create it first)")
    if not os.access(folder, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise argparse.ArgumentTypeError(f"{text}: cannot write there (permissions)")
    return path


def count(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer >= minimum."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is below {minimum}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def number(low: float = -math.inf, low_closed: bool = True) -> Callable[[str], float]:
    """An argparse type: a finite number above `low` (or equal to it when `low_closed`)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value) or value < low or (value == low and not low_closed):
            raise argparse.ArgumentTypeError(
                f"{text} must be a finite number {'>=' if low_closed else '>'} {low:g}"
            )
        return value

    return parse


def comma_list(item: Callable[[str], Any]) -> Callable[[str], list[Any]]:
    """An argparse type: a non-empty comma list of `item` values (e.g. `0,1,2`)."""

    def parse(text: str) -> list[Any]:
        parts = [p.strip() for p in text.split(",")]
        if not all(parts):
            raise argparse.ArgumentTypeError(f"{text!r}: an empty item in the comma list")
        return [item(p) for p in parts]

    return parse


def read_text(path: Path) -> str:
    """The text of a file, or InputError naming it (missing, a folder, unreadable)."""
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except OSError as err:
        raise InputError(f"{path}: cannot read it ({err.strerror or err})") from None


def read_json(path: Path) -> Any:
    """A JSON file's value, or InputError naming it."""
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: not valid JSON ({err})") from None


def read_config(path: Path) -> Any:
    """A YAML config (OmegaConf), or InputError naming it."""
    from omegaconf import OmegaConf

    text = read_text(path)
    try:
        return OmegaConf.create(text)
    except Exception as err:  # noqa: BLE001 - yaml and omegaconf raise several error types for a bad file
        raise InputError(f"{path}: not a readable YAML config ({str(err).splitlines()[0]})") from None


@contextmanager
def usage_errors(parser: argparse.ArgumentParser) -> Iterator[None]:
    """Turn an InputError raised inside into the parser's usage message and exit status 2."""
    try:
        yield
    except InputError as err:
        parser.error(str(err))
