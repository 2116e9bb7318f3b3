"""The paper's noise placements (Appendix F.2; soft_tokens/representers/placement.py): embedding, hidden state,
logits and top-k logits. Hand-computed densities, the replay against the rollout, the score function's
expectation against the pathwise gradient, and the default bit for bit."""

from __future__ import annotations

import copy
import math
import pickle

import pytest
import torch
from helpers import PROMPTS, compose_train, gen, make
from hydra.utils import instantiate
from numerics import U, decode_logit_differences, record_decode_logits, teacher_forced_logits

from soft_tokens.representers import Replay, SoftRepresenter
from soft_tokens.representers.placement import gaussian_log_density, hidden_scale
from soft_tokens.representers.soft import embedding_rms
from soft_tokens.rollout import RolloutConfig, RolloutEngine
from soft_tokens.rollout.logprobs import hidden_states, rollout_log_probs

PLACEMENTS = {
    "embedding": {},
    "hidden": {"noise_on": "hidden"},
    "logits": {"noise_on": "logits"},
    "top_k_logits": {"noise_on": "top_k_logits", "noise_logits_top_k": 3},
}

# --------------------------------------------------------------------------- by hand


def test_logit_noise_log_density_and_kl_by_hand():
    # |z~ - z|^2 = 0.25 + 0 + 1 = 1.25; gamma 0.5: -1.25 / 0.5 - 3/2 log(2 pi 0.25) = -2.5 - 1.5 log(pi / 2)
    rep = SoftRepresenter(gamma=0.5, noise_on="logits")
    z, E = torch.tensor([[1.0, 0.0, -1.0]]), torch.eye(3)
    replay = Replay(z, None, torch.tensor([0]), E, {"perturbed_logits": torch.tensor([[1.5, 0.0, -2.0]])})
    assert rep.log_prob(replay).item() == pytest.approx(-2.5 - 1.5 * math.log(math.pi / 2), abs=1e-6)
    # KL to a reference at z_ref = 0: |z - z_ref|^2 / (2 gamma^2) = 2 / 0.5 = 4
    assert rep.kl(replay, replay.under(torch.zeros(1, 3), E)).item() == pytest.approx(4.0, abs=1e-6)


def test_top_k_logit_noise_log_density_and_kl_by_hand():
    # top 2 of (1, 3, 0, 2): ids (1, 3), z_K = (3, 2); z~_K = (3.5, 1): -1.25 / 0.5 - log(2 pi 0.25)
    rep = SoftRepresenter(gamma=0.5, noise_on="top_k_logits", noise_logits_top_k=2)
    z, E = torch.tensor([[1.0, 3.0, 0.0, 2.0]]), torch.eye(4)
    aux = {"perturbed_logits": torch.tensor([[3.5, 1.0]]), "logit_ids": torch.tensor([[1, 3]])}
    replay = Replay(z, None, torch.tensor([1]), E, aux)
    assert rep.log_prob(replay).item() == pytest.approx(-2.5 - math.log(math.pi / 2), abs=1e-6)
    # only the stored coordinates count: moving the other logits changes nothing
    assert rep.log_prob(
        Replay(z + torch.tensor([[9.0, 0, -9.0, 0]]), None, z[:, 0].long(), E, aux)
    ).item() == (rep.log_prob(replay).item())
    # KL to z_ref = 0: |(3, 2)|^2 / (2 * 0.25) = 26
    assert rep.kl(replay, replay.under(torch.zeros(1, 4), E)).item() == pytest.approx(26.0, abs=1e-5)


def test_top_k_logit_step_mixes_the_perturbed_top_k_only():
    rep = SoftRepresenter(tau=0.7, gamma=0.5, noise_on="top_k_logits", noise_logits_top_k=2)
    z, E = torch.tensor([[1.0, 3.0, 0.0, 2.0]]).expand(500, 4), torch.eye(4)
    step = rep.step(z, E, gen(0))
    assert step.aux["logit_ids"][0].tolist() == [1, 3] and step.aux["perturbed_logits"].shape == (500, 2)
    weights = torch.softmax(step.aux["perturbed_logits"] / 0.7, -1)
    assert torch.equal(
        step.embeds[:, [0, 2]], torch.zeros(500, 2)
    )  # the others are at -inf: weight exactly 0
    torch.testing.assert_close(step.embeds[:, [1, 3]], weights, rtol=1e-6, atol=1e-7)
    shadow = torch.tensor([1, 3])[step.aux["perturbed_logits"].argmax(-1)]
    assert torch.equal(step.ids, shadow) and (step.ids == 3).any()  # the argmax of the perturbed logits
    eps = (step.aux["perturbed_logits"] - torch.tensor([3.0, 2.0])) / 0.5
    assert eps.std().item() == pytest.approx(1.0, abs=0.1)
    want = gaussian_log_density(step.aux["perturbed_logits"] - torch.tensor([3.0, 2.0]), 0.5)
    torch.testing.assert_close(step.logp, want, rtol=0, atol=1e-5)


