"""The record every data source yields."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Example:
    """One problem: the question shown to the model and its gold answer (a string, as Math-Verify reads it)."""

    question: str
    answer: str
    solution: str | None = None  # reference solution in the paper's format, where one exists
    id: str = ""
    origin: str = field(default="", compare=False)  # where it was read, e.g. "data.jsonl, line 3"
