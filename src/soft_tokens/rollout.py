"""Batched, KV-cached generation of a chain of thought and an answer (docs/method.md, "Generation protocol").

Every row runs its own little state machine, all rows advancing one position per forward pass:

    CoT (the representer picks each input) -> forced prefix (hard tokens) -> answer (hard tokens) -> done

so each row's sequence is contiguous, `[left padding; prompt; CoT; prefix; answer; right padding]`, and the
teacher-forced pass can replay it with the same attention mask and position ids. The CoT ends when the
(shadow) text ends with the stop string, forcing " \\boxed{", or at `max_cot_tokens`, forcing
" The final answer is: \\boxed{" (as does a representer's early stop, Soft Thinking's Cold Stop). The
answer ends at the brace closing the box, at EOS, or after `answer_max_tokens`. Rows that are done are dropped from the batch (and from the KV cache) once they make
up a large enough share of it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from soft_tokens.kv_cache import preallocated_cache
from soft_tokens.representers.base import TokenRepresenter, categorical_log_prob, sample_tempered
from soft_tokens.shared_prompts import prefill, prompt_groups

COT, PREFIX, ANSWER, DONE = 0, 1, 2, 3


@dataclass
class RolloutConfig:
    """Lengths, stop string and forced prefixes of the generation protocol."""

    max_cot_tokens: int = 128
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


class TokenTables:
    """Per-vocabulary lookup tables used while decoding: brace counts and stop-string candidates."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, vocab_size: int, cfg: RolloutConfig) -> None:
        texts = [tokenizer.decode([i]) if i < len(tokenizer) else "" for i in range(vocab_size)]
        self.opens = torch.tensor([t.count("{") for t in texts])
        self.closes = torch.tensor([t.count("}") for t in texts])
        last = cfg.stop_string.rstrip()[-1]
        # A token can complete the stop string only if its text (right-stripped) ends with its last char.
        self.may_stop = torch.tensor([t.rstrip().endswith(last) for t in texts])
        # Tokens that may end a CoT row before its length limit: stop-string candidates and EOS.
        self.may_end = self.may_stop.clone()
        if tokenizer.eos_token_id is not None and tokenizer.eos_token_id < vocab_size:
            self.may_end[tokenizer.eos_token_id] = True
        self.stop_window = len(tokenizer.encode(cfg.stop_string, add_special_tokens=False)) + 4
        self.early_prefix = tokenizer.encode(cfg.early_stop_prefix, add_special_tokens=False)
        self.limit_prefix = tokenizer.encode(cfg.limit_prefix, add_special_tokens=False)

    def to(self, device: torch.device) -> TokenTables:
        for name in ("opens", "closes", "may_stop", "may_end"):
            setattr(self, name, getattr(self, name).to(device))
        return self


