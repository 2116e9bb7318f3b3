"""Out-of-domain evaluation: HellaSwag, ARC, MMLU multiple choice, or another math task (docs/method.md,
"Inference settings and metrics").

Every dataset is mapped to one common form, `ChoiceItem(context, choices, answer)`, by a loader per hub
format (`hellaswag`: ctx/endings/label, `arc`: question/choices.text/answerKey, `mmlu`:
question/choices/answer). A choice is scored by the log-likelihood of its text as a continuation of the
context, `sum_t log p(choice_t | context, choice_<t)`; the prediction is the argmax over choices, and the
per-token NLL of the correct choice measures how much of the base model's language modelling survives RL.

Items come from a hub dataset (`datasets.load_dataset`) or from a local .jsonl/.json/.parquet file whose rows
are in the same hub format, selected by `path`. A math task (e.g. the embedded model's other task) is scored
by greedy accuracy and by the per-token NLL of its reference solution after the prompt: each problem becomes
a one-choice item (`solution_items`), so both kinds share `score_choices`.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from soft_tokens.data.files import BadRow, DataError, is_local_file, read_rows
from soft_tokens.data.types import Example

QA_TEMPLATE = "Question: {question}\nAnswer:"


@dataclass(frozen=True)
class ChoiceItem:
    """One multiple-choice problem: the text the model reads, the candidate continuations, the right index."""

    context: str
    choices: tuple[str, ...]
    answer: int
    id: str = ""

    def __post_init__(self) -> None:
        if not self.choices:
            raise ValueError(f"item {self.id!r} has no choices")
        if not 0 <= self.answer < len(self.choices):
            raise ValueError(
                f"item {self.id!r}: answer index {self.answer} outside 0..{len(self.choices) - 1}"
            )


# ----------------------------------------------------------------------------- hub formats -> ChoiceItem


def _hellaswag_text(text: str) -> str:
    """The cleaning lm-evaluation-harness applies to HellaSwag (WikiHow artefacts such as `[title]`)."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ").strip()


def hellaswag_item(row: Mapping[str, Any], id: str = "") -> ChoiceItem:
    """Rowan/hellaswag: `ctx` (else ctx_a + ctx_b), `endings` (4), `label` ("0".."3"); `activity_label` prefix."""
    ctx = row.get("ctx") or f"{row['ctx_a']} {str(row.get('ctx_b', '')).capitalize()}"
    if row.get("activity_label"):
        ctx = f"{row['activity_label']}: {ctx}"
    label = row["label"]
    if label is None or str(label).strip() == "":
        raise ValueError("hellaswag row without a label (the hub test split is unlabelled: use validation)")
    return ChoiceItem(
        context=_hellaswag_text(ctx),
        choices=tuple(" " + _hellaswag_text(e) for e in row["endings"]),
        answer=int(label),
        id=str(row.get("ind", id)),
    )


def arc_item(row: Mapping[str, Any], id: str = "") -> ChoiceItem:
    """allenai/ai2_arc: `question`, `choices` {text: [...], label: ["A", ...] or ["1", ...]}, `answerKey`."""
    choices = row["choices"]
    labels = [str(x) for x in choices["label"]]
    key = str(row["answerKey"]).strip()
    if key not in labels:
        raise ValueError(f"answerKey {key!r} is not one of the choice labels {labels}")
    return ChoiceItem(
        context=QA_TEMPLATE.format(question=row["question"].strip()),
        choices=tuple(" " + str(t).strip() for t in choices["text"]),
        answer=labels.index(key),
        id=str(row.get("id", id)),
    )


def mmlu_item(row: Mapping[str, Any], id: str = "") -> ChoiceItem:
    """cais/mmlu: `question`, `choices` (4 texts), `answer` (index 0..3, or a letter A..D)."""
    answer = row["answer"]
    if isinstance(answer, str) and not answer.strip().isdigit():
        answer = "ABCDEFGHIJ".index(answer.strip().upper())
    return ChoiceItem(
        context=QA_TEMPLATE.format(question=row["question"].strip()),
        choices=tuple(" " + str(t).strip() for t in row["choices"]),
        answer=int(answer),
        id=str(row.get("id", f"{row.get('subject', 'mmlu')}-{id}")),
    )


