"""Answer extraction, Math-Verify correctness and the shaped reward, including adversarial answers."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from soft_tokens.rewards.math_reward import MathReward, RewardResult, extract_boxed, is_correct

TIMEOUT_S = 0.5
SLACK_S = 3.0  # worker restart after a timeout (~0.6 s here) on a loaded machine


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The answer is \\boxed{12}.", "12"),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("\\boxed{\\sqrt{\\frac{a}{b^{2}}}}", "\\sqrt{\\frac{a}{b^{2}}}"),
        ("first \\boxed{1} then \\boxed{2}", "2"),
        ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),
        ("\\boxed{ 7 }", "7"),
        ("\\boxed {7}", "7"),
        ("$\\boxed 5$ apples", "5"),
        ("\\boxed $5$", None),
        ("\\boxed{}", ""),
        ("\\boxed{\\frac{1}{2}", None),
        ("\\boxed{1} and then \\boxed{2", None),
        ("\\boxed", None),
        ("no box here: 42", None),
        ("", None),
        (None, None),
        ("\\boxedfoo{3} \\boxed{4} \\boxedbar{5}", "4"),
    ],
)
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


def test_extract_boxed_long_inputs_are_fast():
    for text in [
        "\\boxed{" + "{" * 10**6,
        "\\boxed{" + "{}" * 10**5 + "}",
        "x" * 10**6 + "\\boxed{1}",
        "\\boxed" * 10**5,
    ]:
        start = time.monotonic()
        extract_boxed(text)
        assert time.monotonic() - start < 2.0


@pytest.mark.parametrize(
    ("pred", "gold"),
    [("9", "9"), ("1,000", "1000"), ("1000", "1,000"), ("-3.50", "-3.5"), ("0.5", "\\frac{1}{2}"),
     ("\\frac{1}{2}", "0.5"), ("\\dfrac12", "\\frac{1}{2}"), ("\\sqrt{18}", "3\\sqrt{2}")],
)  # fmt: skip
def test_equivalent_forms_are_correct(pred, gold):
    assert is_correct(pred, gold)


@pytest.mark.parametrize(
    ("pred", "gold"), [("8", "9"), ("0.25", "\\frac{1}{2}"), ("2\\sqrt{3}", "3\\sqrt{2}"), ("x", "9")]
)
def test_wrong_answers(pred, gold):
    assert not is_correct(pred, gold)


def test_reward_shaping():
    reward = MathReward()
    completions = [
        "\\boxed{\\frac{1}{2}}",
        "\\boxed{0.5}",
        "\\boxed{3}",
        "the answer is 0.5",
        "\\boxed{}",
        "\\boxed{0.5",
    ]
    rewards = reward(completions, ["0.5", "\\frac{1}{2}", "0.5", "0.5", "0.5", "0.5"])
    assert rewards.dtype == torch.float32
    assert rewards.tolist() == [100.0, 100.0, 10.0, 0.0, 0.0, 0.0]
    assert reward.score("so \\boxed{4}", "4") == RewardResult(100.0, True)
    assert reward.score("\\boxed{5}", "4") == RewardResult(10.0, False)
    assert reward.score("", "4") == RewardResult(0.0, False)


def test_custom_shaping_and_batch_scores():
    reward = MathReward(correct=1.0, wrong_boxed=-0.5, no_box=-1.0, max_answer_chars=5)
    rewards, correct = reward.score_batch(
        ["\\boxed{2}", "\\boxed{3}", "2", "\\boxed{222222}"], ["2", "2", "2", "2"]
    )
    assert rewards.tolist() == [1.0, -0.5, -1.0, -0.5]
    assert correct.tolist() == [True, False, False, False]


def test_hydra_config_builds_the_reward():
    cfg = OmegaConf.load(Path(__file__).parents[1] / "conf" / "reward" / "math.yaml")
    reward = instantiate(cfg)
    assert isinstance(reward, MathReward)
    assert (reward.correct, reward.wrong_boxed, reward.no_box) == (100.0, 10.0, 0.0)


ADVERSARIAL = [
    "9^9^9^9^9",
    "10^{10^{10^{10}}}",
    "2^{2^{40}}",
    "(10^{10})!",
    "9" * 5000,
    "1" * 150 + "." + "2" * 40,
    "{" * 3000 + "1" + "}" * 3000,
    "\\frac{",
    "\\frac{1}{0}",
    "}}}{{{\\left(\\right]",
    "\x00\ud800\u202e½∞ \\text{\U0001f600}",
    "\\sqrt[1000000]{2}^{1000000}",
]


@pytest.mark.parametrize("answer", ADVERSARIAL)
def test_adversarial_answers_finish_in_bounded_time(answer):
    reward = MathReward(timeout_s=TIMEOUT_S)
    start = time.monotonic()
    result = reward.score("\\boxed{" + answer + "}", "7")
    assert time.monotonic() - start < TIMEOUT_S + SLACK_S
    assert not result.correct and result.reward in (0.0, 10.0)


@pytest.mark.parametrize("completion", [None, 12, b"\\boxed{1}", "\\boxed{" * 5000, "x" * 10**6])
def test_garbage_completions_get_no_box_reward(completion):
    assert MathReward().score(completion, "1").reward == 0.0


def test_scoring_off_the_main_thread_with_a_pathological_answer():
    reward = MathReward(timeout_s=1.0)
    out = {}

    def run():
        start = time.monotonic()
        out["result"] = reward.score("\\boxed{3^{3^{3^{3^{3}}}}}", "7")
        out["ok"] = reward.score("\\boxed{\\frac{14}{2}}", "7")
        out["elapsed"] = time.monotonic() - start

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=10.0)
    assert not thread.is_alive()
    assert out["result"].reward == 10.0
    assert out["ok"].correct
    assert out["elapsed"] < 2 * 1.0 + SLACK_S
