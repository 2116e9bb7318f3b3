"""Reading local row files (.jsonl, .json, .parquet) with errors that name the file and the line or row.

Shared by the data sources and the out-of-domain multiple-choice loader. A .json file holds a list of row
objects, or JSON lines (what `datasets.Dataset.to_json` writes, even to a .json file).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

LOCAL_EXTENSIONS = (".jsonl", ".json", ".parquet")
# A JSON line of more bytes than this, or a question of more characters, is a bad row, refused before it is
# parsed or tokenized (tokenizing a 50 MB line took minutes and gigabytes before the prompt-length check
# refused it): a math problem is a few thousand characters, and no model's context holds a million.
MAX_ROW_CHARS = 1_000_000


class DataError(ValueError):
    """A malformed data file or row; the message says where and what is wrong."""


class BadRow(ValueError):
    """What is wrong with one row; the reader adds where it is."""


def is_local_file(path: str | Path) -> bool:
    """Whether `path` names a local row file (by its extension), as opposed to a hub dataset name."""
    return Path(path).suffix.lower() in LOCAL_EXTENSIONS


def check_extension(path: str | Path) -> Path:
    """`path` as a Path; raises DataError unless its extension is one of LOCAL_EXTENSIONS."""
    path = Path(path)
    if not is_local_file(path):
        raise DataError(
            f"{path}: unsupported file extension {path.suffix!r}, expected one of {LOCAL_EXTENSIONS}"
        )
    return path


def read_rows(path: str | Path) -> list[tuple[str, Any]]:
    """(position, row) pairs of a local file, e.g. ("line 3", {...}); a row that cannot be read is a BadRow.

    Errors that concern the whole file (missing, empty, not UTF-8 or not JSON in a JSON list) raise.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    suffix = check_extension(path).suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = [(f"row {i}", row) for i, row in enumerate(pq.read_table(path).to_pylist())]
    else:
        data = path.read_bytes()
        listed = _json_list(path, data) if suffix == ".json" else None
        rows = listed if listed is not None else _json_lines(data)
    if not rows:
        raise DataError(f"{path}: the file holds no rows")
    return rows


def _json_list(path: Path, data: bytes) -> list[tuple[str, Any]] | None:
    """The rows of a .json file holding one JSON value (a list of rows); None if it holds JSON lines."""
    start = data.lstrip()[:1]
    if start not in (b"[", b"{"):
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise DataError(f"{path}, line {line}: not valid UTF-8 (byte {err.start}): {err.reason}") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        if start == b"{":
            return None  # JSON lines: one object a line
        raise DataError(f"{path}: invalid JSON: {err}") from None
    if isinstance(value, list):
        return [(f"row {i}", row) for i, row in enumerate(value)]
    if len([line for line in text.splitlines() if line.strip()]) == 1:
        return None  # a single JSON line: one row
    keys = sorted(value)[:8] if isinstance(value, dict) else []
    raise DataError(
        f"{path}: the file holds one JSON {type(value).__name__} (keys: {keys}), not a list of rows: "
        "write a list of row objects, or one row object a line (JSON lines)"
    )


def _json_lines(data: bytes) -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for n, raw in enumerate(re.split(rb"\r?\n", data), start=1):
        if not raw.strip():
            continue
        if len(raw) > MAX_ROW_CHARS:
            rows.append((f"line {n}", too_long(len(raw), "bytes")))
            continue
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            rows.append(
                (f"line {n}", BadRow(f"not valid UTF-8 (byte {err.start} of the line): {err.reason}"))
            )
            continue
        try:
            rows.append((f"line {n}", json.loads(line)))
        except json.JSONDecodeError as err:
            rows.append((f"line {n}", BadRow(f"invalid JSON: {err}")))
    return rows


def too_long(size: int, unit: str) -> BadRow:
    """The error of a row longer than MAX_ROW_CHARS."""
    return BadRow(
        f"{size:,} {unit}, longer than the limit of {MAX_ROW_CHARS:,} for one row "
        "(soft_tokens.data.files.MAX_ROW_CHARS): not a math problem"
    )
