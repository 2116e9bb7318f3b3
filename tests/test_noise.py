"""Placed noise (soft_tokens/representers/noise.py): hand-computed values and the estimator's expectation."""

import math

import pytest
import torch

from soft_tokens.representers import Replay, SoftRepresenter
from soft_tokens.representers.noise import (
    candidate_basis,
    candidate_ids,
    fork_mask,
    span_coefficients,
    span_log_density,
    span_noise,
)

# Three candidate embeddings in d = 3 and a fourth token: B = [E2 - E0, E1 - E0] for candidates (0, 2, 1).
E = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 2.0], [1.0, 1.0, 1.0]])
IDS = torch.tensor([[0, 2, 1]])
B = torch.tensor([[[-1.0, -1.0], [0.0, 1.0], [2.0, 0.0]]])  # [1, d, k - 1]
NORMAL = torch.tensor([-2.0, -2.0, -1.0])  # (E2 - E0) x (E1 - E0): orthogonal to span(B)
YES = torch.tensor([True])


def test_candidates_and_basis_by_hand():
    logits = torch.tensor([[3.0, 1.0, 2.0, -1.0]])
    assert candidate_ids(logits, 3).tolist() == IDS.tolist()
    assert torch.equal(candidate_basis(E, IDS), B)


def test_fork_mask_thresholds_the_entropy_at_temperature_one():
    two_way = torch.tensor([[0.0, 0.0, -1e4]])  # entropy ln 2 = 0.693
    assert fork_mask(two_way, 0.5).tolist() == [True]
    assert fork_mask(two_way, 0.7).tolist() == [False]
    assert fork_mask(two_way, 0.0).tolist() == [True]  # 0: every step


def test_coefficients_ignore_the_component_outside_the_span():
    a = torch.tensor([[0.5, -1.0]])
    delta = (B @ a.unsqueeze(-1)).squeeze(-1)
    assert delta.tolist() == [[0.5, -1.0, 1.0]]
    got = span_coefficients(B, delta + 3.0 * NORMAL, YES)
    assert torch.allclose(got, a, atol=1e-6)
    assert span_coefficients(torch.zeros(1, 3, 2), delta, ~YES).tolist() == [[0.0, 0.0]]  # padding row


def test_log_density_by_hand():
    # -|a|^2 / (2 gamma^2) - (k-1)/2 log(2 pi gamma^2) - 1/2 log det(B^T B); B^T B = [[5, 1], [1, 2]], det 9.
    a, gamma = torch.tensor([[0.5, -1.0]]), 0.5
    want = -1.25 / 0.5 - math.log(2 * math.pi * 0.25) - 0.5 * math.log(9.0)
    assert span_log_density(a, B, YES, gamma).item() == pytest.approx(want, abs=1e-5)
    assert span_log_density(a, B, ~YES, gamma).item() == 0.0


def test_span_noise_lies_in_the_span_with_coefficients_of_scale_gamma():
    n, gamma = 20_000, 0.4
    ids = IDS.expand(n, 3)
    noisy = torch.ones(n, dtype=torch.bool)
    noise, logp = span_noise(ids, E, noisy, gamma, torch.Generator().manual_seed(0))
    assert (noise @ NORMAL).abs().max() < 1e-5  # no component outside span(B)
    a = span_coefficients(candidate_basis(E, ids), noise, noisy)
    std_err = gamma * math.sqrt(2 / n)  # of a sample standard deviation
    assert a.std(0).sub(gamma).abs().max() < 5 * std_err
    assert torch.allclose(logp, span_log_density(a, candidate_basis(E, ids), noisy, gamma), atol=1e-4)
    quiet, quiet_logp = span_noise(ids[:2], E, torch.tensor([True, False]), gamma)
    assert quiet[1].abs().max() == 0 and quiet_logp[1] == 0


