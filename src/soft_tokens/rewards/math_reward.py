"""Math reward: the last \\boxed{} answer, checked against the gold answer, shaped into a reward.

Plain numbers are compared in-process; anything else goes to Math-Verify in its killable worker process
(`soft_tokens.rewards.math_verify_worker`), where a timeout or an error counts as wrong.
"""

from __future__ import annotations

import functools
import logging
import re
from collections import Counter
from dataclasses import dataclass
from decimal import Decimal

import torch
from torch import Tensor

from soft_tokens.rewards.boxed import extract_boxed
from soft_tokens.rewards.math_verify_worker import VERIFIER

__all__ = ["MathReward", "RewardResult", "extract_boxed", "is_correct", "stats"]

logger = logging.getLogger(__name__)

_NUMBER = re.compile(r"[+-]?(?:[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.[0-9]+)?|[+-]?\.[0-9]+")

stats: Counter[str] = Counter()  # verification problems so far in this process: timeout, error, unavailable


def _as_number(s: str) -> Decimal | None:
    """The value of a plain integer/decimal such as `-12`, `0.5` or `1,000`; None for anything else."""
    s = s.strip()
    return Decimal(s.replace(",", "")) if _NUMBER.fullmatch(s) else None


def is_correct(pred: str, gold: str, timeout_s: float = 2.0, max_chars: int = 200) -> bool:
    """Whether the answer pred is equivalent to gold; False when unverifiable (too long, timeout, error)."""
    pred, gold = str(pred).strip(), str(gold).strip()
    if pred == gold:
        return True
    if not pred or len(pred) > max_chars:
        return False
    a, b = _as_number(pred), _as_number(gold)
    if a is not None and b is not None:
        return a == b
    try:
        return _verify_cached(pred, gold, timeout_s)
    except RuntimeError as e:  # no worker: not cached, the next call tries again
        _report("unavailable", pred, str(e))
        return False


@functools.lru_cache(maxsize=65536)
def _verify_cached(pred: str, gold: str, timeout_s: float) -> bool:
    """Math-Verify in the worker; a timeout or an error counts as wrong (and is cached, G samples repeat)."""
    try:
        reply = VERIFIER.verify(pred, gold, timeout_s)
    except TimeoutError:
        _report("timeout", pred, f"no answer in {timeout_s:g}s")
        return False
    if isinstance(reply, str):
        _report("error", pred, reply)
        return False
    return bool(reply)


def _report(kind: str, pred: str, detail: str) -> None:
    """Count a verification problem and log the first few and then every 100th of each kind."""
    stats[kind] += 1
    n = stats[kind]
    if n <= 5 or n % 100 == 0:
        logger.warning("Math-Verify %s #%d (%s) on answer %.100r", kind, n, detail, pred)


@dataclass(frozen=True)
class RewardResult:
    """Reward of one completion and whether its answer was judged correct."""

    reward: float
    correct: bool


class MathReward:
    """Paper shaping: `correct` if the last boxed answer is right, `wrong_boxed` if wrong, `no_box` if none."""

    def __init__(
        self,
        correct: float = 100.0,
        wrong_boxed: float = 10.0,
        no_box: float = 0.0,
        timeout_s: float = 2.0,
        max_answer_chars: int = 200,
    ):
        self.correct = correct
        self.wrong_boxed = wrong_boxed
        self.no_box = no_box
        self.timeout_s = timeout_s
        self.max_answer_chars = max_answer_chars

    def score(self, completion: str, gold: str) -> RewardResult:
        """Reward of one completion; an empty `\\boxed{}` counts as no answer."""
        extracted = extract_boxed(completion)
        if not extracted:
            return RewardResult(self.no_box, False)
        ok = is_correct(extracted, gold, self.timeout_s, self.max_answer_chars)
        return RewardResult(self.correct if ok else self.wrong_boxed, ok)

    def score_batch(self, completions: list[str], golds: list[str]) -> tuple[Tensor, Tensor]:
        """(rewards float32 [N], correct bool [N])."""
        res = [self.score(c, g) for c, g in zip(completions, golds, strict=True)]
        return (
            torch.tensor([r.reward for r in res], dtype=torch.float32),
            torch.tensor([r.correct for r in res], dtype=torch.bool),
        )

    def __call__(self, completions: list[str], golds: list[str]) -> Tensor:
        """Rewards, float32 [N]."""
        return self.score_batch(completions, golds)[0]
