"""The estimator family: RLOO / GRPO advantages, loss aggregation, clipping and the KL term."""

from __future__ import annotations

import math

import pytest
import torch

from soft_tokens.estimators import GRPO, RLOO, Estimator, StepTotals, aggregate
from soft_tokens.estimators.grpo import grpo_advantages
from soft_tokens.estimators.rloo import rloo_advantages

F64 = torch.float64


def t(x) -> torch.Tensor:
    return torch.tensor(x, dtype=F64)


# A small [2, 3] batch: row 0 has one padded step (holding a value that must be ignored).
MASK = torch.tensor([[True, True, False], [True, True, True]])
PER_STEP = t([[1.0, 2.0, 1e3], [4.0, 5.0, 6.0]])  # valid sums: row 0 = 3, row 1 = 15; total 18 over 5 steps


# --------------------------------------------------------------------------- RLOO advantages


def test_rloo_advantages_by_hand():
    rewards = torch.tensor([[100.0, 10.0, 0.0, 100.0], [1.0, 3.0, 5.0, 7.0]])
    # Row 0: A_i = r_i - mean of the other three.
    #   100 - (10 + 0 + 100)/3 = 190/3;  10 - (100 + 0 + 100)/3 = -170/3;  0 - 210/3 = -70;  100 -> 190/3.
    # Row 1: 1 - 15/3 = -4;  3 - 13/3 = -4/3;  5 - 11/3 = 4/3;  7 - 9/3 = 4.
    expected = torch.tensor([[190 / 3, -170 / 3, -70.0, 190 / 3], [-4.0, -4 / 3, 4 / 3, 4.0]])
    torch.testing.assert_close(rloo_advantages(rewards), expected)
    torch.testing.assert_close(RLOO().advantages(rewards), expected)


def test_rloo_two_samples_and_identical_group():
    torch.testing.assert_close(rloo_advantages(torch.tensor([[100.0, 10.0]])), torch.tensor([[90.0, -90.0]]))
    same = rloo_advantages(torch.tensor([[10.0, 10.0, 10.0], [0.0, 0.0, 0.0]]))
    assert torch.equal(same, torch.zeros(2, 3))


def test_rloo_needs_two_samples():
    with pytest.raises(ValueError, match="at least 2"):
        rloo_advantages(torch.tensor([[1.0], [2.0]]))
    with pytest.raises(ValueError):
        RLOO().advantages(torch.tensor([[1.0]]))


def test_rloo_advantages_carry_no_gradient():
    rewards = torch.tensor([[1.0, 2.0]], requires_grad=True)
    assert not RLOO().advantages(rewards).requires_grad


# --------------------------------------------------------------------------- RLOO loss (the paper's)


def test_rloo_loss_value_and_gradient_by_hand():
    # B = 1 prompt, G = 2 samples -> N = 2 sequences; A = [2, -1].
    logp = t([[-1.0, -2.0, -3.0], [-0.5, -1.5, -9.0]]).requires_grad_(True)
    mask = torch.tensor([[True, True, True], [True, True, False]])
    adv = t([2.0, -1.0])
    loss, metrics = RLOO().loss(logp, adv, mask)
    # Paper loss -1/(BG) sum_i A_i sum_t logp_it = -(2 * (-6) + (-1) * (-2)) / 2 = 5; its gradient is
    # -A_i / N on valid steps: row 0 -> -1, row 1 -> +0.5, padding -> 0.
    (grad,) = torch.autograd.grad(loss, logp)
    torch.testing.assert_close(grad, t([[-1.0, -1.0, -1.0], [0.5, 0.5, 0.0]]))
    paper = -(adv * (logp * mask).sum(-1)).sum() / 2
    assert paper.item() == pytest.approx(5.0)
    (paper_grad,) = torch.autograd.grad(paper, logp)
    torch.testing.assert_close(grad, paper_grad)
    # The value is the ratio-1 surrogate -1/N sum_i A_i * ratio_it (ratio = 1 on every valid step):
    # -(2 * 3 + (-1) * 2) / 2 = -2; same gradient as the paper's loss, different constant.
    assert loss.item() == pytest.approx(-2.0)
    assert metrics["clip_ratio/region_mean"].item() == 0.0


