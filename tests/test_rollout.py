"""Rollout engine: KV cache, agreement with model.generate, stop handling, on-policy log-probs."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaForCausalLM

from soft_tokens.logprobs import rollout_log_probs
from soft_tokens.representers import HardRepresenter, SoftRepresenter, TokenRepresenter
from soft_tokens.rollout import RolloutConfig, RolloutEngine, encode_prompts
from soft_tokens.tiny import tiny_llama

PROMPTS = [
    "User: Ann has 7 apples. She gets 5 more. How many apples does Ann have now? Assistant:",
    "User: Bob? Assistant:",
    "User: Bob has 9 pens. Assistant:",
]


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


def test_cached_decode_matches_full_recompute(tiny_model, tiny_tokenizer):
    engine = RolloutEngine(tiny_tokenizer, RolloutConfig(max_cot_tokens=10, answer_max_tokens=4))
    ro = engine.generate(tiny_model, PROMPTS, HardRepresenter(), generator=torch.Generator().manual_seed(0))
    # Full recompute: one forward over the whole sequence, no cache; its log-probs at the fed tokens must
    # equal those the cached decode loop computed step by step.
    with torch.no_grad():
        logits = tiny_model(
            input_ids=ro.ids, attention_mask=ro.attention_mask, position_ids=ro.position_ids
        ).logits
    P = ro.prompt_len
    lp = torch.log_softmax(logits[:, P - 1 : -1], -1).gather(-1, ro.ids[:, P:, None]).squeeze(-1)
    mask = ro.gen_mask
    assert torch.allclose(lp[mask], ro.logp[mask], atol=1e-4)


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


def test_answer_max_tokens_and_shadow_stop_for_soft(tiny_model, tiny_tokenizer):
    prompt = PROMPTS[0]
    model = scripted(tiny_model, tiny_tokenizer, prompt, " 3. The final answer is: \\boxed{123456789}")
    engine = RolloutEngine(tiny_tokenizer, RolloutConfig(max_cot_tokens=40, answer_max_tokens=3))
    # Fuzzy tokens: the argmax shadow follows the script, so the stop is found on the shadow text.
    ro = engine.generate(model, [prompt], SoftRepresenter(temperature=1e-4), answer_greedy=True)
    assert ro.cot_texts[0] == " 3. The final answer is:"
    assert int(ro.answer_lengths[0]) == 3
    assert ro.completions[0] == " \\boxed{123"


@pytest.mark.parametrize("rep", [HardRepresenter(), SoftRepresenter(), SoftRepresenter(temperature=1e-4)])
def test_teacher_forced_log_probs_equal_decode_time(tiny_model, tiny_tokenizer, rep):
    engine = RolloutEngine(tiny_tokenizer, RolloutConfig(max_cot_tokens=12, answer_max_tokens=6))
    ro = engine.generate(tiny_model, PROMPTS, rep, generator=torch.Generator().manual_seed(1))
    assert ro.ids.shape[1] > ro.prompt_len
    for chunk in (1024, 7):
        lp = rollout_log_probs(tiny_model, ro, rep, chunk_size=chunk)
        assert torch.equal(lp.mask, ro.gen_mask)
        assert torch.allclose(lp.logp, ro.logp, atol=2e-4, rtol=1e-5)


def test_soft_rollout_reproducible_from_seed(tiny_model, tiny_tokenizer):
    engine = RolloutEngine(tiny_tokenizer, RolloutConfig(max_cot_tokens=8, answer_max_tokens=4))
    a = engine.generate(tiny_model, PROMPTS, SoftRepresenter(), generator=torch.Generator().manual_seed(3))
    b = engine.generate(tiny_model, PROMPTS, SoftRepresenter(), generator=torch.Generator().manual_seed(3))
    c = engine.generate(tiny_model, PROMPTS, SoftRepresenter(), generator=torch.Generator().manual_seed(4))
    assert torch.equal(a.fed, b.fed) and torch.equal(a.ids, b.ids)
    assert not torch.equal(a.fed, c.fed)


def test_greedy_soft_adds_no_noise(tiny_model, tiny_tokenizer):
    engine = RolloutEngine(tiny_tokenizer, RolloutConfig(max_cot_tokens=6, answer_max_tokens=2))
    rep = SoftRepresenter(greedy=True)
    ro = engine.generate(tiny_model, PROMPTS[:1], rep, answer_greedy=True)
    E = tiny_model.get_input_embeddings().weight
    with torch.no_grad():
        logits = tiny_model(input_ids=ro.ids[:, : ro.prompt_len]).logits[:, -1]
    assert torch.allclose(ro.fed[:, 0], rep.mixture(logits, E), atol=1e-6)


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
