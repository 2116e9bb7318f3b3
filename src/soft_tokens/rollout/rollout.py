"""Batched, KV-cached generation of a chain of thought and an answer (docs/method.md, "Generation protocol").

Every row runs its own little state machine, all rows advancing one position per forward pass:

    CoT (the representer picks each input) -> forced prefix (hard tokens) -> answer (hard tokens) -> done

so each row's sequence is contiguous, `[left padding; prompt; CoT; prefix; answer; right padding]`, and the
teacher-forced pass can replay it with the same attention mask and position ids. The CoT ends when the
(shadow) text ends with the stop string, forcing " \\boxed{", or at `max_cot_tokens`, forcing
" The final answer is: \\boxed{" (as does a representer's early stop, Soft Thinking's Cold Stop). The
answer ends at the brace closing the box, at EOS, or after `answer_max_tokens`. Rows that are done are
dropped from the batch (and from the KV cache) once they make up a large enough share of it.

`RolloutEngine.generate` is the protocol's loop; the package's other modules are its parts (__init__.py).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from soft_tokens.representers.base import TokenRepresenter
from soft_tokens.rollout.config import RolloutConfig
from soft_tokens.rollout.decode_state import ANSWER, COT, PREFIX, TokenTables
from soft_tokens.rollout.decoding import Decoding
from soft_tokens.rollout.text import RolloutText


@dataclass
class Rollout:
    """Everything a rollout fed to the model; generated positions are columns P..P+S-1 of `ids`."""

    ids: Tensor  # [N, P+S] prompt (left-padded), CoT ids (sample or shadow), prefix, answer, pad
    attention_mask: Tensor  # [N, P+S]
    position_ids: Tensor  # [N, P+S]
    prompt_len: int  # P
    cot_mask: Tensor  # [N, S] bool: CoT steps (log-prob from the representer)
    answer_mask: Tensor  # [N, S] bool: sampled answer tokens (categorical log-prob)
    fed: Tensor | None  # [N, S, d] fed CoT inputs for continuous representers, else None
    logp: Tensor  # [N, S] decode-time log-prob of CoT and answer steps (0 elsewhere)
    entropy: Tensor  # [N, S] entropy of the next-token distribution at CoT steps (0 elsewhere)
    cot_lengths: Tensor  # [N]
    answer_lengths: Tensor  # [N]
    clipped: Tensor  # [N] bool: the CoT hit max_cot_tokens
    cot_texts: list[str] = field(default_factory=list)
    completions: list[str] = field(default_factory=list)  # prefix + answer text: what the reward reads
    seconds: float = 0.0
    aux: dict[str, Tensor] = field(default_factory=dict)  # the representer's per-step extras, [N, S, ...]
    early_stopped: Tensor | None = None  # [N] bool: the representer's entropy stop ended the CoT
    answer_temperature: float = 1.0  # the answer tokens were sampled from softmax(logits / T)

    @property
    def gen_mask(self) -> Tensor:
        """[N, S] bool: positions that carry a log-probability (CoT or answer)."""
        return self.cot_mask | self.answer_mask

    @property
    def num_tokens(self) -> int:
        """Generated positions actually fed (CoT, prefix and answer) over all rows."""
        return int(self.attention_mask[:, self.prompt_len :].sum())

    def to(self, device: torch.device | str) -> Rollout:
        """A copy with every tensor on `device`."""
        moved = {k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in self.__dict__.items()}
        moved["aux"] = {k: v.to(device) for k, v in self.aux.items()}
        return Rollout(**moved)


# Config fields of Hugging Face models whose logits are not lm_head(final hidden state) (soft-capping,
# scaling): the rollout and the teacher-forced pass both apply the head themselves.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


def check_plain_head(model: PreTrainedModel) -> None:
    """Raise if the model's logits are not its output embedding applied to the decoder's last hidden state."""
    cfg = model.config.get_text_config(decoder=True)
    for name in _LOGIT_TRANSFORMS:
        value = getattr(cfg, name, None)
        if value not in (None, 1, 1.0):
            raise ValueError(
                f"{type(model).__name__} transforms its logits ({name}={value}); soft_tokens computes logits "
                "as lm_head(last hidden state) in the rollout and the teacher-forced pass, so this model is "
                "not supported as is"
            )


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """torch's intra-op threads set to `n` inside the block (left alone for None)."""
    before = torch.get_num_threads()
    if n is None or n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def encode_prompts(
    tokenizer: PreTrainedTokenizerBase, prompts: list[str], device: torch.device
) -> tuple[Tensor, Tensor]:
    """Left-padded prompt ids and attention mask."""
    enc = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left")
    return enc["input_ids"].to(device), enc["attention_mask"].to(device)


