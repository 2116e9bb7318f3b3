"""Each distinct prompt encoded once: the same rollouts, hidden states and gradients as one pass per row."""

from __future__ import annotations

import torch
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from soft_tokens.representers import HardRepresenter, SoftRepresenter
from soft_tokens.rollout import RolloutConfig, RolloutEngine, encode_prompts
from soft_tokens.rollout.logprobs import hidden_states, input_embeds
from soft_tokens.rollout.shared_prompts import prompt_groups

# Rows 0, 2, 3 share a prompt, row 1 has its own; a left-padded batch, so padding is part of the identity.
PROMPTS = ["User: Ann has 7 apples. Assistant:", "User: Bob? Assistant:"]
ROWS = [0, 1, 0, 0]
# float64 unit roundoff; two orders of the same sums (other batch shapes) differ by a few n u relative,
# n = the longest reduction of the tiny model (its sequence or intermediate width, both under 100).
U64 = torch.finfo(torch.float64).eps / 2
TOL64 = 100 * 100 * U64


def test_prompt_groups_by_hand(tiny_tokenizer):
    ids, mask = encode_prompts(tiny_tokenizer, [PROMPTS[i] for i in ROWS], torch.device("cpu"))
    groups = prompt_groups(ids, mask)
    assert groups.shared
    assert groups.inverse.tolist()[0] == groups.inverse.tolist()[2] == groups.inverse.tolist()[3]
    assert groups.inverse[1] != groups.inverse[0]
    assert sorted(groups.first.tolist()) == [0, 1]  # the first row holding each prompt
    assert not prompt_groups(ids[:2], mask[:2]).shared


def full_pass_hidden(model, ro):
    """The reference: one decoder pass over every row's whole sequence."""
    P = ro.prompt_len
    out = model.get_decoder()(
        inputs_embeds=input_embeds(model, ro),
        attention_mask=ro.attention_mask,
        position_ids=ro.position_ids,
        use_cache=False,
    )
    return out.last_hidden_state[:, P - 1 : -1]


def rollout_of(model, tokenizer, rep, seed=0, answer_greedy=False):
    engine = RolloutEngine(tokenizer, RolloutConfig(max_cot_tokens=6, answer_max_tokens=3))
    g = torch.Generator().manual_seed(seed)
    prompts = [PROMPTS[i] for i in ROWS]
    return engine.generate(model, prompts, rep, answer_greedy=answer_greedy, generator=g)


def test_shared_prefill_gives_the_rollouts_of_separate_prompts(tiny_model, tiny_tokenizer):
    model = tiny_model.double()
    together = rollout_of(model, tiny_tokenizer, HardRepresenter(greedy=True), answer_greedy=True)
    engine = RolloutEngine(tiny_tokenizer, RolloutConfig(max_cot_tokens=6, answer_max_tokens=3))
    for row, i in enumerate(ROWS):
        alone = engine.generate(model, [PROMPTS[i]], HardRepresenter(greedy=True), answer_greedy=True)
        assert together.completions[row] == alone.completions[0]
        assert together.cot_texts[row] == alone.cot_texts[0]


def rms_norm_in_input_dtype(self, hidden):
    """LlamaRMSNorm in the input's dtype (the library's computes in float32 whatever the model's dtype)."""
    variance = hidden.pow(2).mean(-1, keepdim=True)
    return self.weight * (hidden * torch.rsqrt(variance + self.variance_epsilon))


def test_teacher_forced_pass_with_shared_prompts_equals_the_full_pass(
    tiny_model, tiny_tokenizer, monkeypatch
):
    # All in float64, so that the two passes' different batch shapes move the results by float64 roundings only.
    monkeypatch.setattr(LlamaRMSNorm, "forward", rms_norm_in_input_dtype)
    model = tiny_model.double()
    rep = SoftRepresenter(tau=0.5, gamma=0.3)
    ro = rollout_of(model, tiny_tokenizer, rep)
    ro.fed = ro.fed.double()
    assert prompt_groups(ro.ids[:, : ro.prompt_len], ro.attention_mask[:, : ro.prompt_len]).shared

    def value_and_grad(hidden):
        model.zero_grad()
        (hidden[ro.gen_mask] ** 2).sum().backward()
        grad = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        return hidden.detach(), grad

    ref_hidden, ref_grad = value_and_grad(full_pass_hidden(model, ro))
    hidden, grad = value_and_grad(hidden_states(model, ro))
    assert (hidden - ref_hidden)[ro.gen_mask].abs().max() <= TOL64 * ref_hidden.abs().max()
    assert (grad - ref_grad).abs().max() <= TOL64 * ref_grad.abs().max()
