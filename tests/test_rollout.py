"""Rollout engine: KV cache, agreement with model.generate, stop handling, on-policy log-probs."""

from __future__ import annotations

import pytest
import torch
from helpers import PROMPTS
from numerics import (
    categorical_tolerance,
    decode_logit_differences,
    logit_bound,
    mixture_tolerance,
    record_decode_logits,
    soft_tolerance,
    teacher_forced_logits,
)
from transformers import LlamaForCausalLM

from soft_tokens.models.tiny import tiny_llama
from soft_tokens.representers import HardRepresenter, SoftRepresenter, TokenRepresenter
from soft_tokens.rollout import Decoding, Rollout, RolloutConfig, RolloutEngine, encode_prompts
from soft_tokens.rollout.logprobs import rollout_log_probs


class ScriptedLM(LlamaForCausalLM):
    """A tiny Llama whose next-token logits follow a script indexed by the predicted position.

    The rollout calls the decoder and the head apart: the decoder records the positions it was fed, and the
    head overrides the logits of the rows whose next position is in the script.
    """

    script: dict[int, int] = {}
    _next: list[int] = []

    def get_decoder(self):
        decoder = super().get_decoder()

        def run(*args, position_ids=None, **kwargs):
            self._next = (position_ids[:, -1] + 1).tolist()
            return decoder(*args, position_ids=position_ids, **kwargs)

        return run

    def get_output_embeddings(self):
        head = super().get_output_embeddings()

        def run(hidden):
            logits = head(hidden)
            for row, p in enumerate(self._next):
                if p in self.script:
                    logits[row] = -1e4
                    logits[row, self.script[p]] = 1e4
            return logits

        return run


def scripted(tiny_model, tokenizer, prompt: str, continuation: str) -> ScriptedLM:
    """A ScriptedLM (tiny_model's weights) that writes `continuation` + EOS after `prompt`."""
    model = ScriptedLM(tiny_model.config).eval()
    model.load_state_dict(tiny_model.state_dict())
    P = len(tokenizer(prompt).input_ids)
    ids = tokenizer.encode(continuation, add_special_tokens=False) + [tokenizer.eos_token_id]
    model.script = {P + i: t for i, t in enumerate(ids)}
    return model


@pytest.mark.numerics
def test_cached_decode_matches_full_recompute(tiny_model, tiny_tokenizer):
    engine = RolloutEngine(tiny_tokenizer, RolloutConfig(max_cot_tokens=10, answer_max_tokens=4))
    ro = engine.generate(tiny_model, PROMPTS, HardRepresenter(), generator=torch.Generator().manual_seed(0))
    # Full recompute: one forward over the whole sequence, no cache; its log-probs at the fed tokens must
    # equal those the cached decode loop computed step by step, within what the logits' rounding allows.
    logits, bound = teacher_forced_logits(tiny_model, ro)
    lp = torch.log_softmax(logits, -1).gather(-1, ro.ids[:, ro.prompt_len :, None]).squeeze(-1)
    tol = categorical_tolerance(logits, ro.logp, bound, 1.0)
    mask = ro.gen_mask
    assert ((lp - ro.logp).abs() <= tol)[mask].all()


def test_hard_greedy_equals_generate(tiny_model, tiny_tokenizer):
    L = 12
    cfg = RolloutConfig(max_cot_tokens=L, answer_max_tokens=1, stop_string="\x00never")
    engine = RolloutEngine(tiny_tokenizer, cfg)
    ro = engine.generate(tiny_model, PROMPTS, HardRepresenter(greedy=True), answer_greedy=True)
    ids, mask = encode_prompts(tiny_tokenizer, PROMPTS, torch.device("cpu"))
    ref = tiny_model.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=L,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
    )
    P = ids.shape[1]
    got = ro.ids[:, P : P + L]
    # Rows that emitted EOS leave the CoT early; compare up to each row's CoT length.
    for row in range(len(PROMPTS)):
        n = int(ro.cot_lengths[row])
        assert got[row, :n].tolist() == ref[row, P : P + n].tolist()


