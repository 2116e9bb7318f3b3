"""Run each distinct prompt through the decoder once, however many rows share it (docs/method.md, "Speed").

An RL batch holds every prompt G times. Its rows share the prompt's keys and values exactly, so the prompt is
encoded once per distinct prompt and its KV cache is indexed out to the rows: in the rollout's prefill, and
in the teacher-forced pass, where the generated positions then attend to that cache (the gradient reaches
the prompt's activations through the indexing, summed over the rows that share them, as in a full pass).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import Cache


@dataclass
class PromptGroups:
    """Which rows of a batch hold the same prompt: `first[u]` is a row with prompt u, `inverse[i]` row i's."""

    first: Tensor  # [U]
    inverse: Tensor  # [N]

    @property
    def shared(self) -> bool:
        """Whether some prompt appears in more than one row."""
        return len(self.first) < len(self.inverse)


def prompt_groups(prompt_ids: Tensor, prompt_mask: Tensor) -> PromptGroups:
    """Group the rows of a left-padded prompt batch [N, P] by identical ids and mask."""
    _, inverse = torch.unique(torch.cat([prompt_ids, prompt_mask], dim=1), dim=0, return_inverse=True)
    first = torch.full((int(inverse.max()) + 1,), len(inverse), dtype=torch.long, device=inverse.device)
    first = first.scatter_reduce(0, inverse, torch.arange(len(inverse), device=inverse.device), "amin")
    return PromptGroups(first=first, inverse=inverse)


def prefill(
    decoder: torch.nn.Module,
    groups: PromptGroups | None,
    attention_mask: Tensor,
    position_ids: Tensor,
    cache: Cache,
    input_ids: Tensor | None = None,
    inputs_embeds: Tensor | None = None,
) -> Tensor:
    """Encode the prompts [N, P] into `cache` for all N rows, each distinct prompt once; return the final
    hidden state [N, d] at each row's last prompt position."""
    rows = groups.first if groups is not None and groups.shared else None
    pick = (lambda t: t[rows]) if rows is not None else (lambda t: t)
    out = decoder(
        input_ids=pick(input_ids) if input_ids is not None else None,
        inputs_embeds=pick(inputs_embeds) if inputs_embeds is not None else None,
        attention_mask=pick(attention_mask),
        position_ids=pick(position_ids),
        cache=cache,
        use_cache=True,
    )
    hidden = out.last_hidden_state[:, -1]
    if rows is None:
        return hidden
    cache.batch_select_indices(groups.inverse)
    return hidden[groups.inverse]
