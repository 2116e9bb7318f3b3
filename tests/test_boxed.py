"""The one `\\boxed{}` parser: what it reads, why it finds nothing, and `\\fbox` only where asked for."""

from __future__ import annotations

import pytest

from soft_tokens.rewards.boxed import extract_boxed, last_boxed


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("no box here", "no \\\\boxed"),
        ("\\boxedfoo{1}", "no \\\\boxed"),
        ("\\boxed  ", "nothing after"),
        ("\\boxed $5$", "malformed"),
        ("\\boxed{\\frac{1}{2}", "unbalanced"),
    ],
)
def test_why_there_is_no_answer(text, reason):
    with pytest.raises(ValueError, match=reason):
        last_boxed(text)
    assert extract_boxed(text) is None


def test_fbox_counts_only_when_asked_for():
    text = "\\boxed{1} then \\fbox{2}"
    assert last_boxed(text) == "1"
    assert last_boxed(text, commands=("boxed", "fbox")) == "2"
    assert extract_boxed("\\fbox{2}") is None


def test_a_command_followed_by_a_digit_or_brace_is_still_boxed():
    assert last_boxed("\\boxed5") == "5"
    assert last_boxed("\\boxed{a}\\boxed{b}") == "b"
    assert last_boxed("\\boxed{}") == ""