def test_early_stop_forces_box_and_answer_stops_at_brace(tiny_model, tiny_tokenizer):
    prompt = PROMPTS[0]
    model = scripted(
        tiny_model, tiny_tokenizer, prompt, " 7 + 5 = 12. The final answer is: \\boxed{\\frac{1}{2}} more"
    )
    engine = RolloutEngine(tiny_tokenizer, RolloutConfig(max_cot_tokens=40, answer_max_tokens=16))
    ro = engine.generate(model, [prompt], HardRepresenter(greedy=True), answer_greedy=True)
    assert ro.cot_texts[0] == " 7 + 5 = 12. The final answer is:"
    assert ro.completions[0] == " \\boxed{\\frac{1}{2}}"
    assert not bool(ro.clipped[0])
    n_cot = len(tiny_tokenizer.encode(" 7 + 5 = 12. The final answer is:", add_special_tokens=False))
    assert int(ro.cot_lengths[0]) == n_cot


def test_limit_forces_final_answer_prefix(tiny_model, tiny_tokenizer):
    prompt = PROMPTS[1]
    model = scripted(
        tiny_model, tiny_tokenizer, prompt, " 1 + 2 + 3 + 4 + 5 The final answer is: \\boxed{15}"
    )
    engine = RolloutEngine(tiny_tokenizer, RolloutConfig(max_cot_tokens=6, answer_max_tokens=16))
    ro = engine.generate(model, [prompt], HardRepresenter(greedy=True), answer_greedy=True)
    assert bool(ro.clipped[0]) and int(ro.cot_lengths[0]) == 6
    assert ro.cot_texts[0] == " 1 + 2 +"
    # After the forced prefix the script resumes at its own positions; the answer stops at EOS.
    assert ro.completions[0].startswith(" The final answer is: \\boxed{")


@pytest.mark.numerics
@pytest.mark.parametrize("rep", [HardRepresenter(), SoftRepresenter()])
def test_forced_prefix_fed_at_once_equals_token_by_token(tiny_model, tiny_tokenizer, rep, monkeypatch):
    # A stop string that never matches and no EOS in the CoT: every row reaches the limit together, and the
    # limit prefix is fed in one forward pass; the same rollout token by token must agree with it.
    cfg = RolloutConfig(max_cot_tokens=5, answer_max_tokens=4, stop_string="\x00never:")
    engine = RolloutEngine(tiny_tokenizer, cfg)
    calls = []
    feed = Decoding.feed_prefix
    monkeypatch.setattr(Decoding, "feed_prefix", lambda self, t, k: calls.append(k) or feed(self, t, k))
    at_once = engine.generate(tiny_model, PROMPTS, rep, generator=torch.Generator().manual_seed(2))
    assert calls == [len(engine.tables(tiny_model.config.vocab_size, "cpu").limit_prefix)]
    monkeypatch.setattr(Decoding, "aligned_prefix", lambda self: 0)
    one_by_one = engine.generate(tiny_model, PROMPTS, rep, generator=torch.Generator().manual_seed(2))
    for key in ("ids", "attention_mask", "position_ids", "cot_mask", "answer_mask"):
        assert torch.equal(getattr(at_once, key), getattr(one_by_one, key)), key
    # The answers' log-probs come from logits computed in another order: within the logits' rounding bound.
    logits, bound = teacher_forced_logits(tiny_model, one_by_one)
    tol = categorical_tolerance(logits, one_by_one.logp, 2 * bound, cfg.answer_temperature)
    assert ((at_once.logp - one_by_one.logp).abs() <= tol)[one_by_one.answer_mask].all()