FORMATS: dict[str, Callable[[Mapping[str, Any], str], ChoiceItem]] = {
    "hellaswag": hellaswag_item,
    "arc": arc_item,
    "mmlu": mmlu_item,
}


def _resolve_local(path: str) -> Path | None:
    """A local data file for `path` (relative to the working directory, then PROJECT_ROOT), else None."""
    if not is_local_file(path):
        return None
    p = Path(path)
    for base in (Path.cwd(), Path(os.environ.get("PROJECT_ROOT", "."))):
        candidate = p if p.is_absolute() else base / p
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"multiple-choice data file not found: {path}")


def load_choice_items(
    format: str,
    path: str,
    name: str | None = None,
    split: str = "test",
    limit: int | None = None,
    seed: int = 0,
    revision: str | None = None,
) -> list[ChoiceItem]:
    """Items of a hub dataset (`path` a hub name, `name` its config) or of a local file (`path` a file).

    `limit` keeps a seeded random subset of that many rows (in their original order), since hub splits are
    often sorted (MMLU by subject).
    """
    if format not in FORMATS:
        raise ValueError(f"unknown multiple-choice format {format!r}; expected one of {sorted(FORMATS)}")
    to_item = FORMATS[format]
    local = _resolve_local(path)
    positions: list[str] | None = None
    if local is not None:
        pairs = read_rows(local)
        rows: Any = [row for _, row in pairs]
        positions, where = [pos for pos, _ in pairs], str(local)
    else:
        import datasets

        kwargs = {"revision": revision} if revision else {}
        rows = datasets.load_dataset(path, name, split=split, **kwargs)
        where = f"{path} ({name or 'default'}, {split})"
    indices = list(range(len(rows)))
    if limit is not None and limit < len(indices):
        indices = sorted(random.Random(seed).sample(indices, limit))
    items = []
    for i in indices:
        at = f"{where}, {positions[i] if positions else f'row {i}'}"
        if isinstance(rows[i], BadRow):
            raise DataError(f"{at}: {rows[i]}")
        try:
            items.append(to_item(rows[i], str(i)))
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{at}: cannot read it as {format}: {err!r}") from None
    return items


def solution_items(examples: list[Example], prompt: Callable[[str], str]) -> list[ChoiceItem]:
    """Each problem as a one-choice item: its prompt as context, `" " + reference solution` as the choice."""
    items = []
    for ex in examples:
        if not ex.solution:
            where = ex.origin or ex.id or repr(ex.question[:60])
            raise ValueError(
                f"out-of-domain task problem {where} has no reference solution to score the NLL of"
            )
        items.append(
            ChoiceItem(context=prompt(ex.question), choices=(" " + ex.solution,), answer=0, id=ex.id)
        )
    return items


# ----------------------------------------------------------------------------- scoring


@dataclass
class ChoiceScores:
    """Summed continuation log-probabilities and token counts of every choice of every item."""

    logprobs: list[list[float]]
    num_tokens: list[list[int]]
    answers: list[int]

    @property
    def predictions(self) -> list[int]:
        """argmax over choices of the summed log-probability (ties: the first)."""
        return [max(range(len(lp)), key=lp.__getitem__) for lp in self.logprobs]

    @property
    def correct(self) -> Tensor:
        """[N] bool: the prediction is the right answer."""
        return torch.tensor([p == a for p, a in zip(self.predictions, self.answers)], dtype=torch.bool)

    @property
    def answer_nll(self) -> Tensor:
        """[N] summed NLL of the correct choice (float64)."""
        return torch.tensor([-lp[a] for lp, a in zip(self.logprobs, self.answers)], dtype=torch.float64)

    @property
    def answer_tokens(self) -> Tensor:
        """[N] number of tokens of the correct choice."""
        return torch.tensor([n[a] for n, a in zip(self.num_tokens, self.answers)], dtype=torch.float64)

    @property
    def accuracy(self) -> float:
        return float(self.correct.float().mean()) if self.answers else 0.0

    @property
    def mean_nll(self) -> float:
        """Per-token NLL of the correct choices: summed NLL / summed tokens."""
        return float(self.answer_nll.sum() / self.answer_tokens.sum().clamp(min=1)) if self.answers else 0.0


