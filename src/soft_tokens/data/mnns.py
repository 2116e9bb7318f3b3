"""The minimum non-negative sum task (MNNS, CoT2: arXiv 2505.23648): sign each digit so that the sum is the
smallest value that is not negative; the chain of thought is the sequence of partial sums.

Every instance (n digits in 1-9, 9^n of them) belongs to the split of its sorted digit multiset, so no
multiset is in two splits. The gold answer is a plain integer in `\\boxed{}`, scored by the math reward
(`soft_tokens.rewards.math_reward.MathReward`: 100 correct, 10 a wrong boxed answer, 0 none).
"""

from __future__ import annotations

import itertools
import math
import random
from collections import Counter
from dataclasses import dataclass

from soft_tokens.data.types import Example

SPLITS = ("train", "val", "test")
MAX_DIGITS = 6  # every instance is enumerated to split them: 9^6 = 531,441

Digits = tuple[int, ...]
Signs = tuple[int, ...]  # +1 or -1 per digit
Multiset = tuple[int, ...]  # the digits sorted


@dataclass(frozen=True)
class MnnsConfig:
    """Knobs of the task: the number of digits and the shares of the instances in val and test."""

    n_digits: int = 4  # 4: 6,561 instances; 5-6: the hard setting
    val_share: float = 0.1
    test_share: float = 0.2  # train gets the rest

    def __post_init__(self) -> None:
        if not 1 <= self.n_digits <= MAX_DIGITS:
            raise ValueError(
                f"n_digits must be in 1..{MAX_DIGITS} (all 9^n_digits instances are enumerated), "
                f"got {self.n_digits}"
            )
        if not (self.val_share >= 0 and self.test_share > 0 and self.val_share + self.test_share < 1):
            raise ValueError(
                f"need val_share >= 0, test_share > 0 and val_share + test_share < 1, "
                f"got {self.val_share}, {self.test_share}"
            )


# ----------------------------------------------------------------------------- the solver


def all_sums(digits: Digits) -> list[int]:
    """The signed sum of every sign pattern, indexed by pattern: the first digit's sign is the highest bit
    of the index and a 0 bit is `+` (so index order is lexicographic order with `+` before `-`)."""
    sums = [0]
    for d in digits:
        sums = [x for s in sums for x in (s + d, s - d)]
    return sums


def signs_of(index: int, n: int) -> Signs:
    """The sign pattern of an index of `all_sums` over n digits."""
    return tuple(-1 if index >> (n - 1 - k) & 1 else 1 for k in range(n))


def solve(digits: Digits) -> tuple[int, Signs]:
    """Brute force over the 2^n sign patterns: the minimum non-negative sum and the first pattern (in
    lexicographic order, `+` before `-`) that reaches it."""
    if not digits:
        raise ValueError("MNNS needs at least one digit")
    sums = all_sums(digits)
    best = min(s for s in sums if s >= 0)  # the all-plus pattern is positive, so one exists
    return best, signs_of(sums.index(best), len(digits))


def minimum(digits: Digits) -> int:
    """The smallest non-negative signed sum of the digits."""
    return solve(digits)[0]


def valid_signs(digits: Digits, rng: random.Random) -> Signs:
    """A sign pattern drawn uniformly from those whose sum is non-negative (optimal or not)."""
    sums = all_sums(digits)
    return signs_of(rng.choice([i for i, s in enumerate(sums) if s >= 0]), len(digits))


# ----------------------------------------------------------------------------- text


def partial_sums(digits: Digits, signs: Signs) -> list[int]:
    """The running sums after each signed digit."""
    return list(itertools.accumulate(s * d for s, d in zip(signs, digits, strict=True)))


