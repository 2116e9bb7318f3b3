"""The per-row state of a batch being rolled out: where each row is in the generation protocol, what it fed.

Every row moves through the phases CoT -> forced prefix -> answer -> done, all rows advancing one
position per forward pass (docs/method.md, "Generation protocol"). `DecodeState` holds the rollout's buffers
(indexed by row of the full batch and generated position) and the running batch (the rows still in the KV
cache); its methods are the phase transitions. `TokenTables` are the per-vocabulary facts the transitions
read: brace counts and which tokens may end a CoT.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

COT, PREFIX, ANSWER, DONE = 0, 1, 2, 3


class TokenTables:
    """Per-vocabulary lookup tables used while decoding: brace counts and stop-string candidates."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, vocab_size: int, cfg) -> None:
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

    def prefix_table(self, pad: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """The two forced prefixes as rows of a padded id table [2, L] (0: early stop, 1: length limit)
        and their lengths [2]."""
        prefixes = [self.early_prefix, self.limit_prefix]
        table = torch.full((2, max(map(len, prefixes))), pad, dtype=torch.long, device=device)
        for k, p in enumerate(prefixes):
            table[k, : len(p)] = torch.tensor(p, dtype=torch.long, device=device)
        return table, torch.tensor([len(p) for p in prefixes], device=device)


def _zeros(N: int, dtype=torch.long, device=None) -> Tensor:
    return torch.zeros(N, dtype=dtype, device=device)


@dataclass
class DecodeState:
    """Buffers [N, S] of a rollout in progress, each row's phase and counters [N], and the running batch."""

    ids: Tensor  # [N, S] fed token ids (CoT sample or shadow, prefix, answer), pad after a row ends
    gen_attn: Tensor  # [N, S] 1 where a row fed a position
    cot_mask: Tensor  # [N, S] bool
    answer_mask: Tensor  # [N, S] bool
    logp: Tensor  # [N, S] decode-time log-probs of CoT and answer steps
    entropy: Tensor  # [N, S] next-token entropy at CoT steps
    fed: Tensor | None  # [N, S, d] fed CoT inputs of continuous representers
    phase: Tensor  # [N] COT, PREFIX, ANSWER or DONE
    cot_len: Tensor  # [N] written when a row leaves the CoT
    ans_len: Tensor  # [N]
    depth: Tensor  # [N] open braces of the answer (the forced prefix opened one)
    clipped: Tensor  # [N] bool: the CoT hit max_cot_tokens
    early: Tensor  # [N] bool: the representer's entropy stop ended the CoT
    calm: Tensor  # [N] consecutive confident CoT steps
    prefix_kind: Tensor  # [N] 0: early-stop prefix, 1: length-limit prefix
    prefix_pos: Tensor  # [N] next prefix token to feed
    active: Tensor  # [n] rows of the full batch in the running batch (and the KV cache)
    n_in: list[int]  # running rows per phase
    aux: dict[str, Tensor] = field(default_factory=dict)  # the representer's per-step extras [N, S, ...]

    @classmethod
    def start(cls, N: int, S: int, pad: int, fed_dim: int | None, dtype, device, no_cot: bool) -> DecodeState:
        """Empty buffers; every row starts in the CoT (or, with no CoT at all, in the length-limit prefix)."""
        first = PREFIX if no_cot else COT
        return cls(
            ids=torch.full((N, S), pad, dtype=torch.long, device=device),
            gen_attn=torch.zeros((N, S), dtype=torch.long, device=device),
            cot_mask=torch.zeros((N, S), dtype=torch.bool, device=device),
            answer_mask=torch.zeros((N, S), dtype=torch.bool, device=device),
            logp=torch.zeros((N, S), device=device),
            entropy=torch.zeros((N, S), device=device),
            fed=torch.zeros((N, S, fed_dim), dtype=dtype, device=device) if fed_dim else None,
            phase=torch.full((N,), first, device=device),
            cot_len=_zeros(N, device=device),
            ans_len=_zeros(N, device=device),
            depth=_zeros(N, device=device),
            clipped=_zeros(N, torch.bool, device),
            early=_zeros(N, torch.bool, device),
            calm=_zeros(N, device=device),
            prefix_kind=torch.full((N,), int(no_cot), dtype=torch.long, device=device),
            prefix_pos=_zeros(N, device=device),
            active=torch.arange(N, device=device),
            n_in=[0, N, 0, 0] if no_cot else [N, 0, 0, 0],
        )

    # ----- the running batch by phase -----
    def rows_in(self, phase: int) -> Tensor | slice | None:
        """The running rows in `phase`: None if none, a slice if all (indexing with it gives a view, not a
        copy), else their positions in the running batch."""
        n = len(self.active)
        if self.n_in[phase] == 0:
            return None
        if self.n_in[phase] == n:
            return slice(None)
        return (self.phase[self.active] == phase).nonzero().squeeze(-1)

    @property
    def all_in_cot(self) -> bool:
        return self.n_in[COT] == len(self.active)

    @property
    def finished(self) -> bool:
        return self.n_in[DONE] == len(self.active)

    def live(self) -> Tensor:
        """[n] 1 for running rows that are not done (the attention mask of the position they feed)."""
        if self.n_in[DONE] == 0:
            return torch.ones(len(self.active), dtype=torch.long, device=self.active.device)
        return (self.phase[self.active] != DONE).long()

    def recount(self) -> None:
        """Read back how many running rows are in each phase (after a step in which some may have moved)."""
        self.n_in = torch.bincount(self.phase[self.active], minlength=4).tolist()

    # ----- recording one step -----
    def record_cot(self, t: int, rows: Tensor, step, entropy: Tensor, emb: Tensor) -> None:
        """Store a CoT step of the full-batch `rows`: its log-prob, entropy, fed input and extras."""
        self.logp[rows, t] = step.logp.float()
        self.entropy[rows, t] = entropy
        self.cot_mask[rows, t] = True
        if self.fed is not None:
            self.fed[rows, t] = emb
        N, S = self.ids.shape
        for key, val in (step.aux or {}).items():
            if key not in self.aux:
                self.aux[key] = torch.zeros((N, S, *val.shape[1:]), dtype=val.dtype, device=val.device)
            self.aux[key][rows, t] = val

    def record_answer(self, t: int, rows: Tensor, logp: Tensor) -> None:
        self.logp[rows, t] = logp
        self.answer_mask[rows, t] = True

    def record_fed(self, t: int, next_ids: Tensor, live: Tensor) -> None:
        self.ids[self.active, t] = next_ids
        self.gen_attn[self.active, t] = live

    # ----- transitions -----
    def end_cot(self, t: int, rows: Tensor, stop: Tensor, limit: Tensor) -> None:
        """`rows` (full batch) whose CoT ended at step t: by the stop string (early-stop prefix) or `limit`
        (length limit, EOS or early stop: the length-limit prefix)."""
        ended = stop | limit
        left = rows[ended]
        self.phase[left] = PREFIX
        self.cot_len[left] = t + 1
        self.prefix_kind[left] = limit[ended].long()

    def advance_prefix(self, rows: Tensor, prefix_len: Tensor, k: int = 1) -> None:
        """`k` forced-prefix tokens fed by each of `rows`; those at its end go on to the answer."""
        self.prefix_pos[rows] += k
        self.phase[rows[self.prefix_pos[rows] >= prefix_len[self.prefix_kind[rows]]]] = ANSWER

    def advance_answer(
        self, rows: Tensor, tok: Tensor, tables: TokenTables, eos: int | None, limit: int
    ) -> None:
        """`rows` fed answer tokens `tok`: the answer ends at the brace closing the box, EOS or `limit`."""
        self.ans_len[rows] += 1
        self.depth[rows] += tables.opens[tok] - tables.closes[tok]
        done = (self.depth[rows] < 0) | (tok == eos) | (self.ans_len[rows] >= limit)
        self.phase[rows[done]] = DONE

    def running_to_keep(self, fraction: float) -> Tensor | None:
        """Positions in the running batch of the rows not done, once done rows are `fraction` of it."""
        n_done = self.n_in[DONE]
        if not n_done or n_done / len(self.active) < fraction:
            return None
        keep = (self.phase[self.active] != DONE).nonzero().squeeze(-1)
        self.active = self.active[keep]
        self.n_in[DONE] = 0
        return keep

    def used_length(self) -> int:
        """Generated positions any row fed."""
        if not bool(self.gen_attn.any()):
            return 0
        return int(self.gen_attn.sum(0).nonzero().max()) + 1
