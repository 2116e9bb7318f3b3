"""Soft and fuzzy tokens: densities, gradients, noise, greedy decoding and KL of the token representers."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import D, V, central_diff, compose_train, gen, make
from hydra.utils import instantiate
from torch.distributions import Categorical, Normal

import soft_tokens.representers.soft as soft_mod
from soft_tokens.representers import GumbelSoftmaxRepresenter, HardRepresenter, Replay, SoftRepresenter

# --------------------------------------------------------------------------- soft: density and gradients


def test_soft_log_prob_is_the_gaussian_density_around_the_mixture():
    logits, E = make()
    rep = SoftRepresenter(tau=0.5, gamma=0.33)
    fed = torch.randn(logits.shape[0], D, generator=gen(1))
    # Independent of the code under test: h = softmax(z / tau) @ E, sigma = gamma * sqrt(mean(E^2)).
    h = torch.softmax(logits / 0.5, dim=-1) @ E
    sigma = 0.33 * E.pow(2).mean().sqrt()
    expected = Normal(h, sigma).log_prob(fed).sum(-1)
    got = rep.log_prob(Replay(logits, fed, logits.argmax(-1), E))
    assert got.shape == (logits.shape[0],)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_soft_log_prob_needs_fed_and_positive_sigma():
    logits, E = make()
    with pytest.raises(ValueError, match="fed"):
        SoftRepresenter().log_prob(Replay(logits, None, logits.argmax(-1), E))
    with pytest.raises(ValueError, match="sigma"):
        SoftRepresenter(gamma=0.0).log_prob(
            Replay(logits, torch.zeros(logits.shape[0], D), logits.argmax(-1), E)
        )


def test_soft_log_prob_gradient_wrt_logits_matches_finite_differences():
    # The representer computes in float32 by design (softmax upcast via .float()), so float64 inputs are
    # downcast and torch.autograd.gradcheck cannot be used; central differences in float32 with a step
    # chosen to balance truncation (O(h^2)) and round-off (O(ulp / h)) errors instead.
    logits, E = make(seed=3, n=3)
    rep = SoftRepresenter(tau=0.5, gamma=0.33)
    fed = rep.mixture(logits, E) + 0.33 * torch.randn(3, D, generator=gen(4))
    weights = torch.tensor([1.0, -0.5, 2.0])  # a generic scalar of the per-row log-densities

    def f(z):
        return (rep.log_prob(Replay(z, fed, z.argmax(-1), E)) * weights).sum()

    z = logits.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(f(z), z)
    numeric = central_diff(lambda x: f(x).item(), logits, h=2e-3)
    assert grad.abs().max() > 0.1  # a non-trivial gradient
    torch.testing.assert_close(grad, numeric, rtol=1e-3, atol=2e-3)


def test_soft_log_prob_gradient_wrt_embedding_matches_finite_differences():
    logits, E = make(seed=5, n=3)
    rep = SoftRepresenter(tau=0.5, gamma=0.33)
    fed = rep.mixture(logits, E) + 0.33 * torch.randn(3, D, generator=gen(6))
    weights = torch.tensor([0.7, 1.3, -1.0])
    # sigma is detached by design: hold it fixed for the finite differences (perturbing E would change it).
    sigma = rep.sigma(E).clone()

    def f(emb):
        return (rep.log_prob(Replay(logits, fed, logits.argmax(-1), emb)) * weights).sum()

    Eg = E.clone().requires_grad_(True)
    (grad_free,) = torch.autograd.grad(f(Eg), Eg)  # sigma recomputed from E by the representer
    rep.sigma = lambda emb: sigma  # instance attribute shadows the method
    (grad_fixed,) = torch.autograd.grad(f(Eg), Eg)
    numeric = central_diff(lambda x: f(x).item(), E, h=2e-3)
    assert grad_fixed.abs().max() > 0.1
    # No gradient flows through sigma: identical whether sigma is recomputed from E or held fixed.
    torch.testing.assert_close(grad_free, grad_fixed, rtol=0, atol=0)
    torch.testing.assert_close(grad_fixed, numeric, rtol=1e-3, atol=2e-3)


# --------------------------------------------------------------------------- fuzzy and sigma


def test_fuzzy_mixture_is_the_argmax_embedding():
    g = gen(7)
    logits = torch.randn(64, 50, generator=g)
    top = logits.argmax(-1)
    logits[torch.arange(64), top] += 0.05  # distinct maxima: a gap of at least 0.05 = 500 tau
    E = torch.randn(50, 16, generator=g)
    rep = SoftRepresenter(tau=1e-4)
    h = rep.mixture(logits, E)
    target = E[top]
    rel = (h - target).norm(dim=-1) / target.norm(dim=-1)
    assert rel.max() < 1e-3
    # The fuzzy step feeds argmax embedding + noise and reports the argmax as its shadow id.
    step = rep.step(logits, E, generator=gen(8))
    assert torch.equal(step.ids, top)


def test_sigma_is_gamma_times_rms_and_cached_until_embedding_changes(monkeypatch):
    calls = []
    real_rms = soft_mod.embedding_rms

    def counting_rms(e):
        calls.append(1)
        return real_rms(e)

    monkeypatch.setattr(soft_mod, "embedding_rms", counting_rms)
    E = torch.tensor([[1.0, -2.0], [3.0, 0.5], [0.0, 4.0]])  # mean(E^2) = (1+4+9+0.25+0+16)/6 = 30.25/6
    rep = SoftRepresenter(gamma=0.5)
    expected = 0.5 * math.sqrt(30.25 / 6)
    assert rep.sigma(E).item() == pytest.approx(expected, rel=1e-6)
    assert len(calls) == 1
    rep.sigma(E)
    rep.log_prob(Replay(torch.zeros(2, 3), torch.zeros(2, 2), torch.zeros(2, dtype=torch.long), E))
    assert len(calls) == 1  # unchanged E: not recomputed
    E.mul_(2)  # in-place update (as an optimizer step does)
    assert rep.sigma(E).item() == pytest.approx(2 * expected, rel=1e-6)
    assert len(calls) == 2
    rep.sigma(E)
    assert len(calls) == 2
    # An nn.Parameter updated in place under no_grad (plain or foreach AdamW) is recomputed too.
    p = torch.nn.Parameter(torch.ones(3, 2))
    assert rep.sigma(p).item() == pytest.approx(0.5, rel=1e-6)
    with torch.no_grad():
        p.fill_(3.0)
    assert rep.sigma(p).item() == pytest.approx(1.5, rel=1e-6)
    # A different tensor with other values gets its own sigma.
    E2 = torch.full((3, 2), 10.0)
    assert rep.sigma(E2).item() == pytest.approx(5.0, rel=1e-6)


def test_prepare_forgets_sigma_of_a_trainable_embedding_only(monkeypatch):
    calls = []
    real_rms = soft_mod.embedding_rms
    monkeypatch.setattr(soft_mod, "embedding_rms", lambda e: calls.append(1) or real_rms(e))
    rep = SoftRepresenter(gamma=1.0)
    p = torch.nn.Parameter(torch.ones(3, 2))
    rep.prepare(p)
    rep.as_greedy().step(torch.zeros(2, 3), p)
    assert calls == []  # a greedy rollout never needs sigma
    assert rep.sigma(p).item() == pytest.approx(1.0, rel=1e-6)
    p.data.mul_(2)  # an update that leaves the version counter alone (as fused AdamW's step does too)
    assert rep.sigma(p).item() == pytest.approx(1.0, rel=1e-6)  # the cache cannot see it
    rep.prepare(p)  # the next rollout
    assert rep.sigma(p).item() == pytest.approx(2.0, rel=1e-6)
    assert len(calls) == 2
    frozen = torch.ones(3, 2)
    rep.sigma(frozen)
    rep.prepare(frozen)
    rep.sigma(frozen)
    assert len(calls) == 3  # a frozen E keeps its sigma across rollouts


def test_sigma_scales_the_noise():
    logits, E = make(n=20000, v=4, d=3)
    rep = SoftRepresenter(tau=0.5, gamma=0.33)
    step = rep.step(logits, E, generator=gen(0))
    noise = step.embeds - rep.mixture(logits, E)
    sigma = 0.33 * E.pow(2).mean().sqrt()
    assert noise.mean().abs() < 0.01 * sigma
    assert noise.std().item() == pytest.approx(sigma.item(), rel=0.02)


# --------------------------------------------------------------------------- noise, greedy, step/log_prob


@pytest.mark.parametrize("temperature", [0.5, 1e-4])
def test_seeded_noise_reproduces_and_differs_across_seeds(temperature):
    logits, E = make()
    rep = SoftRepresenter(tau=temperature)
    a = rep.step(logits, E, generator=gen(11))
    b = rep.step(logits, E, generator=gen(11))
    c = rep.step(logits, E, generator=gen(12))
    assert torch.equal(a.embeds, b.embeds) and torch.equal(a.logp, b.logp) and torch.equal(a.ids, b.ids)
    assert (a.embeds - c.embeds).abs().min() > 0  # every coordinate's noise differs
    assert not torch.equal(a.logp, c.logp)


def test_hard_sampling_reproduces_with_a_generator():
    logits, E = make(n=200)
    rep = HardRepresenter()
    a = rep.step(logits, E, generator=gen(1))
    b = rep.step(logits, E, generator=gen(1))
    c = rep.step(logits, E, generator=gen(2))
    assert torch.equal(a.ids, b.ids)
    assert not torch.equal(a.ids, c.ids)


def test_soft_greedy_feeds_the_mixture_without_noise():
    logits, E = make()
    for rep in (SoftRepresenter(tau=0.5, greedy=True), SoftRepresenter(tau=0.5).as_greedy()):
        a = rep.step(logits, E, generator=gen(1))
        b = rep.step(logits, E, generator=gen(2))
        assert torch.equal(a.embeds, rep.mixture(logits, E))
        assert torch.equal(a.embeds, b.embeds)
        assert torch.equal(a.ids, logits.argmax(-1))
        assert torch.equal(a.logp, torch.zeros(logits.shape[0]))
    # gamma = 0 adds no noise either.
    step = SoftRepresenter(tau=0.5, gamma=0.0).step(logits, E, generator=gen(1))
    assert torch.equal(step.embeds, SoftRepresenter(tau=0.5).mixture(logits, E))


def test_hard_greedy_is_argmax():
    logits, E = make(n=32)
    rep = HardRepresenter(temperature=1.0, greedy=True)
    step = rep.step(logits, E, generator=gen(1))
    top = logits.argmax(-1)
    assert torch.equal(step.ids, top)
    assert torch.equal(step.embeds, E[top])
    torch.testing.assert_close(step.logp, torch.log_softmax(logits, -1).gather(-1, top[:, None])[:, 0])


@pytest.mark.numerics
def test_soft_step_logp_equals_log_prob_of_what_was_fed():
    logits, E = make(n=16)
    for tau in (0.5, 1e-4):
        rep = SoftRepresenter(tau=tau, gamma=0.33)
        step = rep.step(logits, E, generator=gen(3))
        assert step.embeds.shape == (16, D) and step.logp.dtype == torch.float32
        recomputed = rep.log_prob(Replay(logits, step.embeds, step.ids, E))
        torch.testing.assert_close(step.logp, recomputed, rtol=1e-5, atol=1e-4)


def test_hard_step_logp_equals_log_prob():
    logits, E = make(n=64)
    rep = HardRepresenter(temperature=0.7)
    step = rep.step(logits, E, generator=gen(3))
    assert torch.equal(step.embeds, E[step.ids])
    torch.testing.assert_close(step.logp, rep.log_prob(Replay(logits, None, step.ids, E)), rtol=0, atol=0)


# --------------------------------------------------------------------------- hard: distribution


def test_hard_samples_follow_tempered_softmax():
    logits = torch.tensor([1.0, 0.0, -1.0, 2.0, 0.5])
    T, n = 0.7, 40000
    rep = HardRepresenter(temperature=T)
    E = torch.eye(5)
    step = rep.step(logits.expand(n, 5), E, generator=gen(0))
    freq = torch.bincount(step.ids, minlength=5).float() / n
    probs = torch.softmax(logits / T, -1)
    # Binomial standard error sqrt(p (1 - p) / n) <= 0.0025; allow ~4 standard errors.
    torch.testing.assert_close(freq, probs, rtol=0, atol=0.01)
    # And at T = 1 the distribution is visibly different (the temperature is applied).
    assert (torch.softmax(logits, -1) - probs).abs().max() > 0.05


def test_hard_log_prob_is_tempered_categorical():
    logits, E = make(n=10)
    ids = torch.arange(10) % V
    for T in (1.0, 0.7, 2.5):
        got = HardRepresenter(temperature=T).log_prob(Replay(logits, None, ids, E))
        torch.testing.assert_close(got, Categorical(logits=logits / T).log_prob(ids), rtol=1e-6, atol=1e-6)


def test_hard_log_prob_is_differentiable():
    logits, E = make(n=3)
    z = logits.clone().requires_grad_(True)
    ids = torch.tensor([0, 1, 2])
    (grad,) = torch.autograd.grad(HardRepresenter().log_prob(Replay(z, None, ids, E)).sum(), z)
    expected = torch.nn.functional.one_hot(ids, V).float() - torch.softmax(logits, -1)
    torch.testing.assert_close(grad, expected)


# --------------------------------------------------------------------------- KL


def test_hard_k3_kl_zero_at_reference_and_positive_elsewhere():
    logits, E = make(n=8)
    rep = HardRepresenter(temperature=1.0)
    ids = rep.step(logits, E, generator=gen(0)).ids
    same = rep.kl(Replay(logits, None, ids, E), Replay(logits.clone(), None, ids, E))
    assert torch.equal(same, torch.zeros(8))
    other = rep.kl(
        Replay(logits, None, ids, E), Replay(logits + torch.randn(8, V, generator=gen(1)), None, ids, E)
    )
    assert (other > 0).all()
    # k3 = exp(r) - r - 1 with r = log ref - log pi: one hand-checked value.
    z = torch.tensor([[0.0, 0.0]])  # pi(0) = 1/2
    z_ref = torch.tensor([[math.log(3.0), 0.0]])  # ref(0) = 3/4
    r = math.log(1.5)
    k3 = rep.kl(Replay(z, None, torch.tensor([0]), E), Replay(z_ref, None, torch.tensor([0]), E))
    assert k3.item() == pytest.approx(1.5 - r - 1, rel=1e-6)


def test_hard_kl_gradient_reaches_the_policy_only():
    logits, E = make(n=4)
    z = logits.clone().requires_grad_(True)
    z_ref = (logits + 1.0).requires_grad_(True)
    ids = torch.tensor([0, 1, 2, 3])
    HardRepresenter().kl(Replay(z, None, ids, E), Replay(z_ref, None, ids, E)).sum().backward()
    assert z.grad is not None and z.grad.abs().max() > 0
    assert z_ref.grad is None


def test_soft_kl_zero_at_reference_and_positive_elsewhere():
    logits, E = make(n=6)
    rep = SoftRepresenter(tau=0.5, gamma=0.33)
    fed = rep.step(logits, E, generator=gen(0)).embeds
    ids = logits.argmax(-1)
    assert torch.equal(
        rep.kl(Replay(logits, fed, ids, E), Replay(logits.clone(), fed, ids, E.clone())), torch.zeros(6)
    )
    assert (
        rep.kl(Replay(logits, fed, ids, E), Replay(logits + torch.randn(6, V, generator=gen(1)), fed, ids, E))
        > 0
    ).all()
    assert (rep.kl(Replay(logits, fed, ids, E), Replay(logits, fed, ids, E + 0.1)) > 0).all()


def test_soft_kl_closed_form_matches_monte_carlo():
    logits, E = make(seed=2, n=3)
    ref_logits = logits + 0.8 * torch.randn(3, V, generator=gen(9))
    rep = SoftRepresenter(tau=0.5, gamma=0.33)
    kl = rep.kl(Replay(logits, None, logits.argmax(-1), E), Replay(ref_logits, None, logits.argmax(-1), E))
    # Hand-written closed form from the two means.
    h = torch.softmax(logits / 0.5, -1) @ E
    h_ref = torch.softmax(ref_logits / 0.5, -1) @ E
    sigma = 0.33 * E.pow(2).mean().sqrt()
    torch.testing.assert_close(kl, (h - h_ref).pow(2).sum(-1) / (2 * sigma**2), rtol=1e-5, atol=1e-6)
    assert (kl > 0.2).all()  # not a degenerate case
    # Monte Carlo: x ~ N(h, sigma^2 I); KL = E[log N(x; h) - log N(x; h_ref)].
    n = 200_000
    x = h[:, None].double() + sigma.double() * torch.randn(3, n, D, generator=gen(10), dtype=torch.float64)
    p, q = Normal(h[:, None].double(), sigma.double()), Normal(h_ref[:, None].double(), sigma.double())
    mc = (p.log_prob(x) - q.log_prob(x)).sum(-1).mean(-1)
    # Standard error of the mean is sqrt(2 KL / n) <= 0.01 for these sizes.
    torch.testing.assert_close(kl.double(), mc, rtol=0.03, atol=0.01)


def test_soft_kl_gradient_reaches_the_policy_only():
    logits, E = make(n=4)
    z = logits.clone().requires_grad_(True)
    z_ref = (logits + 1.0).requires_grad_(True)
    E_ref = E.clone().requires_grad_(True)
    SoftRepresenter().kl(
        Replay(z, None, logits.argmax(-1), E), Replay(z_ref, None, logits.argmax(-1), E_ref)
    ).sum().backward()
    assert z.grad is not None and z.grad.abs().max() > 0
    assert z_ref.grad is None and E_ref.grad is None


# --------------------------------------------------------------------------- construction


def test_as_greedy_returns_a_copy():
    for rep, knob in (
        (HardRepresenter(temperature=0.7, name="h"), "temperature"),
        (SoftRepresenter(tau=1e-4, gamma=0.5), "tau"),
    ):
        greedy = rep.as_greedy()
        assert greedy is not rep
        assert greedy.greedy and not rep.greedy
        assert type(greedy) is type(rep)
        assert getattr(greedy, knob) == getattr(rep, knob) and greedy.name == rep.name
    soft = SoftRepresenter(tau=1e-4, gamma=0.5)
    assert soft.as_greedy().gamma == 0.5 and soft.as_greedy().continuous
    assert not HardRepresenter().continuous


def test_names():
    assert HardRepresenter().name == "hard"
    assert SoftRepresenter().name == "soft"
    assert SoftRepresenter(tau=1e-4, name="fuzzy").name == "fuzzy"


# --------------------------------------------------------------------------- soft: one pass for logits and mixture


@pytest.mark.numerics
@pytest.mark.parametrize("scale,tau", [(1.0, 0.5), (50.0, 0.5), (1.0, 2.0)])
def test_logits_and_mixture_equal_the_two_pass_computation(scale, tau):
    g = gen(11)
    hidden, E = scale * torch.randn(3, 16, generator=g), torch.randn(1000, 16, generator=g)
    # 64-row blocks (the minimum): 16 blocks, the running max grows across them
    logits, mix = soft_mod.logits_and_mixture(hidden, E, tau, block_bytes=1)
    ref_logits = hidden @ E.T
    torch.testing.assert_close(logits, ref_logits, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(mix, torch.softmax(ref_logits / tau, dim=-1) @ E, rtol=1e-5, atol=1e-6)


@pytest.mark.numerics
def test_soft_project_fuses_only_a_tied_head_on_cpu_at_a_mixing_temperature(monkeypatch):
    E = torch.randn(V, D, generator=gen(12))
    hidden = torch.randn(4, D, generator=gen(13))
    tied = torch.nn.Linear(D, V, bias=False)
    tied.weight = torch.nn.Parameter(E)
    assert SoftRepresenter().project(hidden, tied, E)[1] is None  # a small E: two passes, both from cache
    monkeypatch.setattr(SoftRepresenter, "fuse_min_bytes", 0)
    untied = torch.nn.Linear(D, V, bias=False)
    logits, pre = SoftRepresenter(tau=0.5).project(hidden, tied, E)
    torch.testing.assert_close(pre, SoftRepresenter(tau=0.5).mixture(logits, E), rtol=1e-5, atol=1e-6)
    assert SoftRepresenter(tau=0.5).project(hidden, untied, E)[1] is None
    assert SoftRepresenter(tau=1e-4).project(hidden, tied, E)[1] is None  # fuzzy: the sparse sum

    class OwnMixture(SoftRepresenter):  # found to have its own mixture: no flag
        def mixture(self, logits, embedding):
            return super().mixture(logits, embedding) * 0

    assert OwnMixture().project(hidden, tied, E)[1] is None
    # the step uses what project made, and the same noise as without it
    a = SoftRepresenter().step(logits, E, gen(1), pre=pre)
    b = SoftRepresenter().step(logits, E, gen(1))
    torch.testing.assert_close(a.embeds, b.embeds, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a.logp, b.logp)


# --------------------------------------------------------------------------- names and capabilities


@pytest.mark.parametrize("cls,default", [(SoftRepresenter, 0.5), (GumbelSoftmaxRepresenter, 0.1)])
def test_old_temperature_name_sets_tau_with_a_deprecation_message(cls, default, caplog):
    assert cls().tau == default
    with pytest.warns(DeprecationWarning, match="use `tau`"):
        rep = cls(temperature=0.3)
    assert rep.tau == 0.3 and not hasattr(rep, "temperature")
    assert "use `tau`" in caplog.text


def test_fuzzy_yaml_takes_the_old_temperature_key():
    cfg = compose_train(["representer=fuzzy", "+representer.temperature=0.3"])
    with pytest.warns(DeprecationWarning):
        assert instantiate(cfg.representer).tau == 0.3
    assert instantiate(compose_train(["representer=fuzzy"]).representer).tau == 1e-4


def test_a_subclass_with_its_own_mixture_gets_it_used_with_no_flag():
    class Halved(SoftRepresenter):
        def mixture(self, logits, embedding):
            return super().mixture(logits, embedding) / 2

    logits, E = make(v=V)
    assert SoftRepresenter().fast_mixture and not Halved().fast_mixture
    a, b = Halved(gamma=0.0).step(logits, E, gen(0)), SoftRepresenter(gamma=0.0).step(logits, E, gen(0))
    torch.testing.assert_close(a.embeds, b.embeds / 2)
    assert torch.equal(a.ids, b.ids)

    class Declared(SoftRepresenter):  # an older subclass's declaration is still honoured
        fast_mixture = True  # still softmax(logits / tau) @ E

        def mixture(self, logits, embedding):
            return super().mixture(logits, embedding)

    a, b = Declared().step(logits, E, gen(0)), SoftRepresenter().step(logits, E, gen(0))
    assert torch.equal(a.embeds, b.embeds) and torch.equal(a.logp, b.logp)