def test_rloo_end_to_end_from_rewards():
    rewards = torch.tensor([[100.0, 10.0, 0.0, 100.0]])
    adv = RLOO().advantages(rewards).reshape(-1).double()  # [190/3, -170/3, -70, 190/3]
    logp = t([[-1.0, -1.0], [-2.0, -2.0], [-3.0, -3.0], [-4.0, -4.0]]).requires_grad_(True)
    mask = torch.tensor([[True, True], [True, False], [True, True], [False, False]])
    loss, _ = RLOO().loss(logp, adv, mask)
    (grad,) = torch.autograd.grad(loss, logp)
    expected = torch.tensor([[190 / 3, 190 / 3], [-170 / 3, 0.0], [-70.0, -70.0], [0.0, 0.0]], dtype=F64)
    torch.testing.assert_close(grad, -expected / 4)


# --------------------------------------------------------------------------- GRPO advantages


REWARDS = torch.tensor([[1.0, 2.0, 3.0, 6.0], [5.0, 5.0, 5.0, 5.0]])


def test_grpo_advantages_group_scaling():
    # Group 0: mean 3, centred [-2, -1, 0, 3], unbiased var (4 + 1 + 0 + 9) / 3 = 14/3. Group 1: constant.
    std0 = math.sqrt(14 / 3)
    expected = torch.tensor([[-2.0, -1.0, 0.0, 3.0], [0.0, 0.0, 0.0, 0.0]]) / torch.tensor(
        [[std0 + 1e-4], [1.0]]
    )
    torch.testing.assert_close(grpo_advantages(REWARDS, "group"), expected)
    torch.testing.assert_close(GRPO(scale_rewards="group").advantages(REWARDS), expected)
    assert grpo_advantages(REWARDS, "group")[0, 3].item() == pytest.approx(3 / (2.1602469 + 1e-4), rel=1e-6)


def test_grpo_advantages_batch_scaling():
    # All 8 rewards: mean 32/8 = 4; deviations [-3, -2, -1, 2, 1, 1, 1, 1], squares sum to 22;
    # unbiased var 22 / 7 (the centring stays per group).
    std = math.sqrt(22 / 7)
    expected = torch.tensor([[-2.0, -1.0, 0.0, 3.0], [0.0, 0.0, 0.0, 0.0]]) / (std + 1e-4)
    torch.testing.assert_close(grpo_advantages(REWARDS, "batch"), expected)
    torch.testing.assert_close(GRPO(scale_rewards="batch").advantages(REWARDS), expected)


