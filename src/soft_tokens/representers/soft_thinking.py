"""Top-k soft thinking (Soft Thinking, arXiv 2505.15778; docs/method.md, "Related methods"): training-free.

Each CoT input is the mixture of the top-k token embeddings weighted by their probabilities at temperature
T, after top-p and min-p filtering, renormalised over what is kept. With an entropy threshold set, a row's
CoT stops early ("Cold Stop") once the entropy of that renormalised distribution stayed below the threshold
for `stop_patience` consecutive steps; the rollout then forces the answer prefix. With k = 1 (or top_p or
min_p small enough to keep one token) the input is the argmax embedding: hard greedy decoding.
"""

from __future__ import annotations

import torch
from torch import Tensor

from soft_tokens.representers.base import Rng, Step, TrainingFreeRepresenter
from soft_tokens.representers.sampling import entropy_of, weighted_rows


def filtered_top_k(
    logits: Tensor, temperature: float, top_k: int, top_p: float = 1.0, min_p: float = 0.0
) -> tuple[Tensor, Tensor]:
    """(probs, ids) [..., k]: the top-k of softmax(logits / T), top-p then min-p filtered, renormalised.

    top-p keeps the smallest prefix (by decreasing probability) whose mass reaches top_p; min-p drops tokens
    under min_p times the largest probability. The most likely token is always kept.
    """
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    vals, ids = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
    keep = torch.ones_like(vals, dtype=torch.bool)
    if top_p < 1.0:
        keep &= (vals.cumsum(-1) - vals) < top_p  # the mass before this token has not reached top_p yet
    if min_p > 0.0:
        keep &= vals >= min_p * vals[..., :1]
    keep[..., 0] = True
    vals = vals * keep
    return vals / vals.sum(-1, keepdim=True), ids


class SoftThinkingRepresenter(TrainingFreeRepresenter):
    """Feeds sum_i p_i E_i over the filtered, renormalised top-k; deterministic (greedy and sampled agree)."""

    def __init__(
        self,
        temperature: float = 1.0,
        top_k: int = 10,
        top_p: float = 1.0,
        min_p: float = 0.0,
        stop_entropy: float | None = None,
        stop_patience: int = 8,
        greedy: bool = True,
        name: str | None = None,
    ) -> None:
        super().__init__(greedy=greedy, name=name or "soft_thinking")
        # The ranges of every knob are checked on the config (config_types.RANGES).
        self.temperature = float(temperature)
        self.top_k, self.top_p, self.min_p = int(top_k), float(top_p), float(min_p)
        self.stop_entropy = None if stop_entropy is None else float(stop_entropy)
        self.stop_patience = int(stop_patience)

    def step(self, logits: Tensor, embedding: Tensor, generator: Rng = None) -> Step:
        """The filtered top-k mixture; `confident` where its entropy is under `stop_entropy`."""
        probs, top = filtered_top_k(logits, self.temperature, self.top_k, self.top_p, self.min_p)
        confident = None if self.stop_entropy is None else entropy_of(probs) < self.stop_entropy
        return Step(
            embeds=weighted_rows(probs, top, embedding),
            ids=top[..., 0],
            logp=torch.zeros(probs.shape[:-1], device=probs.device),
            confident=confident,
        )

    def knobs(self) -> str:
        """The temperature, the filters and the early stop."""
        stop = "off" if self.stop_entropy is None else f"H<{self.stop_entropy} x{self.stop_patience}"
        return (
            f", temperature={self.temperature}, top_k={self.top_k}, top_p={self.top_p}, min_p={self.min_p}, "
            f"cold_stop={stop}"
        )
