"""Inference settings and solving a list of problems under one: the shared core of validation and evaluate.py.

An inference setting is a way to decode the CoT (a representer, greedy or sampled), how many samples per
problem, and the k of the pass@k it reports (docs/method.md, "Inference settings and metrics").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from transformers import PreTrainedModel

from soft_tokens.configured import instantiate
from soft_tokens.data.types import Example
from soft_tokens.eval.metrics import default_k_values
from soft_tokens.representers.base import TokenRepresenter
from soft_tokens.rollout import RolloutEngine


@dataclass
class InferenceSetting:
    """A named way to decode the CoT (a representer, greedy or sampled) and how many samples per problem."""

    name: str
    representer: TokenRepresenter
    num_samples: int = 1


@dataclass
class EvalSetting:
    """An inference setting to run, with the k of its pass@k.

    `accuracy_key`, used by the math-eval callback, logs pass@1 under that metric name instead.
    """

    setting: InferenceSetting
    k_values: list[int]
    accuracy_key: str | None = None

    @property
    def name(self) -> str:
        return self.setting.name

    @property
    def greedy(self) -> bool:
        return bool(self.setting.representer.greedy)


def build_setting(name: str, spec: Any) -> EvalSetting:
    """An EvalSetting from a representer, or from {representer, num_samples, k_values} (configs or objects).

    k_values defaults to 1, the powers of two below num_samples, and num_samples.
    """
    if isinstance(spec, TokenRepresenter):
        return EvalSetting(InferenceSetting(name, spec, 1), [1])
    if not isinstance(spec, Mapping) or "representer" not in spec:
        raise TypeError(
            f"inference setting {name!r}: expected a representer or {{representer, num_samples}}, got {spec!r:.200}"
        )
    rep = spec["representer"]
    if not isinstance(rep, TokenRepresenter):
        rep = instantiate(rep)
    n = 1 if spec.get("num_samples") is None else int(spec["num_samples"])
    if n < 1:
        raise ValueError(f"inference setting {name!r}: num_samples={n} must be at least 1")
    ks = sorted({int(k) for k in (spec.get("k_values") or default_k_values(n))})
    if ks[0] < 1 or ks[-1] > n:
        raise ValueError(f"inference setting {name!r}: k_values {ks} must lie in 1..num_samples={n}")
    return EvalSetting(InferenceSetting(name, rep, n), ks)


def build_settings(specs: Mapping[str, Any], only: Sequence[str] | None = None) -> list[EvalSetting]:
    """The settings of a config mapping (name -> spec), in order, keeping `only` those names if given (a
    single name is one name, not its characters)."""
    names = list(specs)
    only = [only] if isinstance(only, str) else only
    if only:
        unknown = [n for n in only if n not in specs]
        if unknown:
            raise ValueError(f"unknown inference settings {unknown}; configured: {names}")
        names = [n for n in names if n in set(only)]
    return [build_setting(str(n), specs[n]) for n in names if specs[n] is not None]


@dataclass
class Solutions:
    """Outcome of solving n problems with k samples each."""

    correct: Tensor  # [n, k] bool
    rewards: Tensor  # [n, k]
    completions: list[list[str]] = field(default_factory=list)
    cot_texts: list[list[str]] = field(default_factory=list)
    entropy_sum: Tensor | None = None  # [L] summed CoT entropy by position
    entropy_count: Tensor | None = None  # [L] number of rows reaching each position
    cot_lengths: Tensor | None = None  # [n, k]

    def entropy_profile(self) -> Tensor:
        """Mean CoT entropy by position [L] (nan where no row reached the position)."""
        return self.entropy_sum / self.entropy_count.clamp(min=1) + torch.where(
            self.entropy_count > 0, 0.0, torch.nan
        )


def solve(
    model: PreTrainedModel,
    engine: RolloutEngine,
    prompt: Callable[[str], str],
    examples: list[Example],
    setting: InferenceSetting,
    score: Callable[[list[str], list[str]], tuple[Tensor, Tensor]],
    batch_size: int = 32,
    generator: torch.Generator | None = None,
    progress: Callable[[int], None] | None = None,
) -> Solutions:
    """Roll out every problem `setting.num_samples` times (answers greedy) and score the completions.

    `score(completions, golds)` returns (rewards, correct) tensors. A batch holds whole sample groups when
    one fits in `batch_size` rows; larger groups are split, so no forward pass has more than `batch_size`
    rows (at least one).
    """
    was_training = model.training
    model.eval()
    k = setting.num_samples
    rows = [ex for ex in examples for _ in range(k)]  # row r samples problem r // k
    step = batch_rows(batch_size, k)
    rewards, correct, completions, cots, lengths = [], [], [], [], []
    L = engine.cfg.max_cot_tokens
    ent_sum, ent_count = torch.zeros(L), torch.zeros(L)
    for start in range(0, len(rows), step):
        chunk = rows[start : start + step]
        ro = engine.generate(
            model,
            [prompt(ex.question) for ex in chunk],
            setting.representer,
            answer_greedy=True,
            generator=generator,
        )
        r, c = score(ro.completions, [ex.answer for ex in chunk])
        rewards.append(r.reshape(-1))
        correct.append(c.reshape(-1))
        completions += ro.completions
        cots += ro.cot_texts
        lengths.append(ro.cot_lengths.cpu().reshape(-1))
        ent = (ro.entropy * ro.cot_mask).sum(0).cpu()[:L]
        ent_sum[: len(ent)] += ent
        ent_count[: len(ent)] += ro.cot_mask.sum(0).cpu()[:L].float()
        if progress is not None:
            progress((start + len(chunk)) // k - start // k)  # the problems whose last sample is done
    model.train(was_training)
    empty = torch.zeros(0, k)
    return Solutions(
        correct=torch.cat(correct).view(-1, k) if correct else empty.bool(),
        rewards=torch.cat(rewards).view(-1, k) if rewards else empty,
        completions=groups(completions, k),
        cot_texts=groups(cots, k),
        entropy_sum=ent_sum,
        entropy_count=ent_count,
        cot_lengths=torch.cat(lengths).view(-1, k) if lengths else empty.long(),
    )


def batch_rows(batch_size: int, k: int) -> int:
    """Rows per generation call: the most whole groups of k samples in batch_size rows, else batch_size."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be at least 1")
    return (batch_size // k) * k or batch_size


def groups(items: list[str], k: int) -> list[list[str]]:
    """Consecutive groups of k items (one problem's samples)."""
    return [items[j : j + k] for j in range(0, len(items), k)]
