"""The related continuous-token methods: Gumbel-softmax (SofT-GRPO), top-k Soft Thinking, Mixture of Inputs."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import PROMPTS, central_diff, compose_train, gen, make
from hydra.utils import instantiate
from numerics import (
    U,
    decode_logit_differences,
    gumbel_tolerance,
    record_decode_logits,
    teacher_forced_logits,
)
from omegaconf import OmegaConf
from torch.distributions import Gumbel

from soft_tokens.representers import (
    GumbelSoftmaxRepresenter,
    HardRepresenter,
    MixtureOfInputsRepresenter,
    Replay,
    SoftThinkingRepresenter,
)
from soft_tokens.representers.gumbel import top_p_keep
from soft_tokens.representers.sampling import entropy_of, weighted_rows
from soft_tokens.representers.soft_thinking import filtered_top_k
from soft_tokens.rollout import RolloutConfig, RolloutEngine
from soft_tokens.rollout.logprobs import rollout_log_probs

D = 5

# --------------------------------------------------------------------------- Gumbel-softmax


def reference_q(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Renormalised log-probabilities of `ids`, computed from probabilities (not from the code under test)."""
    p = torch.softmax(logits.double(), dim=-1).gather(-1, ids)
    return (p / p.sum(-1, keepdim=True)).log().float()


def test_gumbel_log_prob_is_the_gumbel_density_of_the_perturbed_logits():
    logits, E = make(v=12)
    rep = GumbelSoftmaxRepresenter(tau=0.3, top_k=4)
    step = rep.step(logits, E, gen(1))
    top, z = step.aux["topk_ids"], step.aux["perturbed"]
    assert top.shape == z.shape == (4, 4)
    # the top-k ids are the 4 most likely tokens
    assert torch.equal(top.sort(-1).values, logits.topk(4, dim=-1).indices.sort(-1).values)
    expected = Gumbel(reference_q(logits, top), torch.ones(())).log_prob(z).sum(-1)
    got = rep.log_prob(Replay(logits, step.embeds, step.ids, E, step.aux))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(step.logp, got, rtol=0, atol=1e-5)  # decode time = teacher-forced


def test_gumbel_feeds_the_gumbel_softmax_mixture_and_the_gumbel_max_token():
    logits, E = make(v=12)
    rep = GumbelSoftmaxRepresenter(tau=0.3, top_k=4)
    step = rep.step(logits, E, gen(2))
    top, z = step.aux["topk_ids"], step.aux["perturbed"]
    expected = torch.einsum("nk,nkd->nd", torch.softmax(z / 0.3, dim=-1), E[top])
    torch.testing.assert_close(step.embeds, expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(step.ids, top.gather(-1, z.argmax(-1, keepdim=True)).squeeze(-1))


def test_gumbel_max_tokens_follow_the_renormalised_top_k_distribution():
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0, -3.0, 0.0]]).expand(20000, -1)
    E = torch.eye(6)
    step = GumbelSoftmaxRepresenter(top_k=3).step(logits, E, gen(3))
    freq = torch.bincount(step.ids, minlength=6).float() / len(step.ids)
    p = torch.softmax(logits[0, :3], dim=-1)
    assert freq[3:].sum() == 0  # never outside the top 3
    torch.testing.assert_close(freq[:3], p, rtol=0, atol=0.01)


def test_gumbel_log_prob_gradient_matches_finite_differences():
    logits, E = make(seed=3, n=3, v=9)
    rep = GumbelSoftmaxRepresenter(tau=0.5, top_k=5)
    step = rep.step(logits, E, gen(4))
    weights = torch.tensor([1.0, -0.5, 2.0])

    def f(z):
        return (rep.log_prob(Replay(z, step.embeds, step.ids, E, step.aux)) * weights).sum()

    z = logits.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(f(z), z)
    numeric = central_diff(lambda x: f(x).item(), logits, h=2e-3)
    assert grad.abs().max() > 0.1
    torch.testing.assert_close(grad, numeric, rtol=1e-3, atol=2e-3)
    # only the stored top-k logits of each row get a gradient
    outside = torch.ones_like(grad, dtype=torch.bool).scatter_(-1, step.aux["topk_ids"], False)
    assert grad[outside].abs().max() == 0


