"""Seeded multi-step arithmetic word problems: the embedded default task."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

from soft_tokens.data.types import Example

SPLITS = ("train", "val", "test")
# share of the question space (by hash) that each split draws from, in percent
SPLIT_SHARES = {"train": 80, "val": 10, "test": 10}

NAMES = [
    ("Ann", "she"), ("Ben", "he"), ("Cara", "she"), ("Dan", "he"), ("Eva", "she"), ("Finn", "he"),
    ("Gina", "she"), ("Hugo", "he"), ("Iris", "she"), ("Jack", "he"), ("Kim", "she"), ("Leo", "he"),
    ("Mia", "she"), ("Noah", "he"), ("Olga", "she"), ("Paul", "he"), ("Rosa", "she"), ("Sam", "he"),
]  # fmt: skip
OBJECTS = [
    "apples", "marbles", "stickers", "coins", "books", "cookies", "pencils", "shells", "cards", "stamps",
]  # fmt: skip
GAIN = ["gets {n} more", "buys {n} more", "finds {n} more", "is given {n} more", "wins {n} more"]
LOSS = ["gives away {n}", "loses {n}", "sells {n}", "gives {n} to a friend", "uses {n}"]
THEN = ["Then", "After that", "Later", "Next"]


@dataclass(frozen=True)
class ArithConfig:
    """Knobs of the generator: number of operations and operand sizes."""

    min_ops: int = 2
    max_ops: int = 3
    max_start: int = 19  # starting amount drawn from [min_start, max_start]
    max_change: int = 19  # each change drawn from [1, max_change]
    min_start: int = 2
    allow_negative: bool = False  # if False, every intermediate amount stays >= 0

    def __post_init__(self) -> None:
        if not 1 <= self.min_ops <= self.max_ops:
            raise ValueError(f"need 1 <= min_ops <= max_ops, got {self.min_ops}, {self.max_ops}")
        if not 0 <= self.min_start <= self.max_start or self.max_change < 1:
            raise ValueError(f"bad operand ranges in {self}")


def make_problem(rng: random.Random, cfg: ArithConfig) -> Example:
    """Draw one word problem; its solution lists one equation per operation, then the boxed answer."""
    name, pronoun = rng.choice(NAMES)
    obj = rng.choice(OBJECTS)
    value = rng.randint(cfg.min_start, cfg.max_start)
    sentences = [f"{name} has {value} {obj}."]
    steps = []
    for i in range(rng.randint(cfg.min_ops, cfg.max_ops)):
        add = rng.random() < 0.5 or (value == 0 and not cfg.allow_negative)
        limit = cfg.max_change if add or cfg.allow_negative else min(cfg.max_change, value)
        n = rng.randint(1, limit)
        phrase = rng.choice(GAIN if add else LOSS).format(n=n)
        lead = pronoun.capitalize() if i == 0 else f"{rng.choice(THEN)} {pronoun}"
        sentences.append(f"{lead} {phrase}.")
        new = value + n if add else value - n
        steps.append(f"{value} {'+' if add else '-'} {n} = {new}.")
        value = new
    sentences.append(f"How many {obj} does {name} have now?")
    solution = " ".join(steps) + f" The final answer is: \\boxed{{{value}}}"
    return Example(question=" ".join(sentences), answer=str(value), solution=solution)


def split_of(question: str) -> str:
    """The split a question belongs to, from a stable hash of its text (so splits never overlap)."""
    bucket = int.from_bytes(hashlib.sha256(question.encode()).digest()[:8], "big") % 100
    for split in SPLITS:
        if bucket < SPLIT_SHARES[split]:
            return split
        bucket -= SPLIT_SHARES[split]
    raise AssertionError("split shares must sum to 100")


def generate_split(split: str, n: int, seed: int = 0, cfg: ArithConfig = ArithConfig()) -> list[Example]:
    """The first n distinct problems of a split drawn from the stream seeded by seed (a prefix for smaller n)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}, expected one of {SPLITS}")
    rng = random.Random(f"arith-{seed}")  # the same stream for every split; the hash decides membership
    seen: set[str] = set()
    out: list[Example] = []
    max_draws = 1000 + 100 * n
    for _ in range(max_draws):
        if len(out) == n:
            break
        ex = make_problem(rng, cfg)
        if ex.question in seen or split_of(ex.question) != split:
            continue
        seen.add(ex.question)
        out.append(Example(ex.question, ex.answer, ex.solution, id=f"arith-{split}-{len(out):06d}"))
    if len(out) < n:
        raise ValueError(f"could only draw {len(out)} distinct {split} problems of {n}; widen {cfg}")
    return out
