"""One call of the rollout engine: the model's parts, the KV cache, the last logits and the decode state,
with one method per phase of a decode step (docs/method.md, "Generation protocol")."""

from __future__ import annotations

import torch
from torch import Tensor
from transformers import PreTrainedModel

from soft_tokens.representers.base import TokenRepresenter
from soft_tokens.representers.sampling import categorical_log_prob, sample_tempered
from soft_tokens.rollout.config import RolloutConfig
from soft_tokens.rollout.decode_state import ANSWER, COT, DONE, PREFIX, DecodeState, TokenTables
from soft_tokens.rollout.decode_step import DecodeStep, supports
from soft_tokens.rollout.kv_cache import preallocated_cache
from soft_tokens.rollout.shared_prompts import prefill, prompt_groups
from soft_tokens.rollout.text import RolloutText


class Decoding:
    """One call of `RolloutEngine.generate`: the model's parts, the KV cache, the last logits and the
    decode state; its methods are the phases of a decode step. It gets the protocol's config, the token
    tables and the tokenizer's text side (stop detection) from the engine, not the engine itself."""

    def __init__(
        self,
        model: PreTrainedModel,
        representer: TokenRepresenter,
        cfg: RolloutConfig,
        tables: TokenTables,
        text: RolloutText,
        answer_greedy: bool,
        generator: torch.Generator | None,
    ) -> None:
        self.cfg, self.model, self.tab, self.text = cfg, model, tables, text
        self.representer, self.answer_greedy, self.generator = representer, answer_greedy, generator
        self.device = model.device
        self.embed = model.get_input_embeddings()
        self.E = self.embed.weight
        # The decoder and the head are called apart so the representer can project the hidden states itself
        # (soft tokens make their mixture in the same pass over E); logprobs.py makes the same split.
        self.decoder, self.head = model.get_decoder(), model.get_output_embeddings()
        direct = self.cfg.direct_decode and supports(self.decoder)
        self.decode_step = DecodeStep(self.decoder) if direct else None
        self.pad, self.eos = text.tokenizer.pad_token_id, text.tokenizer.eos_token_id
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
        else:  # what the representer's own `project` carried for these rows
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
            stop[cand] = self.text.stops(rows[cand], st.ids, t, tab.stop_window)
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
        if k == 1 and self.decode_step is not None:
            hidden = self.decode_step(next_emb, self.attn, self.pos, self.cache)[:, -1]
        else:
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

    def finish(self, prompt_ids: Tensor, prompt_mask: Tensor, seconds: float) -> dict:
        """The rollout's fields: prompt and generated columns joined, trimmed to the positions any row used."""
        st, S = self.st, self.st.used_length()
        gen_pos = self.prompt_pos.unsqueeze(1) + torch.arange(S, device=self.device)
        cot_texts, completions = self.text.texts(st.ids[:, :S], st.cot_mask[:, :S], st.gen_attn[:, :S])
        return dict(
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