def test_hidden_noise_scale_log_density_and_kl_by_hand():
    # h = (3, 4): RMS sqrt(12.5); gamma 0.2: sigma = sqrt(0.5); h~ = (3.5, 3): -1.25 / (2 * 0.5) - log(2 pi 0.5)
    h = torch.tensor([[3.0, 4.0]])
    assert hidden_scale(h, 0.2).item() == pytest.approx(math.sqrt(0.5), abs=1e-7)
    rep = SoftRepresenter(gamma=0.2, noise_on="hidden")
    aux = {"noised_hidden": torch.tensor([[3.5, 3.0]]), "noise_sigma": torch.tensor([math.sqrt(0.5)])}
    replay = Replay(torch.zeros(1, 3), None, torch.tensor([0]), torch.eye(3), aux, hidden=h)
    assert rep.log_prob(replay).item() == pytest.approx(-1.25 - math.log(math.pi), abs=1e-6)
    # KL to h_ref = (3, 3): 1 / (2 * 0.5) = 1
    ref = replay.under(torch.zeros(1, 3), torch.eye(3), torch.tensor([[3.0, 3.0]]))
    assert rep.kl(replay, ref).item() == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match="needs `hidden`"):
        rep.log_prob(Replay(torch.zeros(1, 3), None, torch.tensor([0]), torch.eye(3), aux))


def test_hidden_step_maps_the_noised_hidden_state_through_the_head():
    torch.manual_seed(0)
    head = torch.nn.Linear(4, 6, bias=False)
    E, hidden = torch.randn(6, 3), torch.randn(1, 4).expand(4000, 4)
    rep = SoftRepresenter(tau=0.5, gamma=0.3, noise_on="hidden")
    with pytest.raises(ValueError, match="call project"):
        rep.step(head(hidden), E, gen(0))
    logits, pre = rep.project(hidden, head, E)
    assert torch.equal(pre, hidden)
    step = rep.step(logits, E, gen(0), pre=pre)
    noised, sigma = step.aux["noised_hidden"], step.aux["noise_sigma"]
    torch.testing.assert_close(sigma, 0.3 * hidden.pow(2).mean(-1).sqrt(), rtol=0, atol=1e-7)
    torch.testing.assert_close(step.embeds, torch.softmax(head(noised) / 0.5, -1) @ E, rtol=1e-5, atol=1e-6)
    assert torch.equal(step.ids, head(noised).argmax(-1))
    assert ((noised - hidden) / sigma[:, None]).std().item() == pytest.approx(1.0, abs=0.05)
    # the head is not part of the representer's state: copies and pickles drop it
    assert pickle.loads(pickle.dumps(rep))._head is None and copy.copy(rep)._head is None
    greedy = rep.as_greedy()  # no noise: the plain mixture, whatever the placement
    g_logits, g_pre = greedy.project(hidden[:2], head, E)
    assert g_pre is None
    torch.testing.assert_close(greedy.step(g_logits, E).embeds, torch.softmax(g_logits / 0.5, -1) @ E)


@pytest.mark.parametrize("placement", ["hidden", "logits", "top_k_logits"])
def test_step_log_density_equals_its_replay(placement):
    torch.manual_seed(1)
    head, E = torch.nn.Linear(5, 7, bias=False), torch.randn(7, 3)
    hidden = torch.randn(16, 5)
    rep = SoftRepresenter(tau=0.5, gamma=0.4, **PLACEMENTS[placement])
    with torch.no_grad():
        logits, pre = rep.project(hidden, head, E)
        step = rep.step(logits, E, gen(2), pre=pre)
    got = rep.log_prob(Replay(logits, step.embeds, step.ids, E, step.aux, hidden=hidden))
    torch.testing.assert_close(got, step.logp, rtol=0, atol=1e-5)
    assert rep.kl(*(Replay(logits, step.embeds, step.ids, E, step.aux, hidden=hidden),) * 2).abs().max() == 0


