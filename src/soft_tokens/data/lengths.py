"""Prompts that fit the model: prompt + CoT + forced answer prefix + answer within its position limit.

Checked when the datamodule loads a split, before any model is trained: a prompt that does not fit is an
error naming its file and row (skipped and counted with `data.on_bad_row=skip`), or, with
`data.max_prompt_tokens`, its question is cut from the left until the prompt fits (counted, with a warning).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from soft_tokens.data.files import DataError
from soft_tokens.data.types import Example

log = logging.getLogger(__name__)

POSITION_FIELDS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length")
_CHUNK = 512  # prompts tokenized per call


@dataclass(frozen=True)
class PromptBudget:
    """The model's positions and what the rollout generates after the prompt, with the prompt renderer."""

    tokenizer: Any
    render: Callable[[str], str]
    max_positions: int | None  # None: the model config does not say, nothing is checked
    completion_tokens: int  # max_cot_tokens + the longest forced answer prefix + answer_max_tokens

    def limit(self, max_prompt_tokens: int | None) -> int | None:
        """The most tokens a prompt may have (None: no limit known)."""
        room = None if self.max_positions is None else self.max_positions - self.completion_tokens
        if room is not None and room < 1:
            raise ValueError(
                f"the model has {self.max_positions} positions and a rollout generates up to "
                f"{self.completion_tokens} after the prompt: lower module.rollout.max_cot_tokens"
            )
        if max_prompt_tokens is None:
            return room
        if max_prompt_tokens < 1 or (room is not None and max_prompt_tokens > room):
            raise ValueError(
                f"data.max_prompt_tokens={max_prompt_tokens} must lie in 1..{room} (the model's "
                f"{self.max_positions} positions minus the {self.completion_tokens} a rollout generates)"
            )
        return max_prompt_tokens

    def count(self, questions: list[str]) -> list[int]:
        """Token counts of the rendered prompts (with the special tokens the rollout's tokenizer call adds)."""
        out: list[int] = []
        for i in range(0, len(questions), _CHUNK):
            prompts = [self.render(q) for q in questions[i : i + _CHUNK]]
            out += [len(ids) for ids in self.tokenizer(prompts)["input_ids"]]
        return out

    def fit(
        self, examples: list[Example], where: str, max_prompt_tokens: int | None = None, skip: bool = False
    ) -> list[Example]:
        """The examples whose prompts fit; with max_prompt_tokens, long questions are cut from the left."""
        limit = self.limit(max_prompt_tokens)
        if limit is None or not examples:
            return examples
        out, cut, skipped = [], 0, []
        for ex, n in zip(examples, self.count([e.question for e in examples])):
            if n > limit and max_prompt_tokens is not None:
                question = self._cut(ex.question, n, limit)
                if question is not None:
                    out.append(replace(ex, question=question))
                    cut += 1
                    continue
            if n > limit:
                message = self._too_long(ex, where, n, limit, max_prompt_tokens)
                if not skip:
                    raise DataError(message)
                skipped.append(message)
                continue
            out.append(ex)
        if cut:
            log.warning("%s: cut %d of %d questions from the left to data.max_prompt_tokens=%d",
                        where, cut, len(examples), limit)  # fmt: skip
        if skipped:
            log.warning(
                "%s: skipped %d prompts too long for the model (first: %s)", where, len(skipped), skipped[0]
            )
        return out

    def _too_long(self, ex: Example, where: str, n: int, limit: int, max_prompt_tokens: int | None) -> str:
        at = ex.origin or f"{where}, example {ex.id!r}"
        if max_prompt_tokens is not None:
            return f"{at}: the prompt template alone is longer than data.max_prompt_tokens={limit}"
        return (
            f"{at}: the prompt is {n} tokens; with the {self.completion_tokens} a rollout generates after it "
            f"(module.rollout.max_cot_tokens + answer prefix + answer_max_tokens) it needs "
            f"{n + self.completion_tokens} of the model's {self.max_positions} positions. Set "
            f"data.max_prompt_tokens (at most {limit}) to cut long questions from the left, skip such rows "
            "with data.on_bad_row=skip, or lower module.rollout.max_cot_tokens"
        )

    def _cut(self, question: str, n: int, limit: int) -> str | None:
        """The question without its first tokens, so that its prompt has at most `limit` tokens (None: impossible)."""
        for _ in range(8):  # the tokens at the cut may merge differently: re-count and cut again
            excess = n - limit
            if excess <= 0:
                return question
            starts = self._token_starts(question)
            if excess >= len(starts):
                return None
            question = question[starts[excess] :]
            n = self.count([question])[0]
        return None

    def _token_starts(self, text: str) -> list[int]:
        """The character offset where each token of `text` starts."""
        if getattr(self.tokenizer, "is_fast", False):
            enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            return [start for start, _ in enc["offset_mapping"]]
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return [round(i * len(text) / max(len(ids), 1)) for i in range(len(ids))]  # proportional


def model_positions(model_cfg: Any) -> int | None:
    """The position limit of the model a ModelConfig describes, read from its config (no weights loaded)."""
    from transformers import AutoConfig

    source = (
        (model_cfg.architecture or model_cfg.name_or_path)
        if model_cfg.random_init
        else model_cfg.name_or_path
    )
    config = AutoConfig.from_pretrained(
        source, revision=model_cfg.revision, trust_remote_code=model_cfg.trust_remote_code
    )
    for key, value in model_cfg.config_overrides.items():
        setattr(config, key, value)
    for name in POSITION_FIELDS:
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def prompt_budget(
    model_cfg: Any, tokenizer: Any, render: Callable[[str], str], rollout_cfg: Any
) -> PromptBudget:
    """The PromptBudget of a training run: its model, tokenizer, prompt renderer and rollout lengths."""
    prefixes = (rollout_cfg.early_stop_prefix, rollout_cfg.limit_prefix)
    prefix = max(len(tokenizer.encode(p, add_special_tokens=False)) for p in prefixes)
    completion = rollout_cfg.max_cot_tokens + prefix + rollout_cfg.answer_max_tokens
    return PromptBudget(tokenizer, render, model_positions(model_cfg), completion)