def test_answer_max_tokens_and_shadow_stop_for_soft(tiny_model, tiny_tokenizer):
    prompt = PROMPTS[0]
    model = scripted(tiny_model, tiny_tokenizer, prompt, " 3. The final answer is: \\boxed{123456789}")
    engine = RolloutEngine(tiny_tokenizer, RolloutConfig(max_cot_tokens=40, answer_max_tokens=3))
    # Fuzzy tokens: the argmax shadow follows the script, so the stop is found on the shadow text.
    ro = engine.generate(model, [prompt], SoftRepresenter(tau=1e-4), answer_greedy=True)
    assert ro.cot_texts[0] == " 3. The final answer is:"
    assert int(ro.answer_lengths[0]) == 3
    assert ro.completions[0] == " \\boxed{123"


def decode_time_tolerance(model, ro: Rollout, rep: TokenRepresenter, calls: list[torch.Tensor]):
    """Per generated step [N, S]: the tolerance for |teacher-forced - decode-time log-prob| derived from the
    logit differences of the two forwards (checked against their bound first), and the teacher-forced logits."""
    logits, bound = teacher_forced_logits(model, ro)
    dz_max, dz_range = decode_logit_differences(logits, bound, ro, calls)
    tol = categorical_tolerance(logits, ro.logp, dz_max, 1.0)  # answer steps (answer_temperature 1)
    cot = ro.cot_mask
    if isinstance(rep, SoftRepresenter):
        E = model.get_input_embeddings().weight.detach()
        tol[cot] = soft_tolerance(rep, logits[cot], ro.fed[cot], ro.logp[cot], dz_range[cot], E)
    else:
        tol[cot] = categorical_tolerance(logits[cot], ro.logp[cot], dz_max[cot], rep.temperature)
    return tol, logits


@pytest.mark.numerics
@pytest.mark.parametrize("group", [1, 3], ids=["distinct", "shared-prompts"])
@pytest.mark.parametrize("rep", [HardRepresenter(), SoftRepresenter(), SoftRepresenter(tau=1e-4)])
def test_teacher_forced_log_probs_equal_decode_time(tiny_model, tiny_tokenizer, rep, group, monkeypatch):
    # No row compaction, so that each recorded CoT step maps to one column of the rollout.
    cfg = RolloutConfig(max_cot_tokens=12, answer_max_tokens=6, compact_fraction=2.0)
    calls = record_decode_logits(rep, monkeypatch)
    prompts = [p for p in PROMPTS for _ in range(group)]  # group > 1: each prompt's rows share its encoding
    ro = RolloutEngine(tiny_tokenizer, cfg).generate(
        tiny_model, prompts, rep, generator=torch.Generator().manual_seed(1)
    )
    assert ro.ids.shape[1] > ro.prompt_len
    tol, _ = decode_time_tolerance(tiny_model, ro, rep, calls)
    for chunk in (1024, 7):
        lp = rollout_log_probs(tiny_model, ro, rep, chunk_size=chunk)
        assert torch.equal(lp.mask, ro.gen_mask)
        gap = (lp.logp - ro.logp).abs()[ro.gen_mask]
        assert (gap <= tol[ro.gen_mask]).all(), (gap - tol[ro.gen_mask]).max()


class NearTieLM(LlamaForCausalLM):
    """A tiny Llama whose head puts two tokens on top, their logit gap brought within a few tau of zero by
    a shift that is a coarse-grid function of the gap itself: the same shift in the decode and in the
    teacher-forced forward, so the gap keeps the rounding difference between the two forwards."""

    pair: tuple[int, int] = (0, 0)
    grid: float = 1.0

    def get_output_embeddings(self):
        head = super().get_output_embeddings()
        a, b = self.pair

        def run(hidden):
            logits = head(hidden)
            gap = logits[..., a] - logits[..., b]
            logits[..., a] += 10.0
            logits[..., b] += 10.0 + torch.round(gap / self.grid) * self.grid
            return logits

        return run