class RolloutEngine:
    """Generates rollouts for one policy and tokenizer; the representer decides each CoT input."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, cfg: RolloutConfig | None = None) -> None:
        self.tokenizer = tokenizer
        self.cfg = cfg or RolloutConfig()
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token; set one (e.g. pad_token = eos_token)")
        self._tables: dict[tuple, TokenTables] = {}
        self.text = RolloutText(tokenizer, self.cfg.stop_string)

    def tables(self, vocab_size: int, device: torch.device) -> TokenTables:
        """The token tables of this tokenizer for a vocabulary size, built once per device."""
        key = (vocab_size, str(device))
        if key not in self._tables:
            self._tables[key] = TokenTables(self.tokenizer, vocab_size, self.cfg).to(device)
        return self._tables[key]

    @torch.no_grad()
    def generate(
        self,
        model: PreTrainedModel,
        prompts: list[str],
        representer: TokenRepresenter,
        answer_greedy: bool = False,
        generator: torch.Generator | None = None,
    ) -> Rollout:
        """Roll out one CoT and answer per prompt (repeat prompts for G samples each)."""
        on_cpu = model.device.type == "cpu"
        with torch_threads(self.cfg.decode_threads if on_cpu else None):
            return self._generate(model, prompts, representer, answer_greedy, generator)

    def _generate(self, model, prompts, representer, answer_greedy, generator) -> Rollout:
        start = time.perf_counter()
        check_plain_head(model)
        tables = self.tables(model.get_input_embeddings().weight.shape[0], model.device)
        run = Decoding(model, representer, self.cfg, tables, self.text, answer_greedy, generator)
        prompt_ids, prompt_mask = encode_prompts(self.tokenizer, prompts, run.device)
        st = run.prefill(prompt_ids, prompt_mask)
        t = 0
        while t < run.S:
            ahead = run.aligned_prefix()
            if (
                ahead > 1
            ):  # every live row is at the same point of the same forced prefix: feed the rest at once
                t = run.feed_prefix(t, ahead)
                continue
            in_cot, in_prefix, in_answer = st.rows_in(COT), st.rows_in(PREFIX), st.rows_in(ANSWER)
            step = run.cot_step(t, in_cot) if in_cot is not None else None
            next_ids, next_emb = run.next_inputs(t, step, in_cot, in_prefix, in_answer)
            live = st.live()
            st.record_fed(t, next_ids, live)
            moved = in_prefix is not None or in_answer is not None
            if in_cot is not None:
                moved = run.end_cots(t, st.active[in_cot], step) or moved
            if in_prefix is not None:
                st.advance_prefix(st.active[in_prefix], run.prefix_len)
            if in_answer is not None:
                tok = next_ids[in_answer]
                st.advance_answer(st.active[in_answer], tok, run.tab, run.eos, self.cfg.answer_max_tokens)
            if moved:  # rows that left the running batch are all done
                st.recount()
            if st.finished:
                break
            run.forward(next_emb.unsqueeze(1), live)
            t += 1
        return Rollout(**run.finish(prompt_ids, prompt_mask, time.perf_counter() - start))