def test_default_placement_is_the_embedding_noise_bit_for_bit():
    """noise_on's default is the code path of before the option, op for op (the same draws, the same sums)."""
    logits, E = make(n=6)
    rep = instantiate(compose_train(["representer=soft"]).representer)
    assert rep.noise_on == "embedding" and rep.upstream is None and "noise_on" not in repr(rep)
    step = rep.step(logits, E, gen(3))
    h = torch.softmax(logits.float() / 0.5, dim=-1).to(E.dtype) @ E
    sigma = 0.33 * embedding_rms(E)
    eps = torch.randn(h.shape, generator=gen(3), dtype=torch.float32)
    d = E.shape[-1]
    assert torch.equal(step.embeds, (h.float() + sigma * eps).to(h.dtype))
    assert torch.equal(
        step.logp, -0.5 * eps.pow(2).sum(-1) - 0.5 * d * math.log(2 * math.pi) - d * torch.log(sigma)
    )
    assert step.aux is None and torch.equal(step.ids, logits.argmax(-1))
    head = torch.nn.Linear(D_HID, E.shape[0], bias=False)
    hidden = torch.randn(2, D_HID, generator=gen(4))
    out, pre = rep.project(hidden, head, E)
    assert pre is None and torch.equal(out, head(hidden))


D_HID = 4


def test_placement_options_checked_and_named():
    with pytest.raises(ValueError, match="noise_on must be one of embedding, hidden, logits, top_k_logits"):
        SoftRepresenter(noise_on="logit")
    with pytest.raises(ValueError, match="needs noise_logits_top_k"):
        SoftRepresenter(noise_on="top_k_logits")
    with pytest.raises(ValueError, match="noise_logits_top_k is for noise_on=top_k_logits"):
        SoftRepresenter(noise_on="logits", noise_logits_top_k=5)
    with pytest.raises(ValueError, match="with noise_on=hidden set them to null and 0"):
        SoftRepresenter(noise_on="hidden", noise_min_entropy=0.3)
    with pytest.raises(ValueError, match="gamma = 0"):
        rep = SoftRepresenter(gamma=0.0, noise_on="logits")
        rep.log_prob(Replay(torch.zeros(1, 3), None, torch.tensor([0]), torch.eye(3), {}))
    rep = SoftRepresenter(noise_on="top_k_logits", noise_logits_top_k=5)
    assert "noise_on=top_k_logits, noise_logits_top_k=5" in repr(rep)
    with pytest.raises(ValueError, match="logit_ids"):
        rep.log_prob(
            Replay(torch.zeros(1, 8), None, torch.tensor([0]), torch.eye(8), {"perturbed_logits": 1})
        )


def test_ablation_preset_composes_each_placement():
    for row in ("noise_on=hidden", "noise_on=top_k_logits representer.noise_logits_top_k=50"):
        overrides = [
            "experiment=embedded_noise_placement",
            *(f"representer.{row}").split(),
            "paths.output_dir=/x",
        ]
        cfg = compose_train(overrides)
        assert (
            cfg.module.samples_per_prompt == 16
            and cfg.task_name == f"embedded_noise_{cfg.representer.noise_on}"
        )
        rep = instantiate(cfg.representer)
        assert rep.placed is None and rep.noise_on == cfg.representer.noise_on and rep.tau == 0.5


# --------------------------------------------------------------------------- the estimator's expectation


def _reward(fed: torch.Tensor) -> torch.Tensor:
    """A smooth nonlinear reward of the fed input."""
    return torch.sin(fed @ torch.tensor([1.5, -1.0, 0.5])) + (fed @ torch.tensor([0.3, 0.8, -0.6])).pow(2)


