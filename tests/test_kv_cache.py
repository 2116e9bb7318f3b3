"""The in-place KV cache: the same keys and values as Hugging Face's DynamicLayer, and the same rollouts."""

from __future__ import annotations

import pytest
import torch
from helpers import PROMPTS
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

import soft_tokens.rollout.decoding as decoding_mod
from soft_tokens.representers import HardRepresenter, SoftRepresenter
from soft_tokens.rollout import RolloutConfig, RolloutEngine
from soft_tokens.rollout.kv_cache import PreallocatedLayer, preallocated_cache


def test_preallocated_layer_matches_the_dynamic_layer_through_every_operation():
    g = torch.Generator().manual_seed(0)
    ours, ref = PreallocatedLayer(capacity=8), DynamicLayer()

    def step(n_rows: int, n_new: int) -> None:
        k, v = torch.randn(n_rows, 2, n_new, 4, generator=g), torch.randn(n_rows, 2, n_new, 4, generator=g)
        a, b = ours.update(k, v), ref.update(k, v)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        assert ours.get_seq_length() == ref.get_seq_length()

    step(3, 5)  # prefill
    for _ in range(2):
        step(3, 1)
    idx = torch.tensor([0, 2])
    ours.batch_select_indices(idx)
    ref.batch_select_indices(idx)
    step(2, 1)
    ours.crop(-2)
    ref.crop(-2)
    step(2, 1)
    for _ in range(12):  # past the capacity of 8: the buffer grows
        step(2, 1)
    assert ours._keys.shape[-2] >= ours.get_seq_length() == 19
    ours.batch_repeat_interleave(2)
    ref.batch_repeat_interleave(2)
    step(4, 1)


def test_preallocated_cache_replaces_only_plain_layers(tiny_model):
    cache = preallocated_cache(tiny_model.config, 32)
    assert all(type(layer) is PreallocatedLayer for layer in cache.layers)
    assert len(cache.layers) == len(DynamicCache(config=tiny_model.config).layers)


@pytest.mark.numerics
def test_rollouts_are_the_same_with_either_cache(tiny_model, tiny_tokenizer, monkeypatch):
    engine = RolloutEngine(tiny_tokenizer, RolloutConfig(max_cot_tokens=10, answer_max_tokens=4))
    model = tiny_model.eval()
    for rep in (HardRepresenter(), SoftRepresenter()):
        a = engine.generate(model, PROMPTS, rep, generator=torch.Generator().manual_seed(0))
        with monkeypatch.context() as m:
            m.setattr(
                decoding_mod, "preallocated_cache", lambda config, capacity: DynamicCache(config=config)
            )
            b = engine.generate(model, PROMPTS, rep, generator=torch.Generator().manual_seed(0))
        assert torch.equal(a.ids, b.ids) and a.completions == b.completions
        torch.testing.assert_close(a.logp, b.logp, rtol=0, atol=1e-6)