def test_gumbel_kl_is_zero_at_the_reference_and_positive_elsewhere():
    logits, E = make(v=10)
    rep = GumbelSoftmaxRepresenter(top_k=4)
    step = rep.step(logits, E, gen(5))
    replay = Replay(logits, step.embeds, step.ids, E, step.aux)
    same = rep.kl(replay, replay.under(logits, E))
    torch.testing.assert_close(same, torch.zeros(4), rtol=0, atol=1e-6)
    assert (rep.kl(replay, replay.under(logits + torch.randn(logits.shape, generator=gen(6)), E)) > 0).all()


def test_gumbel_greedy_has_no_noise_and_log_prob_needs_aux():
    logits, E = make(v=10)
    rep = GumbelSoftmaxRepresenter(tau=0.5, top_k=3, greedy=True)
    a, b = rep.step(logits, E, gen(1)), rep.step(logits, E, gen(2))
    assert torch.equal(a.embeds, b.embeds) and torch.equal(a.ids, logits.argmax(-1))
    q = reference_q(logits, a.aux["topk_ids"])
    torch.testing.assert_close(
        a.embeds, torch.einsum("nk,nkd->nd", torch.softmax(q / 0.5, -1), E[a.aux["topk_ids"]])
    )
    with pytest.raises(ValueError, match="aux"):
        rep.log_prob(Replay(logits, a.embeds, a.ids, E))


def test_gumbel_seeded_noise_reproduces_and_differs_across_seeds():
    logits, E = make(v=10)
    rep = GumbelSoftmaxRepresenter(top_k=4)
    a, b, c = rep.step(logits, E, gen(7)), rep.step(logits, E, gen(7)), rep.step(logits, E, gen(8))
    assert torch.equal(a.embeds, b.embeds) and torch.equal(a.aux["perturbed"], b.aux["perturbed"])
    assert not torch.equal(a.aux["perturbed"], c.aux["perturbed"])


@pytest.mark.numerics
def test_gumbel_rollout_stores_aux_and_replays_its_log_probs(tiny_model, tiny_tokenizer, monkeypatch):
    # No row compaction, so that each recorded CoT step maps to one column of the rollout.
    cfg = RolloutConfig(max_cot_tokens=10, answer_max_tokens=4, compact_fraction=2.0)
    rep = GumbelSoftmaxRepresenter(top_k=6)
    calls = record_decode_logits(rep, monkeypatch)
    ro = RolloutEngine(tiny_tokenizer, cfg).generate(tiny_model.eval(), PROMPTS, rep, generator=gen(0))
    assert ro.aux["topk_ids"].shape == (*ro.cot_mask.shape, 6) and ro.aux["perturbed"].dtype == torch.float32
    assert (ro.aux["perturbed"][~ro.cot_mask] == 0).all()
    lp = rollout_log_probs(tiny_model, ro, rep)
    logits, bound = teacher_forced_logits(tiny_model, ro)
    dz_max, _ = decode_logit_differences(logits, bound, ro, calls)
    cot = ro.cot_mask
    q, _ = rep.candidates(logits[cot], ro.aux["topk_ids"][cot])
    tol = gumbel_tolerance(q, ro.aux["perturbed"][cot], dz_max[cot])
    assert ((lp.logp[cot] - ro.logp[cot]).abs() <= tol).all()
    moved = ro.to("cpu")
    assert set(moved.aux) == {"topk_ids", "perturbed"}


# --------------------------------------------------------------------------- SofT-GRPO as published


