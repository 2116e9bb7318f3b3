"""pass@k (the unbiased estimator and its batched form) and the synchronised evaluation metrics."""

from __future__ import annotations

import math

import pytest
import torch

from soft_tokens.eval.metrics import (
    EntropyProfile,
    MeanAccuracy,
    MeanNLL,
    PassAtK,
    default_k_values,
    pass_at_k,
    pass_at_k_batch,
)


@pytest.mark.parametrize(
    "n,c,k,expected",
    [
        (5, 2, 1, 0.4),  # c / n
        (5, 2, 2, 1 - 3 / 10),  # 1 - C(3,2)/C(5,2)
        (5, 2, 3, 1 - 1 / 10),  # 1 - C(3,3)/C(5,3)
        (5, 2, 4, 1.0),  # fewer than k wrong samples: some draw of k always holds a correct one
        (4, 1, 2, 0.5),  # 1 - C(3,2)/C(4,2) = 1 - 3/6
        (10, 3, 5, 1 - math.comb(7, 5) / math.comb(10, 5)),
        (8, 8, 3, 1.0),  # all correct
        (8, 0, 3, 0.0),  # none correct
        (8, 0, 8, 0.0),  # k = n, none correct
        (8, 1, 8, 1.0),  # k = n, one correct
        (1, 1, 1, 1.0),
        (1, 0, 1, 0.0),
    ],
)
def test_pass_at_k_hand_computed(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_matches_binomials_and_is_stable_for_large_n():
    for n, c, k in [(32, 5, 8), (64, 1, 32), (20, 19, 1)]:
        assert pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k), abs=1e-12)
    # C(1000, 500) overflows a float; the product form does not.
    assert pass_at_k(1000, 1, 500) == pytest.approx(0.5)
    assert 0.0 < pass_at_k(1000, 3, 10) < 1.0


@pytest.mark.parametrize("n,c,k", [(4, 1, 5), (4, 1, 0), (4, 5, 1), (0, 0, 1), (4, -1, 1)])
def test_pass_at_k_rejects_bad_arguments(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_pass_at_k_batch_matches_scalar():
    g = torch.Generator().manual_seed(0)
    correct = torch.rand(50, 8, generator=g) < torch.rand(50, 1, generator=g)
    for k in (1, 2, 3, 8):
        expected = [pass_at_k(8, int(row.sum()), k) for row in correct]
        assert pass_at_k_batch(correct, k).tolist() == pytest.approx(expected, abs=1e-12)
    with pytest.raises(ValueError):
        pass_at_k_batch(correct, 9)


def test_default_k_values():
    assert default_k_values(1) == [1]
    assert default_k_values(8) == [1, 2, 4, 8]
    assert default_k_values(6) == [1, 2, 4, 6]
    assert default_k_values(32) == [1, 2, 4, 8, 16, 32]


def test_pass_at_k_metric_accumulates_updates():
    m = PassAtK([1, 2, 4])
    m.update(torch.tensor([[1, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.bool))
    m.update(torch.tensor([[1, 1, 1, 1]], dtype=torch.bool))
    out = m.compute()
    assert set(out) == {"pass@1", "pass@2", "pass@4"}
    assert float(out["pass@1"]) == pytest.approx((0.25 + 0 + 1) / 3)
    assert float(out["pass@2"]) == pytest.approx((0.5 + 0 + 1) / 3)
    assert float(out["pass@4"]) == pytest.approx((1 + 0 + 1) / 3)
    with pytest.raises(ValueError, match="pass@4"):
        m.update(torch.ones(2, 2, dtype=torch.bool))
    m.reset()
    assert float(m.problems) == 0 and float(m.totals.sum()) == 0


def test_mean_metrics():
    acc = MeanAccuracy()
    acc.update(torch.tensor([True, False, True]))
    acc.update(torch.tensor([[False]]))
    assert float(acc.compute()) == pytest.approx(0.5)
    nll = MeanNLL()
    nll.update(torch.tensor([3.0, 1.0]), torch.tensor([2, 2]))  # 4 nats over 4 tokens
    nll.update(torch.tensor(5.0), torch.tensor(1))
    assert float(nll.compute()) == pytest.approx(9 / 5)
    prof = EntropyProfile(4)
    prof.update(torch.tensor([2.0, 1.0, 0.0]), torch.tensor([2.0, 1.0, 0.0]))
    prof.update(torch.tensor([2.0, 1.0, 0.0, 0.0, 9.0]), torch.tensor([2.0, 1.0, 0.0, 0.0, 1.0]))
    out = prof.compute()
    assert out[:2].tolist() == [1.0, 1.0] and out[2:].isnan().all()


def _two_rank_gather(other_states: list[torch.Tensor]):
    """A dist_sync_fn that pretends a second rank holds `other_states` (called once per state, in order)."""
    it = iter(other_states)

    def gather(tensor, group=None):
        return [tensor, next(it).to(tensor.dtype)]

    return gather


def test_metrics_sync_sums_states_over_ranks():
    """The reduction a DDP run performs, on one process: each state is gathered from 'two ranks' and summed."""
    rank1 = PassAtK([1, 2])
    rank1.update(torch.tensor([[1, 1]], dtype=torch.bool))  # a smaller shard
    states = [getattr(rank1, name) for name in rank1._defaults]
    rank0 = PassAtK([1, 2], dist_sync_fn=_two_rank_gather(states), distributed_available_fn=lambda: True)
    rank0.update(torch.tensor([[1, 0], [0, 0]], dtype=torch.bool))
    out = rank0.compute()
    assert float(out["pass@1"]) == pytest.approx((0.5 + 0 + 1) / 3)
    assert float(out["pass@2"]) == pytest.approx((1 + 0 + 1) / 3)
    assert float(rank0.problems) == 2  # the local state is restored after the synced compute

    b = MeanNLL()
    b.update(torch.tensor([2.0]), torch.tensor([2]))
    a = MeanNLL(dist_sync_fn=_two_rank_gather([b.nll, b.tokens]), distributed_available_fn=lambda: True)
    a.update(torch.tensor([4.0]), torch.tensor([2]))
    assert float(a.compute()) == pytest.approx(1.5)
