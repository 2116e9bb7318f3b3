import random
import re

import pytest

from soft_tokens.data.arith import ArithConfig, generate_split, make_problem, split_of

EQ = re.compile(r"(-?\d+) ([+-]) (\d+) = (-?\d+)\.")


def check_solution(ex):
    """Re-compute every equation of the solution; return the list of (a, op, b, c)."""
    eqs = [(int(a), op, int(b), int(c)) for a, op, b, c in EQ.findall(ex.solution)]
    assert eqs, ex.solution
    for a, op, b, c in eqs:
        assert c == (a + b if op == "+" else a - b), ex.solution
    for prev, nxt in zip(eqs, eqs[1:]):
        assert prev[3] == nxt[0]
    assert ex.solution.endswith(f"The final answer is: \\boxed{{{ex.answer}}}")
    assert int(ex.answer) == eqs[-1][3]
    assert ex.question.startswith(f"{ex.question.split()[0]} has {eqs[0][0]} ")
    return eqs


def test_deterministic_and_prefix_stable():
    a = generate_split("val", 50, seed=3)
    assert a == generate_split("val", 50, seed=3)
    assert generate_split("val", 20, seed=3) == a[:20]
    assert a != generate_split("val", 50, seed=4)
    assert [e.id for e in a[:2]] == ["arith-val-000000", "arith-val-000001"]


def test_splits_disjoint_and_deduplicated():
    splits = {s: generate_split(s, n, seed=0) for s, n in [("train", 3000), ("val", 400), ("test", 400)]}
    questions = {s: {e.question for e in exs} for s, exs in splits.items()}
    for s, exs in splits.items():
        assert len(questions[s]) == len(exs)
        assert all(split_of(e.question) == s for e in exs)
    assert not questions["train"] & questions["val"]
    assert not questions["train"] & questions["test"]
    assert not questions["val"] & questions["test"]


def test_answers_recompute_from_solution():
    for ex in generate_split("train", 500):
        check_solution(ex)
        assert int(ex.answer) >= 0


@pytest.mark.parametrize(
    "cfg",
    [
        ArithConfig(),
        ArithConfig(min_ops=1, max_ops=1),
        ArithConfig(min_ops=4, max_ops=5, max_start=99, max_change=50),
    ],
)
def test_knobs_respected(cfg):
    rng = random.Random(0)
    n_ops = set()
    for _ in range(300):
        eqs = check_solution(make_problem(rng, cfg))
        n_ops.add(len(eqs))
        assert cfg.min_start <= eqs[0][0] <= cfg.max_start
        assert all(1 <= b <= cfg.max_change for _, _, b, _ in eqs)
        assert all(c >= 0 for *_, c in eqs)
    assert n_ops == set(range(cfg.min_ops, cfg.max_ops + 1))


def test_allow_negative():
    rng = random.Random(0)
    cfg = ArithConfig(max_start=3, max_change=19, allow_negative=True, min_ops=3, max_ops=3)
    answers = [int(check_solution(make_problem(rng, cfg))[-1][3]) for _ in range(200)]
    assert min(answers) < 0


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="dev"):
        generate_split("dev", 5)
    with pytest.raises(ValueError):
        ArithConfig(min_ops=3, max_ops=2)