def test_top_p_keep_by_hand():
    # probabilities 0.5, 0.3, 0.15, 0.05: the mass before each is 0, 0.5, 0.8, 0.95
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log() + 2.0  # a shift changes nothing
    ids = torch.tensor([[0, 1, 2, 3]])
    assert top_p_keep(logits, ids, 0.75).tolist() == [[True, True, False, False]]
    assert top_p_keep(logits, ids, 0.85).tolist() == [[True, True, True, False]]
    assert top_p_keep(logits, ids, 0.01).tolist() == [[True, False, False, False]]  # the first always
    # the mass is the full distribution's: only two of four candidates given, same cut
    assert top_p_keep(logits, ids[:, :2], 0.75).tolist() == [[True, True]]
    q, _ = GumbelSoftmaxRepresenter(top_k=4).candidates(logits, ids, top_p_keep(logits, ids, 0.75))
    torch.testing.assert_close(q[:, :2], torch.tensor([[0.625, 0.375]]).log())
    assert q[0, 2:].tolist() == [-math.inf, -math.inf]


def test_soft_grpo_log_density_is_the_mean_over_the_scored_candidates_by_hand():
    # q = log(0.6, 0.3, 0.06, 0.04) = (-0.51, -1.20, -2.81, -3.22): with min_logprob -2 the first two are
    # scored; offsets g = z - q = (0, 1, 5, 5): log Gumbel = -g - exp(-g) = -1 and -1 - e^-1 on the scored ones.
    logits = torch.tensor([[0.6, 0.3, 0.06, 0.04]]).log()
    ids, q = torch.tensor([[0, 1, 2, 3]]), logits
    z = q + torch.tensor([[0.0, 1.0, 5.0, 5.0]])
    kept, scored = torch.ones(1, 4, dtype=torch.bool), torch.tensor([[True, True, False, False]])
    aux = {"topk_ids": ids, "perturbed": z, "kept": kept, "scored": scored}
    E = torch.eye(4)
    mean = GumbelSoftmaxRepresenter(top_k=4, log_density="mean", min_logprob=-2.0)
    total = GumbelSoftmaxRepresenter(top_k=4, log_density="sum", min_logprob=-2.0)
    want = -2.0 - math.exp(-1.0)
    assert mean.log_prob(Replay(logits, None, ids[:, 0], E, aux)).item() == pytest.approx(want / 2, abs=1e-6)
    assert total.log_prob(Replay(logits, None, ids[:, 0], E, aux)).item() == pytest.approx(want, abs=1e-6)
    # the step decides the scored set from the rollout's q and stores it
    step = mean.step(logits, E, gen(0))
    assert step.aux["scored"].tolist() == [[True, True, False, False]] and step.aux["kept"].all()
    g = step.aux["perturbed"] - q
    torch.testing.assert_close(
        step.logp, (-g - torch.exp(-g))[:, :2].mean(-1, keepdim=False), rtol=0, atol=1e-6
    )


def test_gumbel_clamp_bounds_the_noise_and_scores_the_clamped_value():
    rep = GumbelSoftmaxRepresenter(top_k=5, gumbel_clamp=[-1.5, 3.0])
    g = rep.noise(torch.Size([200_000]), gen(0), torch.device("cpu"))
    assert g.min().item() == -1.5 and g.max().item() == 3.0
    # P(G < -1.5) = exp(-e^1.5) = 0.0113 and P(G > 3) = 1 - exp(-e^-3) = 0.0486 of the mass sit on the bounds
    for frac, want in (
        ((g == -1.5).float().mean(), math.exp(-math.exp(1.5))),
        ((g == 3.0).float().mean(), 1 - math.exp(-math.exp(-3.0))),
    ):
        assert abs(frac.item() - want) < 5 * math.sqrt(want / 200_000)
    # the density at a clamped offset is the Gumbel density there: -3 - e^-3 for g = 3 (one candidate)
    one = GumbelSoftmaxRepresenter(top_k=1, gumbel_clamp=[-1.5, 3.0])
    aux = {
        "topk_ids": torch.tensor([[2]]),
        "perturbed": torch.tensor([[3.0]]),
    }  # q = 0 for a single candidate
    logp = one.log_prob(Replay(torch.randn(1, 4), None, torch.tensor([2]), torch.eye(4), aux))
    assert logp.item() == pytest.approx(-3.0 - math.exp(-3.0), abs=1e-6)