@pytest.mark.numerics
def test_fuzzy_log_density_at_a_near_tie_stays_within_its_derived_tolerance(
    tiny_model, tiny_tokenizer, monkeypatch
):
    rep = SoftRepresenter(tau=1e-4)
    model = NearTieLM(tiny_model.config).eval()
    model.load_state_dict(tiny_model.state_dict())
    model.pair = tuple(tiny_tokenizer.convert_tokens_to_ids(["5", "7"]))
    model.grid = 8 * rep.tau  # the gap ends within 4 tau of zero: the softmax is not saturated
    cfg = RolloutConfig(max_cot_tokens=12, answer_max_tokens=4, compact_fraction=2.0)
    calls = record_decode_logits(rep, monkeypatch)
    ro = RolloutEngine(tiny_tokenizer, cfg).generate(
        model, PROMPTS, rep, generator=torch.Generator().manual_seed(1)
    )
    tol, logits = decode_time_tolerance(model, ro, rep, calls)
    top2 = torch.softmax(logits[ro.cot_mask] / rep.tau, -1).topk(2, -1).values
    assert (top2[:, 1] > 1e-3).all()  # every CoT step mixes two embeddings
    gap = (rollout_log_probs(model, ro, rep).logp - ro.logp).abs()
    assert (gap <= tol)[ro.gen_mask].all(), (gap - tol)[ro.gen_mask].max()


def test_soft_rollout_reproducible_from_seed(tiny_model, tiny_tokenizer):
    engine = RolloutEngine(tiny_tokenizer, RolloutConfig(max_cot_tokens=8, answer_max_tokens=4))
    a = engine.generate(tiny_model, PROMPTS, SoftRepresenter(), generator=torch.Generator().manual_seed(3))
    b = engine.generate(tiny_model, PROMPTS, SoftRepresenter(), generator=torch.Generator().manual_seed(3))
    c = engine.generate(tiny_model, PROMPTS, SoftRepresenter(), generator=torch.Generator().manual_seed(4))
    assert torch.equal(a.fed, b.fed) and torch.equal(a.ids, b.ids)
    assert not torch.equal(a.fed, c.fed)


@pytest.mark.numerics
def test_greedy_soft_adds_no_noise(tiny_model, tiny_tokenizer):
    engine = RolloutEngine(tiny_tokenizer, RolloutConfig(max_cot_tokens=6, answer_max_tokens=2))
    rep = SoftRepresenter(greedy=True)
    ro = engine.generate(tiny_model, PROMPTS[:1], rep, answer_greedy=True)
    E = tiny_model.get_input_embeddings().weight
    with torch.no_grad():
        out = tiny_model(input_ids=ro.ids[:, : ro.prompt_len], output_hidden_states=True)
    logits = out.logits[:, -1]
    # The rollout's prompt forward (into its KV cache) and this one differ by at most `logit_bound` in each
    # logit, so by twice that in their range; the mixture moves by what `mixture_tolerance` allows.
    bound = logit_bound(tiny_model, out.hidden_states[-1], out.logits)
    tol = mixture_tolerance(rep.tau, logits, 2 * bound, E)
    assert ((ro.fed[:, 0] - rep.mixture(logits, E)).norm(dim=-1) <= tol).all()


@pytest.mark.numerics
def test_done_rows_are_dropped_without_changing_results(tiny_model, tiny_tokenizer):
    prompts = PROMPTS * 2
    # The script makes the rows with the first prompt stop early, so they finish long before the others.
    tiny_model = scripted(tiny_model, tiny_tokenizer, PROMPTS[0], " 1. The final answer is: \\boxed{1}")
    full = RolloutEngine(
        tiny_tokenizer, RolloutConfig(max_cot_tokens=20, answer_max_tokens=4, compact_fraction=2.0)
    )
    comp = RolloutEngine(
        tiny_tokenizer, RolloutConfig(max_cot_tokens=20, answer_max_tokens=4, compact_fraction=0.01)
    )
    rep = HardRepresenter(greedy=True)
    a = full.generate(tiny_model, prompts, rep, answer_greedy=True)
    b = comp.generate(tiny_model, prompts, rep, answer_greedy=True)
    assert int(a.cot_lengths.min()) < int(a.cot_lengths.max())
    assert torch.equal(a.ids, b.ids)
    assert torch.allclose(a.logp, b.logp, atol=1e-5)


