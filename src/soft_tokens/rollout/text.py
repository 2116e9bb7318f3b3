"""The text side of a rollout: whether a CoT ends with the stop string, and the texts a finished rollout keeps."""

from __future__ import annotations

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase


class RolloutText:
    """Decodes a rollout's ids with its tokenizer: stop-string detection during the CoT, texts at the end."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, stop_string: str) -> None:
        self.tokenizer, self.stop_string = tokenizer, stop_string

    def stops(self, rows: Tensor, ids: Tensor, t: int, w: int) -> Tensor:
        """Which `rows` (t + 1 tokens into their CoT) have a CoT whose last `w` tokens decode to text ending
        with the stop string."""
        out = torch.zeros(len(rows), dtype=torch.bool)
        for k, tail in enumerate(ids[rows, max(0, t + 1 - w) : t + 1].tolist()):
            out[k] = self.tokenizer.decode(tail[-min(w, t + 1) :]).rstrip().endswith(self.stop_string)
        return out.to(rows.device)

    def texts(self, ids: Tensor, cot_mask: Tensor, attn: Tensor) -> tuple[list[str], list[str]]:
        """CoT text (shadow tokens for continuous CoTs) and the prefix + answer text of each row."""
        cot, rest = [], []
        for row_ids, row_cot, row_attn in zip(ids.tolist(), cot_mask.tolist(), attn.tolist()):
            cot.append(self.tokenizer.decode([i for i, c in zip(row_ids, row_cot) if c]))
            tail = [i for i, c, a in zip(row_ids, row_cot, row_attn) if a and not c]
            rest.append(self.tokenizer.decode(tail, skip_special_tokens=True))
        return cot, rest
