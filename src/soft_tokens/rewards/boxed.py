"""The last `\\boxed{...}` answer of a text: one parser for the policy's completions and datasets' solutions."""

from __future__ import annotations

import functools
import re

_BRACE_TOKEN = re.compile(r"\\[\\{}]|[{}]")  # a grouping brace, or an escaped one (\{) or \\ to skip
_BARE_ARG = re.compile(r"[^\s$]+")  # the argument of `\boxed 5$`


@functools.cache
def _command(commands: tuple[str, ...]) -> re.Pattern[str]:
    """`\\boxed` (or another of `commands`) as a whole command: `\\boxedfoo` is a different one."""
    return re.compile(r"\\(?:" + "|".join(map(re.escape, commands)) + r")(?![^\W\d_])")


def last_boxed(text: str, commands: tuple[str, ...] = ("boxed",)) -> str:
    """Stripped argument of the last `\\boxed{...}` (or brace-less `\\boxed x`) in text; may be empty.

    Braces nest; escaped braces (`\\{`, `\\}`) do not count. Raises ValueError saying why there is no
    answer: no command, nothing after it, or braces left open (a completion cut off mid-answer).
    """
    matches = list(_command(commands).finditer(text))
    if not matches:
        raise ValueError("no \\boxed{} answer")
    i = matches[-1].end()
    while i < len(text) and text[i].isspace():
        i += 1
    if i == len(text):
        raise ValueError("nothing after the last \\boxed")
    if text[i] != "{":
        bare = _BARE_ARG.match(text, i)
        if bare is None:
            raise ValueError("malformed \\boxed answer")
        return bare.group()
    depth = 0
    for m in _BRACE_TOKEN.finditer(text, i):
        if m.group() == "{":
            depth += 1
        elif m.group() == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : m.start()].strip()
    raise ValueError("unbalanced braces in the last \\boxed{}")


def extract_boxed(text: object) -> str | None:
    """The policy's answer: `last_boxed(text)`, or None when there is none (or text is not a string)."""
    if not isinstance(text, str):
        return None
    try:
        return last_boxed(text)
    except ValueError:
        return None