def test_soft_grpo_step_mixes_the_kept_candidates_and_replays_its_log_density():
    rep = GumbelSoftmaxRepresenter(
        tau=0.1, top_k=5, top_p=0.95, gumbel_clamp=[-1.5, 3.0], log_density="mean", min_logprob=-3.0
    )
    # probabilities 0.5, 0.3, 0.12, 0.05, 0.02, 0.01: top 5; mass before the 5th is 0.97 >= 0.95, so 4 kept
    logits = torch.tensor([[0.5, 0.3, 0.12, 0.05, 0.02, 0.01]]).log().expand(2000, 6)
    E = torch.eye(6)
    step = rep.step(logits, E, gen(1))
    assert step.aux["kept"][0].tolist() == [True, True, True, True, False]
    # renormalised over the kept 4: q = log(0.5, 0.3, 0.12, 0.05) - log(0.97); scored: q > -3 (0.05/0.97 = e^-2.96)
    assert step.aux["scored"][0].tolist() == [True, True, True, True, False]
    assert torch.equal(
        step.embeds[:, 4:], torch.zeros(2000, 2)
    )  # the dropped candidate and the rest: weight 0
    q, _ = rep.candidates(logits, step.aux["topk_ids"], step.aux["kept"])
    offsets = (step.aux["perturbed"] - q)[:, :4]
    assert offsets.min().item() >= -1.5 - 1e-5 and offsets.max().item() <= 3.0 + 1e-5
    assert (step.aux["perturbed"][:, 4] == 0).all()
    got = rep.log_prob(Replay(logits, step.embeds, step.ids, E, step.aux))
    torch.testing.assert_close(got, step.logp, rtol=0, atol=1e-5)
    torch.testing.assert_close(got, (-offsets - torch.exp(-offsets)).mean(-1), rtol=0, atol=1e-5)
    assert set(step.ids.tolist()) <= {0, 1, 2, 3}  # never the dropped candidate
    z = logits.clone().requires_grad_(True)
    rep.log_prob(Replay(z, step.embeds, step.ids, E, step.aux)).sum().backward()
    assert torch.isfinite(z.grad).all() and (z.grad[:, 4:] == 0).all() and z.grad[:, :4].abs().max() > 0


def test_soft_grpo_log_prob_gradient_matches_finite_differences():
    logits, E = make(seed=5, n=3, v=9)
    rep = GumbelSoftmaxRepresenter(
        tau=0.1, top_k=5, top_p=0.9, gumbel_clamp=[-1.5, 3.0], log_density="mean", min_logprob=-2.0
    )
    step = rep.step(logits, E, gen(4))
    assert not step.aux["scored"].all()  # some candidates are left out of the density
    weights = torch.tensor([1.0, -0.5, 2.0])

    def f(z):
        return (rep.log_prob(Replay(z, step.embeds, step.ids, E, step.aux)) * weights).sum()

    z = logits.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(f(z), z)
    numeric = central_diff(lambda x: f(x).item(), logits, h=2e-3)
    assert grad.abs().max() > 0.1
    torch.testing.assert_close(grad, numeric, rtol=1e-3, atol=2e-3)


def test_gumbel_defaults_are_the_published_options_off_bit_for_bit():
    """Without the options the step is the code path of before them, op for op."""
    logits, E = make(v=10)
    rep = instantiate(compose_train(["representer=gumbel"]).representer)
    assert (rep.top_p, rep.clamp, rep.log_density, rep.min_logprob) == (1.0, None, "sum", None)
    step = rep.step(logits, E, gen(3))
    z, top = logits.float().topk(10, dim=-1)
    q = z - torch.logsumexp(z, dim=-1, keepdim=True)
    u = torch.rand(q.shape, generator=gen(3), dtype=torch.float32)
    perturbed = q + -torch.log(-torch.log(u.clamp(min=torch.finfo(torch.float32).tiny)))
    assert set(step.aux) == {"topk_ids", "perturbed"} and torch.equal(step.aux["perturbed"], perturbed)
    x = perturbed - q
    assert torch.equal(step.logp, (-x - torch.exp(-x)).sum(-1))
    assert torch.equal(step.embeds, weighted_rows(torch.softmax(perturbed / 0.1, dim=-1), top, E))


