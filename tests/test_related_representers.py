"""The related continuous-token methods: Gumbel-softmax (SofT-GRPO), top-k Soft Thinking, Mixture of Inputs."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import PROMPTS, central_diff, gen, make
from numerics import decode_logit_differences, gumbel_tolerance, record_decode_logits, teacher_forced_logits
from torch.distributions import Gumbel

from soft_tokens.logprobs import rollout_log_probs
from soft_tokens.representers import (
    GumbelSoftmaxRepresenter,
    HardRepresenter,
    MixtureOfInputsRepresenter,
    Replay,
    SoftThinkingRepresenter,
)
from soft_tokens.representers.sampling import entropy_of
from soft_tokens.representers.soft_thinking import filtered_top_k
from soft_tokens.rollout import RolloutConfig, RolloutEngine

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
    with pytest.raises(ValueError, match="top_k"):
        GumbelSoftmaxRepresenter(top_k=0)


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
    with pytest.raises(ValueError, match="beta"):
        MixtureOfInputsRepresenter(beta=-1.0)


# --------------------------------------------------------------------------- training-free: not trainable


@pytest.mark.parametrize("rep", [SoftThinkingRepresenter(), MixtureOfInputsRepresenter()])
def test_training_free_settings_have_no_log_prob(rep):
    logits, E = make()
    assert not rep.trainable and GumbelSoftmaxRepresenter().trainable
    with pytest.raises(NotImplementedError, match="training-free"):
        rep.log_prob(Replay(logits, None, logits.argmax(-1), E))
    with pytest.raises(NotImplementedError, match="evaluate.py"):
        rep.kl(Replay(logits, None, logits.argmax(-1), E), Replay(logits, None, logits.argmax(-1), E))
