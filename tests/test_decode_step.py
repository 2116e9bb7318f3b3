"""The direct decode step: bit-identical to the decoder's forward, and used only where that holds."""

from __future__ import annotations

import pytest
import torch
from helpers import PROMPTS
from transformers import Qwen2Config, Qwen2ForCausalLM

from soft_tokens.representers import HardRepresenter, SoftRepresenter, SoftThinkingRepresenter
from soft_tokens.rollout import RolloutConfig, RolloutEngine
from soft_tokens.rollout.decode_step import DecodeStep, supports
from soft_tokens.rollout.kv_cache import preallocated_cache


def tiny_qwen2(vocab_size: int, **kw) -> Qwen2ForCausalLM:
    """A random tiny Qwen2 (biases on q/k/v, grouped-query attention, tied head)."""
    torch.manual_seed(0)
    cfg = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
        pad_token_id=0,
        **kw,
    )
    model = Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():  # nonzero biases, so that dropping one would show
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_()
    return model


@pytest.fixture(params=["llama", "qwen2"])
def model(request, tiny_model, tiny_tokenizer):
    return tiny_model if request.param == "llama" else tiny_qwen2(len(tiny_tokenizer))


@pytest.mark.parametrize("padded", [False, True])
def test_hidden_states_equal_the_decoders_forward_bit_for_bit(model, padded):
    decoder, n, P = model.get_decoder(), 3, 5
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 40, (n, P), generator=g)
    mask = torch.ones(n, P, dtype=torch.long)
    if padded:
        mask[0, :2] = 0  # left padding, as in a batch of prompts of different lengths
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    caches = [preallocated_cache(model.config, P + 8) for _ in range(2)]
    step = DecodeStep(decoder)
    with torch.no_grad():
        for cache in caches:
            decoder(input_ids=ids, attention_mask=mask, position_ids=pos, cache=cache, use_cache=True)
        for t in range(6):
            x = torch.randn(n, 1, model.config.hidden_size, generator=g)
            live = torch.tensor([1, 1, int(t < 3)])  # a row that is done feeds padding, masked out
            mask = torch.cat([mask, live.unsqueeze(1)], dim=1)
            p = pos[:, -1:] + 1 + t
            ref = decoder(
                inputs_embeds=x, attention_mask=mask, position_ids=p, cache=caches[0], use_cache=True
            )
            assert torch.equal(step(x, mask, p, caches[1]), ref.last_hidden_state)
            assert torch.equal(caches[1].layers[0].keys, caches[0].layers[0].keys)


@pytest.mark.numerics
def test_rollouts_are_identical_with_and_without_the_direct_step(model, tiny_tokenizer, monkeypatch):
    prompts, calls, call = PROMPTS * 2, [], DecodeStep.__call__
    monkeypatch.setattr(DecodeStep, "__call__", lambda self, *a: calls.append(1) or call(self, *a))
    reps = [HardRepresenter(), SoftRepresenter(), SoftRepresenter(name="fuzzy", tau=1e-4)]
    for rep in (*reps, SoftRepresenter().as_greedy(), SoftThinkingRepresenter()):
        out = []
        for direct in (True, False):
            cfg = RolloutConfig(max_cot_tokens=12, answer_max_tokens=4, direct_decode=direct)
            engine = RolloutEngine(tiny_tokenizer, cfg)
            before = len(calls)
            out.append(engine.generate(model, prompts, rep, generator=torch.Generator().manual_seed(0)))
            assert (len(calls) > before) == direct  # the direct step ran, and only when asked for
        a, b = out
        assert torch.equal(a.ids, b.ids) and torch.equal(a.attention_mask, b.attention_mask)
        assert torch.equal(a.logp, b.logp) and torch.equal(a.entropy, b.entropy)
        assert (a.fed is None and b.fed is None) or torch.equal(a.fed, b.fed)
        assert a.completions == b.completions


def test_supported_only_where_the_forward_is_reproduced(tiny_model, tiny_tokenizer):
    assert supports(tiny_model.get_decoder())
    assert supports(tiny_qwen2(len(tiny_tokenizer)).get_decoder())
    sliding = tiny_qwen2(len(tiny_tokenizer), use_sliding_window=True, sliding_window=4, max_window_layers=1)
    assert not supports(sliding.get_decoder())
    eager = tiny_qwen2(len(tiny_tokenizer))
    eager.config._attn_implementation = "eager"
    assert not supports(eager.get_decoder())
    hooked = tiny_qwen2(len(tiny_tokenizer))
    hooked.model.layers[1].mlp.register_forward_pre_hook(lambda module, args: None)
    assert not supports(hooked.get_decoder())
    wrapped = tiny_qwen2(len(tiny_tokenizer))
    wrapped.model.layers[0].self_attn.q_proj = torch.nn.Sequential(wrapped.model.layers[0].self_attn.q_proj)
    assert not supports(wrapped.get_decoder())


def test_lora_wrapped_layers_keep_the_decoders_forward(tiny_model):
    peft = pytest.importorskip("peft")
    lora = peft.get_peft_model(tiny_model, peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    assert not supports(lora.get_base_model().get_decoder())