def test_soft_grpo_options_checked_and_presets_compose():
    for kwargs, msg in (
        ({"gumbel_clamp": [3.0, -1.5]}, "gumbel_clamp must be"),
        ({"log_density": "max"}, "log_density must be one of sum, mean"),
    ):
        with pytest.raises(ValueError, match=msg):
            GumbelSoftmaxRepresenter(**kwargs)
    cfg = compose_train(["experiment=embedded_gumbel", "paths.output_dir=/tmp/x"])
    default = compose_train(["paths.output_dir=/tmp/x"])
    rep = instantiate(cfg.representer)
    assert isinstance(rep, GumbelSoftmaxRepresenter) and cfg.task_name == "embedded_gumbel"
    assert (rep.name, rep.tau, rep.top_k, rep.top_p, rep.clamp) == ("soft_grpo", 0.1, 5, 0.95, (-1.5, 3.0))
    assert (rep.log_density, rep.min_logprob) == ("mean", -3.0)
    assert "top_p=0.95, gumbel_clamp=[-1.5, 3.0], log_density=mean, min_logprob=-3.0" in repr(rep)
    for key in ("module", "estimator", "data", "trainer"):  # everything else as the embedded default
        assert OmegaConf.to_container(cfg[key]) == OmegaConf.to_container(default[key]), key


