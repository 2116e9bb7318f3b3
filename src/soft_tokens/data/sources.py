"""Data sources: each one's `load()` returns a list of Examples.

`ArithSource` generates the embedded arithmetic task; `HubSource` reads a Hugging Face hub dataset
(GSM8K, MATH, MATH-500, DeepScaleR, ...) or a local copy of its rows; `LocalSource` reads a local .jsonl,
.json or .parquet file. Hub and local rows go through the same field mapping and gold-answer parsing
(`answer_format`).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import replace
from itertools import islice
from pathlib import Path
from typing import Any, Protocol

from soft_tokens.data.files import (
    MAX_ROW_CHARS,
    BadRow,
    DataError,
    check_extension,
    is_local_file,
    read_rows,
    too_long,
)
from soft_tokens.data.types import Example
from soft_tokens.rewards.boxed import last_boxed

log = logging.getLogger(__name__)

ANSWER_FORMATS = ("gsm8k", "math", "plain")
BAD_ROW_MODES = ("raise", "skip")


class Source(Protocol):
    """Anything that loads a list of Examples."""

    def load(self) -> list[Example]: ...


# ----------------------------------------------------------------------------- gold answers


def gsm8k_answer(text: str) -> str:
    """The gold answer of a GSM8K solution: what follows the last `####`, commas stripped."""
    if "####" not in text:
        raise ValueError("no '#### <answer>' line")
    answer = text.rsplit("####", 1)[1].strip().replace(",", "")
    if not answer:
        raise ValueError("empty answer after '####'")
    return answer


def boxed_answer(text: str) -> str:
    """The gold answer of a solution: the last `\\boxed{...}` (or `\\fbox{...}`), which must not be empty."""
    answer = last_boxed(text, commands=("boxed", "fbox"))
    if not answer:
        raise ValueError("empty \\boxed{} answer")
    return answer


PLAIN_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")


def gold_problem(answer: str, answer_format: str) -> str | None:
    """Why the reward may not read a gold answer (None when it can): unbalanced braces, or a GSM8K gold
    that is not a plain number."""
    if answer.count("{") != answer.count("}"):
        return "unbalanced braces"
    if answer_format == "gsm8k" and not PLAIN_NUMBER.fullmatch(answer):
        return "not a number (GSM8K golds are)"
    return None


def first_rows(items: list[str], shown: int = 3) -> str:
    """The first few of a list of row descriptions, and how many more."""
    more = f"; and {len(items) - shown} more" if len(items) > shown else ""
    return "; ".join(items[:shown]) + more


def warn_unreadable_golds(examples: list[Example], answer_format: str) -> int:
    """Log a warning naming the first rows whose gold answer the reward may not read; their number."""
    bad = [
        f"{ex.origin or ex.id}: {ex.answer!r:.60} ({why})"
        for ex in examples
        if (why := gold_problem(ex.answer, answer_format))
    ]
    if bad:
        log.warning(
            "%d of %d gold answers may not be readable by the reward (kept; every answer to them may score 0): %s",
            len(bad),
            len(examples),
            first_rows(bad),
        )
    return len(bad)


def warn_duplicate_ids(examples: list[Example]) -> int:
    """Log a warning naming the first rows whose id an earlier row has; their number.

    Ids label the rows of batches and of evaluate.py's completions files; nothing looks an example up by
    its id, so a repeated id is reported, not refused (a reader joining completions files by id would
    mix those rows).
    """
    seen: dict[str, str] = {}
    repeated = []
    for ex in examples:
        if ex.id in seen:
            repeated.append(f"{ex.origin or ex.id}: id {ex.id!r} (first at {seen[ex.id]})")
        seen.setdefault(ex.id, ex.origin or ex.id)
    if repeated:
        log.warning("%d rows repeat the id of an earlier row: %s", len(repeated), first_rows(repeated))
    return len(repeated)


# ----------------------------------------------------------------------------- embedded task


class ArithSource:
    """One split of the embedded arithmetic word-problem task (see `soft_tokens.data.arith`)."""

    def __init__(
        self,
        split: str = "train",
        n: int = 1000,
        seed: int = 0,
        min_ops: int = 2,
        max_ops: int = 3,
        max_start: int = 19,
        max_change: int = 19,
        min_start: int = 2,
        allow_negative: bool = False,
    ):
        from soft_tokens.data.arith import ArithConfig

        self.split, self.n, self.seed = split, n, seed
        self.cfg = ArithConfig(
            min_ops=min_ops,
            max_ops=max_ops,
            max_start=max_start,
            max_change=max_change,
            min_start=min_start,
            allow_negative=allow_negative,
        )

    def load(self) -> list[Example]:
        """Generate the split (deterministic in split, n, seed and the generator knobs)."""
        from soft_tokens.data.arith import generate_split

        return generate_split(self.split, self.n, self.seed, self.cfg)


# ----------------------------------------------------------------------------- row-based sources


def check_on_bad_row(value: str) -> str:
    """Validate an `on_bad_row` setting ("raise" or "skip")."""
    if value not in BAD_ROW_MODES:
        raise ValueError(f"on_bad_row must be one of {BAD_ROW_MODES}, got {value!r}")
    return value


class RowSource:
    """Shared logic of hub and local sources: map fields, parse gold answers, handle bad rows, limit.

    answer_format: "gsm8k" (answer field holds a GSM8K solution ending in `#### N`), "math" (answer field
    if present and non-empty, else the last `\\boxed{}` of the solution field) or "plain" (answer field as is).
    After `load()`, `n_skipped` holds the number of malformed rows skipped (on_bad_row="skip").
    """

    def __init__(
        self,
        question_field: str = "question",
        answer_field: str | None = "answer",
        answer_format: str = "plain",
        solution_field: str | None = None,
        id_field: str | None = None,
        limit: int | None = None,
        on_bad_row: str = "raise",
    ):
        if answer_format not in ANSWER_FORMATS:
            raise ValueError(f"answer_format must be one of {ANSWER_FORMATS}, got {answer_format!r}")
        if answer_field is None and not (answer_format == "math" and solution_field):
            raise ValueError("answer_field may only be None with answer_format='math' and a solution_field")
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be >= 0 or None, got {limit}")
        self.question_field = question_field
        self.answer_field = answer_field
        self.answer_format = answer_format
        self.solution_field = solution_field
        self.id_field = id_field
        self.limit = limit
        self.on_bad_row = check_on_bad_row(on_bad_row)
        self.n_skipped = 0
        self._first_bad: str | None = None

    def _tables(self) -> Iterator[tuple[str, str, Iterable[tuple[str, Any]]]]:
        """Yield (where, id_prefix, rows) with rows as (position, row) pairs, e.g. ("row 3", {...})."""
        raise NotImplementedError

    def load(self) -> list[Example]:
        """Read the rows, in order, up to `limit` good ones."""
        check_on_bad_row(self.on_bad_row)  # the attribute may have been set after construction
        self.n_skipped, self._first_bad = 0, None
        examples = list(islice(self._examples(), self.limit))
        if self.n_skipped:
            log.warning("skipped %d malformed rows (first: %s)", self.n_skipped, self._first_bad)
        warn_unreadable_golds(examples, self.answer_format)
        warn_duplicate_ids(examples)
        return examples

    def _examples(self) -> Iterator[Example]:
        for where, prefix, rows in self._tables():
            for k, (pos, row) in enumerate(rows):
                try:
                    yield replace(self._parse(row, f"{prefix}-{k}"), origin=f"{where}, {pos}")
                except BadRow as err:
                    message = f"{where}, {pos}: {err}"
                    if self.on_bad_row == "raise":
                        raise DataError(message) from None
                    self.n_skipped += 1
                    self._first_bad = self._first_bad or message

    def _parse(self, row: Any, default_id: str) -> Example:
        if isinstance(row, BadRow):
            raise row
        if not isinstance(row, Mapping):
            raise BadRow(f"expected an object with named fields, got {type(row).__name__}")
        question = _field(row, self.question_field)
        if not isinstance(question, str) or not question.strip():
            raise BadRow(
                f"question field {self.question_field!r} is not a non-empty string: {question!r:.80}"
            )
        if len(question) > MAX_ROW_CHARS:  # before anything tokenizes it
            raise too_long(len(question), f"characters in question field {self.question_field!r}")
        solution = _text(row, self.solution_field, optional=True) if self.solution_field else None
        try:
            answer, solution = self._gold(row, solution)
        except BadRow:
            raise
        except ValueError as err:
            raise BadRow(f"cannot parse the gold answer: {err}") from None
        id_ = str(_field(row, self.id_field)) if self.id_field else default_id
        return Example(question=question, answer=answer, solution=solution, id=id_)

    def _gold(self, row: Mapping, solution: str | None) -> tuple[str, str | None]:
        """The gold answer, and the solution (GSM8K's answer field carries one)."""
        if self.answer_format == "gsm8k":
            text = _text(row, self.answer_field)
            return gsm8k_answer(text), solution or text.rsplit("####", 1)[0].strip() or None
        if self.answer_format == "math" and _empty(row.get(self.answer_field) if self.answer_field else None):
            if solution is None:
                raise BadRow(
                    f"no answer field {self.answer_field!r} and no solution to take \\boxed{{}} from"
                )
            return boxed_answer(solution), solution
        answer = _scalar(row, self.answer_field)
        return (strip_math_delimiters(answer) if self.answer_format == "math" else answer), solution


_INLINE_MATH = re.compile(r"\$([^$]+)\$")
_INLINE_MATH_LIST = re.compile(r"\s*\$[^$]+\$(?:\s*,\s*\$[^$]+\$)*\s*")


def strip_math_delimiters(answer: str) -> str:
    """`$x$` -> `x`, `$a$, $b$` or `$a$,$b$` -> `a, b`: gold answers written as inline math (OlympiadBench).

    Only an answer made entirely of `$...$` spans (separated by commas) is changed; a single span may hold
    commas itself (`$(1, 2), (3, 4)$`).
    """
    if not _INLINE_MATH_LIST.fullmatch(answer):
        return answer
    return ", ".join(m.group(1).strip() for m in _INLINE_MATH.finditer(answer))


def _field(row: Mapping, name: str) -> Any:
    if name not in row:
        raise BadRow(f"missing field {name!r} (fields: {sorted(row)})")
    return row[name]


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _text(row: Mapping, name: str, optional: bool = False) -> str | None:
    value = _field(row, name)
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise BadRow(f"field {name!r} is not a string: {value!r:.80}")
    return value


def _scalar(row: Mapping, name: str) -> str:
    """An answer field as a stripped string; numbers are accepted (JSON files often store them so), and a
    list of them (OlympiadBench's final_answer) is joined with ", "."""
    value = _field(row, name)
    values = value if isinstance(value, list) else [value]
    if any(isinstance(v, float) and not math.isfinite(v) for v in values):
        raise BadRow(f"answer field {name!r} is not a finite number: {value!r:.80}")
    if isinstance(value, list) and value and all(isinstance(v, (str, int, float)) for v in value):
        value = ", ".join(str(v).strip() for v in value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise BadRow(f"answer field {name!r} is empty or not a string/number: {value!r:.80}")
    return value.strip()


class HubSource(RowSource):
    """A Hugging Face hub dataset split, read with `datasets.load_dataset`, or a local copy of its rows.

    A `path` ending in .jsonl, .json or .parquet is read as a local file holding the rows of the split.

    `name` may be a list of configs, read one after the other (EleutherAI/hendrycks_math has one per subject).
    `split` accepts the slicing syntax of `datasets`, e.g. "train[:-200]".
    """

    def __init__(
        self,
        path: str,
        name: str | list[str] | None = None,
        split: str = "train",
        question_field: str = "question",
        answer_field: str | None = "answer",
        answer_format: str = "plain",
        solution_field: str | None = None,
        id_field: str | None = None,
        revision: str | None = None,
        trust_remote_code: bool = False,
        limit: int | None = None,
        on_bad_row: str = "raise",
    ):
        super().__init__(
            question_field, answer_field, answer_format, solution_field, id_field, limit, on_bad_row
        )
        self.path, self.split, self.revision = path, split, revision
        self.names = [name] if name is None or isinstance(name, str) else list(name)
        self.trust_remote_code = trust_remote_code

    def _tables(self) -> Iterator[tuple[str, str, Iterable[tuple[str, Any]]]]:
        if is_local_file(self.path):
            yield self._local_table()
            return
        import datasets

        kwargs: dict[str, Any] = {}
        if self.revision is not None:
            kwargs["revision"] = self.revision
        if self.trust_remote_code:  # recent `datasets` reject the flag, so pass it only when asked for
            kwargs["trust_remote_code"] = True
        for name in self.names:
            ds = datasets.load_dataset(self.path, name, split=self.split, **kwargs)
            config = f"config {name!r}, " if name else ""
            where = f"{self.path} ({config}split {self.split!r})"
            prefix = "-".join(p for p in (self.path.rsplit("/", 1)[-1], name, self.split) if p)
            yield where, prefix, ((f"row {i}", row) for i, row in enumerate(ds))

    def _local_table(self) -> tuple[str, str, list[tuple[str, Any]]]:
        """A local copy of the split's rows (`path` a .jsonl/.json/.parquet file): `name` does not apply, a
        `[start:stop]` slice in `split` does (gsm8k's `train[:-200]`)."""
        rows = read_rows(self.path)
        where = str(self.path)
        match = re.fullmatch(r"[^\[]*\[\s*(-?\d*)\s*:\s*(-?\d*)\s*\]", self.split)
        if match:
            start, stop = (int(x) if x else None for x in match.groups())
            rows, where = rows[start:stop], f"{where} (split {self.split!r})"
        elif "[" in self.split:
            raise DataError(
                f"{self.path}: split {self.split!r}: a local copy takes only a [start:stop] slice of rows"
            )
        return where, Path(self.path).stem, rows


class LocalSource(RowSource):
    """A local file of rows: .jsonl (one object a line), .json (a list of objects, or JSON lines) or .parquet."""

    def __init__(
        self,
        path: str | Path,
        question_field: str = "question",
        answer_field: str | None = "answer",
        answer_format: str = "plain",
        solution_field: str | None = None,
        id_field: str | None = None,
        limit: int | None = None,
        on_bad_row: str = "raise",
    ):
        super().__init__(
            question_field, answer_field, answer_format, solution_field, id_field, limit, on_bad_row
        )
        self.path = check_extension(path)

    def _tables(self) -> Iterator[tuple[str, str, Iterable[tuple[str, Any]]]]:
        yield str(self.path), self.path.stem, read_rows(self.path)