def format_trace(digits: Digits, signs: Signs) -> str:
    """The solution text: one equation per digit from 0 (`0 + 3 = 3. 3 - 1 = 2.`), then the boxed final sum."""
    steps, value = [], 0
    for sign, d, new in zip(signs, digits, partial_sums(digits, signs), strict=True):
        steps.append(f"{value} {'+' if sign > 0 else '-'} {d} = {new}.")
        value = new
    return " ".join(steps) + f" The final answer is: \\boxed{{{value}}}"


def optimal_trace(digits: Digits) -> str:
    """The solution along the optimal sign pattern that `solve` picks."""
    return format_trace(digits, solve(digits)[1])


def valid_trace(digits: Digits, rng: random.Random) -> str:
    """A well-formed solution whose sum is non-negative but not necessarily the minimum (base-model data)."""
    return format_trace(digits, valid_signs(digits, rng))


def question_of(digits: Digits) -> str:
    """The question shown to the model."""
    listed = ", ".join(map(str, digits))
    return (
        f"Put a + or - sign in front of each of the digits {listed} so that their sum is as small as "
        f"possible but not negative. What is that sum?"
    )


def make_example(digits: Digits, example_id: str = "") -> Example:
    """One instance with its gold answer and optimal solution."""
    best, signs = solve(digits)
    return Example(question_of(digits), str(best), format_trace(digits, signs), id=example_id)


# ----------------------------------------------------------------------------- splits


def instance_count(ms: Multiset) -> int:
    """The number of digit orders of a multiset."""
    return math.factorial(len(ms)) // math.prod(math.factorial(c) for c in Counter(ms).values())


def split_multisets(seed: int = 0, cfg: MnnsConfig = MnnsConfig()) -> dict[Multiset, str]:
    """The split of every digit multiset: the multisets in a seeded order, cut where the running number of
    instances reaches the train share, then the val share (test gets the rest)."""
    multisets = list(itertools.combinations_with_replacement(range(1, 10), cfg.n_digits))
    random.Random(f"mnns-split-{seed}").shuffle(multisets)
    total = 9**cfg.n_digits
    cuts = [(1 - cfg.val_share - cfg.test_share) * total, (1 - cfg.test_share) * total]
    out, seen = {}, 0
    for ms in multisets:
        out[ms] = SPLITS[sum(seen >= c for c in cuts)]
        seen += instance_count(ms)
    return out


def split_instances(split: str, seed: int = 0, cfg: MnnsConfig = MnnsConfig()) -> list[Digits]:
    """Every instance of a split, in a seeded order."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}, expected one of {SPLITS}")
    of = split_multisets(seed, cfg)
    out = [d for d in itertools.product(range(1, 10), repeat=cfg.n_digits) if of[tuple(sorted(d))] == split]
    random.Random(f"mnns-{seed}-{split}").shuffle(out)
    return out


def generate_split(
    split: str, n: int | None = None, seed: int = 0, cfg: MnnsConfig = MnnsConfig()
) -> list[Example]:
    """The first n instances of a split in its seeded order (all of them for None; a prefix for smaller n)."""
    digits = split_instances(split, seed, cfg)
    if n is not None and not 0 <= n <= len(digits):
        raise ValueError(
            f"the MNNS {split} split with n_digits={cfg.n_digits} has {len(digits)} instances, "
            f"cannot take n={n}: lower n (null takes all) or raise n_digits"
        )
    return [make_example(d, f"mnns-{split}-{i:06d}") for i, d in enumerate(digits[:n])]


class MnnsSource:
    """One split of the MNNS task as a data source (`data=mnns`)."""

    def __init__(
        self,
        split: str = "train",
        n: int | None = None,
        seed: int = 0,
        n_digits: int = 4,
        val_share: float = 0.1,
        test_share: float = 0.2,
    ):
        self.split, self.n, self.seed = split, n, seed
        self.cfg = MnnsConfig(n_digits=n_digits, val_share=val_share, test_share=test_share)

    def load(self) -> list[Example]:
        """Generate the split (deterministic in split, n, seed and the knobs)."""
        return generate_split(self.split, self.n, self.seed, self.cfg)