def _encode(tokenizer: PreTrainedTokenizerBase, context: str, continuation: str, max_length: int | None):
    ctx = tokenizer(context)["input_ids"]  # with the special tokens the tokenizer adds (e.g. BOS)
    cont = tokenizer(continuation, add_special_tokens=False)["input_ids"]
    if not cont:
        raise ValueError(f"choice {continuation!r} encodes to no tokens")
    if not ctx:
        ctx = [tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id]
    if max_length is not None and len(ctx) + len(cont) > max_length:
        ctx = ctx[-max(1, max_length - len(cont)) :]  # keep the end of the context
        cont = cont[: max_length - len(ctx)]
    return ctx, cont


@torch.no_grad()
def score_choices(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    items: list[ChoiceItem],
    batch_size: int = 16,
    max_length: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> ChoiceScores:
    """Log-likelihood of every choice of every item as a continuation of its context.

    (item, choice) sequences are sorted by length and run `batch_size` at a time, left-padded with explicit
    position ids; only the last (longest continuation + 1) positions are projected to the vocabulary, so
    the float32 logits never exceed [batch_size, continuation length, V]. `progress(n)` is called with the
    number of sequences done after each batch.
    """
    was_training = model.training
    model.eval()
    device = model.device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    if max_length is None:
        max_length = getattr(model.config, "max_position_embeddings", None)
    seqs = []  # (item index, choice index, context ids, continuation ids)
    for i, item in enumerate(items):
        for j, choice in enumerate(item.choices):
            seqs.append((i, j, *_encode(tokenizer, item.context, choice, max_length)))
    order = sorted(range(len(seqs)), key=lambda s: -(len(seqs[s][2]) + len(seqs[s][3])))
    logprobs = [[0.0] * len(it.choices) for it in items]
    counts = [[0] * len(it.choices) for it in items]
    for start in range(0, len(order), batch_size):
        batch = [seqs[s] for s in order[start : start + batch_size]]
        T = max(len(c) + len(k) for _, _, c, k in batch)
        K = max(len(k) for _, _, _, k in batch)
        ids = torch.full((len(batch), T), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), T), dtype=torch.long)
        cont_mask = torch.zeros((len(batch), K), dtype=torch.bool)
        for r, (_, _, c, k) in enumerate(batch):
            ids[r, T - len(c) - len(k) :] = torch.tensor(c + k)
            mask[r, T - len(c) - len(k) :] = 1
            cont_mask[r, K - len(k) :] = True
        ids, mask, cont_mask = ids.to(device), mask.to(device), cont_mask.to(device)
        position_ids = (mask.cumsum(1) - 1).clamp(min=0)
        logits = _last_logits(model, ids, mask, position_ids, K + 1)[
            :, :-1
        ]  # [b, K, V] predicting the last K
        targets = ids[:, T - K :]
        lp = torch.log_softmax(logits.float(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        sums = (lp * cont_mask).sum(1).tolist()
        for r, (i, j, _, k) in enumerate(batch):
            logprobs[i][j] = sums[r]
            counts[i][j] = len(k)
        if progress is not None:
            progress(len(batch))
    model.train(was_training)
    return ChoiceScores(logprobs=logprobs, num_tokens=counts, answers=[it.answer for it in items])


def _last_logits(model, ids: Tensor, mask: Tensor, position_ids: Tensor, keep: int) -> Tensor:
    """Logits [b, keep, V] of the last `keep` positions (the full projection only if the model cannot skip it)."""
    try:
        out = model(input_ids=ids, attention_mask=mask, position_ids=position_ids, logits_to_keep=keep)
    except TypeError:  # a model without `logits_to_keep`
        out = model(input_ids=ids, attention_mask=mask, position_ids=position_ids)
    return out.logits[:, -keep:]
