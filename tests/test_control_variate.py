"""The score-weighted leave-one-out baseline (soft_tokens/estimators/control_variate.py) on hand-computed numbers."""

import torch

from soft_tokens.estimators.control_variate import noisy_steps, weighted_loo_advantages
from soft_tokens.estimators.rloo import rloo_advantages


def test_weighted_baseline_by_hand():
    a = weighted_loo_advantages(torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([[1.0, 2.0, 3.0]]))
    # A_0 = 1 - (2*0 + 3*0)/5, A_1 = 0 - (1*1 + 3*0)/4, A_2 = 0 - (1*1 + 2*0)/3
    torch.testing.assert_close(a, torch.tensor([[1.0, -0.25, -1.0 / 3.0]]))


def test_equal_weights_are_rloo():
    r = torch.tensor([[1.0, 0.0, 1.0, 0.5], [0.0, 0.0, 1.0, 1.0]])
    torch.testing.assert_close(weighted_loo_advantages(r, torch.full_like(r, 7.0)), rloo_advantages(r))


def test_others_without_weight_fall_back_to_the_plain_mean():
    a = weighted_loo_advantages(torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 0.0]]))
    torch.testing.assert_close(a, torch.tensor([[1.0, -1.0]]))


def test_baseline_ignores_its_own_sample():
    """Unbiasedness: row i's baseline depends on neither its own reward nor its own weight."""
    g = torch.Generator().manual_seed(0)
    r, w = torch.rand(3, 5, generator=g), torch.rand(3, 5, generator=g) * 10
    base = r - weighted_loo_advantages(r, w)
    r2, w2 = r.clone(), w.clone()
    r2[:, 2], w2[:, 2] = 0.123, 42.0
    torch.testing.assert_close((r2 - weighted_loo_advantages(r2, w2))[:, 2], base[:, 2])


def test_noisy_steps_counts_cot_steps():
    cot = torch.tensor([[True, True, True, False], [True, False, False, False]])
    assert noisy_steps(cot, {}).tolist() == [3, 1]
    noisy = torch.tensor([[True, False, True, True], [False, False, False, False]])
    assert noisy_steps(cot, {"noisy": noisy}).tolist() == [2, 0]
