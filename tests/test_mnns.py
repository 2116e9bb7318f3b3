"""The minimum non-negative sum task: solver, traces, splits by digit multiset, determinism, reward."""

from __future__ import annotations

import itertools
import random
import re

import hydra
import pytest
from helpers import compose_train

from soft_tokens.data.mnns import (
    SPLITS,
    MnnsConfig,
    MnnsSource,
    format_trace,
    generate_split,
    make_example,
    minimum,
    optimal_trace,
    solve,
    split_instances,
    split_multisets,
    valid_trace,
)
from soft_tokens.rewards.math_reward import MathReward

EQ = re.compile(r"(-?\d+) ([+-]) (\d) = (-?\d+)\.")
DIGITS = re.compile(r"digits ((?:\d, )*\d) so")


def brute_minimum(digits):
    """The smallest non-negative signed sum, by itertools.product over the sign choices."""
    return min(
        total
        for signs in itertools.product((1, -1), repeat=len(digits))
        if (total := sum(s * d for s, d in zip(signs, digits))) >= 0
    )


def check_trace(digits, solution):
    """Re-compute every equation of a solution from 0 over the digits in order; return the final sum."""
    eqs = EQ.findall(solution)
    assert len(eqs) == len(digits), solution
    value = 0
    for (a, op, b, c), d in zip(eqs, digits):
        assert (int(a), int(b)) == (value, d), solution
        value = value + d if op == "+" else value - d
        assert int(c) == value, solution
    assert solution.endswith(f" The final answer is: \\boxed{{{value}}}")
    return value


@pytest.mark.parametrize(
    "digits,best,signs",
    [
        ((3, 1, 4, 1), 1, (1, 1, -1, 1)),  # 9 is odd; 3 + 1 - 4 + 1 = 1 is the first pattern reaching 1
        ((1, 9), 8, (-1, 1)),  # the first sign may be minus: -1 + 9 = 8, while 1 - 9 < 0
        ((5, 5), 0, (1, -1)),
        ((9, 1, 1, 1), 6, (1, -1, -1, -1)),
        ((1, 8, 8, 7), 6, (-1, 1, -1, 1)),  # subset sums of 1 8 8 7 miss 10, 11 and 12; 8 + 7 - 9 = 6
        ((7,), 7, (1,)),
    ],
)
def test_hand_computed(digits, best, signs):
    assert solve(digits) == (best, signs)
    assert minimum(digits) == best


def test_hand_written_trace():
    assert (
        optimal_trace((3, 1, 4, 1))
        == "0 + 3 = 3. 3 + 1 = 4. 4 - 4 = 0. 0 + 1 = 1. The final answer is: \\boxed{1}"
    )
    assert format_trace((1, 9), (-1, 1)) == "0 - 1 = -1. -1 + 9 = 8. The final answer is: \\boxed{8}"


def test_every_four_digit_instance_against_brute_force():
    for digits in itertools.product(range(1, 10), repeat=4):
        best, signs = solve(digits)
        assert best == brute_minimum(digits), digits
        assert sum(s * d for s, d in zip(signs, digits)) == best
        assert check_trace(digits, optimal_trace(digits)) == best


def test_valid_trace_is_non_negative_and_not_always_optimal():
    rng = random.Random(0)
    finals = []
    for digits in itertools.islice(itertools.product(range(1, 10), repeat=4), 0, 6561, 37):
        final = check_trace(digits, valid_trace(digits, rng))
        assert final >= minimum(digits)
        finals.append(final > minimum(digits))
    assert any(finals) and not all(finals)