def _rows_in(st: Tensor | None, s: int, count: int, n: int) -> Tensor | slice | None:
    """The running rows in state `s`, given how many of the `n` there are: None if none, all rows as a slice
    (indexing with it gives a view, not a copy), else their indices in `st`, the running rows' states."""
    if count == 0:
        return None
    if count == n:
        return slice(None)
    return (st == s).nonzero().squeeze(-1)


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
        key = (vocab_size, str(device))
        if key not in self._tables:
            self._tables[key] = TokenTables(self.tokenizer, vocab_size, self.cfg).to(device)
        return self._tables[key]

    def _stops(self, rows: Tensor, ids_buf: Tensor, cot_len: int, t: int, w: int) -> Tensor:
        """Which `rows` (all `cot_len` tokens into their CoT) have a CoT whose last `w` tokens decode to
        text ending with the stop string."""
        out = torch.zeros(len(rows), dtype=torch.bool)
        tails = ids_buf[rows, max(0, t + 1 - w) : t + 1].tolist()
        for k, tail in enumerate(tails):
            tail = tail[-min(w, cot_len) :]
            out[k] = self.tokenizer.decode(tail).rstrip().endswith(self.cfg.stop_string)
        return out.to(rows.device)

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
        cfg = self.cfg
        device = model.device
        check_plain_head(model)
        embed = model.get_input_embeddings()
        E = embed.weight
        # The decoder and the head are called apart so the representer can project the hidden states itself
        # (soft tokens make their mixture in the same pass over E); logprobs.py makes the same split.
        decoder, head = model.get_decoder(), model.get_output_embeddings()
        vocab = E.shape[0]
        tab = self.tables(vocab, device)
        representer.prepare(E)
        pad, eos = self.tokenizer.pad_token_id, self.tokenizer.eos_token_id

        prompt_ids, prompt_mask = encode_prompts(self.tokenizer, prompts, device)
        N, P = prompt_ids.shape
        S = cfg.max_cot_tokens + max(len(tab.early_prefix), len(tab.limit_prefix)) + cfg.answer_max_tokens
        ids = torch.full((N, S), pad, dtype=torch.long, device=device)
        gen_attn = torch.zeros((N, S), dtype=torch.long, device=device)
        cot_mask = torch.zeros((N, S), dtype=torch.bool, device=device)
        answer_mask = torch.zeros((N, S), dtype=torch.bool, device=device)
        logp = torch.zeros((N, S), device=device)
        entropy = torch.zeros((N, S), device=device)
        fed = (
            torch.zeros((N, S, E.shape[1]), dtype=E.dtype, device=device) if representer.continuous else None
        )
        aux: dict[str, Tensor] = {}  # allocated at the first step that returns each entry
        calm = torch.zeros(N, dtype=torch.long, device=device)  # consecutive confident CoT steps
        early = torch.zeros(N, dtype=torch.bool, device=device)

        # max_cot_tokens = 0: no CoT at all, every row starts with the length limit's forced prefix.
        no_cot = cfg.max_cot_tokens == 0
        state = torch.full((N,), PREFIX if no_cot else COT, device=device)
        cot_len = torch.zeros(N, dtype=torch.long, device=device)
        ans_len = torch.zeros(N, dtype=torch.long, device=device)
        depth = torch.zeros(N, dtype=torch.long, device=device)
        clipped = torch.zeros(N, dtype=torch.bool, device=device)
        prefix_pos = torch.zeros(N, dtype=torch.long, device=device)
        prefixes = [tab.early_prefix, tab.limit_prefix]
        prefix_table = torch.full((2, max(map(len, prefixes))), pad, dtype=torch.long, device=device)
        for k, p in enumerate(prefixes):
            prefix_table[k, : len(p)] = torch.tensor(p, device=device)
        prefix_len = torch.tensor([len(p) for p in prefixes], device=device)
        prefix_kind = torch.full((N,), int(no_cot), dtype=torch.long, device=device)
        prompt_pos = prompt_mask.sum(1)  # position id of the first generated token, per row

        cache = preallocated_cache(model.config, P + S)
        active = torch.arange(N, device=device)  # rows of the full batch that are in the running batch
        position_ids = (prompt_mask.cumsum(1) - 1).clamp(min=0)
        groups = prompt_groups(prompt_ids, prompt_mask)  # the G samples of a prompt share its prefill
        hidden = prefill(decoder, groups, prompt_mask, position_ids, cache, input_ids=prompt_ids)
        logits, pre = representer.project(hidden, head, E)
        attn = prompt_mask  # running batch's attention mask over the cache
        pos = prompt_pos.unsqueeze(1)  # [n, 1] position id of the input fed next, per running row
        ones = torch.ones(N, dtype=torch.long, device=device)
        # Every row starts in the CoT at step 0 and leaves it for good, so a row in the CoT at step t is t + 1
        # tokens into it: CoT lengths are only written when rows leave. `n_in` counts the running rows in each
        # state; it is read back from the device only after a step in which some row may have changed state,
        # and a phase all running rows are in is handled with slices (views) rather than gathers.
        n_in = [0, N, 0, 0] if no_cot else [N, 0, 0, 0]
        for t in range(S):
            n = len(active)
            st = state[active] if max(n_in) != n else None  # needed only when the rows are in several states
            in_cot = _rows_in(st, COT, n_in[COT], n)
            in_prefix = _rows_in(st, PREFIX, n_in[PREFIX], n)
            in_answer = _rows_in(st, ANSWER, n_in[ANSWER], n)

            if in_cot is not None:
                cot_rows = active[in_cot]
                lg = logits[in_cot]
                if pre is None:
                    step = representer.step(lg, E, generator)
                else:
                    step = representer.step(lg, E, generator, pre=pre[in_cot])
                cot_emb = step.embeds.to(E.dtype)
                logp[cot_rows, t] = step.logp.float()
                entropy[cot_rows, t] = representer.entropy(lg)
                cot_mask[cot_rows, t] = True
                if fed is not None:
                    fed[cot_rows, t] = cot_emb
                for key, val in (step.aux or {}).items():
                    if key not in aux:
                        aux[key] = torch.zeros((N, S, *val.shape[1:]), dtype=val.dtype, device=device)
                    aux[key][cot_rows, t] = val
            if n_in[COT] == n:
                next_ids, next_emb = step.ids, cot_emb
            else:
                next_ids = torch.full((n,), pad, dtype=torch.long, device=device)
                if in_cot is not None:
                    next_ids[in_cot] = step.ids
                if in_prefix is not None:
                    rows = active[in_prefix]
                    next_ids[in_prefix] = prefix_table[prefix_kind[rows], prefix_pos[rows]]
                if in_answer is not None:
                    rows = active[in_answer]
                    lg = logits[in_answer]
                    if answer_greedy:
                        tok = lg.argmax(-1)
                        tok_logp = categorical_log_prob(lg, tok, cfg.answer_temperature)
                    else:
                        tok, tok_logp = sample_tempered(lg, cfg.answer_temperature, generator)
                    next_ids[in_answer] = tok
                    logp[rows, t] = tok_logp
                    answer_mask[rows, t] = True
                # Hard tokens (prefix, answer, padding of done rows) are embedded; CoT rows keep their input.
                next_emb = embed(next_ids)
                if in_cot is not None:
                    next_emb[in_cot] = cot_emb
            live = (st != DONE).long() if n_in[DONE] else ones[:n]
            ids[active, t] = next_ids
            gen_attn[active, t] = live

            # Transitions. CoT: stop string on the (shadow) text, EOS, or the length limit.
            changed = in_prefix is not None or in_answer is not None
            if in_cot is not None:
                rows = cot_rows
                tok = step.ids
                at_limit = t + 1 >= cfg.max_cot_tokens
                cold = None
                # The representer's early stop (Soft Thinking's Cold Stop): `stop_patience` confident steps in a row.
                if step.confident is not None:
                    calm[rows] = torch.where(step.confident, calm[rows] + 1, 0)
                    cold = calm[rows] >= representer.stop_patience
                    cold = cold if bool(cold.any()) else None
                if at_limit or cold is not None or len(tab.may_end[tok].nonzero()):
                    stop = torch.zeros(len(rows), dtype=torch.bool, device=device)
                    cand = tab.may_stop[tok].nonzero().squeeze(-1)
                    if len(cand):
                        stop[cand] = self._stops(rows[cand], ids, t + 1, t, tab.stop_window)
                    limit = ~stop if at_limit else ~stop & (tok == eos)
                    if at_limit:
                        clipped[rows] = limit
                    if cold is not None:  # ends like the length limit: the full answer prefix is forced
                        cold = cold & ~stop & ~limit
                        early[rows] = cold
                        limit = limit | cold
                    ended = stop | limit
                    left = rows[ended]
                    state[left] = PREFIX
                    cot_len[left] = t + 1
                    prefix_kind[left] = limit[ended].long()
                    changed = True
            if in_prefix is not None:
                rows = active[in_prefix]
                prefix_pos[rows] += 1
                state[rows[prefix_pos[rows] >= prefix_len[prefix_kind[rows]]]] = ANSWER
            if in_answer is not None:
                rows = active[in_answer]
                tok = next_ids[in_answer]
                ans_len[rows] += 1
                depth[rows] += tab.opens[tok] - tab.closes[tok]
                # The forced prefix opened the box: the answer ends at the first brace that closes it.
                done = (depth[rows] < 0) | (tok == eos) | (ans_len[rows] >= cfg.answer_max_tokens)
                state[rows[done]] = DONE

            if changed:  # rows that left the running batch are all done
                n_in = torch.bincount(state[active], minlength=4).tolist()
            if n_in[DONE] == n:
                break
            attn = torch.cat([attn, live.unsqueeze(1)], dim=1)
            out = decoder(
                inputs_embeds=next_emb.unsqueeze(1),
                attention_mask=attn,
                position_ids=pos,
                cache=cache,
                use_cache=True,
            )
            hidden = out.last_hidden_state[:, -1]
            logits, pre = representer.project(hidden, head, E) if n_in[COT] else (head(hidden), None)
            pos = pos + 1
            # Drop rows that are done from the running batch (and its KV cache) when enough of them are.
            if n_in[DONE] and n_in[DONE] / n >= cfg.compact_fraction:
                idx = (state[active] != DONE).nonzero().squeeze(-1)
                cache.batch_select_indices(idx)
                active, attn, logits, pos = active[idx], attn[idx], logits[idx], pos[idx]
                pre = pre[idx] if pre is not None else None
                n_in[DONE] = 0

        S_used = int(gen_attn.sum(0).nonzero().max()) + 1 if bool(gen_attn.any()) else 0
        ids_all = torch.cat([prompt_ids, ids[:, :S_used]], dim=1)
        attn_all = torch.cat([prompt_mask, gen_attn[:, :S_used]], dim=1)
        gen_pos = prompt_pos.unsqueeze(1) + torch.arange(S_used, device=device)
        pos_all = torch.cat([position_ids, gen_pos], dim=1)
        cot_texts, completions = self._decode(ids[:, :S_used], cot_mask[:, :S_used], gen_attn[:, :S_used])
        return Rollout(
            ids=ids_all,
            attention_mask=attn_all,
            position_ids=pos_all,
            prompt_len=P,
            cot_mask=cot_mask[:, :S_used],
            answer_mask=answer_mask[:, :S_used],
            fed=fed[:, :S_used] if fed is not None else None,
            logp=logp[:, :S_used],
            entropy=entropy[:, :S_used],
            cot_lengths=cot_len,
            answer_lengths=ans_len,
            clipped=clipped,
            cot_texts=cot_texts,
            completions=completions,
            seconds=time.perf_counter() - start,
            aux={k: v[:, :S_used] for k, v in aux.items()},
            early_stopped=early,
        )

    def _decode(self, ids: Tensor, cot_mask: Tensor, attn: Tensor) -> tuple[list[str], list[str]]:
        """CoT text (shadow tokens for continuous CoTs) and the prefix + answer text of each row."""
        cot, rest = [], []
        for row_ids, row_cot, row_attn in zip(ids.tolist(), cot_mask.tolist(), attn.tolist()):
            cot.append(self.tokenizer.decode([i for i, c in zip(row_ids, row_cot) if c]))
            tail = [i for i, c, a in zip(row_ids, row_cot, row_attn) if a and not c]
            rest.append(self.tokenizer.decode(tail, skip_special_tokens=True))
        return cot, rest
