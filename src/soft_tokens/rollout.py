"""Batched, KV-cached generation of a chain of thought and an answer (docs/method.md, "Generation protocol").

Every row runs its own little state machine, all rows advancing one position per forward pass:

    CoT (the representer picks each input) -> forced prefix (hard tokens) -> answer (hard tokens) -> done

so each row's sequence is contiguous, `[left padding; prompt; CoT; prefix; answer; right padding]`, and the
teacher-forced pass can replay it with the same attention mask and position ids. The CoT ends when the
(shadow) text ends with the stop string, forcing " \\boxed{", or at `max_cot_tokens`, forcing
" The final answer is: \\boxed{" (as does a representer's early stop, Soft Thinking's Cold Stop). The
answer ends at the brace closing the box, at EOS, or after `answer_max_tokens`. Rows that are done are
dropped from the batch (and from the KV cache) once they make up a large enough share of it.

`RolloutEngine.generate` is the protocol's loop; `Decoding` holds one call's model parts, KV cache and
logits, with one method per phase of a step; `decode_state.DecodeState` holds the rows' buffers and phases.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from soft_tokens.decode_state import ANSWER, COT, DONE, PREFIX, DecodeState, TokenTables
from soft_tokens.kv_cache import preallocated_cache
from soft_tokens.representers.base import TokenRepresenter
from soft_tokens.representers.sampling import categorical_log_prob, sample_tempered
from soft_tokens.shared_prompts import prefill, prompt_groups


@dataclass
class RolloutConfig:
    """Lengths, stop string and forced prefixes of the generation protocol."""

    max_cot_tokens: int = 64
    answer_max_tokens: int = 32
    answer_temperature: float = 1.0
    stop_string: str = "The final answer is:"
    early_stop_prefix: str = " \\boxed{"
    limit_prefix: str = " The final answer is: \\boxed{"
    compact_fraction: float = 0.25  # drop done rows once they are this share of the running batch

    def __post_init__(self) -> None:
        if self.max_cot_tokens < 0:
            raise ValueError(f"rollout max_cot_tokens={self.max_cot_tokens} must be >= 0 (0: no CoT)")
        if self.answer_max_tokens < 1:
            raise ValueError(f"rollout answer_max_tokens={self.answer_max_tokens} must be >= 1")
        # Answers are sampled from softmax(logits / T) and scored at T in training: T = 0 has no density.
        if not self.answer_temperature > 0 or self.answer_temperature == float("inf"):
            raise ValueError(
                f"rollout answer_temperature={self.answer_temperature} must be a finite number > 0 (in "
                "train.py: module.rollout.answer_temperature, set from sampling_temperature); greedy answers "
                "are an evaluation setting (evaluate.py and math_eval decode answers greedily)"
            )


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
        start = time.perf_counter()
        run = Decoding(self, model, representer, answer_greedy, generator)
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
        return run.finish(prompt_ids, prompt_mask, time.perf_counter() - start)

    def stops(self, rows: Tensor, ids: Tensor, t: int, w: int) -> Tensor:
        """Which `rows` (t + 1 tokens into their CoT) have a CoT whose last `w` tokens decode to text ending
        with the stop string."""
        out = torch.zeros(len(rows), dtype=torch.bool)
        for k, tail in enumerate(ids[rows, max(0, t + 1 - w) : t + 1].tolist()):
            out[k] = self.tokenizer.decode(tail[-min(w, t + 1) :]).rstrip().endswith(self.cfg.stop_string)
        return out.to(rows.device)

    def texts(self, ids: Tensor, cot_mask: Tensor, attn: Tensor) -> tuple[list[str], list[str]]:
        """CoT text (shadow tokens for continuous CoTs) and the prefix + answer text of each row."""
        cot, rest = [], []
        for row_ids, row_cot, row_attn in zip(ids.tolist(), cot_mask.tolist(), attn.tolist()):
            cot.append(self.tokenizer.decode([i for i, c in zip(row_ids, row_cot) if c]))
            tail = [i for i, c, a in zip(row_ids, row_cot, row_attn) if a and not c]
            rest.append(self.tokenizer.decode(tail, skip_special_tokens=True))
        return cot, rest


class Decoding:
    """One call of `RolloutEngine.generate`: the model's parts, the KV cache, the last logits and the
    decode state; its methods are the phases of a decode step."""

    def __init__(
        self,
        engine: RolloutEngine,
        model: PreTrainedModel,
        representer: TokenRepresenter,
        answer_greedy: bool,
        generator: torch.Generator | None,
    ) -> None:
        check_plain_head(model)
        self.engine, self.cfg, self.model = engine, engine.cfg, model
        self.representer, self.answer_greedy, self.generator = representer, answer_greedy, generator
        self.device = model.device
        self.embed = model.get_input_embeddings()
        self.E = self.embed.weight
        # The decoder and the head are called apart so the representer can project the hidden states itself
        # (soft tokens make their mixture in the same pass over E); logprobs.py makes the same split.
        self.decoder, self.head = model.get_decoder(), model.get_output_embeddings()
        self.tab = engine.tables(self.E.shape[0], self.device)
        self.pad, self.eos = engine.tokenizer.pad_token_id, engine.tokenizer.eos_token_id
        self.prefixes, self.prefix_len = self.tab.prefix_table(self.pad, self.device)
        self.S = self.cfg.max_cot_tokens + self.prefixes.shape[1] + self.cfg.answer_max_tokens
        representer.prepare(self.E)

    def prefill(self, prompt_ids: Tensor, prompt_mask: Tensor) -> DecodeState:
        """Encode the prompts into a fresh KV cache (each distinct prompt once) and start the decode state."""
        N, P = prompt_ids.shape
        fed_dim = self.E.shape[1] if self.representer.continuous else None
        self.st = DecodeState.start(
            N, self.S, self.pad, fed_dim, self.E.dtype, self.device, no_cot=self.cfg.max_cot_tokens == 0
        )
        self.cache = preallocated_cache(self.model.config, P + self.S)
        self.position_ids = (prompt_mask.cumsum(1) - 1).clamp(min=0)
        groups = prompt_groups(prompt_ids, prompt_mask)  # the G samples of a prompt share its prefill
        hidden = prefill(
            self.decoder, groups, prompt_mask, self.position_ids, self.cache, input_ids=prompt_ids
        )
        self.logits, self.pre = self.representer.project(hidden, self.head, self.E)
        self.attn = prompt_mask  # the running batch's attention mask over the cache
        self.prompt_pos = prompt_mask.sum(1)  # position id of the first generated token, per row
        self.pos = self.prompt_pos.unsqueeze(1)  # [n, 1] position id of the input fed next
        return self.st

    def cot_step(self, t: int, in_cot: Tensor | slice):
        """The representer's next input for the running rows `in_cot`, recorded in the state."""
        lg = self.logits[in_cot]
        if self.pre is None:
            step = self.representer.step(lg, self.E, self.generator)
        else:
            step = self.representer.step(lg, self.E, self.generator, pre=self.pre[in_cot])
        self.cot_emb = step.embeds.to(self.E.dtype)
        self.st.record_cot(t, self.st.active[in_cot], step, self.representer.entropy(lg), self.cot_emb)
        return step

    def next_inputs(self, t: int, step, in_cot, in_prefix, in_answer) -> tuple[Tensor, Tensor]:
        """Ids [n] and input embeddings [n, d] the running rows feed next: the CoT step's, the forced prefix's
        next token, a sampled (or greedy) answer token, or padding for rows that are done."""
        st = self.st
        if st.all_in_cot:
            return step.ids, self.cot_emb
        next_ids = torch.full((len(st.active),), self.pad, dtype=torch.long, device=self.device)
        if in_cot is not None:
            next_ids[in_cot] = step.ids
        if in_prefix is not None:
            rows = st.active[in_prefix]
            next_ids[in_prefix] = self.prefixes[st.prefix_kind[rows], st.prefix_pos[rows]]
        if in_answer is not None:
            lg, T = self.logits[in_answer], self.cfg.answer_temperature
            if self.answer_greedy:
                tok = lg.argmax(-1)
                tok_logp = categorical_log_prob(lg, tok, T)
            else:
                tok, tok_logp = sample_tempered(lg, T, self.generator)
            next_ids[in_answer] = tok
            st.record_answer(t, st.active[in_answer], tok_logp)
        # Hard tokens (prefix, answer, padding of done rows) are embedded; CoT rows keep their input.
        next_emb = self.embed(next_ids)
        if in_cot is not None:
            next_emb[in_cot] = self.cot_emb
        return next_ids, next_emb

    def end_cots(self, t: int, rows: Tensor, step) -> bool:
        """End the CoT of `rows` (full batch) that hit the stop string, EOS, the length limit or the
        representer's early stop (Soft Thinking's Cold Stop: `stop_patience` confident steps in a row);
        whether any row may have ended."""
        st, tab, tok = self.st, self.tab, step.ids
        at_limit = t + 1 >= self.cfg.max_cot_tokens
        cold = None
        if step.confident is not None:
            st.calm[rows] = torch.where(step.confident, st.calm[rows] + 1, 0)
            cold = st.calm[rows] >= self.representer.stop_patience
            cold = cold if bool(cold.any()) else None
        if not (at_limit or cold is not None or len(tab.may_end[tok].nonzero())):
            return False
        stop = torch.zeros(len(rows), dtype=torch.bool, device=self.device)
        cand = tab.may_stop[tok].nonzero().squeeze(-1)
        if len(cand):
            stop[cand] = self.engine.stops(rows[cand], st.ids, t, tab.stop_window)
        limit = ~stop if at_limit else ~stop & (tok == self.eos)
        if at_limit:
            st.clipped[rows] = limit
        if cold is not None:  # ends like the length limit: the full answer prefix is forced
            cold = cold & ~stop & ~limit
            st.early[rows] = cold
            limit = limit | cold
        st.end_cot(t, rows, stop, limit)
        return True

    def aligned_prefix(self) -> int:
        """Tokens left of the forced prefix when every live running row is at the same point of the same
        one (as when all rows hit the length limit together), else 0."""
        st = self.st
        if st.n_in[PREFIX] == 0 or st.n_in[PREFIX] + st.n_in[DONE] != len(st.active):
            return 0
        rows = st.active[st.rows_in(PREFIX)]
        kind, pos = st.prefix_kind[rows], st.prefix_pos[rows]
        if not (bool((kind == kind[0]).all()) and bool((pos == pos[0]).all())):
            return 0
        return int(self.prefix_len[kind[0]] - pos[0])

    def feed_prefix(self, t: int, k: int) -> int:
        """Feed the last `k` tokens of the forced prefix the live rows share in one forward pass, at columns
        t..t+k-1 (done rows feed padding); return the next column."""
        st, in_prefix = self.st, self.st.rows_in(PREFIX)
        rows = st.active[in_prefix]
        kind, pos = int(st.prefix_kind[rows[0]]), int(st.prefix_pos[rows[0]])
        next_ids = torch.full((len(st.active), k), self.pad, dtype=torch.long, device=self.device)
        next_ids[in_prefix] = self.prefixes[kind, pos : pos + k]
        live = st.live()
        st.ids[st.active, t : t + k] = next_ids
        st.gen_attn[st.active, t : t + k] = live.unsqueeze(1)
        st.advance_prefix(rows, self.prefix_len, k)
        st.recount()
        self.forward(self.embed(next_ids), live)
        return t + k

    def forward(self, next_emb: Tensor, live: Tensor) -> None:
        """Feed the next inputs [n, k, d] (k positions per row); keep the logits at the last one for the rows
        that need them (none while every row is in a forced prefix); drop done rows from the batch once
        enough are done."""
        k = next_emb.shape[1]
        self.attn = torch.cat([self.attn, live.unsqueeze(1).expand(-1, k)], dim=1)
        out = self.decoder(
            inputs_embeds=next_emb,
            attention_mask=self.attn,
            position_ids=self.pos + torch.arange(k, device=self.device),
            cache=self.cache,
            use_cache=True,
        )
        hidden = out.last_hidden_state[:, -1]
        self.logits, self.pre = None, None
        if self.st.n_in[COT]:
            self.logits, self.pre = self.representer.project(hidden, self.head, self.E)
        elif self.st.n_in[ANSWER]:
            self.logits = self.head(hidden)
        self.pos = self.pos + k
        keep = self.st.running_to_keep(self.cfg.compact_fraction)
        if keep is not None:
            self.cache.batch_select_indices(keep)
            self.attn, self.pos = self.attn[keep], self.pos[keep]
            self.logits = self.logits[keep] if self.logits is not None else None
            self.pre = self.pre[keep] if self.pre is not None else None

    def finish(self, prompt_ids: Tensor, prompt_mask: Tensor, seconds: float) -> Rollout:
        """The rollout: prompt and generated columns joined, trimmed to the positions any row used."""
        st, S = self.st, self.st.used_length()
        gen_pos = self.prompt_pos.unsqueeze(1) + torch.arange(S, device=self.device)
        cot_texts, completions = self.engine.texts(st.ids[:, :S], st.cot_mask[:, :S], st.gen_attn[:, :S])
        return Rollout(
            ids=torch.cat([prompt_ids, st.ids[:, :S]], dim=1),
            attention_mask=torch.cat([prompt_mask, st.gen_attn[:, :S]], dim=1),
            position_ids=torch.cat([self.position_ids, gen_pos], dim=1),
            prompt_len=prompt_ids.shape[1],
            cot_mask=st.cot_mask[:, :S],
            answer_mask=st.answer_mask[:, :S],
            fed=st.fed[:, :S] if st.fed is not None else None,
            logp=st.logp[:, :S],
            entropy=st.entropy[:, :S],
            cot_lengths=st.cot_len,
            answer_lengths=st.ans_len,
            clipped=st.clipped,
            cot_texts=cot_texts,
            completions=completions,
            seconds=seconds,
            aux={k: v[:, :S] for k, v in st.aux.items()},
            early_stopped=st.early,
            answer_temperature=self.cfg.answer_temperature,
        )