def test_splits_partition_instances_by_multiset():
    instances = {s: split_instances(s, seed=0) for s in SPLITS}
    multisets = {s: {tuple(sorted(d)) for d in instances[s]} for s in SPLITS}
    for a, b in itertools.combinations(SPLITS, 2):
        assert not multisets[a] & multisets[b], (a, b)
    every = [d for s in SPLITS for d in instances[s]]
    assert len(every) == len(set(every)) == 9**4
    assert len(multisets["train"] | multisets["val"] | multisets["test"]) == 495  # C(12, 4)
    sizes = {s: len(instances[s]) / 9**4 for s in SPLITS}
    assert sizes["test"] == pytest.approx(0.2, abs=0.02) and sizes["val"] == pytest.approx(0.1, abs=0.02)


def test_examples_match_their_digits():
    for ex in generate_split("val", 100, seed=0):
        digits = tuple(int(x) for x in DIGITS.search(ex.question).group(1).split(", "))
        assert ex.answer == str(brute_minimum(digits))
        assert check_trace(digits, ex.solution) == int(ex.answer)


def test_deterministic_from_seed_and_prefix_stable():
    a = generate_split("test", 50, seed=3)
    assert a == generate_split("test", 50, seed=3)
    assert generate_split("test", 20, seed=3) == a[:20]
    assert split_multisets(seed=3) == split_multisets(seed=3)
    assert split_multisets(seed=3) != split_multisets(seed=4)
    assert a != generate_split("test", 50, seed=4)
    assert [e.id for e in a[:2]] == ["mnns-test-000000", "mnns-test-000001"]
    assert len(generate_split("train")) == len(split_instances("train"))


def test_hard_setting_digits():
    cfg = MnnsConfig(n_digits=5)
    examples = MnnsSource("val", n=30, seed=1, n_digits=5).load()
    assert examples == generate_split("val", 30, seed=1, cfg=cfg)
    for ex in examples:
        digits = tuple(int(x) for x in DIGITS.search(ex.question).group(1).split(", "))
        assert len(digits) == 5 and ex.answer == str(brute_minimum(digits))
        assert check_trace(digits, ex.solution) == int(ex.answer)


def test_data_config_composes_and_follows_train_knobs():
    cfg = compose_train(["data=mnns", "data.train.n_digits=5", "data.train.seed=2", "data.val.n=10"])
    dm = hydra.utils.instantiate(cfg.data)
    val = dm.examples("val")
    assert val == generate_split("val", 10, seed=2, cfg=MnnsConfig(n_digits=5))
    assert len(DIGITS.search(val[0].question).group(1).split(", ")) == 5
    # data=mnns keeps the math reward
    assert cfg.reward._target_ == "soft_tokens.rewards.math_reward.MathReward"


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        generate_split("dev", 5)
    with pytest.raises(ValueError, match="n_digits must be in 1..6"):
        MnnsConfig(n_digits=7)
    with pytest.raises(ValueError, match="val_share"):
        MnnsConfig(val_share=0.5, test_share=0.5)
    with pytest.raises(ValueError, match="has 644 instances, cannot take n=1000"):
        generate_split("val", 1000)


@pytest.mark.parametrize(
    "completion,reward,correct",
    [
        ("0 + 3 = 3. 3 + 1 = 4. 4 - 4 = 0. 0 + 1 = 1. The final answer is: \\boxed{1}", 100.0, True),
        ("0 + 3 = 3. 3 + 1 = 4. 4 + 4 = 8. 8 - 1 = 7. The final answer is: \\boxed{7}", 10.0, False),
        ("0 + 3 = 3. 3 - 1 = 2. 2 - 4 = -2. -2 + 1 = -1. The final answer is: \\boxed{-1}", 10.0, False),
        ("0 + 3 = 3. 3 + 1 = 4. 4 - 4 = 0. 0 + 1 = 1. The final answer is: 1", 0.0, False),
        ("The final answer is: \\boxed{1", 0.0, False),
    ],
)
def test_math_reward_scores_mnns(completion, reward, correct):
    gold = make_example((3, 1, 4, 1)).answer
    assert gold == "1"
    result = MathReward().score(completion, gold)  # the reward that reward=math builds (100 / 10 / 0)
    assert (result.reward, result.correct) == (reward, correct)