@pytest.mark.parametrize("placement", list(PLACEMENTS))
def test_score_function_expectation_is_the_pathwise_gradient(placement):
    """E[grad log p] = 0, and E[R grad log p] equals the pathwise gradient E[grad R(fed(theta, noise))] of the
    same expectation: the log-density is that of exactly the variable the step sampled."""
    n, chunks, tau = 40_000, 100, 0.5
    g = gen(11)
    E = torch.randn(5, 3, generator=g)
    head = torch.nn.Linear(4, 5, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.randn(5, 4, generator=g))
    rep = SoftRepresenter(tau=tau, gamma=0.5, **PLACEMENTS[placement])
    hid = placement == "hidden"
    theta0 = torch.randn(4 if hid else 5, generator=g)
    with torch.no_grad():
        rows = theta0.expand(n, -1)
        logits, pre = rep.project(rows, head, E) if hid else (rows, None)
        step = rep.step(logits, E, gen(12), pre=pre)
    theta = theta0.clone().requires_grad_(True)

    def log_p(t: torch.Tensor, sl: slice) -> torch.Tensor:
        aux = None if step.aux is None else {k: v[sl] for k, v in step.aux.items()}
        replay = Replay(
            head(t) if hid else t, step.embeds[sl], step.ids[sl], E, aux, hidden=t if hid else None
        )
        return rep.log_prob(replay)

    def fed(t: torch.Tensor, sl: slice) -> torch.Tensor:  # the same draws as a function of theta
        base, aux = rows[sl], {k: v[sl] for k, v in (step.aux or {}).items()}
        if placement == "embedding":
            return torch.softmax(t / tau, -1) @ E + (step.embeds[sl] - torch.softmax(base / tau, -1) @ E)
        if placement == "logits":
            return torch.softmax((t + aux["perturbed_logits"] - base) / tau, -1) @ E
        if placement == "top_k_logits":
            ids = aux["logit_ids"]
            z = t.gather(-1, ids) + aux["perturbed_logits"] - base.gather(-1, ids)
            return torch.einsum("nk,nkd->nd", torch.softmax(z / tau, -1), E[ids])
        return torch.softmax(head(t + aux["noised_hidden"] - base) / tau, -1) @ E

    score, path, zero = [], [], []
    for i in range(chunks):
        sl = slice(i * n // chunks, (i + 1) * n // chunks)
        t = theta.expand(n, -1)[sl]
        lp = log_p(t, sl)
        r = _reward(step.embeds[sl]).detach()
        score.append(torch.autograd.grad((r * lp).mean(), theta, retain_graph=True)[0])
        zero.append(torch.autograd.grad(lp.mean(), theta)[0])
        path.append(torch.autograd.grad(_reward(fed(t, sl)).mean(), theta)[0])
    score, path, zero = torch.stack(score), torch.stack(path), torch.stack(zero)
    assert torch.allclose(_reward(fed(theta0.expand(n, -1), slice(None))), _reward(step.embeds), atol=1e-5)
    se = lambda x: x.std(0) / math.sqrt(chunks)  # noqa: E731
    assert zero.mean(0).abs().le(5 * se(zero) + 1e-6).all()
    diff = score - path
    assert diff.mean(0).abs().le(5 * se(diff) + 1e-6).all()
    assert (path.mean(0).abs() > 10 * se(diff)).any()  # the comparison has power: the gradient is far from 0


# --------------------------------------------------------------------------- through the rollout


@pytest.mark.numerics
@pytest.mark.parametrize("placement", ["hidden", "logits", "top_k_logits"])
def test_rollout_stores_the_perturbed_vector_and_replays_its_log_density(
    placement, tiny_model, tiny_tokenizer, monkeypatch
):
    cfg = RolloutConfig(max_cot_tokens=10, answer_max_tokens=4, compact_fraction=2.0)  # no row compaction
    rep = SoftRepresenter(tau=0.5, gamma=0.4, **PLACEMENTS[placement])
    pres = []
    calls = record_decode_logits(rep, monkeypatch)
    spied = rep.step

    def spy(logits, embedding, generator=None, pre=None):
        pres.append(None if pre is None else pre.clone())
        return spied(logits, embedding, generator, pre=pre)

    monkeypatch.setattr(rep, "step", spy)
    ro = RolloutEngine(tiny_tokenizer, cfg).generate(tiny_model.eval(), PROMPTS, rep, generator=gen(0))
    cot = ro.cot_mask
    assert (
        set(ro.aux)
        == {
            "hidden": {"noised_hidden", "noise_sigma"},
            "logits": {"perturbed_logits"},
            "top_k_logits": {"perturbed_logits", "logit_ids"},
        }[placement]
    )
    lp = rollout_log_probs(tiny_model, ro, rep)
    logits, bound = teacher_forced_logits(tiny_model, ro)
    if placement == "hidden":
        with torch.no_grad():
            hid = hidden_states(tiny_model, ro)
        dh = torch.zeros(cot.shape)
        for t, decoded in enumerate(pres):
            rows = cot[:, t].nonzero()[:, 0]
            dh[rows, t] = (hid[rows, t] - decoded).norm(dim=-1)
        dist = (ro.aux["noised_hidden"] - hid).norm(dim=-1)
        sigma, m = ro.aux["noise_sigma"], hid.shape[-1]
        assert (dh[cot] < 1e-4).all()
    else:
        dz_max, _ = decode_logit_differences(logits, bound, ro, calls)
        means = logits if placement == "logits" else logits.gather(-1, ro.aux["logit_ids"])
        m = means.shape[-1]
        dist, sigma, dh = (ro.aux["perturbed_logits"] - means).norm(dim=-1), 0.4, math.sqrt(m) * dz_max
    # log N moves by (|x~ - x| |dx| + |dx|^2 / 2) / sigma^2 when the mean moves by dx, plus the m-term sums'
    # rounding of values the size of the density's parts.
    tol = (dist * dh + dh**2 / 2) / sigma**2 + 8 * (m + 4) * U * (dist**2 / sigma**2 + ro.logp.abs() + m)
    assert ((lp.logp[cot] - ro.logp[cot]).abs() <= tol[cot]).all()
    assert ro.logp[cot].abs().min() > 0
    # the training pass: answer positions (no noise stored there) leave the gradient finite
    tiny_model.zero_grad()
    with torch.enable_grad():
        rollout_log_probs(tiny_model, ro, rep).logp.sum().backward()
    grads = [p.grad for p in tiny_model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
