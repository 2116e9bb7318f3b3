"""Teacher-forced log-probabilities of a rollout (docs/method.md, "Log-probabilities").

One forward pass over `[prompt; fed CoT inputs; prefix; answer]` with `inputs_embeds` gives the hidden
states of every position; the vocabulary projection and the log-probabilities are then computed only at
the CoT and answer positions, a chunk of positions at a time, each chunk under activation checkpointing, so
neither the forward nor the backward pass ever holds a float32 [N, T, V] tensor for the whole batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint
from transformers import DynamicCache, PreTrainedModel

from soft_tokens.representers.base import Replay, TokenRepresenter
from soft_tokens.representers.sampling import categorical_log_prob, k3_kl
from soft_tokens.rollout.rollout import Rollout
from soft_tokens.rollout.shared_prompts import prefill, prompt_groups


@dataclass
class StepLogProbs:
    """Per-step quantities at generated positions, [N, S], zero where `mask` is False."""

    logp: Tensor
    mask: Tensor
    kl: Tensor | None = None


def input_embeds(model: PreTrainedModel, rollout: Rollout) -> Tensor:
    """The inputs the rollout fed: token embeddings, with the stored CoT inputs of continuous representers."""
    emb = model.get_input_embeddings()(rollout.ids)
    if rollout.fed is None:
        return emb
    P = rollout.prompt_len
    gen = torch.where(rollout.cot_mask.unsqueeze(-1), rollout.fed.to(emb.dtype), emb[:, P:])
    return torch.cat([emb[:, :P], gen], dim=1)


def hidden_states(model: PreTrainedModel, rollout: Rollout) -> Tensor:
    """Final hidden states [N, S, d] at the positions that predict each generated step.

    Rows that share a prompt share its encoding: each distinct prompt runs once, then the generated
    positions attend to its KV cache (rollout/shared_prompts.py); otherwise one pass over the whole sequences.
    """
    decoder = model.get_decoder()
    emb, mask, pos = input_embeds(model, rollout), rollout.attention_mask, rollout.position_ids
    P = rollout.prompt_len
    groups = prompt_groups(rollout.ids[:, :P], mask[:, :P])
    if not groups.shared:
        out = decoder(inputs_embeds=emb, attention_mask=mask, position_ids=pos, use_cache=False)
        return out.last_hidden_state[:, P - 1 : -1]
    cache = DynamicCache(config=decoder.config)
    last = prefill(decoder, groups, mask[:, :P], pos[:, :P], cache, inputs_embeds=emb[:, :P])
    if emb.shape[1] - P < 2:  # one generated step: predicted from the prompt alone
        return last.unsqueeze(1)
    out = decoder(
        inputs_embeds=emb[:, P:-1],
        attention_mask=mask[:, :-1],
        position_ids=pos[:, P:-1],
        cache=cache,
        use_cache=True,
    )
    return torch.cat([last.unsqueeze(1), out.last_hidden_state], dim=1)


def _rows(value: Tensor | dict[str, Tensor] | None, i: int, j: int) -> Tensor | dict[str, Tensor] | None:
    """Rows i..j-1 of a tensor, of each tensor of a dict, or None."""
    if value is None:
        return None
    if isinstance(value, dict):
        return {k: v[i:j] for k, v in value.items()}
    return value[i:j]


def _chunked(fn: Callable[..., Tensor], n: int, chunk_size: int, **inputs: Tensor | dict | None) -> Tensor:
    """Apply fn to row-chunks of the named `inputs` and concatenate; checkpoint each chunk when grad is on."""
    outs = []
    for i in range(0, n, chunk_size):
        parts = {name: _rows(v, i, i + chunk_size) for name, v in inputs.items()}
        if torch.is_grad_enabled():
            outs.append(checkpoint(fn, use_reentrant=False, **parts))
        else:
            outs.append(fn(**parts))
    return torch.cat(outs)


def rollout_log_probs(
    model: PreTrainedModel,
    rollout: Rollout,
    representer: TokenRepresenter,
    answer_temperature: float | None = None,
    chunk_size: int = 1024,
    ref_model: PreTrainedModel | None = None,
    cot_grad_weight: float = 1.0,
) -> StepLogProbs:
    """Log-probs (and KL to `ref_model`, if given) of a rollout's CoT and answer steps under `model`.

    `cot_grad_weight` scales the gradient (not the value) of the CoT steps' log-probs. Answer tokens are
    scored at `answer_temperature`, by default the one the rollout sampled them at.
    """
    T = rollout.answer_temperature if answer_temperature is None else answer_temperature
    mask = rollout.gen_mask
    rows, cols = mask.nonzero(as_tuple=True)
    if len(rows) == 0:
        zeros = torch.zeros(mask.shape, device=mask.device)
        return StepLogProbs(logp=zeros, mask=mask, kl=zeros if ref_model is not None else None)
    hid = hidden_states(model, rollout)[rows, cols]  # [M, d]
    ref_hid = None
    if ref_model is not None:
        with torch.no_grad():
            ref_hid = hidden_states(ref_model, rollout)[rows, cols]
    per_step = StepScorer(model, representer, T, ref_model)
    vals = _chunked(
        per_step,
        len(rows),
        chunk_size,
        hidden=hid,
        cot=rollout.cot_mask[rows, cols],
        ids=rollout.ids[:, rollout.prompt_len :][rows, cols],
        fed=rollout.fed[rows, cols] if rollout.fed is not None else None,
        aux={k: v[rows, cols] for k, v in rollout.aux.items()},  # the representer's per-step extras
        ref_hidden=ref_hid,
    )
    logp = scale_gradient(vals[:, 0], rollout.cot_mask[rows, cols], cot_grad_weight)
    out = StepLogProbs(logp=_scatter(logp, mask, rows, cols), mask=mask)
    if ref_hid is not None:
        out.kl = _scatter(vals[:, 1], mask, rows, cols)
    return out


class StepScorer:
    """Scores a chunk of generated positions from their final hidden states: the representer's log-prob at
    CoT steps, the categorical one at answer steps, and the KL to the reference when one is given."""

    def __init__(
        self,
        model: PreTrainedModel,
        representer: TokenRepresenter,
        T: float,
        ref_model: PreTrainedModel | None,
    ) -> None:
        self.representer, self.T, self.ref_model = representer, T, ref_model
        self.head, self.E = model.get_output_embeddings(), model.get_input_embeddings().weight

    def __call__(
        self,
        hidden: Tensor,
        cot: Tensor,
        ids: Tensor,
        fed: Tensor | None,
        aux: dict[str, Tensor],
        ref_hidden: Tensor | None,
    ) -> Tensor:
        """[c, 1] log-probs, or [c, 2] log-probs and KL when reference hidden states are given."""
        rep = self.representer
        logits = self.head(hidden)
        replay = Replay(logits, fed if rep.continuous else None, ids, self.E, aux or None, hidden)
        logp = categorical_log_prob(logits, ids, self.T)
        if bool(cot.any()):
            logp = torch.where(cot, rep.log_prob(replay), logp)
        if ref_hidden is None:
            return logp.unsqueeze(-1)
        with torch.no_grad():
            ref_logits = self.ref_model.get_output_embeddings()(ref_hidden)
        kl = k3_kl(logp, categorical_log_prob(ref_logits, ids, self.T))
        if bool(cot.any()):
            ref = replay.under(ref_logits, self.ref_model.get_input_embeddings().weight, ref_hidden)
            kl = torch.where(cot, rep.kl(replay, ref), kl)
        return torch.stack([logp, kl], dim=-1)


def scale_gradient(values: Tensor, where: Tensor, weight: float) -> Tensor:
    """The same values, with the gradient of the entries at `where` multiplied by `weight`."""
    if weight == 1.0 or not values.requires_grad:
        return values
    scaled = weight * values + (1.0 - weight) * values.detach()
    return torch.where(where, scaled, values)


def _scatter(values: Tensor, mask: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """Place per-position values [M] back into a zero [N, S] tensor."""
    full = values.new_zeros(mask.shape)
    return full.index_put((rows, cols), values)
