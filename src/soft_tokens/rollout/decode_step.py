"""One decode position of a Llama or Qwen2 decoder, without the module tree's per-call Python work.

A rollout of a small model on CPU spends about a quarter of each decode step in `nn.Module` dispatch and
Hugging Face's per-call bookkeeping (decorators, config look-ups, mask building), none of which depends on
the data. `DecodeStep` runs the same torch operations in the same order on the decoder's own weights, so its
hidden states are bit-identical to the decoder's forward (tests/test_decode_step.py). It is used only where
that holds by construction: the exact Llama/Qwen2 classes with plain `nn.Linear` projections, SDPA
attention over full (not sliding-window) layers, no dropout, and no forward hooks anywhere in the tree
(FSDP, DeepSpeed ZeRO-3 and peft all hook or replace modules); anything else keeps the decoder's forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import Cache

_SUPPORTED = {"llama": ("LlamaModel", "LlamaDecoderLayer"), "qwen2": ("Qwen2Model", "Qwen2DecoderLayer")}


def _rms_norm(x: Tensor, norm: nn.Module) -> Tensor:
    """`LlamaRMSNorm.forward` (Qwen2's is the same), operation for operation."""
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
    return norm.weight * h.to(x.dtype)


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """`apply_rotary_pos_emb` for one tensor."""
    half = x.shape[-1] // 2
    return (x * cos) + (torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin)


def _has_hooks(module: nn.Module) -> bool:
    return any(m._forward_hooks or m._forward_pre_hooks for m in module.modules())


def supports(decoder: nn.Module) -> bool:
    """Whether `DecodeStep` reproduces this decoder's forward exactly."""
    cfg = getattr(decoder, "config", None)
    names = _SUPPORTED.get(getattr(cfg, "model_type", None))
    if names is None or type(decoder).__name__ != names[0] or cfg._attn_implementation != "sdpa":
        return False
    layers = list(decoder.layers[: cfg.num_hidden_layers])
    if any(type(layer).__name__ != names[1] for layer in layers):
        return False
    if any(kind != "full_attention" for kind in getattr(cfg, "layer_types", None) or []):
        return False
    if cfg.hidden_act != "silu" or cfg.attention_dropout != 0.0 or _has_hooks(decoder):
        return False
    projections = [f"self_attn.{x}_proj" for x in "qkvo"] + [f"mlp.{x}_proj" for x in ("gate", "up", "down")]
    return all(type(layer.get_submodule(p)) is nn.Linear for layer in layers for p in projections)


def _weights(linear: nn.Linear) -> tuple[Tensor, Tensor | None]:
    return linear.weight, linear.bias


class DecodeStep:
    """Feeds one position per row through a supported decoder (`supports`), writing its KV cache. Built per
    rollout: it holds the layers' weight tensors (updated in place by the optimizer, never replaced)."""

    def __init__(self, decoder: nn.Module) -> None:
        self.decoder = decoder
        att = decoder.layers[0].self_attn
        self.head_dim, self.groups, self.scaling = att.head_dim, att.num_key_value_groups, att.scaling
        self.layers = [
            (
                layer.input_layernorm,
                *(_weights(getattr(layer.self_attn, f"{x}_proj")) for x in "qkvo"),
                layer.post_attention_layernorm,
                *(_weights(getattr(layer.mlp, f"{x}_proj")) for x in ("gate", "up", "down")),
            )
            for layer in decoder.layers[: decoder.config.num_hidden_layers]
        ]

    def __call__(
        self, inputs_embeds: Tensor, attention_mask: Tensor, position_ids: Tensor, cache: Cache
    ) -> Tensor:
        """Last hidden states [n, 1, d] for inputs [n, 1, d]; `attention_mask` [n, T] covers the cache and
        this position, `position_ids` is [n, 1]."""
        x, n, hd = inputs_embeds, inputs_embeds.shape[0], self.head_dim
        cos, sin = self.decoder.rotary_emb(x, position_ids)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        # As create_causal_mask for one query: no mask when no key is padding, else a boolean padding mask.
        mask = None if bool(attention_mask.all()) else attention_mask.bool()[:, None, None, :]
        for i, (norm1, q_w, k_w, v_w, o_w, norm2, gate_w, up_w, down_w) in enumerate(self.layers):
            h = _rms_norm(x, norm1)
            q = _rotate(F.linear(h, *q_w).view(n, 1, -1, hd).transpose(1, 2), cos, sin)
            k = _rotate(F.linear(h, *k_w).view(n, 1, -1, hd).transpose(1, 2), cos, sin)
            k, v = cache.update(k, F.linear(h, *v_w).view(n, 1, -1, hd).transpose(1, 2), i)
            x = x + F.linear(self._attend(q, k, v, mask), *o_w)
            h = _rms_norm(x, norm2)
            x = x + F.linear(F.silu(F.linear(h, *gate_w)) * F.linear(h, *up_w), *down_w)
        return _rms_norm(x, self.decoder.norm)

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        """`sdpa_attention_forward` for one query: [n, heads, 1, hd] -> [n, 1, heads * hd]."""
        n, groups, extra = q.shape[0], self.groups, {}
        if groups > 1 and mask is None:
            extra["enable_gqa"] = True
        elif groups > 1:  # one query: each KV head's group of query heads attends as a batch of queries
            q = q.reshape(n, q.shape[1] // groups, groups, q.shape[-1])
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=0.0, scale=self.scaling, **extra
        )
        return out.reshape(n, -1, 1, v.shape[-1]).transpose(1, 2).reshape(n, 1, -1)