def test_grpo_advantages_no_scaling():
    expected = torch.tensor([[-2.0, -1.0, 0.0, 3.0], [0.0, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(grpo_advantages(REWARDS, "none"), expected)
    torch.testing.assert_close(GRPO(scale_rewards="none").advantages(REWARDS), expected)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_grpo_identical_rewards_give_zero(scale):
    adv = grpo_advantages(torch.full((3, 4), 10.0), scale)
    assert torch.equal(adv, torch.zeros(3, 4))


def test_grpo_custom_eps():
    adv = GRPO(scale_rewards="group", eps=1.0).advantages(torch.tensor([[0.0, 2.0]]))
    # centred [-1, 1], unbiased std sqrt(2) -> [-1, 1] / (sqrt(2) + 1)
    torch.testing.assert_close(adv, torch.tensor([[-1.0, 1.0]]) / (math.sqrt(2) + 1))


def test_unknown_scale_rewards_raises():  # GRPO's argument: the config check (tests/test_checked_once.py)
    with pytest.raises(ValueError, match="scale_rewards"):
        grpo_advantages(REWARDS, "global")


# --------------------------------------------------------------------------- loss types


@pytest.mark.parametrize(
    ("loss_type", "kwargs", "expected"),
    [
        ("sequence_sum", {}, 18 / 2),  # (3 + 15) / N
        ("grpo", {}, (3 / 2 + 15 / 3) / 2),  # per-sequence means, then mean = 3.25
        ("bnpo", {}, 18 / 5),  # over all valid steps
        ("dapo", {"totals": StepTotals(2, 5, 12)}, 18 / 12),  # over the optimisation step's global count
        ("dapo", {"totals": StepTotals(2, 5, torch.tensor(9.0, dtype=F64))}, 18 / 9),
        ("dapo", {}, 18 / 5),  # falls back to the batch's own valid count
        # A micro-batch of a larger step: normalised by the step's sequences (4) and rank tokens (10).
        ("sequence_sum", {"totals": StepTotals(4, 10, 20)}, 18 / 4),
        ("grpo", {"totals": StepTotals(4, 10, 20)}, (3 / 2 + 15 / 3) / 4),
        ("bnpo", {"totals": StepTotals(4, 10, 20)}, 18 / 10),
        ("dr_grpo", {"max_length": 6, "totals": StepTotals(4, 10, 20)}, 18 / (4 * 6)),
        ("dr_grpo", {"max_length": 6}, 18 / (2 * 6)),  # N x max_length
        ("dr_grpo", {}, 18 / (2 * 3)),  # max_length defaults to S
        ("dr_grpo", {"totals": StepTotals(4, 10, 20, max_length=6)}, 18 / (4 * 6)),  # the step's max_length
    ],
)
def test_aggregate_by_hand(loss_type, kwargs, expected):
    got = aggregate(PER_STEP, MASK, loss_type, **kwargs)
    assert got.item() == pytest.approx(expected, rel=1e-12)


def test_aggregate_unknown_loss_type_raises():  # the estimators' arguments: tests/test_checked_once.py
    with pytest.raises(ValueError, match="loss_type"):
        aggregate(PER_STEP, MASK, "token_mean")


# Known ratios inside the clip range: logp = 0, old_logp = -log(ratio). A = [1, 2];
# per-step loss = -ratio * A, valid entries: row 0 -> [-1.1, -0.9], row 1 -> [-2.1, -1.9, -2.0].
RATIOS = t([[1.1, 0.9, 1.05], [1.05, 0.95, 1.0]])
ADV = t([1.0, 2.0])
ROW0, ROW1 = -(1.1 + 0.9), -2 * (1.05 + 0.95 + 1.0)  # -2.0 and -6.0; total -8.0 over 5 steps


@pytest.mark.parametrize(
    ("loss_type", "max_length", "global_tokens", "value", "weights"),
    [
        # value, and the per-row weight w_i with d loss / d logp_it = -A_i * ratio_it * w_i on valid steps
        ("sequence_sum", None, None, (ROW0 + ROW1) / 2, [1 / 2, 1 / 2]),
        ("grpo", None, None, (ROW0 / 2 + ROW1 / 3) / 2, [1 / 4, 1 / 6]),
        ("bnpo", None, None, (ROW0 + ROW1) / 5, [1 / 5, 1 / 5]),
        ("dapo", None, 16, (ROW0 + ROW1) / 16, [1 / 16, 1 / 16]),
        ("dr_grpo", 8, None, (ROW0 + ROW1) / 16, [1 / 16, 1 / 16]),
    ],
)
def test_loss_types_values_and_gradients(loss_type, max_length, global_tokens, value, weights):
    est = RLOO(loss_type=loss_type, max_length=max_length)
    logp = torch.zeros(2, 3, dtype=F64, requires_grad=True)
    totals = StepTotals(2, 5, global_tokens) if global_tokens else None
    loss, metrics = est.loss(logp, ADV, MASK, old_logp=-RATIOS.log(), totals=totals)
    assert loss.item() == pytest.approx(value, rel=1e-12)
    (grad,) = torch.autograd.grad(loss, logp)
    w = t(weights)[:, None]
    expected = -ADV[:, None] * RATIOS * w * MASK
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-15)
    assert metrics["clip_ratio/region_mean"].item() == 0.0


def test_grpo_estimator_defaults_to_dapo():
    est = GRPO()
    assert est.loss_type == "dapo"
    logp = torch.zeros(2, 3, dtype=F64, requires_grad=True)
    loss, _ = est.loss(logp, ADV, MASK, totals=StepTotals(2, 5, 10))
    # ratio 1: per-step -A -> valid sum -(2 * 1 + 3 * 2) = -8, over 10 tokens.
    assert loss.item() == pytest.approx(-0.8, rel=1e-12)


# --------------------------------------------------------------------------- clipping


def test_clipping_counts_and_zero_gradient_for_clipped_tokens():
    est = RLOO(epsilon=0.2, epsilon_high=0.28)  # clip range [0.8, 1.28]
    adv = t([1.0, -1.0, 2.0])
    ratios = t(
        [
            [0.5, 1.0, 1.25, 1.5],  # A > 0: 1.5 > 1.28 clipped high; 0.5 below range but A > 0: not clipped
            [
                0.5,
                0.9,
                1.5,
                0.7,
            ],  # A < 0: 0.5 clipped low; 1.5 above range but A < 0: not clipped; 0.7 padded
            [1.3, 1.1, 0.79, 2.0],  # A > 0: 1.3 clipped high; 2.0 padded (would be high)
        ]
    )
    mask = torch.tensor([[True, True, True, True], [True, True, True, False], [True, True, True, False]])
    logp = torch.zeros(3, 4, dtype=F64, requires_grad=True)
    loss, metrics = est.loss(logp, adv, mask, old_logp=-ratios.log())
    # 10 valid steps: low 1 (row 1 step 0), high 2 (row 0 step 3, row 2 step 0), region 3.
    assert metrics["clip_ratio/low_mean"].item() == pytest.approx(0.1)
    assert metrics["clip_ratio/high_mean"].item() == pytest.approx(0.2)
    assert metrics["clip_ratio/region_mean"].item() == pytest.approx(0.3)
    # per step -min(r A, clip(r) A):
    #   row 0 (A = 1):  -(0.5 + 1.0 + 1.25 + 1.28) = -4.03
    #   row 1 (A = -1): 0.8 + 0.9 + 1.5 = 3.2
    #   row 2 (A = 2):  -(2.56 + 2.2 + 1.58) = -6.34;   sequence_sum: (-4.03 + 3.2 - 6.34) / 3 = -2.39
    assert loss.item() == pytest.approx(-2.39, rel=1e-12)
    (grad,) = torch.autograd.grad(loss, logp)
    expected = t(
        [
            [-0.5 / 3, -1.0 / 3, -1.25 / 3, 0.0],  # clipped high -> 0
            [0.0, 0.9 / 3, 1.5 / 3, 0.0],  # clipped low -> 0; padded -> 0
            [0.0, -2.2 / 3, -1.58 / 3, 0.0],  # clipped high -> 0; padded -> 0
        ]
    )
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-15)


def test_symmetric_epsilon_by_default():
    est = RLOO(epsilon=0.1)
    assert est.epsilon_high == 0.1
    logp = torch.zeros(1, 2, dtype=F64, requires_grad=True)
    ratios = t([[1.15, 1.05]])
    _, metrics = est.loss(logp, t([1.0]), torch.ones(1, 2, dtype=torch.bool), old_logp=-ratios.log())
    assert metrics["clip_ratio/high_mean"].item() == pytest.approx(0.5)


def test_first_pass_is_reinforce():
    # logp depends on parameters: logp_it = log softmax(theta_t)[y_it]; old_logp = None.
    theta = torch.randn(3, 4, dtype=F64, generator=torch.Generator().manual_seed(0), requires_grad=True)
    ids = torch.tensor([[0, 1, 2], [3, 3, 0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    adv = t([1.5, -0.5])

    def logp_fn():
        return torch.log_softmax(theta, -1)[torch.arange(3), ids]

    logp = logp_fn()
    loss, metrics = RLOO(epsilon=0.2).loss(logp, adv, mask)
    # ratio exactly 1: value -(1.5 * 3 + (-0.5) * 2) / 2 = -1.75 exactly, no clipping.
    assert loss.item() == -1.75
    assert metrics["clip_ratio/region_mean"].item() == 0.0
    (grad,) = torch.autograd.grad(loss, theta)
    # REINFORCE: -1/N sum_i A_i sum_t grad logp_it over valid steps.
    reinforce = -(adv[:, None] * logp_fn() * mask).sum() / 2
    (expected,) = torch.autograd.grad(reinforce, theta)
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-15)
    # Hand form of the same: d logp / d theta_t = onehot(y) - softmax(theta_t).
    p = torch.softmax(theta.detach(), -1)
    hand = torch.zeros(3, 4, dtype=F64)
    for i in range(2):
        for s in range(3):
            if mask[i, s]:
                hand[s] += -adv[i] / 2 * (torch.nn.functional.one_hot(ids[i, s], 4).double() - p[s])
    torch.testing.assert_close(grad, hand, rtol=1e-12, atol=1e-15)


def test_old_logp_equal_to_logp_matches_first_pass():
    logp = t([[-1.0, -2.0, -3.0], [-0.5, -0.7, -0.9]]).requires_grad_(True)
    a, _ = RLOO().loss(logp, ADV, MASK)
    (ga,) = torch.autograd.grad(a, logp)
    b, _ = RLOO().loss(logp, ADV, MASK, old_logp=logp.detach().clone())
    (gb,) = torch.autograd.grad(b, logp)
    assert a.item() == b.item()
    assert torch.equal(ga, gb)


# --------------------------------------------------------------------------- KL term


KL = t([[0.1, 0.2, 99.0], [0.3, 0.4, 0.5]])  # valid sum 1.5 over 5 steps (99 is padding)


@pytest.mark.parametrize(
    ("loss_type", "expected"),
    [
        # ratio-1 part: per-step -A -> row sums -2 and -6
        ("sequence_sum", (-2 - 6) / 2 + 0.1 * (0.3 + 1.2) / 2),  # -3.925
        ("grpo", (-1 - 2) / 2 + 0.1 * (0.15 + 0.4) / 2),  # -1.4725
        ("bnpo", -8 / 5 + 0.1 * 1.5 / 5),  # -1.57
    ],
)
def test_beta_adds_kl_aggregated_like_the_loss(loss_type, expected):
    est = RLOO(loss_type=loss_type, beta=0.1)
    assert est.needs_reference
    logp = torch.zeros(2, 3, dtype=F64, requires_grad=True)
    kl = KL.clone().requires_grad_(True)
    loss, metrics = est.loss(logp, ADV, MASK, kl=kl)
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    assert metrics["kl"].item() == pytest.approx(0.3, rel=1e-6)
    loss.backward()
    # d loss / d kl = beta * aggregation weight, zero on padding.
    w = {"sequence_sum": [[0.5] * 3, [0.5] * 3], "grpo": [[0.25] * 3, [1 / 6] * 3], "bnpo": [[0.2] * 3] * 2}
    torch.testing.assert_close(kl.grad, 0.1 * t(w[loss_type]) * MASK, rtol=1e-12, atol=1e-15)


def test_beta_requires_kl():
    with pytest.raises(ValueError, match="KL"):
        RLOO(beta=0.04).loss(torch.zeros(2, 3, dtype=F64), ADV, MASK)


def test_kl_metric_without_beta():
    est = RLOO()
    assert not est.needs_reference
    logp = torch.zeros(2, 3, dtype=F64, requires_grad=True)
    base, m0 = est.loss(logp, ADV, MASK)
    assert "kl" not in m0
    with_kl, m1 = est.loss(logp, ADV, MASK, kl=KL)
    assert with_kl.item() == base.item() == -4.0  # beta = 0: the loss ignores the KL
    assert m1["kl"].item() == pytest.approx(0.3, rel=1e-6)


def test_metrics_are_detached():
    logp = torch.zeros(2, 3, dtype=F64, requires_grad=True)
    _, metrics = RLOO(beta=0.1).loss(logp, ADV, MASK, kl=KL.clone().requires_grad_(True))
    assert set(metrics) >= {"clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean", "kl"}
    assert not any(v.requires_grad for v in metrics.values())


def test_base_estimator_is_abstract():
    with pytest.raises(NotImplementedError):
        Estimator().advantages(REWARDS)


# --------------------------------------------------------------------------- micro-batch split


@pytest.mark.parametrize("loss_type", ["sequence_sum", "grpo", "bnpo", "dapo", "dr_grpo"])
def test_micro_batch_losses_sum_to_the_unsplit_loss(loss_type):
    # 4 sequences of unequal lengths split 3 + 1: with the step's totals the parts sum to the whole loss.
    torch.manual_seed(0)
    logp = torch.randn(4, 5, dtype=F64, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 1, 1, 0]]).bool()
    adv = t([1.0, -2.0, 0.5, 3.0])
    est = RLOO(loss_type=loss_type, max_length=5)
    whole, _ = est.loss(logp, adv, mask)
    totals = StepTotals.of(mask)
    parts = [est.loss(logp[s], adv[s], mask[s], totals=totals)[0] for s in (slice(0, 3), slice(3, 4))]
    torch.testing.assert_close(sum(parts), whole, rtol=1e-12, atol=0)


@pytest.mark.parametrize("cls", [RLOO, GRPO])
def test_group_estimators_say_they_need_a_group(cls):
    assert cls.needs_group and not Estimator.needs_group