def test_score_function_expectation_is_the_in_span_gradient():
    """E[R grad log p] over the span noise equals J_h^T P w for R = w . fed (P the projector on span(B)); the
    off-span pathwise term J_h^T (I - P) w is the bias of treating the off-span part as a constant."""
    torch.manual_seed(0)
    theta = torch.tensor([0.3, -0.2, 0.1, -1.0], requires_grad=True)
    w, tau, gamma, n = NORMAL + torch.tensor([0.7, -1.3, 0.4]), 0.5, 0.3, 40_000

    def mixture(t: torch.Tensor) -> torch.Tensor:
        return torch.softmax(t / tau, -1) @ E

    basis = candidate_basis(E, IDS)[0].expand(n, 3, 2)
    every = torch.ones(n, dtype=torch.bool)
    noise, _ = span_noise(IDS.expand(n, 3), E, every, gamma)
    fed = mixture(theta).detach() + noise
    reward = noise @ w  # R = w . fed less the constant w . h (a baseline: the same expectation)
    coeffs = span_coefficients(basis, fed - mixture(theta), every)
    logp = span_log_density(coeffs, basis, every, gamma)
    # E[R grad log p] from 100 chunk means (autograd of each chunk's mean of R log p), and their spread.
    chunks = torch.stack(
        [
            torch.autograd.grad((r * lp).mean(), theta, retain_graph=True)[0]
            for r, lp in zip(reward.chunk(100), logp.chunk(100))
        ]
    )
    est, std_err = chunks.mean(0), chunks.std(0) / math.sqrt(100)
    jac = torch.autograd.functional.jacobian(mixture, theta.detach())  # [d, V]
    b = basis[0]
    proj = b @ torch.linalg.solve(b.T @ b, b.T)
    in_span = jac.T @ proj @ w
    assert (est - in_span).abs().le(5 * std_err + 1e-6).all()
    pathwise_off_span = jac.T @ (torch.eye(3) - proj) @ w
    assert torch.allclose(in_span + pathwise_off_span, jac.T @ w, atol=1e-6)  # the full gradient of E[R]
    assert ((est - jac.T @ w).abs() > 5 * std_err).any()  # and that bias is measurably there


# --------------------------------------------------------------------------- the soft representer's options


def _forked_logits(n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of n rows over V = 12 tokens in d = 6, half of the rows confident (one dominant token)."""
    g = torch.Generator().manual_seed(0)
    logits, E = torch.randn(n, 12, generator=g), torch.randn(12, 6, generator=g)
    logits[::2, 0] += 30.0  # entropy ~ 0 on even rows
    return logits, E


@pytest.mark.parametrize("top_k", [None, 3])
def test_placed_step_logp_equals_log_prob_and_only_forks_are_noisy(top_k):
    logits, E = _forked_logits()
    rep = SoftRepresenter(tau=0.5, gamma=0.4, noise_top_k=top_k, noise_min_entropy=0.2)
    step = rep.step(logits, E, generator=torch.Generator().manual_seed(1))
    h = torch.softmax(logits / 0.5, -1) @ E
    assert step.aux["noisy"].tolist() == [False, True] * 8
    assert torch.equal(step.embeds[::2], h[::2])  # a confident step feeds the mixture itself
    assert (step.embeds[1::2] - h[1::2]).abs().min() > 0
    assert step.logp[::2].eq(0).all()
    got = rep.log_prob(Replay(logits, step.embeds, step.ids, E, step.aux))
    # The fed input is rounded to float32 around h; the span's coefficients divide that rounding by the
    # candidates' distances ((B^T B)^-1 B^T), so the log-density moves by about |a| / gamma^2 times it.
    tol = 1e3 * torch.finfo(torch.float32).eps * (1 + step.logp.abs().max().item())
    torch.testing.assert_close(got, step.logp, rtol=0, atol=tol)
    if top_k is not None:
        normal = torch.linalg.svd(candidate_basis(E, step.aux["noise_ids"]).transpose(-1, -2)).Vh[:, 2:]
        off_span = ((step.embeds - h).unsqueeze(1) @ normal.transpose(-1, -2)).abs().max()
        assert off_span < 1e-4  # span noise has no component outside span(B)


def test_placed_kl_by_hand_and_zero_at_the_reference():
    logits, E = _forked_logits()
    rep = SoftRepresenter(tau=0.5, gamma=0.4, noise_top_k=3, noise_min_entropy=0.2)
    step = rep.step(logits, E, generator=torch.Generator().manual_seed(1))
    replay = Replay(logits, step.embeds, step.ids, E, step.aux)
    assert rep.kl(replay, replay).abs().max() < 1e-6
    ref_logits = logits + torch.randn(logits.shape, generator=torch.Generator().manual_seed(2))
    kl = rep.kl(replay, replay.under(ref_logits, E))
    diff = torch.softmax(logits / 0.5, -1) @ E - torch.softmax(ref_logits / 0.5, -1) @ E
    basis = candidate_basis(E, step.aux["noise_ids"])
    a = torch.linalg.lstsq(basis.double(), diff.double().unsqueeze(-1)).solution.squeeze(-1)
    want = torch.where(step.aux["noisy"], a.pow(2).sum(-1) / (2 * 0.4**2), torch.zeros(16, dtype=a.dtype))
    torch.testing.assert_close(kl.double(), want, rtol=1e-4, atol=1e-5)


def test_placed_noise_options_checked_and_named():
    # their ranges: tests/test_checked_once.py (the config check)
    rep = SoftRepresenter(noise_top_k=4)
    assert "noise_top_k=4" in repr(rep) and SoftRepresenter().placed is None
    with pytest.raises(ValueError, match="noise_ids"):
        logits, E = _forked_logits()
        rep.log_prob(
            Replay(
                logits, torch.zeros(16, 6), logits.argmax(-1), E, {"noisy": torch.ones(16, dtype=torch.bool)}
            )
        )