@pytest.mark.numerics
def test_soft_rollout_with_the_fused_head_matches_the_plain_head(tiny_tokenizer, monkeypatch):
    model = tiny_llama(len(tiny_tokenizer), tied=True)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    engine = RolloutEngine(tiny_tokenizer, RolloutConfig(max_cot_tokens=10, answer_max_tokens=4))
    calls = []
    fused = SoftRepresenter.project

    def spy(self, *args):
        out = fused(self, *args)
        calls.append(out[1] is not None)
        return out

    monkeypatch.setattr(SoftRepresenter, "project", spy)
    monkeypatch.setattr(SoftRepresenter, "fuse_min_bytes", 0)  # the tiny E is far under the default
    a = engine.generate(model, PROMPTS, SoftRepresenter(), generator=torch.Generator().manual_seed(0))
    assert calls and all(calls)  # every CoT step had its mixture from the fused pass
    monkeypatch.setattr(SoftRepresenter, "project", TokenRepresenter.project)
    b = engine.generate(model, PROMPTS, SoftRepresenter(), generator=torch.Generator().manual_seed(0))
    assert torch.equal(a.ids, b.ids) and torch.equal(a.cot_mask, b.cot_mask)
    torch.testing.assert_close(a.fed, b.fed, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a.logp, b.logp)


def test_models_that_transform_their_logits_are_refused(tiny_tokenizer):
    model = tiny_llama(len(tiny_tokenizer))
    model.config.final_logit_softcapping = 30.0
    engine = RolloutEngine(tiny_tokenizer, RolloutConfig(max_cot_tokens=4, answer_max_tokens=2))
    with pytest.raises(ValueError, match="final_logit_softcapping=30.0"):
        engine.generate(model, PROMPTS, HardRepresenter())


@pytest.mark.parametrize("rep", [HardRepresenter(), SoftRepresenter()])
def test_zero_max_cot_tokens_means_no_cot_and_the_full_answer(tiny_model, tiny_tokenizer, rep):
    prompt = PROMPTS[0]
    engine = RolloutEngine(tiny_tokenizer, RolloutConfig(max_cot_tokens=0, answer_max_tokens=4))
    prefix = engine.tables(len(tiny_tokenizer), torch.device("cpu")).limit_prefix
    model = scripted(tiny_model, tiny_tokenizer, prompt, "")
    # The answer positions (after the forced prefix) write digits, never closing the box.
    P = len(tiny_tokenizer(prompt).input_ids)
    digits = tiny_tokenizer.encode("123456789", add_special_tokens=False)
    model.script = {P + len(prefix) + i: t for i, t in enumerate(digits)}
    ro = engine.generate(model, [prompt], rep, generator=torch.Generator().manual_seed(0))
    assert not bool(ro.cot_mask.any()) and int(ro.cot_lengths[0]) == 0 and ro.cot_texts[0] == ""
    assert ro.ids[0, P : P + len(prefix)].tolist() == prefix
    assert int(ro.answer_lengths[0]) == 4 and not bool(ro.clipped[0])
    assert ro.completions[0] == " The final answer is: \\boxed{" + tiny_tokenizer.decode(digits[:4])
    lp = rollout_log_probs(model, ro, rep)
    assert torch.equal(lp.mask, ro.answer_mask) and bool(torch.isfinite(lp.logp).all())


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("answer_temperature", 0.0),
        ("answer_temperature", -1.0),
        ("max_cot_tokens", -1),
        ("answer_max_tokens", 0),
    ],
)
def test_rollout_config_refuses_bad_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=f"{field}={value}"):
        RolloutConfig(**{field: value})