@pytest.mark.numerics
def test_soft_grpo_rollout_stores_its_masks_and_replays_its_log_probs(
    tiny_model, tiny_tokenizer, monkeypatch
):
    cfg = RolloutConfig(max_cot_tokens=10, answer_max_tokens=4, compact_fraction=2.0)
    rep = instantiate(compose_train(["representer=soft_grpo"]).representer)
    calls = record_decode_logits(rep, monkeypatch)
    ro = RolloutEngine(tiny_tokenizer, cfg).generate(tiny_model.eval(), PROMPTS, rep, generator=gen(0))
    assert set(ro.aux) == {"topk_ids", "perturbed", "kept", "scored"} and ro.aux["kept"].dtype == torch.bool
    lp = rollout_log_probs(tiny_model, ro, rep)
    logits, bound = teacher_forced_logits(tiny_model, ro)
    dz_max, _ = decode_logit_differences(logits, bound, ro, calls)
    cot = ro.cot_mask
    kept, scored = ro.aux["kept"][cot], ro.aux["scored"][cot]
    q, _ = rep.candidates(logits[cot], ro.aux["topk_ids"][cot], kept)
    # gumbel_tolerance's bound per scored candidate, averaged as the density is
    x = torch.where(scored, ro.aux["perturbed"][cot] - q, torch.zeros_like(q)).double()
    dq = 2 * dz_max[cot].double()[:, None]
    terms = (
        dq
        + torch.exp(-x) * torch.expm1(dq)
        + 8 * U * (x.abs() + torch.exp(-x) + q.double().abs().nan_to_num(0, 0, 0))
    )
    tol = (terms * scored).sum(-1) / scored.sum(-1)
    assert ((lp.logp[cot] - ro.logp[cot]).abs() <= tol).all()
    # the training pass: answer positions (no candidates kept there) leave the gradient finite
    with torch.enable_grad():
        rollout_log_probs(tiny_model, ro, rep).logp.sum().backward()
    grads = [p.grad for p in tiny_model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


# --------------------------------------------------------------------------- Soft Thinking


def test_filtered_top_k_by_hand():
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    probs, ids = filtered_top_k(logits, 1.0, top_k=3)
    torch.testing.assert_close(probs, torch.tensor([[0.5, 0.3, 0.15]]) / 0.95)
    assert ids.tolist() == [[0, 1, 2]]
    # top-p 0.7: 0.5 is kept (mass before it 0), 0.3 kept (0.5 < 0.7), 0.15 dropped (0.8 >= 0.7)
    probs, _ = filtered_top_k(logits, 1.0, top_k=4, top_p=0.7)
    torch.testing.assert_close(probs, torch.tensor([[0.625, 0.375, 0.0, 0.0]]))
    # min-p 0.5: keep p >= 0.25
    probs, _ = filtered_top_k(logits, 1.0, top_k=4, min_p=0.5)
    torch.testing.assert_close(probs, torch.tensor([[0.625, 0.375, 0.0, 0.0]]))
    # temperature 0.5 squares and renormalises the probabilities
    probs, _ = filtered_top_k(logits, 0.5, top_k=2)
    torch.testing.assert_close(probs, torch.tensor([[0.25, 0.09]]) / 0.34)
    torch.testing.assert_close(entropy_of(torch.tensor([0.5, 0.5, 0.0])), torch.tensor(math.log(2)))


def test_soft_thinking_feeds_the_renormalised_top_k_mixture():
    logits, E = make(v=12)
    step = SoftThinkingRepresenter(top_k=3, temperature=0.7).step(logits, E)
    p = torch.softmax(logits / 0.7, dim=-1)
    vals, ids = p.topk(3, dim=-1)
    torch.testing.assert_close(
        step.embeds, torch.einsum("nk,nkd->nd", vals / vals.sum(-1, keepdim=True), E[ids])
    )
    assert torch.equal(step.ids, logits.argmax(-1)) and step.confident is None


@pytest.mark.parametrize(
    "rep",
    [
        SoftThinkingRepresenter(top_k=1),
        SoftThinkingRepresenter(top_k=10, top_p=1e-6),
        SoftThinkingRepresenter(top_k=10, min_p=1.0),
        MixtureOfInputsRepresenter(beta=math.inf, greedy=True),
    ],
    ids=["k=1", "top_p->0", "min_p=1", "moi_beta=inf"],
)
def test_training_free_limits_reduce_to_hard_greedy(tiny_model, tiny_tokenizer, rep):
    engine = RolloutEngine(tiny_tokenizer, RolloutConfig(max_cot_tokens=12, answer_max_tokens=6))
    model = tiny_model.eval()
    hard = engine.generate(model, PROMPTS, HardRepresenter(greedy=True), answer_greedy=True)
    got = engine.generate(model, PROMPTS, rep, answer_greedy=True, generator=gen(0))
    assert torch.equal(got.ids, hard.ids) and got.completions == hard.completions
    assert torch.equal(
        got.fed[got.cot_mask], model.get_input_embeddings().weight[got.ids[:, got.prompt_len :][got.cot_mask]]
    )


def test_cold_stop_ends_the_cot_after_patience_confident_steps(tiny_model, tiny_tokenizer):
    cfg = RolloutConfig(max_cot_tokens=12, answer_max_tokens=4)
    engine = RolloutEngine(tiny_tokenizer, cfg)
    model = tiny_model.eval()
    # an entropy threshold above log(10): every step is confident, so every CoT stops after 3 steps
    ro = engine.generate(model, PROMPTS, SoftThinkingRepresenter(stop_entropy=3.0, stop_patience=3))
    assert ro.cot_lengths.tolist() == [3, 3, 3] and ro.early_stopped.all() and not ro.clipped.any()
    assert all(c.startswith(" The final answer is:") for c in ro.completions)
    # a threshold of 0 never fires: CoTs run to the limit
    ro = engine.generate(model, PROMPTS, SoftThinkingRepresenter(stop_entropy=0.0, stop_patience=3))
    assert ro.cot_lengths.tolist() == [12, 12, 12] and not ro.early_stopped.any() and ro.clipped.all()


def test_soft_thinking_is_confident_where_the_mixture_entropy_is_under_the_threshold():
    # entropy of a 2-way coin flip (log 2) versus a confident row
    rep = SoftThinkingRepresenter(top_k=2, stop_entropy=0.1)
    logits = torch.tensor([[0.0, 0.0, -9.0], [9.0, 0.0, -9.0]])
    step = rep.step(logits, torch.eye(3))
    assert step.confident.tolist() == [False, True]


def test_cold_stop_counts_consecutive_confident_steps_only(tiny_model, tiny_tokenizer):
    class Scripted(SoftThinkingRepresenter):
        """Confident by a fixed pattern of steps, whatever the logits."""

        pattern = [True, True, False, True, True, True]

        def step(self, logits, embedding, generator=None, pre=None):
            out = super().step(logits, embedding, generator)
            t, self.calls = self.calls, self.calls + 1
            out.confident = torch.full((len(logits),), self.pattern[t % len(self.pattern)])
            return out

    rep = Scripted(stop_patience=3)
    rep.calls = 0
    engine = RolloutEngine(tiny_tokenizer, RolloutConfig(max_cot_tokens=12, answer_max_tokens=2))
    ro = engine.generate(tiny_model.eval(), PROMPTS, rep)
    # 5 confident steps by step 6, but only the last 3 in a row: the stop comes at 6, not at 3
    assert ro.cot_lengths.tolist() == [6, 6, 6] and ro.early_stopped.all()


# --------------------------------------------------------------------------- Mixture of Inputs


def test_moi_blend_by_hand():
    logits, E = make(v=8)
    rep = MixtureOfInputsRepresenter(beta=1.5, greedy=True, temperature=0.8)
    step = rep.step(logits, E)
    p = torch.softmax(logits / 0.8, dim=-1)
    H = (-(p * p.log()).sum(-1) / math.log(8)).unsqueeze(-1)
    onehot = torch.nn.functional.one_hot(logits.argmax(-1), 8).float()
    w = (H * p + (1.5 + 1 - H) * onehot) / (1.5 + 1)
    torch.testing.assert_close(w.sum(-1), torch.ones(4))
    torch.testing.assert_close(step.embeds, w @ E, rtol=1e-5, atol=1e-6)
    # a large beta approaches the token's embedding, continuously
    big = MixtureOfInputsRepresenter(beta=1e6, greedy=True, temperature=0.8).step(logits, E)
    torch.testing.assert_close(big.embeds, E[logits.argmax(-1)], rtol=0, atol=1e-5)


def test_moi_samples_like_hard_tokens_and_reproduces_from_a_seed():
    logits, E = make(n=64, v=8)
    moi = MixtureOfInputsRepresenter(temperature=0.9)
    a, b = moi.step(logits, E, gen(3)), moi.step(logits, E, gen(3))
    hard = HardRepresenter(temperature=0.9).step(logits, E, gen(3))
    assert torch.equal(a.ids, hard.ids) and torch.equal(a.logp, hard.logp)  # the same draw as hard tokens
    assert torch.equal(a.embeds, b.embeds)
    assert not torch.equal(a.ids, moi.step(logits, E, gen(4)).ids)


# --------------------------------------------------------------------------- training-free: not trainable


@pytest.mark.parametrize("rep", [SoftThinkingRepresenter(), MixtureOfInputsRepresenter()])
def test_training_free_settings_have_no_log_prob(rep):
    logits, E = make()
    assert not rep.trainable and GumbelSoftmaxRepresenter().trainable
    with pytest.raises(NotImplementedError, match="training-free"):
        rep.log_prob(Replay(logits, None, logits.argmax(-1), E))
    with pytest.raises(NotImplementedError, match="evaluate.py"):
        rep.kl(Replay(logits, None, logits.argmax(-1), E), Replay(logits, None, logits.argmax(-1), E))
